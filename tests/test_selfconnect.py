"""
The server never tunnels to itself: a CONNECT to one of its own listening
addresses (for a wildcard listener, any local address on its port), literal
or resolved, gets 91, so that a request pipelined into such a tunnel cannot
come from the server's own address.

The C{twistd} tests use the real composition root (listeners tell the
factory their addresses); the in-process ones show what an embedding
program gets; the others test L{ListeningAddresses} alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address as TCPAddress
from twisted.internet.interfaces import IListeningPort

from tests._support import (
    EchoDestination,
    Server,
    inThread,
    listen,
    recvAll,
    startServer,
    stopServer,
    waitUntil,
)
from twisted_socks import Command, SOCKSv4ServerFactory, encodeRequest
from twisted_socks.outbound._selfaddress import ListeningAddresses, isLocalAddress
from twisted_socks.policy._policy import IPAddress

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6
#: Loopback clients may reach any destination, loopback included (nobody
#: else: one server listens on every interface).
PERMIT_LOOPBACK_CLIENTS = "permit 127.0.0.0/8 0/0\n"


def connectTo(host: str, port: int) -> bytes:
    """A SOCKS4 CONNECT to C{host}:C{port}."""
    return encodeRequest(Command.CONNECT, port, IPv4Address(host))


def connectToName(name: str, port: int) -> bytes:
    """A SOCKS4A CONNECT to C{name}:C{port}."""
    return encodeRequest(Command.CONNECT, port, hostname=name)


def exchange(proxyPort: int, data: bytes) -> bytes:
    """Send C{data} (then FIN) to the proxy; everything it sends until EOF."""
    with socket.create_connection(("127.0.0.1", proxyPort), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recvAll(sock)


def laundering(proxyPort: int, outer: bytes, echoPort: int) -> bytes:
    """
    The attack: C{outer} (a CONNECT to the proxy itself) with a CONNECT to
    the echo service and a payload pipelined behind it.
    """
    return outer + connectTo("127.0.0.1", echoPort) + b"hello"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[Server]]:
    """C{twistd socks} servers to stop after the test."""
    servers: list[Server] = []
    yield servers
    for server in servers:
        stopServer(server)


def startWithRules(tmp_path: Path, servers: list[Server], *args: str) -> Server:
    """C{twistd socks --rules} (loopback clients, any destination) plus C{args}."""
    rules = tmp_path / "rules.conf"
    rules.write_text(PERMIT_LOOPBACK_CLIENTS)
    server = startServer(tmp_path, "--rules", str(rules), *args)
    servers.append(server)
    return server


def test_connectToItsOwnAddressIsRefused(
    tmp_path: Path, serve: list[Server], echo: EchoDestination
) -> None:
    """
    C{twistd socks} on 127.0.0.1, rules allowing any destination: a CONNECT
    to its own address and port, with a second request pipelined behind
    it, gets 91 and nothing else (the inner request is never served), and
    the session record says why.  A CONNECT elsewhere is still served.
    """
    server = startWithRules(tmp_path, serve)
    outer = connectTo("127.0.0.1", server.port)
    assert exchange(server.port, laundering(server.port, outer, echo.port)) == REJECTED
    served = exchange(server.port, connectTo("127.0.0.1", echo.port) + b"hello")
    assert served == GRANTED + b"hello"
    waitUntil(lambda: "own listening address" in server.log(), what="record")
    assert (
        f"destination 127.0.0.1:{server.port} is this server's own listening address"
        in server.log()
    )


def test_wildcardListenerRefusesEveryLocalAddressOnItsPort(
    tmp_path: Path, serve: list[Server], echo: EchoDestination
) -> None:
    """
    C{twistd socks --interface 0.0.0.0}: CONNECTs to 127.0.0.1 and 127.0.0.2
    on its port, and SOCKS4A names that are IPv4-mapped forms of them, all
    get 91 with a request pipelined behind them; a CONNECT to another local
    port is still served.
    """
    server = startWithRules(tmp_path, serve, "--interface", "0.0.0.0")
    port = server.port
    attempts = {
        "127.0.0.1": connectTo("127.0.0.1", port),
        "127.0.0.2": connectTo("127.0.0.2", port),
        "::ffff:127.0.0.2": connectToName("::ffff:127.0.0.2", port),
        "::ffff:7f00:1": connectToName("::ffff:7f00:1", port),
    }
    replies = {
        name: exchange(port, laundering(port, outer, echo.port))
        for name, outer in attempts.items()
    }
    assert replies == dict.fromkeys(attempts, REJECTED)
    served = exchange(port, connectTo("127.0.0.2", echo.port) + b"hello")
    assert served == REJECTED  # the echo service listens on 127.0.0.1 only
    served = exchange(port, connectTo("127.0.0.1", echo.port) + b"hello")
    assert served == GRANTED + b"hello"


@pytest_twisted.ensureDeferred
async def test_embeddedServerRefusesTheAddressItsClientCameIn(
    ports: list[IListeningPort],
) -> None:
    """
    A program listening with the factory itself, without telling it its
    address: a CONNECT to the address and port the client came in on is
    still refused (each session knows its own).
    """
    factory = SOCKSv4ServerFactory(reactor)
    port = listen(ports, factory)
    reply = await inThread(exchange, port, connectTo("127.0.0.1", port) + b"x")
    assert reply == REJECTED


@pytest_twisted.ensureDeferred
async def test_embeddedServerToldItsAddressesRefusesThemAll(
    ports: list[IListeningPort],
) -> None:
    """
    A program that tells the factory about its other listener (through
    C{addListeningAddress}): a CONNECT there is refused too, though the
    client came in through the first.
    """
    factory = SOCKSv4ServerFactory(reactor)
    first = listen(ports, factory)
    second = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    ports.append(second)
    factory.addListeningAddress(second.getHost())
    outer = connectTo("127.0.0.1", second.getHost().port)
    reply = await inThread(exchange, first, outer + b"x")
    assert reply == REJECTED


# -- ListeningAddresses alone ---------------------------------------------------------


class Probe:
    """An C{isLocal} that counts its calls and calls C{local} local."""

    def __init__(self, *local: str) -> None:
        self.local = {ip_address(a) for a in local}
        self.calls: list[IPAddress] = []

    def __call__(self, address: IPAddress) -> bool:
        self.calls.append(address)
        return address in self.local


def test_portNotListenedOnIsNeverProbed() -> None:
    """
    A destination port the server does not listen on is answered without
    asking the kernel anything (the common case stays a set lookup).
    """
    probe = Probe("127.0.0.2")
    addresses = ListeningAddresses(isLocal=probe)
    addresses.add("0.0.0.0", 1080)
    addresses.add("127.0.0.1", 1081)
    assert not addresses.includes(IPv4Address("127.0.0.2"), 80)
    assert not addresses.includes(IPv4Address("127.0.0.1"), 1082)
    assert probe.calls == []


def test_exactAddressesAndMappedForms() -> None:
    """
    A listener on one address covers that address and its IPv4-mapped
    form, on its port only, and no other address.
    """
    addresses = ListeningAddresses(isLocal=Probe())
    addresses.add("127.0.0.1", 1080)
    assert addresses.includes(IPv4Address("127.0.0.1"), 1080)
    assert addresses.includes(IPv6Address("::ffff:127.0.0.1"), 1080)
    assert not addresses.includes(IPv4Address("127.0.0.2"), 1080)
    assert not addresses.includes(IPv4Address("127.0.0.1"), 1081)


def test_wildcardFamilies() -> None:
    """
    C{0.0.0.0} covers local IPv4 addresses (and their mapped forms) only;
    C{::} (dual-stack by default) covers local addresses of both families.
    """
    probe = Probe("127.0.0.2", "::1")
    addresses = ListeningAddresses(isLocal=probe)
    addresses.add("0.0.0.0", 1080)
    addresses.add("::", 1081)
    assert addresses.includes(IPv4Address("127.0.0.2"), 1080)
    assert addresses.includes(IPv6Address("::ffff:127.0.0.2"), 1080)
    assert not addresses.includes(IPv6Address("::1"), 1080)
    assert not addresses.includes(IPv4Address("198.51.100.1"), 1080)
    assert addresses.includes(IPv6Address("::1"), 1081)
    assert addresses.includes(IPv4Address("127.0.0.2"), 1081)
    assert not addresses.includes(IPv6Address("2001:db8::1"), 1081)


def test_localAnswersAreCachedBriefly() -> None:
    """
    The kernel is asked once per address within the cache's lifetime, and
    again after it (an address may have been added or removed since).
    """
    now = [0.0]
    probe = Probe("127.0.0.2")
    addresses = ListeningAddresses(isLocal=probe, clock=lambda: now[0], ttl=5)
    addresses.add("0.0.0.0", 1080)
    for _ in range(3):
        assert addresses.includes(IPv4Address("127.0.0.2"), 1080)
    assert len(probe.calls) == 1
    now[0] = 6.0
    probe.local.clear()
    assert not addresses.includes(IPv4Address("127.0.0.2"), 1080)
    assert len(probe.calls) == 2


def test_isLocalAddressAsksTheKernel() -> None:
    """
    Every loopback address is local (Linux routes 127.0.0.0/8 to the host),
    a documentation address is not; the figures are printed: a probe, a
    cached answer and the fast "no" for a port nobody listens on.
    """
    assert isLocalAddress(IPv4Address("127.0.0.1"))
    assert isLocalAddress(IPv4Address("127.0.0.2"))
    assert not isLocalAddress(IPv4Address("198.51.100.1"))
    rounds = 2000
    began = time.perf_counter()
    for _ in range(rounds):
        isLocalAddress(IPv4Address("198.51.100.1"))
    probe = (time.perf_counter() - began) / rounds
    addresses = ListeningAddresses()
    addresses.add("0.0.0.0", 1080)
    address = IPv4Address("127.0.0.2")
    began = time.perf_counter()
    for _ in range(rounds):
        addresses.includes(address, 1080)
    cached = (time.perf_counter() - began) / rounds
    began = time.perf_counter()
    for _ in range(rounds):
        addresses.includes(address, 80)
    other = (time.perf_counter() - began) / rounds
    print(
        f"figures: local-address probe {probe * 1e6:.1f} us, cached "
        f"{cached * 1e6:.2f} us, other port {other * 1e6:.2f} us"
    )


def test_twistedAddressesAreTakenAsTheyCome() -> None:
    """
    C{addListeningAddress} takes a listening port's C{getHost()} as it is;
    an address that is not IP is ignored.
    """
    factory = SOCKSv4ServerFactory(reactor)
    factory.addListeningAddress(TCPAddress("TCP", "127.0.0.5", 1080))
    factory.addListeningAddress(object())  # type: ignore[arg-type]
    assert factory.listeningAddresses.includes(IPv4Address("127.0.0.5"), 1080)
