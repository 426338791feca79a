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
descriptors).  A pipe is a luxury, never a need: when none can be had (the
process is out of descriptors), the relay hands the sockets back and the
session carries on copying (L{SpliceOwner._spliceNoPipe}); and the pool keeps
only a small share of the process's descriptors idle, since those are
descriptors that clients could use.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFDSet

__all__ = [
    "PipePool",
    "SpliceOwner",
    "SpliceRelay",
    "idlePipesFor",
    "spliceAvailable",
]

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


def idlePipesFor(descriptors: int) -> int:
    """
    How many idle pipes a pool keeps when the process may open
    C{descriptors} files: at most 1/32 of them (a pipe is two), and never
    more than 64.

    An idle pipe saves a C{pipe2} and an C{F_SETPIPE_SZ} (8 us together,
    measured on loopback) when a direction next has bytes to move; a
    descriptor held for that is one a client cannot have.  64 pipes serve
    64 tunnels moving bytes at the same moment without a new pipe; a server
    with 1,024 descriptors keeps 16 (32 descriptors), one with 256 keeps 4.
    """
    return max(1, min(64, descriptors // 64))


def _descriptorLimit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class PipePool:
    """
    Idle, empty pipes for the relays of one server.

    @param size: how many idle pipes to keep (each is two descriptors);
        beyond that a released pipe is closed.  By default
        L{idlePipesFor} the process's descriptor limit.
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size if size is not None else idlePipesFor(_descriptorLimit())
        self._idle: list[tuple[int, int]] = []
        self._closed = False
        #: Pipes open now, idle or in use (for tests and the status page).
        self.open = 0

    def acquire(self) -> tuple[int, int]:
        """
        An empty pipe, (read end, write end), both non-blocking.

        @raise OSError: no pipe can be made (C{EMFILE}, C{ENFILE}: out of
            descriptors).
        """
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

    def close(self) -> None:
        """Close the idle pipes; pipes released later are closed too."""
        self._closed = True
        while self._idle:
            self._close(self._idle.pop())

    def _close(self, pipe: tuple[int, int]) -> None:
        self.open -= 1
        os.close(pipe[0])
        os.close(pipe[1])


class SpliceOwner(Protocol):
    """What a L{SpliceRelay} reports to (the session)."""

    def _spliced(self, toServer: bool, size: int) -> None:
        """C{size} bytes were read from the client (C{toServer}) or server."""

    def _spliceHalfClosed(self, toServer: bool) -> None:
        """A FIN was passed on: the client's (C{toServer}) or the server's."""

    def _spliceFailed(self, transport: Any, error: OSError) -> None:
        """C{transport}'s socket failed; the relay is still running."""

    def _spliceNoPipe(self, error: OSError) -> None:
        """
        No pipe could be had for a direction that has bytes to move; the
        relay is still running and has read nothing it could not place.
        """


@implementer(IReadDescriptor, IWriteDescriptor)
class _End:
    """
    One socket of a relay, as the reactor sees it, and the direction that
    flows I{out of} it: readable means that direction can take more bytes,
    writable that the other direction's pipe can drain into this socket.

    (One object per socket rather than one per direction as well: at tens
    of thousands of tunnels every object counts.)
    """

    __slots__ = (
        "eof",
        "fd",
        "peer",
        "pending",
        "pipe",
        "prefix",
        "reading",
        "relay",
        "shut",
        "toServer",
        "transport",
        "writing",
    )

    def __init__(self, relay: SpliceRelay, transport: Any, toServer: bool) -> None:
        self.relay = relay
        self.transport = transport
        self.fd: int = transport.fileno()
        #: This is the client's socket: what it sends goes to the server.
        self.toServer = toServer
        #: The other socket, where this one's bytes go.
        self.peer: _End = self
        self.reading = False
        self.writing = False
        #: Bytes to write to the peer before anything from the pipe (the
        #: SOCKS reply, data that arrived before the relay started).
        self.prefix = b""
        #: Bytes in the pipe, not yet written to the peer.
        self.pending = 0
        self.pipe: tuple[int, int] | None = None
        #: This socket has sent FIN.
        self.eof = False
        #: That FIN has been passed on (shutdown(SHUT_WR) of the peer).
        self.shut = False

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.fd

    def logPrefix(self) -> str:
        """The reactor labels log events of this descriptor with this."""
        return "SpliceRelay"

    def doRead(self) -> None:
        """The socket has data (or EOF): move it towards the peer."""
        self.relay._pump(self)

    def doWrite(self) -> None:
        """The socket can take more: drain the peer's pipe into it."""
        self.relay._drain(self.peer)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor is disconnecting everything (it is shutting down)."""
        self.relay._reactorDisconnected(reason)


class SpliceRelay:
    """
    Relays bytes between two sockets with C{splice(2)}, driven by the
    reactor's readiness callbacks.

    The session keeps its counters, idle clock and close logic; the relay
    reports to it (see L{SpliceOwner}) and can be stopped at any moment
    with L{stop}, after which the transports are back in charge.

    @param reactor: the reactor the transports belong to.
    @param pool: where pipes come from.
    @param owner: told about bytes, FINs and failures.
    @param client: the client's transport; C{server}: the destination's.
    """

    __slots__ = ("_client", "_owner", "_pool", "_reactor", "_server", "running")

    def __init__(
        self,
        reactor: IReactorFDSet,
        pool: PipePool,
        owner: SpliceOwner,
        client: Any,
        server: Any,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._owner = owner
        self._client = _End(self, client, True)
        self._server = _End(self, server, False)
        self._client.peer = self._server
        self._server.peer = self._client
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
        client.prefix, client.eof = toServer, clientEOF
        server.prefix, server.eof = toClient, serverEOF
        self.running = True
        # Write the prefixes now rather than on the next readiness event:
        # the reply reaches the client one reactor iteration sooner.  _drain
        # also starts reading each source once nothing is owed.
        self._drain(server)
        if self.running:
            self._drain(client)

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
            self._stopReading(end)
            self._stopWriting(end)
        return self._takeBack(self._client), self._takeBack(self._server)

    def finished(self, toServer: bool) -> tuple[bool, bool]:
        """For one direction: (FIN seen, FIN passed on)."""
        end = self._client if toServer else self._server
        return end.eof, end.shut

    # -- moving bytes ---------------------------------------------------------

    def _pump(self, src: _End) -> None:
        """C{src} is readable: splice chunks into its pipe and on to its peer."""
        # A few chunks per readiness event while the source keeps up: each
        # return to the reactor costs an epoll_wait and its Python dispatch,
        # more than a splice that finds the socket empty.
        for _ in range(_CHUNKS_PER_EVENT):
            if src.prefix or src.eof or not self.running:
                return
            pipe = src.pipe
            if pipe is None:
                try:
                    pipe = src.pipe = self._pool.acquire()
                except OSError as e:
                    # Out of descriptors: the bytes are still in the socket,
                    # for the copying relay to read.
                    self._owner._spliceNoPipe(e)
                    return
            try:
                # The source is read while the pipe still holds bytes for a
                # slow destination, so both sockets stay busy; the pipe's
                # capacity is the bound.
                n = _SPLICE(src.fd, pipe[1], PIPE_SIZE, flags=_FLAGS)  # type: ignore[misc]
            except BlockingIOError:
                if src.pending:
                    # The pipe is full (or the source empty): wait for the
                    # destination to drain it; _drain reads on from there.
                    self._stopReading(src)
                else:
                    self._releasePipe(src)
                return
            except OSError as e:
                self._owner._spliceFailed(src.transport, e)
                return
            if n == 0:
                self._stopReading(src)
                src.eof = True
                if not src.pending:
                    self._releasePipe(src)
                    self._passEOF(src)
                return
            src.pending += n
            self._owner._spliced(src.toServer, n)
            if not self._drain(src):
                return

    def _drain(self, src: _End) -> bool:
        """
        Write what C{src} sent to its peer; wait for the peer to be writable
        if it cannot all go now.

        @return: whether everything went.
        """
        dst = src.peer
        try:
            if src.prefix:
                written = os.write(dst.fd, src.prefix)
                src.prefix = src.prefix[written:]
            if src.pending and not src.prefix:
                # One attempt: a short write means the socket buffer is
                # full, and trying again at once would only get EAGAIN.
                src.pending -= _SPLICE(src.pipe[0], dst.fd, src.pending, flags=_FLAGS)  # type: ignore[index,misc]
        except BlockingIOError:
            pass
        except OSError as e:
            self._owner._spliceFailed(dst.transport, e)
            return False
        if src.pending or src.prefix:
            self._startWriting(dst)
            if src.prefix:
                # Nothing may overtake the prefix (the SOCKS reply).
                self._stopReading(src)
            return False
        self._releasePipe(src)
        self._stopWriting(dst)
        if src.eof:
            self._passEOF(src)
        else:
            self._startReading(src)
        return True

    def _passEOF(self, src: _End) -> None:
        if src.shut or src.pending or src.prefix:
            return
        src.shut = True
        try:
            src.peer.transport.socket.shutdown(socket.SHUT_WR)
        except OSError:
            # The peer is already gone (ENOTCONN); its own read reports it.
            pass
        self._owner._spliceHalfClosed(src.toServer)

    # -- helpers --------------------------------------------------------------

    def _releasePipe(self, src: _End) -> None:
        if src.pipe is not None and not src.pending:
            self._pool.release(src.pipe)
            src.pipe = None

    def _takeBack(self, src: _End) -> bytes:
        data = src.prefix
        src.prefix = b""
        if src.pipe is not None:
            chunks = [data]
            while src.pending:
                chunk = os.read(src.pipe[0], src.pending)
                src.pending -= len(chunk)
                chunks.append(chunk)
            data = b"".join(chunks)
            self._releasePipe(src)
        return data

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
