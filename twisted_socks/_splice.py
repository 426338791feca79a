"""
The in-kernel relay: Linux C{splice(2)} between two connected sockets.

Copying a chunk through Python costs a C{recv} into a new bytes object, a
pass through the transports' buffers and a C{send}; on loopback nearly all of
a copying relay's time is those system calls and copies.  C{splice} moves the
data from one socket into a pipe and from the pipe into the other socket
without it ever entering the process, so the pipe is the relay's only
buffer.

A L{SpliceRelay} takes over a session's two sockets once the SOCKS reply has
been decided.  Twisted's transports stay the owners of the sockets (they
still close them and report C{connectionLost}), but while the relay runs they
neither read nor write: the relay registers its own readiness callbacks for
the same descriptors with the reactor (L{_End}).  Anything other than plain
data flow (an idle timeout, an abort, a socket error, both sides done) first
stops the relay: what is still in its pipes is handed to the transports'
write buffers, and the session carries on with Twisted's transports exactly
as the copying relay would.

Pipes come from a L{PipePool}: a direction holds a pipe only while bytes sit
in it, so ten thousand idle tunnels hold no pipes at all (a pipe is two file
descriptors).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFDSet

__all__ = ["PipePool", "SpliceRelay", "spliceAvailable", "spliceable"]

_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
# fcntl's F_SETPIPE_SZ; the constant is only in Python's fcntl from 3.10 on
# some builds, and the value is fixed by the Linux ABI.
_F_SETPIPE_SZ = 1031

#: The pipe size asked for: one splice moves at most this much.  Larger
#: pipes mean fewer system calls per GiB (64 KiB, the default, costs about a
#: third more CPU per GiB on loopback than 256 KiB); the kernel's
#: pipe-max-size (1 MiB by default) and per-user pipe page limits may give
#: less, which only costs speed.
PIPE_SIZE = 1024 * 1024

#: Chunks moved per readiness event at most, so one busy tunnel cannot
#: starve the others.
_CHUNKS_PER_EVENT = 4


def spliceAvailable() -> bool:
    """Whether this platform has C{splice(2)} (Linux, Python 3.10+)."""
    return _SPLICE is not None and sys.platform.startswith("linux")


def spliceable(transport: Any) -> bool:
    """
    Whether the relay may take over C{transport}'s socket now.

    Only plain TCP and UNIX-socket transports qualify: a TLS transport, or a
    wrapper such as HAProxy's or a throttling policy, must see every byte.
    The transport must also be quiet: nothing buffered to write, and not
    closing, because the relay writes to the socket directly and a byte
    Twisted still holds would arrive out of order.
    """
    from twisted.internet import tcp

    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return False
    # These are FileDescriptor's buffer attributes (twisted.internet.abstract);
    # tests/test_splice.py pins them, so a Twisted that renames them fails a
    # test instead of silently reordering bytes.
    buffered = getattr(transport, "_tempDataLen", None)
    dataBuffer = getattr(transport, "dataBuffer", None)
    offset = getattr(transport, "offset", None)
    if buffered is None or dataBuffer is None or offset is None:
        return False
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and transport.producer is None
        and buffered == 0
        and len(dataBuffer) == offset
    )


class PipePool:
    """
    Idle, empty pipes for the relays of one server.

    @param size: how many idle pipes to keep (each is two descriptors);
        beyond that a released pipe is closed.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._idle: list[tuple[int, int]] = []
        self._closed = False
        #: Pipes open now, idle or in use (for tests and the status page).
        self.open = 0

    def acquire(self) -> tuple[int, int]:
        """An empty pipe, (read end, write end), both non-blocking."""
        if self._idle:
            return self._idle.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import fcntl

            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            # Over the per-user pipe limits (EPERM) the default size works,
            # just with more system calls.
            pass
        self.open += 1
        return r, w

    def release(self, pipe: tuple[int, int]) -> None:
        """Take back an I{empty} pipe."""
        if self._closed or len(self._idle) >= self.size:
            self._close(pipe)
        else:
            self._idle.append(pipe)

    def discard(self, pipe: tuple[int, int]) -> None:
        """Close a pipe that may still hold bytes."""
        self._close(pipe)

    def close(self) -> None:
        """Close the idle pipes; pipes released later are closed too."""
        self._closed = True
        while self._idle:
            self._close(self._idle.pop())

    def _close(self, pipe: tuple[int, int]) -> None:
        self.open -= 1
        os.close(pipe[0])
        os.close(pipe[1])


class _Direction:
    """One direction of a relay: bytes from C{src}'s socket to C{dst}'s."""

    __slots__ = (
        "count",
        "dst",
        "dstFd",
        "eof",
        "pending",
        "pipe",
        "prefix",
        "shut",
        "src",
        "srcFd",
    )

    def __init__(
        self, src: _End, dst: _End, prefix: bytes, count: Callable[[int], None]
    ) -> None:
        self.src = src
        self.dst = dst
        self.srcFd = src.fd
        self.dstFd = dst.fd
        #: Bytes to write to C{dst} before anything from the pipe (the SOCKS
        #: reply, data that arrived before the relay started).
        self.prefix = prefix
        #: Bytes in the pipe, not yet written to C{dst}.
        self.pending = 0
        self.pipe: tuple[int, int] | None = None
        #: C{src} has sent FIN.
        self.eof = False
        #: The FIN has been passed on to C{dst} (shutdown(SHUT_WR)).
        self.shut = False
        self.count = count


@implementer(IReadDescriptor, IWriteDescriptor)
class _End:
    """
    One socket of a relay, as the reactor sees it: readable means its
    outgoing direction can take more, writable that its incoming direction's
    pipe can drain.
    """

    __slots__ = (
        "fd",
        "incoming",
        "outgoing",
        "reading",
        "relay",
        "transport",
        "writing",
    )

    def __init__(self, relay: SpliceRelay, transport: Any) -> None:
        self.relay = relay
        self.transport = transport
        self.fd: int = transport.fileno()
        self.outgoing: _Direction
        self.incoming: _Direction
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.fd

    def logPrefix(self) -> str:
        """The reactor labels log events of this descriptor with this."""
        return "SpliceRelay"

    def doRead(self) -> None:
        """The socket has data (or EOF): move it towards the other socket."""
        self.relay._pump(self.outgoing)

    def doWrite(self) -> None:
        """The socket can take more: drain the incoming pipe into it."""
        self.relay._drain(self.incoming)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor is disconnecting everything (it is shutting down)."""
        self.relay._reactorDisconnected(reason)


class SpliceRelay:
    """
    Relays bytes between two sockets with C{splice(2)}, driven by the
    reactor's readiness callbacks.

    The session keeps its counters, idle clock and close logic; the relay
    reports to it through the callbacks below and can be stopped at any
    moment with L{stop}, after which the transports are back in charge.

    @param reactor: the reactor the transports belong to.
    @param pool: where pipes come from.
    @param client: the client's transport; C{server}: the destination's.
    @param countUp: called with the size of each chunk read from the
        client; C{countDown}: from the destination.
    @param halfClosed: called with C{True} when the client's FIN has been
        passed to the destination, C{False} for the destination's FIN.
    @param failed: called with the transport whose socket failed and the
        error, after the relay has stopped.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        pool: PipePool,
        client: Any,
        server: Any,
        countUp: Callable[[int], None],
        countDown: Callable[[int], None],
        halfClosed: Callable[[bool], None],
        failed: Callable[[Any, BaseException], None],
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._halfClosed = halfClosed
        self._failed = failed
        self._client = _End(self, client)
        self._server = _End(self, server)
        self._countUp = countUp
        self._countDown = countDown
        self.running = False

    # -- life cycle -----------------------------------------------------------

    def start(
        self,
        toServer: bytes = b"",
        toClient: bytes = b"",
        clientEOF: bool = False,
        serverEOF: bool = False,
    ) -> None:
        """
        Take over both sockets.

        @param toServer: bytes to send the destination first.
        @param toClient: bytes to send the client first (the reply).
        @param clientEOF: the client has already sent FIN.
        @param serverEOF: the destination has already sent FIN.
        """
        client, server = self._client, self._server
        # The transports must not read while the relay owns the sockets;
        # epoll keys registrations by descriptor, so theirs must be gone
        # before ours are added.
        client.transport.stopReading()
        server.transport.stopReading()
        up = _Direction(client, server, toServer, self._countUp)
        down = _Direction(server, client, toClient, self._countDown)
        client.outgoing = server.incoming = up
        server.outgoing = client.incoming = down
        up.eof = clientEOF
        down.eof = serverEOF
        self.running = True
        # Write the prefixes now rather than on the next readiness event:
        # the reply reaches the client one reactor iteration sooner.
        # _drain also starts reading each source once nothing is owed.
        self._drain(down)
        if self.running:
            self._drain(up)

    def stop(self) -> tuple[bytes, bytes]:
        """
        Give the sockets back: unregister from the reactor and empty the
        pipes.

        @return: the bytes still owed to the destination and to the client,
            for the caller to write through the transports.
        """
        if not self.running:
            return b"", b""
        self.running = False
        for end in (self._client, self._server):
            if end.reading:
                end.reading = False
                self._reactor.removeReader(end)
            if end.writing:
                end.writing = False
                self._reactor.removeWriter(end)
        return self._takeBack(self._client.outgoing), self._takeBack(
            self._server.outgoing
        )

    def finished(self, toServer: bool) -> tuple[bool, bool]:
        """For one direction: (FIN seen, FIN passed on)."""
        d = self._client.outgoing if toServer else self._server.outgoing
        return d.eof, d.shut

    # -- moving bytes ---------------------------------------------------------

    def _pump(self, d: _Direction) -> None:
        """C{d.src} is readable: splice chunks into a pipe and on."""
        # A few chunks per readiness event while the source keeps up and the
        # destination takes everything: each return to the reactor costs an
        # epoll_wait and its Python dispatch, more than a splice that finds
        # the socket empty.
        for _ in range(_CHUNKS_PER_EVENT):
            if d.pending or d.prefix or d.eof or not self.running:
                return
            pipe = d.pipe
            if pipe is None:
                pipe = d.pipe = self._pool.acquire()
            try:
                n = _SPLICE(d.srcFd, pipe[1], PIPE_SIZE, flags=_FLAGS)  # type: ignore[misc]
            except BlockingIOError:
                self._releasePipe(d)
                return
            except OSError as e:
                self._fail(d.src, e)
                return
            if n == 0:
                self._releasePipe(d)
                self._stopReading(d.src)
                d.eof = True
                self._passEOF(d)
                return
            d.pending = n
            d.count(n)
            self._drain(d)

    def _drain(self, d: _Direction) -> None:
        """Write what C{d} holds to C{d.dst}; throttle C{d.src} if it can't."""
        try:
            if d.prefix:
                written = os.write(d.dstFd, d.prefix)
                d.prefix = d.prefix[written:]
            if d.pending and not d.prefix:
                # One attempt: a short write means the socket buffer is
                # full, and trying again at once would only get EAGAIN.
                d.pending -= _SPLICE(d.pipe[0], d.dstFd, d.pending, flags=_FLAGS)  # type: ignore[index,misc]
        except BlockingIOError:
            pass
        except OSError as e:
            self._fail(d.dst, e)
            return
        if d.pending or d.prefix:
            # The destination's socket buffer is full: stop reading the
            # source until it drains (the pipe is the only buffer).
            self._stopReading(d.src)
            self._startWriting(d.dst)
            return
        self._releasePipe(d)
        self._stopWriting(d.dst)
        if d.eof:
            self._passEOF(d)
        else:
            self._startReading(d.src)

    def _passEOF(self, d: _Direction) -> None:
        if d.shut or d.pending or d.prefix:
            return
        d.shut = True
        try:
            d.dst.transport.socket.shutdown(socket.SHUT_WR)
        except OSError:
            # The peer is already gone (ENOTCONN); the read side reports it.
            pass
        self._halfClosed(d is self._client.outgoing)

    # -- helpers --------------------------------------------------------------

    def _releasePipe(self, d: _Direction) -> None:
        if d.pipe is not None and not d.pending:
            self._pool.release(d.pipe)
            d.pipe = None

    def _takeBack(self, d: _Direction) -> bytes:
        data = d.prefix
        d.prefix = b""
        if d.pipe is not None:
            chunks = [data]
            while d.pending:
                chunk = os.read(d.pipe[0], d.pending)
                d.pending -= len(chunk)
                chunks.append(chunk)
            data = b"".join(chunks)
            self._releasePipe(d)
        return data

    def _fail(self, end: _End, error: OSError) -> None:
        # Any error of a connected socket (ECONNRESET, EPIPE, ETIMEDOUT...)
        # ends that leg, as it would for Twisted's own recv/send.
        self.stop()
        self._failed(end.transport, error)

    def _reactorDisconnected(self, reason: Failure) -> None:
        if not self.running:
            return
        self.stop()
        for end in (self._client, self._server):
            if end.transport.connected:
                end.transport.connectionLost(reason)

    def _startReading(self, end: _End) -> None:
        if not end.reading and self.running:
            end.reading = True
            self._reactor.addReader(end)

    def _stopReading(self, end: _End) -> None:
        if end.reading:
            end.reading = False
            self._reactor.removeReader(end)

    def _startWriting(self, end: _End) -> None:
        if not end.writing and self.running:
            end.writing = True
            self._reactor.addWriter(end)

    def _stopWriting(self, end: _End) -> None:
        if end.writing:
            end.writing = False
            self._reactor.removeWriter(end)
