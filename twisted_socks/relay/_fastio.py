"""
Fast paths for Twisted TCP transports: write, half-close and close at once
when the socket has nothing buffered, and the test for that quiet state.

Both relays use these: the copying relay (and the session's replies) to
spare Twisted's next-iteration write, the in-kernel relay
(L{twisted_socks.relay._splice}) to know when it may take a socket over.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

__all__ = ["closeNow", "halfCloseNow", "spliceable", "writeNow"]


def spliceable(transport: Any) -> bool:
    """
    Whether the relay may take over C{transport}'s socket now.

    Only plain TCP and UNIX-socket transports qualify: a TLS transport, or a
    wrapper such as HAProxy's or a throttling policy, must see every byte.
    The transport must also be quiet: nothing buffered to write, and not
    closing, because the relay writes to the socket directly and a byte
    Twisted still holds would arrive out of order.
    """
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
        and buffered == 0
        and len(dataBuffer) == offset
    )


def writeNow(transport: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, but sent at once when the transport is a plain
    socket with nothing buffered (see L{spliceable}).

    Twisted's C{write} always buffers and sends on the next reactor
    iteration, which costs two C{epoll_ctl} calls (start, then stop,
    watching for writability) and an iteration of latency per message; for a
    SOCKS reply or a small relayed message the socket can almost always take
    it now.  Whatever the kernel does not take, and any error, goes through
    C{transport.write} as before, so ordering, backpressure and error
    reporting stay Twisted's.
    """
    if data and spliceable(transport):
        try:
            sent = os.write(transport.fileno(), data)
        except OSError:
            # EAGAIN, or an error Twisted's own send will report.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def halfCloseNow(transport: Any) -> None:
    """
    Send C{transport}'s FIN (C{loseWriteConnection}), at once when it is a
    plain socket with nothing buffered (see L{spliceable}).

    Twisted's C{loseWriteConnection} always waits for the next reactor turn:
    it starts watching for writability, and a C{doWrite} that finds nothing
    to write then shuts the socket down; two C{epoll_ctl} calls, an empty
    C{send} and an iteration of latency.  With nothing buffered this does
    what that C{doWrite} would (FileDescriptor's flag first, then
    tcp.Connection's shutdown and C{writeConnectionLost}).
    """
    if spliceable(transport) and transport.producer is None:
        transport._writeDisconnected = True
        transport._closeWriteConnection()
        return
    loseWriteConnection = getattr(transport, "loseWriteConnection", None)
    if loseWriteConnection is not None:
        loseWriteConnection()
    else:
        transport.loseConnection()


def closeNow(transport: Any) -> None:
    """
    Close C{transport} (C{loseConnection}), at once when it is a plain
    socket with nothing buffered (see L{spliceable}).

    As with L{halfCloseNow}, Twisted's C{loseConnection} finishes on the
    next reactor turn even with nothing to write; this finishes now, the way
    C{loseConnection} itself does for a half-closed socket: stop watching
    it, then C{connectionLost}, which closes the socket and tells the
    protocol (before this returns).  C{disconnecting} is set first, so a
    later C{loseConnection} or C{abortConnection} does nothing.
    """
    if isinstance(transport, tcp.Connection) and transport.producer is None:
        if spliceable(transport):
            # tcp's close runs shutdown(2) first unless told not to; a
            # socket only this process holds (close-on-exec, as Twisted's
            # comment there says) sends its FIN on close() alone.
            transport._shouldShutdown = False
            transport.disconnecting = True
            transport.stopReading()
            transport.stopWriting()
            transport.connectionLost(_CONNECTION_DONE)
            return
        if transport._writeDisconnected and not transport.disconnecting:
            # Half-closed, so nothing is buffered: loseConnection closes at
            # once by itself; only the shutdown(2) is to be spared.
            transport._shouldShutdown = False
    transport.loseConnection()


_CONNECTION_DONE = Failure(ConnectionDone())
