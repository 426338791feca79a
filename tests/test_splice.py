"""
The relay paths behave the same: in-kernel (C{splice(2)}) from the start,
copying, and the default that copies until the first bulk read and then
moves into the kernel.

Every behaviour test here runs once per path on real loopback sockets: byte
counters, the idle timeout, half-close both ways, backpressure, resets and
aborts.  The rest of the suite runs twice (see C{dev}): with
C{TWISTED_SOCKS_RELAY=splice} and with C{TWISTED_SOCKS_RELAY=copy}.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests._support import eventually, inThread, recvAll, recvExactly
from tests.test_loopback import (
    GRANTED,
    EarlyCloser,
    Recorder,
    _localhost,
    listen,
    socksConnect,
    startEcho,
)
from twisted_socks import (
    Command,
    Limits,
    SessionRecord,
    SOCKSv4ServerFactory,
    encodeRequest,
)
from twisted_socks.relay import _splice
from twisted_socks.relay._fastio import spliceable
from twisted_socks.relay._splice import spliceAvailable

LINUX_ONLY = pytest.mark.skipif(not spliceAvailable(), reason="splice(2) is Linux-only")

PATHS = [
    pytest.param(True, id="splice", marks=LINUX_ONLY),
    pytest.param(False, id="copy"),
    pytest.param(None, id="bulk", marks=LINUX_ONLY),
]


@pytest.fixture(params=PATHS)
def splice(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> bool | None:
    """
    Which relay path the test's server uses: C{True} splice from the start,
    C{False} copy, L{None} the default (copy, then splice from the first
    bulk read), whatever the suite's environment says.
    """
    monkeypatch.setenv("TWISTED_SOCKS_RELAY", "auto")
    return request.param  # type: ignore[no-any-return]


def startServer(
    ports: list[IListeningPort], splice: bool | None, **kwargs: Any
) -> tuple[int, SOCKSv4ServerFactory, list[SessionRecord]]:
    """An in-process server on the given path, recording its sessions."""
    records: list[SessionRecord] = []
    factory = SOCKSv4ServerFactory(
        reactor, splice=splice, sessionObserver=records.append, **kwargs
    )
    port = listen(factory)
    ports.append(port)
    return port.getHost().port, factory, records


def request(port: int) -> bytes:
    """A SOCKS4 CONNECT to 127.0.0.1:C{port}."""
    return encodeRequest(Command.CONNECT, port, address=_localhost())


def listenWith(ports: list[IListeningPort], build: Any) -> int:
    """Listen with a factory building C{build()}; return the port."""
    port = listen(Factory.forProtocol(build))
    ports.append(port)
    return port.getHost().port  # type: ignore[no-any-return]


class Source(Protocol):
    """Sends C{payload} as fast as the connection takes it, then closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(IHalfCloseableProtocol)
class HalfCloseEcho(Protocol):
    """Echoes everything; closes after the peer's FIN, once it is all sent."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


def onlySession(factory: SOCKSv4ServerFactory) -> Any:
    """The factory's one live session."""
    (session,) = factory.activeSessions
    return session


@pytest_twisted.ensureDeferred
async def test_pathIsTheOneAskedFor(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """
    A plain TCP tunnel relays in the kernel from the start when asked to,
    never when told to copy, and by default from its first bulk read on:
    small echoes stay on the copying relay, 4 MiB moves it.
    """
    proxy, factory, records = startServer(ports, splice)
    echo = listenWith(ports, HalfCloseEcho)
    sock = await inThread(socksConnect, proxy, request(echo))
    try:
        assert await inThread(recvExactly, sock, 8) == GRANTED
        session = onlySession(factory)
        assert session._relay.spliced is (splice is True)
        for _ in range(3):
            await inThread(sock.sendall, b"ping")
            assert await inThread(recvExactly, sock, 4) == b"ping"
        assert session._relay.spliced is (splice is True)
        bulk = os.urandom(4 << 20)

        def echoBulk() -> bytes:
            sock.sendall(bulk)
            sock.shutdown(socket.SHUT_WR)
            return recvAll(sock)

        assert await inThread(echoBulk) == bulk
        assert session._relay.spliced is (splice is not False)
    finally:
        sock.close()
    await eventually(lambda: len(records) == 1)
    assert (records[0].bytesUp, records[0].bytesDown) == (12 + (4 << 20),) * 2


@pytest_twisted.ensureDeferred
async def test_byteCountersAreExact(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """
    Pipelined bytes, 3 MiB up and a 5 MiB answer down (with the
    destination's half-close in between) are counted to the byte, and the
    session ends as "both sides closed".
    """
    proxy, factory, records = startServer(ports, splice)
    received: Deferred[bytes] = Deferred()
    answer = os.urandom(5 << 20)
    dest = listenWith(ports, lambda: Recorder(answer, received))
    pipelined = os.urandom(1000)
    upload = os.urandom(3 << 20)

    def client() -> bytes:
        with socksConnect(proxy, request(dest) + pipelined, timeout=10) as sock:
            assert recvExactly(sock, 8) == GRANTED
            sock.sendall(upload)
            sock.shutdown(socket.SHUT_WR)
            return recvAll(sock)

    got = await inThread(client)
    assert hashlib.sha256(got).digest() == hashlib.sha256(answer).digest()
    assert await received == pipelined + upload
    await eventually(lambda: len(records) == 1)
    (record,) = records
    assert (record.bytesUp, record.bytesDown) == (1000 + (3 << 20), 5 << 20)
    assert record.reason == "both sides closed"
    assert not factory.activeSessions


@pytest_twisted.ensureDeferred
async def test_idleTimeout(ports: list[IListeningPort], splice: bool | None) -> None:
    """
    Traffic every 0.3 s keeps a tunnel with a 1 s idle timeout open for
    1.5 s; once quiet, it is closed about 1 s after its last byte.
    """
    proxy, _, records = startServer(ports, splice, limits=Limits(idleTimeout=1.0))
    echo = startEcho(ports)

    def client() -> tuple[float, bytes]:
        with socksConnect(proxy, request(echo), timeout=10) as sock:
            assert recvExactly(sock, 8) == GRANTED
            for _ in range(5):
                sock.sendall(b"x")
                assert recvExactly(sock, 1) == b"x"
                time.sleep(0.3)
            last = time.monotonic()
            sock.sendall(b"y")
            assert recvExactly(sock, 1) == b"y"
            rest = sock.recv(1)  # blocks until the server closes
            return time.monotonic() - last, rest

    quiet, rest = await inThread(client)
    assert rest == b""
    assert 0.9 <= quiet < 2.0
    await eventually(lambda: len(records) == 1)
    assert records[0].reason == "idle timeout"
    assert (records[0].bytesUp, records[0].bytesDown) == (6, 6)


@pytest_twisted.ensureDeferred
async def test_clientHalfClose(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """The client's FIN reaches the destination, whose 8 MiB answer follows."""
    proxy, _, records = startServer(ports, splice)
    received: Deferred[bytes] = Deferred()
    answer = os.urandom(8 << 20)
    dest = listenWith(ports, lambda: Recorder(answer, received))
    upload = os.urandom(4096)

    def client() -> bytes:
        with socksConnect(proxy, request(dest), timeout=10) as sock:
            assert recvExactly(sock, 8) == GRANTED
            sock.sendall(upload)
            sock.shutdown(socket.SHUT_WR)
            return recvAll(sock)

    got = await inThread(client)
    assert got == answer
    assert await received == upload
    await eventually(lambda: len(records) == 1)
    assert records[0].bytesDown == len(answer)


@pytest_twisted.ensureDeferred
async def test_destinationHalfClose(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """
    The destination's FIN reaches the client as EOF, and the client's later
    bytes and FIN still reach the destination.
    """
    proxy, _, records = startServer(ports, splice)
    done: Deferred[bytes] = Deferred()
    dest = listenWith(ports, lambda: EarlyCloser(done))
    late = os.urandom(3 << 20)

    def client() -> bytes:
        with socksConnect(proxy, request(dest), timeout=10) as sock:
            data = recvAll(sock)
            sock.sendall(late)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
            return data

    assert await inThread(client) == GRANTED + b"greeting"
    assert await done == late
    await eventually(lambda: len(records) == 1)
    assert (records[0].bytesUp, records[0].bytesDown) == (len(late), 8)


@pytest_twisted.ensureDeferred
async def test_slowReaderIsBackpressured(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """
    A client that stops reading stops the relay reading the destination: of
    a 64 MiB answer, only what the sockets' buffers and one pipe (or one
    transport buffer) hold has been read while the client waits, and
    everything arrives once it reads.
    """
    proxy, factory, _ = startServer(ports, splice)
    answer = os.urandom(64 << 20)
    dest = listenWith(ports, lambda: Source(answer))
    sock = await inThread(socksConnect, proxy, request(dest), 20)
    try:
        assert await inThread(recvExactly, sock, 8) == GRANTED
        session = onlySession(factory)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 1.0)
        stalled = session.bytesDown
        await deferLater(reactor, 0.3)
        assert session.bytesDown == stalled
        assert stalled < 24 << 20
        got = await inThread(recvAll, sock)
        assert hashlib.sha256(got).digest() == hashlib.sha256(answer).digest()
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_concurrentTunnels(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """Sixteen tunnels echoing 1 MiB each at once all come back intact."""
    proxy, _, records = startServer(ports, splice)
    echo = listenWith(ports, HalfCloseEcho)

    def client(seed: int) -> bool:
        payload = os.urandom(1 << 20)
        with socksConnect(proxy, request(echo), timeout=20) as sock:
            assert recvExactly(sock, 8) == GRANTED
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recvAll(sock) == payload

    results = await DeferredList([inThread(client, i) for i in range(16)])
    assert [ok for _, ok in results] == [True] * 16, results
    await eventually(lambda: len(records) == 16)
    assert {(r.bytesUp, r.bytesDown) for r in records} == {(1 << 20, 1 << 20)}


@pytest_twisted.ensureDeferred
async def test_clientResetEndsTheSession(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """
    A client that resets the connection mid-download ends the session: the
    destination's connection is closed and nothing is left open.
    """
    proxy, factory, records = startServer(ports, splice)
    closed: Deferred[None] = Deferred()

    class Endless(Protocol):
        def connectionMade(self) -> None:
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            while not self.paused and self.transport.connected:  # type: ignore[union-attr]
                self.transport.write(b"z" * 65536)  # type: ignore[union-attr]

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.paused = True

        def connectionLost(self, reason: Any = None) -> None:
            closed.callback(None)

    dest = listenWith(ports, Endless)

    def client() -> None:
        sock = socksConnect(proxy, request(dest), timeout=10)
        assert recvExactly(sock, 8) == GRANTED
        recvExactly(sock, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    await inThread(client)
    await closed
    await eventually(lambda: len(records) == 1 and not factory.activeSessions)
    assert records[0].bytesDown >= 1 << 20


@pytest_twisted.ensureDeferred
async def test_abortMidTransfer(
    ports: list[IListeningPort], splice: bool | None
) -> None:
    """
    Aborting a session that is moving data (as SIGTERM's deadline does)
    closes both connections at once.
    """
    proxy, factory, records = startServer(ports, splice)
    destinationClosed: Deferred[None] = Deferred()

    class RecordingEcho(HalfCloseEcho):
        def connectionLost(self, reason: Any = None) -> None:
            destinationClosed.callback(None)

    echo = listenWith(ports, RecordingEcho)
    sock = await inThread(socksConnect, proxy, request(echo), 10)
    try:
        assert await inThread(recvExactly, sock, 8) == GRANTED
        await inThread(sock.sendall, os.urandom(256 << 10))
        onlySession(factory).abort("test abort")
        # The destination's connection ends too, not only the client's.
        await destinationClosed

        def drain() -> None:
            while True:
                try:
                    if not sock.recv(1 << 20):
                        return
                except ConnectionResetError:
                    return

        await inThread(drain)
        await eventually(lambda: len(records) == 1)
        assert records[0].reason == "test abort"
    finally:
        sock.close()


def openPipes() -> int:
    """How many pipe ends this process has open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return count


@LINUX_ONLY
@pytest_twisted.ensureDeferred
async def test_idleTunnelsHoldNoPipes(ports: list[IListeningPort]) -> None:
    """
    Twenty tunnels relaying in the kernel that have each echoed a byte hold
    no pipe (a pipe is two descriptors): only the pool's few idle pipes are
    open, and stopping the server closes those.
    """
    proxy, factory, records = startServer(ports, True)
    echo = startEcho(ports)
    before = openPipes()
    socks = []
    for _ in range(20):
        sock = await inThread(socksConnect, proxy, request(echo))
        assert await inThread(recvExactly, sock, 8) == GRANTED
        await inThread(sock.sendall, b"e")
        assert await inThread(recvExactly, sock, 1) == b"e"
        socks.append(sock)
    pool = factory._pipes
    assert pool is not None
    assert pool.open <= 2
    assert openPipes() - before == pool.open * 2
    for sock in socks:
        sock.close()
    await eventually(lambda: len(records) == 20)
    await ports.pop(0).stopListening()  # the proxy: its factory stops
    assert pool.open == 0


@LINUX_ONLY
@pytest_twisted.ensureDeferred
async def test_spliceableOnlyWhenQuiet(ports: list[IListeningPort]) -> None:
    """
    Only a plain TCP transport with nothing buffered may be taken over; this
    also pins the Twisted buffer attributes that L{spliceable} reads.
    """
    got: Deferred[Any] = Deferred()

    class Grab(Protocol):
        def connectionMade(self) -> None:
            got.callback(self.transport)

    port = listenWith(ports, Grab)
    sock = await inThread(socket.create_connection, ("127.0.0.1", port), 5)
    try:
        transport = await got
        assert spliceable(transport)
        transport.write(b"queued")
        assert transport._tempDataLen == 6
        assert not spliceable(transport)
        from twisted.internet.testing import StringTransport

        assert not spliceable(StringTransport())
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_aReplyBeforeTheRelayLeavesAtOnce(ports: list[IListeningPort]) -> None:
    """
    The session's replies before the relay (SOCKS5's method choice here)
    go to the socket in the call that makes them, not on the reactor's next
    turn: right after the greeting is handled nothing is buffered, and the
    client reads C{05 00}.
    """
    port, factory, _ = startServer(ports, False)
    sock = await inThread(socket.create_connection, ("127.0.0.1", port), 5)
    try:
        await eventually(lambda: len(factory.activeSessions) == 1)
        session = onlySession(factory)
        # Fed here, in the reactor thread, so no reactor turn can come
        # between the write and the check.
        session.dataReceived(b"\x05\x01\x00")
        assert spliceable(session.transport)
        assert await inThread(recvExactly, sock, 2) == b"\x05\x00"
    finally:
        sock.close()


def modes(**kwargs: Any) -> tuple[bool, bool]:
    """A factory's (splice at all, splice from the start)."""
    factory = SOCKSv4ServerFactory(reactor, **kwargs)
    return factory.splice, factory.spliceAtStart


def test_relaySwitch(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The default splices from the first bulk read; C{TWISTED_SOCKS_RELAY}
    can make the default copy or splice from the start, but an explicit
    argument wins; C{splice=True} on a platform without splice is an error,
    not a silent copy.
    """
    linux = spliceAvailable()
    monkeypatch.delenv("TWISTED_SOCKS_RELAY", raising=False)
    assert modes() == (linux, False)
    monkeypatch.setenv("TWISTED_SOCKS_RELAY", "copy")
    assert modes() == (False, False)
    monkeypatch.setenv("TWISTED_SOCKS_RELAY", "splice")
    assert modes() == (linux, linux)
    assert modes(splice=False) == (False, False)
    monkeypatch.setenv("TWISTED_SOCKS_RELAY", "copy")
    if linux:
        assert modes(splice=True) == (True, True)
    monkeypatch.setattr(_splice, "_SPLICE", None)
    assert modes() == (False, False)
    with pytest.raises(ValueError, match="splice"):
        SOCKSv4ServerFactory(reactor, splice=True)


@pytest.mark.parametrize(
    ("value", "splice", "atStart"),
    [("auto", True, False), ("splice", True, True), ("copy", False, False)],
)
def test_relayOption(
    value: str, splice: bool, atStart: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C{--relay} sets the relay of the factory the server is built with."""
    from twisted_socks.app._tap import Options, makeService

    if splice and not spliceAvailable():
        pytest.skip("splice(2) is Linux-only")
    monkeypatch.delenv("TWISTED_SOCKS_RELAY", raising=False)
    options = Options()
    options.parseOptions(["--relay", value, "--port", "0"])
    (factory,) = [
        service.factory
        for service in makeService(options)  # type: ignore[attr-defined]
        if isinstance(getattr(service, "factory", None), SOCKSv4ServerFactory)
    ]
    assert (factory.splice, factory.spliceAtStart) == (splice, atStart)


def test_relayOptionRejectsOtherValues() -> None:
    """A misspelt C{--relay} names the option and its values."""
    from twisted.python.usage import UsageError

    from twisted_socks.app._tap import Options

    with pytest.raises(UsageError, match="--relay must be auto, splice or copy"):
        Options().parseOptions(["--relay", "zerocopy"])


class ScarcePool(_splice.PipePool):
    """A pipe pool that makes C{grant} pipes, then fails as out of descriptors."""

    def __init__(self, grant: int) -> None:
        super().__init__(size=4)
        self.grant = grant
        self.refused = 0

    def acquire(self) -> tuple[int, int]:
        if not self._idle and self.open >= self.grant:
            self.refused += 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().acquire()


@implementer(IHalfCloseableProtocol)
class Duplex(Protocol):
    """
    Sends C{answer} at once and half-closes, while recording what arrives
    up to the peer's FIN; then closes.
    """

    def __init__(self, answer: bytes, received: Deferred[bytes]) -> None:
        self.answer = answer
        self.received = received
        self.data: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(self.answer)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def readConnectionLost(self) -> None:
        self.received.callback(b"".join(self.data))
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@LINUX_ONLY
@pytest.mark.parametrize("grant", [0, 1])
@pytest.mark.parametrize("splice", [True, None], ids=["splice", "bulk"])
@pytest_twisted.ensureDeferred
async def test_noPipeCarriesOnCopying(
    ports: list[IListeningPort],
    monkeypatch: pytest.MonkeyPatch,
    splice: bool | None,
    grant: int,
) -> None:
    """
    When no pipe can be had (C{EMFILE}), for the first direction to move
    bytes (C{grant} 0) or while the other direction's pipe holds bytes
    (C{grant} 1), the tunnel goes back to the copying relay: pipelined
    bytes and 3 MiB up, and 5 MiB down at the same time (read late), with both
    half-closes, arrive intact and are counted to the byte, and the session
    ends as "both sides closed".
    """
    monkeypatch.setenv("TWISTED_SOCKS_RELAY", "auto")
    proxy, factory, records = startServer(ports, splice)
    pool = factory._pipes = ScarcePool(grant)
    received: Deferred[bytes] = Deferred()
    answer = os.urandom(5 << 20)
    dest = listenWith(ports, lambda: Duplex(answer, received))
    pipelined = os.urandom(1000)
    upload = os.urandom(3 << 20)

    def client() -> bytes:
        with socksConnect(proxy, request(dest) + pipelined, timeout=10) as sock:
            assert recvExactly(sock, 8) == GRANTED

            def send() -> None:
                sock.sendall(upload)
                sock.shutdown(socket.SHUT_WR)

            # Uploading and reading late: the answer fills the downward
            # pipe first, and then the upload wants a pipe of its own.
            time.sleep(0.3)
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            time.sleep(0.2)
            got = recvAll(sock)
            sender.join(10)
            return got

    got = await inThread(client)
    assert hashlib.sha256(got).digest() == hashlib.sha256(answer).digest()
    assert await received == pipelined + upload
    await eventually(lambda: len(records) == 1)
    (record,) = records
    assert (record.bytesUp, record.bytesDown) == (1000 + (3 << 20), 5 << 20)
    assert record.reason == "both sides closed"
    assert pool.refused >= 1
    assert not factory.activeSessions
