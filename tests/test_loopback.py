"""
Real-socket tests on loopback: what only real TCP shows.

The server runs in-process on the test reactor (pytest-twisted); clients are
plain blocking sockets run in threads, so they behave like any other program
on the machine.  Every socket operation has a timeout.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests._support import Echo, eventually, inThread, recvAll, recvExactly
from tests.test_codec import MALFORMED
from twisted_socks import (
    Command,
    Limits,
    SOCKSv4ServerFactory,
    encodeRequest,
)
from twisted_socks.testing import FakeConnector, FakeHostnameResolver, RecordingPolicy

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Records what it received up to the client's FIN; answers at FIN."""

    def __init__(self, answer: bytes, received: Deferred[bytes]) -> None:
        self.answer = answer
        self.received = received
        self.data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def readConnectionLost(self) -> None:
        self.received.callback(b"".join(self.data))
        self.transport.write(self.answer)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


def listen(factory: Factory) -> IListeningPort:
    """Listen on a kernel-chosen loopback port."""
    return reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined,no-any-return]


def startProxy(ports: list[IListeningPort], **kwargs: Any) -> tuple[int, Any]:
    """Start an in-process SOCKS server; return its port and factory."""
    factory = SOCKSv4ServerFactory(reactor, **kwargs)
    port = listen(factory)
    ports.append(port)
    return port.getHost().port, factory


def startEcho(ports: list[IListeningPort]) -> int:
    """Start an echo server; return its port."""
    port = listen(Factory.forProtocol(Echo))
    ports.append(port)
    return port.getHost().port  # type: ignore[no-any-return]


def socksConnect(proxyPort: int, request: bytes, timeout: float = 5) -> socket.socket:
    """Open a client connection to the proxy and send C{request}."""
    sock = socket.create_connection(("127.0.0.1", proxyPort), timeout=timeout)
    sock.sendall(request)
    return sock


@pytest_twisted.ensureDeferred
async def test_connectV4And4AEcho(ports: list[IListeningPort]) -> None:
    """SOCKS4 and SOCKS4A CONNECT reach an echo server; bytes come back intact."""
    proxy, _ = startProxy(ports)
    echo = startEcho(ports)

    def client() -> list[bytes]:
        results = []
        for request in (
            encodeRequest(Command.CONNECT, echo, address=_localhost()),
            encodeRequest(Command.CONNECT, echo, hostname="localhost", userid=b"ann"),
        ):
            with socksConnect(proxy, request) as sock:
                reply = recvExactly(sock, 8)
                payload = os.urandom(100_000)
                sock.sendall(payload)
                echoed = recvExactly(sock, len(payload))
                results.append(reply + (b"ok" if echoed == payload else b"bad"))
        return results

    assert await inThread(client) == [GRANTED + b"ok", GRANTED + b"ok"]


def _localhost() -> Any:
    from ipaddress import IPv4Address

    return IPv4Address("127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_pipelinedBytesReachDestination(ports: list[IListeningPort]) -> None:
    """
    Request, payload and a second request-shaped blob in one write: all of it
    after the request is delivered to the destination, in order.
    """
    proxy, _factory = startProxy(ports)
    echo = startEcho(ports)
    blob = encodeRequest(Command.CONNECT, 9, address=_localhost()) + os.urandom(65536)

    def client() -> bytes:
        request = encodeRequest(Command.CONNECT, echo, address=_localhost())
        with socksConnect(proxy, request + blob) as sock:
            return recvExactly(sock, 8 + len(blob))

    assert await inThread(client) == GRANTED + blob


@pytest_twisted.ensureDeferred
async def test_clientHalfCloseReachesDestination(ports: list[IListeningPort]) -> None:
    """
    The client sends 1 KiB then shutdown(SHUT_WR): the destination sees EOF
    after exactly those bytes, and its 8 MiB answer still reaches the client.
    """
    proxy, _ = startProxy(ports)
    received: Deferred[bytes] = Deferred()
    answer = os.urandom(8 << 20)
    port = listen(Factory.forProtocol(lambda: Recorder(answer, received)))
    ports.append(port)
    upload = os.urandom(1024)

    def client() -> bytes:
        request = encodeRequest(Command.CONNECT, port.getHost().port, _localhost())
        with socksConnect(proxy, request, timeout=10) as sock:
            assert recvExactly(sock, 8) == GRANTED
            sock.sendall(upload)
            sock.shutdown(socket.SHUT_WR)
            return recvAll(sock)

    got = await inThread(client)
    assert hashlib.sha256(got).digest() == hashlib.sha256(answer).digest()
    assert await received == upload


@implementer(IHalfCloseableProtocol)
class EarlyCloser(Protocol):
    """Sends a greeting then FIN at once; records what arrives afterwards."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.data: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(b"greeting")  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def readConnectionLost(self) -> None:
        self.done.callback(b"".join(self.data))
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_destinationHalfCloseReachesClient(ports: list[IListeningPort]) -> None:
    """
    The destination's FIN reaches the client as EOF, and the client can still
    send afterwards: its bytes and its own FIN reach the destination.
    """
    proxy, _ = startProxy(ports)
    done: Deferred[bytes] = Deferred()
    port = listen(Factory.forProtocol(lambda: EarlyCloser(done)))
    ports.append(port)
    late = os.urandom(300_000)

    def client() -> bytes:
        request = encodeRequest(Command.CONNECT, port.getHost().port, _localhost())
        with socksConnect(proxy, request, timeout=10) as sock:
            data = recvAll(sock)  # ends at the destination's FIN
            sock.sendall(late)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            assert sock.recv(1) == b""
            return data

    assert await inThread(client) == GRANTED + b"greeting"
    assert await done == late


@pytest_twisted.ensureDeferred
async def test_negotiateTimeoutClosesSilentClient(ports: list[IListeningPort]) -> None:
    """A client that sends nothing is closed at the negotiate timeout."""
    proxy, _ = startProxy(ports, limits=Limits(negotiateTimeout=0.5))

    def client() -> tuple[bytes, float]:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy), timeout=5) as sock:
            sock.sendall(b"\x04\x01")  # a partial request, then silence
            data = recvAll(sock)
        return data, time.monotonic() - start

    data, elapsed = await inThread(client)
    assert data == b""
    assert 0.4 < elapsed < 3


@pytest_twisted.ensureDeferred
async def test_idleTimeoutClosesQuietTunnel(ports: list[IListeningPort]) -> None:
    """An established tunnel with no traffic is closed at the idle timeout."""
    proxy, _factory = startProxy(ports, limits=Limits(idleTimeout=0.5))
    echo = startEcho(ports)

    def client() -> tuple[bytes, float]:
        request = encodeRequest(Command.CONNECT, echo, _localhost())
        with socksConnect(proxy, request) as sock:
            reply = recvExactly(sock, 8)
            sock.sendall(b"x")
            assert recvExactly(sock, 1) == b"x"
            start = time.monotonic()
            rest = recvAll(sock)
            return reply + rest, time.monotonic() - start

    data, elapsed = await inThread(client)
    assert data == GRANTED
    assert 0.4 < elapsed < 3


@pytest_twisted.ensureDeferred
async def test_connectTimeoutGives91(
    ports: list[IListeningPort], blackhole: int
) -> None:
    """A destination that never answers gets 91 at the connect timeout."""
    proxy, _ = startProxy(ports, limits=Limits(connectTimeout=0.7))

    def client() -> tuple[bytes, float]:
        start = time.monotonic()
        request = encodeRequest(Command.CONNECT, blackhole, _localhost())
        with socksConnect(proxy, request) as sock:
            return recvAll(sock), time.monotonic() - start

    data, elapsed = await inThread(client)
    assert data == REJECTED
    assert 0.6 < elapsed < 3


@pytest_twisted.ensureDeferred
async def test_connectTimeoutCoversSlowLookup(ports: list[IListeningPort]) -> None:
    """A 4A name whose lookup never answers gets 91 at the connect timeout."""
    resolver = FakeHostnameResolver()  # answers nothing
    proxy, _ = startProxy(
        ports, nameResolver=resolver, limits=Limits(connectTimeout=0.5)
    )

    def client() -> bytes:
        request = encodeRequest(Command.CONNECT, 80, hostname="never.example")
        with socksConnect(proxy, request) as sock:
            return recvAll(sock)

    assert await inThread(client) == REJECTED
    assert [lookup.name for lookup in resolver.lookups] == ["never.example"]


@pytest_twisted.ensureDeferred
async def test_refusedConnectGives91Fast(ports: list[IListeningPort]) -> None:
    """A refused destination gets 91 promptly, then the connection closes."""
    proxy, _ = startProxy(ports)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    deadPort = closed.getsockname()[1]
    closed.close()

    def client() -> bytes:
        request = encodeRequest(Command.CONNECT, deadPort, _localhost())
        with socksConnect(proxy, request) as sock:
            return recvAll(sock)

    assert await inThread(client) == REJECTED


@pytest_twisted.ensureDeferred
async def test_maxConnectionsRejectsExcessClient(ports: list[IListeningPort]) -> None:
    """
    With max-connections 2 held by two clients past their request (waiting
    for a connect that never completes), a third client gets 91 and a
    close; it's counted.
    """
    proxy, factory = startProxy(
        ports, limits=Limits(maxConnections=2), connector=FakeConnector()
    )

    def client() -> bytes:
        holders = [
            socket.create_connection(("127.0.0.1", proxy), timeout=5) for _ in range(2)
        ]
        try:
            for holder in holders:
                holder.sendall(encodeRequest(Command.CONNECT, 80, _localhost()))
            time.sleep(0.2)  # let the server read both requests
            request = encodeRequest(Command.CONNECT, 80, _localhost())
            with socksConnect(proxy, request) as sock:
                return recvAll(sock)
        finally:
            for holder in holders:
                holder.close()

    assert await inThread(client) == REJECTED
    assert factory.rejectedOverLimit == 1


@pytest_twisted.ensureDeferred
async def test_everyMalformedInputEndsCleanlyAndServerKeepsServing(
    ports: list[IListeningPort],
) -> None:
    """
    Each malformed request ends in 91 + close or a clean close within 2 s,
    and the next well-formed request is still served.
    """
    proxy, factory = startProxy(ports)
    echo = startEcho(ports)

    def client() -> list[tuple[str, bytes, float]]:
        outcomes = []
        for name, raw, _ in MALFORMED:
            if raw.startswith(b"\x05"):
                # SOCKS5 now, served on the same port: the SOCKS5 rows are
                # tests/test_socks5serverinterop.py's.
                continue
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", proxy), timeout=2) as sock:
                try:
                    sock.sendall(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server may close before a 1 MiB write ends
                data = recvAll(sock)
            outcomes.append((name, data, time.monotonic() - start))
            request = encodeRequest(Command.CONNECT, echo, _localhost())
            with socksConnect(proxy, request) as sock:
                assert recvExactly(sock, 8) == GRANTED, name
        return outcomes

    for name, data, elapsed in await inThread(client):
        assert data in (b"", REJECTED), name
        assert elapsed < 2, name
    await eventually(lambda: not factory.activeSessions)


@pytest_twisted.ensureDeferred
async def test_haproxyListenerShowsPolicyTheRealClient(
    ports: list[IListeningPort],
) -> None:
    """
    Behind `haproxy:`, the policy sees the address from the PROXY header, so
    a remote client forwarded by a local balancer is not mistaken for local.
    """
    policy = RecordingPolicy()
    factory = SOCKSv4ServerFactory(reactor, policy=policy)
    endpoint = serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(factory)
    ports.append(port)
    echo = startEcho(ports)

    def client() -> bytes:
        header = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 1080\r\n"
        request = encodeRequest(Command.CONNECT, echo, _localhost())
        with socksConnect(port.getHost().port, header + request) as sock:
            reply = recvExactly(sock, 8)
            sock.sendall(b"hi")
            return reply + recvExactly(sock, 2)

    assert await inThread(client) == GRANTED + b"hi"
    assert [(str(r.client), r.clientPort) for r in policy.requests] == [
        ("203.0.113.9", 5555)
    ]


@pytest_twisted.ensureDeferred
async def test_unixSocketListener(ports: list[IListeningPort], tmp_path: Any) -> None:
    """The server serves a UNIX-socket listener (local clients by default)."""
    path = str(tmp_path / "socks.sock")
    factory = SOCKSv4ServerFactory(reactor)
    port = await serverFromString(reactor, f"unix:{path}").listen(factory)
    ports.append(port)
    echo = startEcho(ports)

    def client() -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(encodeRequest(Command.CONNECT, echo, _localhost()) + b"u")
            return recvExactly(sock, 9)

    assert await inThread(client) == GRANTED + b"u"
