"""
The outbound connector on real loopback sockets: its own non-blocking
connect, the transport it builds, failures, cancellation, the timeout and
the source address; and the immediate close helpers the relay uses.
"""

from __future__ import annotations

import errno
import os
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error, reactor
from twisted.internet.error import ConnectingCancelledError, TimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from tests._support import Echo, closedPort, eventually, listen
from twisted_socks import TCPConnector
from twisted_socks.outbound._rawtcp import OutboundConnection
from twisted_socks.relay._fastio import closeNow, halfCloseNow


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Keeps what arrives and how the connection ended."""

    def __init__(self) -> None:
        self.received = b""
        self.eof = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Peers(Factory):
    """The listening side: remembers every protocol it built."""

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


def outbound() -> Factory:
    return Factory.forProtocol(Recorder)


@pytest_twisted.ensureDeferred
async def test_connectsWithATwistedTransport(ports: list[IListeningPort]) -> None:
    """
    The protocol gets a tcp.Connection transport with the right addresses;
    bytes go both ways and a half-close reaches the other side.
    """
    peers = Peers()
    port = listen(ports, peers)
    connector = TCPConnector(reactor)  # type: ignore[arg-type]
    protocol = await connector.connect(IPv4Address("127.0.0.1"), port, outbound())
    transport = protocol.transport
    assert isinstance(transport, OutboundConnection)
    peer = transport.getPeer()
    assert (peer.type, peer.host, peer.port) == ("TCP", "127.0.0.1", port)
    host = transport.getHost()
    assert host.host == "127.0.0.1" and host.port not in (0, port)
    await eventually(lambda: len(peers.built) == 1)
    [far] = peers.built
    transport.write(b"up")
    far.transport.write(b"down")  # type: ignore[union-attr]
    await eventually(lambda: far.received == b"up" and protocol.received == b"down")
    transport.loseWriteConnection()
    await eventually(lambda: far.eof)
    assert protocol.lost is None  # only half closed
    far.transport.loseConnection()  # type: ignore[union-attr]
    await eventually(lambda: protocol.eof)
    transport.loseConnection()  # both directions done: closes at once
    assert protocol.lost is not None


@pytest_twisted.ensureDeferred
async def test_loopbackConnectedAtOnce(ports: list[IListeningPort]) -> None:
    """
    On loopback the kernel finishes the handshake inside connect(), and the
    connector sees that at once: the Deferred it returns has already fired,
    no writability watch was set up, and the connection works.  (Retried a
    few times: under heavy load the kernel may defer its network work to
    ksoftirqd, and then the attempt waits for writability as usual.)
    """
    peers = Peers()
    port = listen(ports, peers)
    connector = TCPConnector(reactor)  # type: ignore[arg-type]
    writers = set(reactor.getWriters())  # type: ignore[attr-defined]
    protocol = None
    for _ in range(5):
        d = connector.connect(IPv4Address("127.0.0.1"), port, outbound())
        fired: list[Recorder] = []
        d.addCallback(fired.append)
        if fired:
            assert set(reactor.getWriters()) == writers  # type: ignore[attr-defined]
            [protocol] = fired
            break
        (await d).transport.loseConnection()
    assert protocol is not None, "no loopback connect completed inside connect()"
    await eventually(lambda: len(peers.built) >= 1 and peers.built[-1].transport)
    far = peers.built[-1]
    protocol.transport.write(b"ping")
    far.transport.write(b"pong")  # type: ignore[union-attr]
    await eventually(lambda: far.received == b"ping" and protocol.received == b"pong")
    protocol.transport.loseConnection()
    await eventually(lambda: protocol.lost is not None and far.eof)


@pytest_twisted.ensureDeferred
async def test_connectsOverIPv6(ports: list[IListeningPort]) -> None:
    """An IPv6 literal is connected to over IPv6."""
    peers = Peers()
    try:
        listening = reactor.listenTCP(0, peers, interface="::1")  # type: ignore[attr-defined]
    except Exception:
        pytest.fail("no IPv6 loopback on this machine")
    ports.append(listening)
    port = listening.getHost().port
    connector = TCPConnector(reactor)  # type: ignore[arg-type]
    protocol = await connector.connect(IPv6Address("::1"), port, outbound())
    peer = protocol.transport.getPeer()
    assert (peer.host, peer.port) == ("::1", port)
    assert protocol.transport.getHost().host == "::1"
    protocol.transport.loseConnection()
    await eventually(lambda: protocol.lost is not None)


@pytest_twisted.ensureDeferred
async def test_refused() -> None:
    """Nothing listening: Twisted's ConnectionRefusedError, with its message."""
    connector = TCPConnector(reactor)  # type: ignore[arg-type]
    with pytest.raises(error.ConnectionRefusedError, match="refused"):
        await connector.connect(IPv4Address("127.0.0.1"), closedPort(), outbound())


@pytest_twisted.ensureDeferred
async def test_cancelled(blackhole: int) -> None:
    """Cancelling a pending attempt fails it and stops watching its socket."""
    writers = set(reactor.getWriters())  # type: ignore[attr-defined]
    connector = TCPConnector(reactor)  # type: ignore[arg-type]
    d = connector.connect(IPv4Address("127.0.0.1"), blackhole, outbound())
    assert len(set(reactor.getWriters()) - writers) == 1  # type: ignore[attr-defined]
    d.cancel()
    with pytest.raises(ConnectingCancelledError):
        await d
    assert set(reactor.getWriters()) == writers  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_timeout(blackhole: int) -> None:
    """An unanswered SYN fails with TimeoutError after the timeout."""
    writers = set(reactor.getWriters())  # type: ignore[attr-defined]
    connector = TCPConnector(reactor, timeout=0.2)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        await connector.connect(IPv4Address("127.0.0.1"), blackhole, outbound())
    assert set(reactor.getWriters()) == writers  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_noTimeout(blackhole: int) -> None:
    """timeout=None (and 0) set no timer: only a cancel ends the attempt."""
    for timeout in (None, 0):
        delayed = len(reactor.getDelayedCalls())  # type: ignore[attr-defined]
        connector = TCPConnector(reactor, timeout=timeout)  # type: ignore[arg-type]
        d = connector.connect(IPv4Address("127.0.0.1"), blackhole, outbound())
        assert len(reactor.getDelayedCalls()) == delayed  # type: ignore[attr-defined]
        d.cancel()
        with pytest.raises(ConnectingCancelledError):
            await d


@pytest_twisted.ensureDeferred
async def test_factoryRefuses(ports: list[IListeningPort]) -> None:
    """A factory that builds no protocol fails the attempt; the socket closes."""
    peers = Peers()
    port = listen(ports, peers)

    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    connector = TCPConnector(reactor)  # type: ignore[arg-type]
    # The builtin error, as Twisted's connectTCP path has always reported it.
    with pytest.raises(ConnectionRefusedError, match="factory refused"):
        await connector.connect(IPv4Address("127.0.0.1"), port, Refusing())
    await eventually(lambda: len(peers.built) == 1 and peers.built[0].eof)


@pytest_twisted.ensureDeferred
async def test_sourceAddress(ports: list[IListeningPort]) -> None:
    """
    With a source address and port 0 the connection comes from that
    address, and the port is left to connect() (IP_BIND_ADDRESS_NO_PORT),
    so bound sockets in TIME_WAIT do not use up the port range.
    """
    peers = Peers()
    port = listen(ports, peers)
    connector = TCPConnector(reactor, bindAddress=("127.0.0.2", 0))  # type: ignore[arg-type]
    protocol = await connector.connect(IPv4Address("127.0.0.1"), port, outbound())
    transport = protocol.transport
    assert transport.getHost().host == "127.0.0.2"
    assert transport.socket.getsockopt(socket.IPPROTO_IP, 24) == 1
    await eventually(lambda: len(peers.built) == 1)
    assert peers.built[0].transport.getPeer().host == "127.0.0.2"  # type: ignore[union-attr]
    transport.loseConnection()
    await eventually(lambda: protocol.lost is not None)


def test_memoryReactorUsesConnectTCP() -> None:
    """
    A reactor that polls no real descriptors (a test's MemoryReactor) gets
    connectTCP, with the source address, and no socket is opened.
    """
    memory = MemoryReactorClock()
    connector = TCPConnector(memory, bindAddress=("127.0.0.2", 0))
    d = connector.connect(IPv4Address("127.0.0.1"), 9, outbound())
    [(host, port, _, _timeout, bindAddress)] = memory.tcpClients
    assert (host, port, bindAddress) == ("127.0.0.1", 9, ("127.0.0.2", 0))
    d.cancel()
    d.addErrback(lambda f: f.trap(ConnectingCancelledError))


# -- closing at once ----------------------------------------------------------


async def _pair(ports: list[IListeningPort]) -> tuple[Recorder, Recorder]:
    peers = Peers()
    port = listen(ports, peers)
    protocol: Recorder = await TCPConnector(reactor).connect(  # type: ignore[arg-type]
        IPv4Address("127.0.0.1"), port, outbound()
    )
    await eventually(lambda: len(peers.built) == 1)
    return protocol, peers.built[0]


@pytest_twisted.ensureDeferred
async def test_closeNowQuiet(ports: list[IListeningPort]) -> None:
    """
    Nothing buffered: the connection is closed and its protocol told before
    closeNow returns; later loseConnection/abortConnection do nothing.
    """
    near, far = await _pair(ports)
    transport = near.transport
    closeNow(transport)
    assert near.lost is not None
    transport.loseConnection()  # type: ignore[union-attr]
    transport.abortConnection()  # type: ignore[union-attr]
    await eventually(lambda: far.eof or far.lost is not None)


@pytest_twisted.ensureDeferred
async def test_closeNowBuffered(ports: list[IListeningPort]) -> None:
    """
    Bytes still buffered: closeNow is loseConnection, which delivers them
    first and closes on a later turn.
    """
    near, far = await _pair(ports)
    transport: Any = near.transport
    transport.write(b"x" * 1000)  # buffered by Twisted until the next turn
    closeNow(transport)
    assert near.lost is None
    await eventually(lambda: near.lost is not None and len(far.received) == 1000)


@pytest_twisted.ensureDeferred
async def test_halfCloseNowQuiet(ports: list[IListeningPort]) -> None:
    """
    Nothing buffered: the FIN is sent before halfCloseNow returns, reading
    goes on, and a later loseConnection closes at once.
    """
    near, far = await _pair(ports)
    transport: Any = near.transport
    halfCloseNow(transport)
    assert transport._writeDisconnected
    await eventually(lambda: far.eof)
    far.transport.write(b"still")  # type: ignore[union-attr]
    await eventually(lambda: near.received == b"still")
    transport.loseConnection()
    assert near.lost is not None


@pytest_twisted.ensureDeferred
async def test_halfCloseNowBuffered(ports: list[IListeningPort]) -> None:
    """Bytes buffered: the FIN follows them (loseWriteConnection)."""
    near, far = await _pair(ports)
    transport: Any = near.transport
    transport.write(b"y" * 1000)
    halfCloseNow(transport)
    assert not transport._writeDisconnected
    await eventually(lambda: far.eof and far.received == b"y" * 1000)
    transport.loseConnection()
    await eventually(lambda: near.lost is not None)


@pytest_twisted.ensureDeferred
async def test_echoThroughOutboundConnection(ports: list[IListeningPort]) -> None:
    """The transport behaves as Twisted's under a plain protocol: echo."""
    port = listen(ports, Factory.forProtocol(Echo))
    protocol = await TCPConnector(reactor).connect(  # type: ignore[arg-type]
        IPv4Address("127.0.0.1"), port, outbound()
    )
    protocol.transport.write(b"ping" * 10000)
    await eventually(lambda: protocol.received == b"ping" * 10000)
    protocol.transport.loseConnection()
    await eventually(lambda: protocol.lost is not None)


def test_twistedInternalsPinned() -> None:
    """
    The private parts of Twisted's TCP transport that halfCloseNow, closeNow
    and OutboundConnection rely on are still there and mean the same: a
    Twisted that renames them fails here instead of leaving a FIN unsent.
    """
    from twisted.internet import abstract, tcp

    assert abstract.FileDescriptor._writeDisconnected is False
    assert callable(tcp.Connection._closeWriteConnection)
    assert tcp.Connection._shouldShutdown is True
    assert OutboundConnection._shouldShutdown is False
    assert "_closeSocket" in vars(tcp._SocketCloser)


class CountingPeers(Peers):
    """L{Peers} that count the factory's starts and stops."""

    noisy = True  # a noisy factory's own lines are its business

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0
        self.stops = 0

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1


@pytest_twisted.ensureDeferred
async def test_listenIsQuietAndAcceptsAPeer() -> None:
    """
    A BIND listener accepts a peer into a Twisted TCP transport, starts and
    stops its factory as Twisted's port does, refuses connections once
    stopped, and writes no line of its own to the log (Twisted's port
    writes "... starting on N" and "(TCP Port N Closed)").
    """
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        peers = CountingPeers()
        port = await TCPConnector(reactor).listen("127.0.0.1", peers)  # type: ignore[arg-type]
        host = port.getHost()
        assert (host.host, peers.starts) == ("127.0.0.1", 1)
        client = await TCPConnector(reactor).connect(  # type: ignore[arg-type]
            IPv4Address("127.0.0.1"), host.port, outbound()
        )
        await eventually(lambda: len(peers.built) == 1)
        [peer] = peers.built
        assert isinstance(peer.transport, OutboundConnection)
        peer.transport.write(b"hello")
        await eventually(lambda: client.received == b"hello")
        await port.stopListening()
        assert peers.stops == 1
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", host.port)) != 0
        client.transport.loseConnection()
        await eventually(lambda: peer.eof)
        peer.transport.loseConnection()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e.get("log_format") or str(e.get("message")) for e in events]
    assert not [line for line in lines if "starting on" in line or "Closed)" in line], (
        lines
    )


class FlakyListener:
    """A listening socket's stand-in whose C{accept} fails with C{errors} first."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.accepted: list[socket.socket] = []
        self.closed = False

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 4321)

    def fileno(self) -> int:
        return 99

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        ours, theirs = socket.socketpair()
        self.accepted += [ours, theirs]
        return ours, ("127.0.0.2", 5555)

    def close(self) -> None:
        self.closed = True


def test_listenerOutOfDescriptorsWaitsInsteadOfSpinning() -> None:
    """
    When C{accept} fails for want of descriptors, the BIND listener stops
    watching its socket (a readable socket would wake the reactor at once,
    again and again) and tries again 0.1 s later; an aborted handshake
    (C{ECONNABORTED}) is simply skipped.
    """
    from twisted_socks.outbound._rawtcp import QuietPort

    clock = MemoryReactorClock()
    fake = FlakyListener([errno.ECONNABORTED, errno.EMFILE])
    peers = Peers()
    port = QuietPort(clock, fake, peers)  # type: ignore[arg-type]
    port.startListening()
    assert port in clock.getReaders()
    port.doRead()  # ECONNABORTED: nothing to do, still watching
    assert port in clock.getReaders()
    port.doRead()  # EMFILE: stop watching for a while
    assert port not in clock.getReaders()
    assert peers.built == []
    clock.advance(0.1)
    assert port in clock.getReaders()
    port.doRead()
    [peer] = peers.built
    assert peer.transport.getPeer().host == "127.0.0.2"
    port.stopListening()
    assert fake.closed and port not in clock.getReaders()
    for sock in fake.accepted:
        sock.close()
