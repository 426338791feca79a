"""
The server's UDP ASSOCIATE relay on real loopback sockets: our own
L{SOCKS5UDPEndpoint} and PySocks through it to a UDP echo (IPv4, IPv6, a
password, a name), and hand-made datagrams for what it must drop: another
source port after the lock, a fragment, a reply from a host the client
never sent to, a denied destination; and the UDP port closing with the TCP
connection.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bcrypt
import pytest
import pytest_twisted
import socks
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol

from tests._support import (
    eventually,
    inThread,
    recvExactly,
    startServer,
    stopServer,
)
from tests.test_client import TIMEOUT, withTimeout
from tests.test_udpsession import AssociationPolicy
from twisted_socks import SessionRecord, SOCKSv4ServerFactory
from twisted_socks.client._socks5udpclient import SOCKS5UDPEndpoint
from twisted_socks.testing import FakeHostnameResolver
from twisted_socks.wire._request import UserSource
from twisted_socks.wire._socks5 import Command5, encodeRequest5
from twisted_socks.wire._socks5udp import encodeDatagram, parseDatagram

R: Any = reactor
#: The test user's password (with the characters RFC 1929 lets through).
PASSWORD = "s3:cr@t pw"


class Inbox(DatagramProtocol):
    """Keeps what it receives, with the sender."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Keep it."""
        self.received.append((datagram, addr))


class Echo(Inbox):
    """Keeps what it receives, and sends it back to where it came from."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Keep it, and echo it."""
        super().datagramReceived(datagram, addr)
        self.transport.write(datagram, addr)  # type: ignore[union-attr]


class Proxy:
    """An in-process server on loopback, and the records of its sessions."""

    def __init__(self, ports: list[IListeningPort], host: str = "127.0.0.1", **kw: Any):
        self.records: list[SessionRecord] = []
        self.policy = kw.pop("policy", None) or AssociationPolicy()
        self.factory = SOCKSv4ServerFactory(
            R, policy=self.policy, sessionObserver=self.records.append, **kw
        )
        listening = R.listenTCP(0, self.factory, interface=host)
        ports.append(listening)
        self.host = host
        self.port: int = listening.getHost().port

    def endpoint(self) -> Any:
        """A TCP endpoint to the server."""
        if ":" in self.host:
            return TCP6ClientEndpoint(R, self.host, self.port, timeout=TIMEOUT)
        return TCP4ClientEndpoint(R, self.host, self.port, timeout=TIMEOUT)


def udp(ports: list[IListeningPort], protocol: Inbox, host: str = "127.0.0.1") -> int:
    """Listen with C{protocol} on a loopback UDP port; its number."""
    port = R.listenUDP(0, protocol, interface=host)
    ports.append(port)
    return int(port.getHost().port)


def associate(proxy: Proxy, request: bytes | None = None) -> tuple[socket.socket, int]:
    """
    (Blocking.) Open a TCP connection to C{proxy}, ask for an association
    (from 0.0.0.0:0 unless C{request} says otherwise); the socket and the
    relay's port.
    """
    sock = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    sock.sendall(
        b"\x05\x01\x00" + (request or encodeRequest5(Command5.UDP_ASSOCIATE, 0))
    )
    reply = recvExactly(sock, 12)
    assert reply[:6] == b"\x05\x00\x05\x00\x00\x01", reply
    return sock, int.from_bytes(reply[10:12], "big")


def toEcho(payload: bytes, port: int, fragment: int = 0) -> bytes:
    """A client's datagram for 127.0.0.1:C{port}."""
    return encodeDatagram(payload, port, IPv4Address("127.0.0.1"), fragment=fragment)


async def ended(proxy: Proxy, count: int = 1) -> SessionRecord:
    """Wait (bounded) for the C{count}th session record; the last one."""
    await eventually(lambda: len(proxy.records) >= count, TIMEOUT)
    return proxy.records[-1]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest_twisted.ensureDeferred
async def test_ourClientRelaysToAnEcho(ports: list[IListeningPort], host: str) -> None:
    """
    Our client's datagram reaches a UDP echo through the association, and
    the echo comes back naming the echo as its sender; IPv4 and IPv6
    alike.  The record counts one datagram and its bytes each way.
    """
    proxy = Proxy(ports, host)
    echo = Echo()
    echoPort = udp(ports, echo, host)
    inbox = Inbox()
    port = await withTimeout(SOCKS5UDPEndpoint(R, proxy.endpoint()).listen(inbox))
    port.write(b"ping", (host, echoPort))
    await eventually(lambda: bool(inbox.received), TIMEOUT)
    assert inbox.received == [(b"ping", (host, echoPort))]
    port.stopListening()
    record = await ended(proxy)
    assert (record.command, record.reply, record.bytesUp, record.bytesDown) == (
        "udp",
        0,
        4,
        4,
    )
    assert record.udp is not None
    assert (record.udp.datagramsUp, record.udp.datagramsDown) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_ipv6ClientReachesAnIPv4Destination(ports: list[IListeningPort]) -> None:
    """
    A client on ::1 gets an IPv6 relay, and still reaches an IPv4
    destination (through the relay's IPv4 socket) and hears it back.
    """
    proxy = Proxy(ports, "::1")
    echoPort = udp(ports, Echo())
    inbox = Inbox()
    port = await withTimeout(SOCKS5UDPEndpoint(R, proxy.endpoint()).listen(inbox))
    assert ip_address(port.relay[0]).version == 6
    port.write(b"across", ("127.0.0.1", echoPort))
    await eventually(lambda: bool(inbox.received), TIMEOUT)
    assert inbox.received == [(b"across", ("127.0.0.1", echoPort))]
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_ourClientWithAPassword(ports: list[IListeningPort]) -> None:
    """
    With users, the client logs in; the association is judged as the
    authenticated user, and the record names them.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse(ann=PASSWORD.encode())
    proxy = Proxy(ports, credentialsChecker=checker)
    echoPort = udp(ports, Echo())
    inbox = Inbox()
    endpoint = SOCKS5UDPEndpoint(R, proxy.endpoint(), user="ann", password=PASSWORD)
    port = await withTimeout(endpoint.listen(inbox))
    port.write(b"hello", ("127.0.0.1", echoPort))
    await eventually(lambda: bool(inbox.received), TIMEOUT)
    port.stopListening()
    record = await ended(proxy)
    assert (record.user, record.auth, record.bytesDown) == ("ann", "password", 5)
    asked = proxy.policy.requests
    assert asked[0].isAssociation
    assert {(r.user, r.userSource) for r in asked} == {
        ("ann", UserSource.AUTHENTICATED)
    }


@pytest_twisted.ensureDeferred
async def test_nameIsJudgedResolvedAndItsAddressJudged(
    ports: list[IListeningPort],
) -> None:
    """
    A datagram to a name: the name is judged, looked up through the
    server's resolver, the address judged, and the datagram sent there;
    the answer names the address.  The next datagram to the name uses the
    decision kept: no second lookup, no second judgment.
    """
    resolver = FakeHostnameResolver({"echo.test": ["127.0.0.1"]})
    proxy = Proxy(ports, nameResolver=resolver)
    echo = Echo()
    echoPort = udp(ports, echo)
    inbox = Inbox()
    port = await withTimeout(SOCKS5UDPEndpoint(R, proxy.endpoint()).listen(inbox))
    port.write(b"one", ("echo.test", echoPort))
    port.write(b"two", ("echo.test", echoPort))
    await eventually(lambda: len(inbox.received) == 2, TIMEOUT)
    assert inbox.received[0] == (b"one", ("127.0.0.1", echoPort))
    port.stopListening()
    destinations = [
        (r.hostname, r.address) for r in proxy.policy.requests if not r.isAssociation
    ]
    assert destinations == [
        ("echo.test", None),
        ("echo.test", IPv4Address("127.0.0.1")),
    ]
    assert [lookup.name for lookup in resolver.lookups] == ["echo.test"]
    record = await ended(proxy)
    assert record.udp is not None and record.udp.datagramsUp == 2


def pysocksRoundTrip(
    proxy: Any, echoPort: int, credentials: tuple[str, str] | None
) -> tuple[bytes, Any]:
    """(Blocking.) PySocks sends one datagram through the proxy; the answer."""
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        user, password = credentials or (None, None)
        sock.set_proxy(socks.SOCKS5, proxy.host, proxy.port, True, user, password)
        sock.settimeout(TIMEOUT)
        sock.sendto(b"from pysocks", ("127.0.0.1", echoPort))
        return sock.recvfrom(1024)
    finally:
        sock.close()


@pytest.mark.parametrize("withPassword", [False, True])
@pytest_twisted.ensureDeferred
async def test_pysocksSendsAndReceives(
    ports: list[IListeningPort], withPassword: bool
) -> None:
    """
    PySocks, which names its association "0" and its local port, sends
    and hears back through the relay, with or without a password.
    """
    kw: dict[str, Any] = {}
    credentials = None
    if withPassword:
        kw["credentialsChecker"] = InMemoryUsernamePasswordDatabaseDontUse(
            bo=PASSWORD.encode()
        )
        credentials = ("bo", PASSWORD)
    proxy = Proxy(ports, **kw)
    echoPort = udp(ports, Echo())
    answer = await withTimeout(inThread(pysocksRoundTrip, proxy, echoPort, credentials))
    assert answer == (b"from pysocks", ("127.0.0.1", echoPort))
    record = await ended(proxy)
    assert str(record.destination).startswith("0:")  # PySocks' name
    assert record.udp is not None and record.udp.datagramsDown == 1


class Raw:
    """A client speaking the datagram header by hand from a UDP socket."""

    def __init__(self, ports: list[IListeningPort], relayPort: int) -> None:
        self.inbox = Inbox()
        self.port = udp(ports, self.inbox)
        self.relay = ("127.0.0.1", relayPort)
        self.transport: Any = self.inbox.transport

    def send(self, datagram: bytes) -> None:
        """Send C{datagram} (header included) to the relay."""
        self.transport.write(datagram, self.relay)


async def rawAssociation(
    ports: list[IListeningPort], proxy: Proxy, request: bytes | None = None
) -> tuple[socket.socket, int]:
    """An association asked by hand: the TCP socket and the relay port."""
    return await withTimeout(inThread(associate, proxy, request))


@pytest_twisted.ensureDeferred
async def test_bigDatagramsRelayedWhole(ports: list[IListeningPort]) -> None:
    """
    A datagram of 60,000 bytes goes through whole each way (the relay
    reads more than Twisted's default 8192 bytes per datagram).
    """
    proxy = Proxy(ports)
    echo = Echo()
    echoPort = udp(ports, echo)
    echo.transport.maxPacketSize = 65535  # type: ignore[union-attr]
    tcp, relayPort = await rawAssociation(ports, proxy)
    client = Raw(ports, relayPort)
    client.transport.maxPacketSize = 65535
    payload = bytes(range(256)) * 234 + b"end"
    client.send(toEcho(payload, echoPort))
    await eventually(lambda: bool(client.inbox.received), TIMEOUT)
    assert echo.received[0][0] == payload
    assert parseDatagram(client.inbox.received[0][0]).data == payload
    tcp.close()


@pytest_twisted.ensureDeferred
async def test_anotherSourcePortAfterTheLockIsDropped(
    ports: list[IListeningPort],
) -> None:
    """
    The association locks to the first datagram's source port: a datagram
    from another port of the client's host is dropped (and counted).
    """
    proxy = Proxy(ports)
    echo = Echo()
    echoPort = udp(ports, echo)
    tcp, relayPort = await rawAssociation(ports, proxy)
    first, second = Raw(ports, relayPort), Raw(ports, relayPort)
    first.send(toEcho(b"first", echoPort))
    await eventually(lambda: bool(first.inbox.received), TIMEOUT)
    second.send(toEcho(b"second", echoPort))
    first.send(toEcho(b"third", echoPort))
    await eventually(lambda: len(first.inbox.received) == 2, TIMEOUT)
    assert [d for d, _ in echo.received] == [b"first", b"third"]
    assert second.inbox.received == []
    tcp.close()
    record = await ended(proxy)
    assert record.udp is not None and record.udp.dropped == 1


@pytest_twisted.ensureDeferred
async def test_portNamedInTheRequestIsTheOnlySource(
    ports: list[IListeningPort],
) -> None:
    """
    A request naming the client's address and port: datagrams from any
    other port are dropped, even the first one.
    """
    proxy = Proxy(ports)
    echo = Echo()
    echoPort = udp(ports, echo)
    named, other = Inbox(), Inbox()
    namedPort, _ = udp(ports, named), udp(ports, other)
    request = encodeRequest5(
        Command5.UDP_ASSOCIATE, namedPort, IPv4Address("127.0.0.1")
    )
    tcp, relayPort = await rawAssociation(ports, proxy, request)
    otherTransport: Any = other.transport
    namedTransport: Any = named.transport
    otherTransport.write(toEcho(b"not me", echoPort), ("127.0.0.1", relayPort))
    namedTransport.write(toEcho(b"me", echoPort), ("127.0.0.1", relayPort))
    await eventually(lambda: bool(named.received), TIMEOUT)
    assert [d for d, _ in echo.received] == [b"me"]
    tcp.close()
    record = await ended(proxy)
    assert record.udp is not None and record.udp.dropped == 1


@pytest_twisted.ensureDeferred
async def test_fragmentIsDroppedAndCounted(ports: list[IListeningPort]) -> None:
    """A datagram with FRAG not 0 is not relayed; the record counts it."""
    proxy = Proxy(ports)
    echo = Echo()
    echoPort = udp(ports, echo)
    tcp, relayPort = await rawAssociation(ports, proxy)
    client = Raw(ports, relayPort)
    client.send(toEcho(b"piece", echoPort, fragment=1))
    client.send(toEcho(b"whole", echoPort))
    await eventually(lambda: bool(client.inbox.received), TIMEOUT)
    assert [d for d, _ in echo.received] == [b"whole"]
    tcp.close()
    record = await ended(proxy)
    assert record.udp is not None
    assert (record.udp.fragments, record.udp.datagramsUp) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_replyFromAHostNeverSentToIsDropped(ports: list[IListeningPort]) -> None:
    """
    Only destinations the client has sent to are heard: a stranger that
    learns the relay's outbound port is dropped, the echo is relayed.
    """
    proxy = Proxy(ports)
    echo = Echo()
    echoPort = udp(ports, echo)
    stranger = Inbox()
    udp(ports, stranger)
    tcp, relayPort = await rawAssociation(ports, proxy)
    client = Raw(ports, relayPort)
    client.send(toEcho(b"hi", echoPort))
    await eventually(lambda: bool(client.inbox.received), TIMEOUT)
    outbound = echo.received[0][1]
    strangerTransport: Any = stranger.transport
    strangerTransport.write(b"spoof", outbound)
    client.send(toEcho(b"again", echoPort))
    await eventually(lambda: len(client.inbox.received) == 2, TIMEOUT)
    answers = [parseDatagram(d) for d, _ in client.inbox.received]
    assert [(a.data, a.address, a.port) for a in answers] == [
        (b"hi", IPv4Address("127.0.0.1"), echoPort),
        (b"again", IPv4Address("127.0.0.1"), echoPort),
    ]
    tcp.close()
    record = await ended(proxy)
    assert record.udp is not None
    assert (record.udp.dropped, record.udp.datagramsDown) == (1, 2)


@pytest_twisted.ensureDeferred
async def test_deniedDestinationIsDroppedAndCounted(
    ports: list[IListeningPort],
) -> None:
    """
    A destination the policy denies gets nothing (judged once, however
    many datagrams); an allowed one is relayed.
    """
    deniedEcho, allowedEcho = Echo(), Echo()
    deniedPort = udp(ports, deniedEcho)
    allowedPort = udp(ports, allowedEcho)
    proxy = Proxy(ports, policy=AssociationPolicy(deniedPort=deniedPort))
    tcp, relayPort = await rawAssociation(ports, proxy)
    client = Raw(ports, relayPort)
    client.send(toEcho(b"no", deniedPort))
    client.send(toEcho(b"no again", deniedPort))
    client.send(toEcho(b"yes", allowedPort))
    await eventually(lambda: bool(client.inbox.received), TIMEOUT)
    assert deniedEcho.received == []
    tcp.close()
    record = await ended(proxy)
    assert record.udp is not None and record.udp.denied == 2
    judged = [r.port for r in proxy.policy.requests if not r.isAssociation]
    assert judged == [deniedPort, allowedPort]


@pytest_twisted.ensureDeferred
async def test_datagramsToTheRelaysOwnSocketsAreDenied(
    ports: list[IListeningPort],
) -> None:
    """
    A datagram to one of the server's own relay sockets (this
    association's, or another's) is denied and counted, whatever the
    policy says: it would loop, or reach another client's association from
    the server's own address.
    """
    proxy = Proxy(ports)
    echo = Echo()
    echoPort = udp(ports, echo)
    tcp, relayPort = await rawAssociation(ports, proxy)
    otherTCP, otherRelayPort = await rawAssociation(ports, proxy)
    client = Raw(ports, relayPort)
    client.send(toEcho(b"hi", echoPort))
    await eventually(lambda: bool(client.inbox.received), TIMEOUT)
    outboundPort = echo.received[0][1][1]
    for port in (relayPort, outboundPort, otherRelayPort):
        client.send(toEcho(b"loop", port))
    client.send(toEcho(b"after", echoPort))
    await eventually(lambda: len(client.inbox.received) == 2, TIMEOUT)
    assert [d for d, _ in echo.received] == [b"hi", b"after"]
    tcp.close()
    otherTCP.close()
    await ended(proxy, 2)
    [mine] = [r.udp for r in proxy.records if r.udp and r.udp.datagramsUp == 2]
    assert mine.denied == 3
    judged = [r.port for r in proxy.policy.requests if not r.isAssociation]
    assert judged == [echoPort]  # refused before any policy
    assert proxy.factory.udpRelayPorts == {}


@pytest.mark.parametrize(
    "close", [socket.socket.close, lambda s: s.shutdown(socket.SHUT_WR)]
)
@pytest_twisted.ensureDeferred
async def test_tcpCloseClosesTheUDPPort(
    ports: list[IListeningPort], close: Callable[[socket.socket], None]
) -> None:
    """
    When the association's TCP connection ends (a close, or a FIN), the
    relay's UDP port is closed: the port can be bound again.
    """
    proxy = Proxy(ports)
    tcp, relayPort = await rawAssociation(ports, proxy)
    close(tcp)
    await ended(proxy)
    tcp.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", relayPort))
    assert proxy.factory.admission.udpByClient == {}


def grantVia(port: int, user: str, password: str) -> bytes:
    """
    (Blocking.) Log in to the server on C{port} and ask for an association;
    its grant (closing the connection then ends the association).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recvExactly(sock, 2) == b"\x05\x02"
        name, secret = user.encode(), password.encode()
        sock.sendall(bytes([1, len(name)]) + name + bytes([len(secret)]) + secret)
        assert recvExactly(sock, 2) == b"\x01\x00"
        sock.sendall(encodeRequest5(Command5.UDP_ASSOCIATE, 0))
        return recvExactly(sock, 10)


@pytest_twisted.ensureDeferred
async def test_twistdServesUDPWithItsOptions(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    C{twistd socks --users FILE --udp-address ADDR}: PySocks logs in and
    relays a datagram each way; a grant names ADDR; the session's log line
    counts the datagrams.
    """
    users = tmp_path / "users"
    users.write_bytes(b"ann:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)))
    users.chmod(0o600)
    server = startServer(tmp_path, "--users", str(users), "--udp-address", "192.0.2.77")
    try:
        echoPort = udp(ports, Echo())
        proxy = SimpleNamespace(host="127.0.0.1", port=server.port)
        answer = await withTimeout(
            inThread(pysocksRoundTrip, proxy, echoPort, ("ann", PASSWORD))
        )
        assert answer == (b"from pysocks", ("127.0.0.1", echoPort))
        grant = await withTimeout(inThread(grantVia, server.port, "ann", PASSWORD))
        assert grant[:8] == b"\x05\x00\x00\x01" + socket.inet_aton("192.0.2.77")
        await eventually(lambda: "datagrams-down=1" in server.log(), TIMEOUT)
        line = next(x for x in server.log().splitlines() if "datagrams-down=1" in x)
        assert "udp" in line
        assert "user=ann" in line
        assert "datagrams-up=1 datagrams-down=1 fragments=0 denied=0" in line
    finally:
        stopServer(server)
