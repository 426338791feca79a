"""
TCP on sockets of our own, below L{twisted_socks.outbound._connect.TCPConnector}.

The connector creates a non-blocking socket and starts connecting it; this
module carries the attempt on from there (L{Dialing}: watched for
writability, bounded by a timer, cancellable), turns a connected socket into
a Twisted TCP transport (L{OutboundConnection}) without C{reactor.connectTCP}'s
connector and DelayedCalls, and accepts BIND's one inbound peer on a
listener that writes nothing to the log (L{QuietPort}).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import (
    ConnectingCancelledError,
    TimeoutError,
    getConnectError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReadDescriptor,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["Dialing", "OutboundConnection", "QuietPort"]


class Dialing:
    """
    One connect attempt in progress: watched for writability (the socket
    becomes writable when the handshake completes or fails), then turned
    into an L{OutboundConnection} or an error.
    """

    def __init__(
        self,
        reactor: Any,
        skt: socket.socket,
        peer: tuple[str, int],
        factory: IProtocolFactory,
    ) -> None:
        self._reactor = reactor
        self._socket: socket.socket | None = skt
        self._peer = peer
        self._factory = factory
        self._timer: IDelayedCall | None = None
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)

    # IWriteDescriptor, for the reactor while the attempt is pending.

    def fileno(self) -> int:
        """The socket's descriptor, -1 once the attempt is over."""
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        """How the reactor names this in its log."""
        return "TCPConnector"

    def doWrite(self) -> None:
        """Writable: the handshake is over, one way or the other."""
        if self._socket is not None:
            self._reactor.removeWriter(self)
            self._handshakeOver(None)

    def connectionLost(self, reason: Failure) -> None:
        """An error or hang-up on the socket (the reactor stopped watching)."""
        self._handshakeOver(reason.value)

    def _handshakeOver(self, otherwise: BaseException | None) -> None:
        """The socket's own error if it has one, else C{otherwise}, else connected."""
        skt = self._socket
        if skt is None:
            return
        code = skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._failed(getConnectError((code, os.strerror(code))))
        elif otherwise is not None:
            self._failed(otherwise)
        else:
            self.connected()

    # The attempt.

    def wait(self, timeout: float | None) -> None:
        """Wait for the handshake, at most C{timeout} seconds."""
        self._reactor.addWriter(self)
        if timeout is not None:
            self._timer = self._reactor.callLater(timeout, self._timedOut)

    def connected(self) -> None:
        """Connected: build the protocol and its transport."""
        skt, self._socket = self._socket, None
        if skt is None:
            return  # already failed or cancelled
        self._stopTimer()
        protocol = self._factory.buildProtocol(_address(self._peer))
        if protocol is None:
            skt.close()
            self._fire(Failure(ConnectionRefusedError("the factory refused")))
            return
        transport = OutboundConnection(skt, protocol, self._reactor, self._peer)
        transport.startReading()
        protocol.makeConnection(transport)
        self._fire(protocol)

    def _timedOut(self) -> None:
        self._timer = None
        if self._socket is not None:
            self._reactor.removeWriter(self)
            self._failed(TimeoutError(string="connect timed out"))

    def _cancel(self, deferred: Deferred[IProtocol]) -> None:
        if self._socket is not None:
            self._reactor.removeWriter(self)
            address = _address(self._peer)
            self._failed(ConnectingCancelledError(address))

    def _failed(self, reason: BaseException) -> None:
        skt, self._socket = self._socket, None
        if skt is not None:
            skt.close()
        self._stopTimer()
        self._fire(Failure(reason))

    def _stopTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self, result: IProtocol | Failure) -> None:
        deferred, self.deferred = self.deferred, None  # type: ignore[assignment]
        self._factory = None  # type: ignore[assignment]
        if deferred is None:
            return
        if isinstance(result, Failure):
            deferred.errback(result)
        else:
            deferred.callback(result)


@implementer(IListeningPort, IReadDescriptor)
class QuietPort:
    """
    A listening socket that writes nothing to the log: the one-shot BIND
    listener.  Each accepted connection becomes an L{OutboundConnection}
    for the factory's protocol (the factory may decline with L{None}).
    """

    def __init__(
        self, reactor: Any, skt: socket.socket, factory: IProtocolFactory
    ) -> None:
        self._reactor = reactor
        self._socket: socket.socket | None = skt
        self._host = skt.getsockname()
        self._factory = factory
        self._retry: IDelayedCall | None = None
        self._started = False

    def startListening(self) -> None:
        """Start accepting (done by L{TCPConnector.listen})."""
        if self._socket is None:
            return
        if not self._started:
            # As tcp.Port does; a factory's noisy flag decides its own lines.
            self._started = True
            self._factory.doStart()
        self._reactor.addReader(self)

    def stopListening(self) -> Deferred[None]:
        """Stop accepting and close the socket, at once."""
        skt, self._socket = self._socket, None
        if skt is not None:
            self._reactor.removeReader(self)
            skt.close()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._started:
            self._started = False
            self._factory.doStop()
        return succeed(None)

    def getHost(self) -> Any:
        """The address listened on (also once closed)."""
        return _address(self._host)

    def fileno(self) -> int:
        """The socket's descriptor, -1 once closed."""
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        """How the reactor names this in its log."""
        return "BIND listener"

    def doRead(self) -> None:
        """A peer is waiting: accept it."""
        if self._socket is None:
            return
        try:
            conn, peer = self._socket.accept()
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.ECONNABORTED:
                return
            # Out of descriptors or buffers, say: the peer stays queued.
            # Try again in a while rather than spin on a readable socket.
            self._reactor.removeReader(self)
            self._retry = self._reactor.callLater(0.1, self._again)
            return
        conn.setblocking(False)
        protocol = self._factory.buildProtocol(_address(peer[:2]))
        if protocol is None:
            conn.close()
            return
        transport = OutboundConnection(conn, protocol, self._reactor, peer[:2])
        transport.startReading()
        protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor stopped watching (it is shutting down): close."""
        self.stopListening()

    def _again(self) -> None:
        self._retry = None
        if self._socket is not None:
            self._reactor.addReader(self)


class OutboundConnection(tcp.Connection):
    """
    A connected outbound socket as a Twisted TCP transport: everything of
    L{tcp.Connection} (buffering, producers, half-close, abort), with the
    addresses it was connected with.
    """

    # The socket is ours alone (close-on-exec, never shared with a child),
    # so close() sends the FIN by itself; tcp's default shutdown(2) first
    # is one system call per connection for nothing.
    _shouldShutdown = False

    def __init__(
        self,
        skt: socket.socket,
        protocol: IProtocol,
        reactor: Any,
        peer: tuple[str, int],
    ) -> None:
        # tcp.Connection.__init__ less its setblocking(): the socket was
        # made non-blocking when it was created.
        abstract.FileDescriptor.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = protocol
        # The tuple, not an address object: a tunnel may idle for hours.
        self._peer = peer
        self.connected = 1
        # logPrefix() runs on every event (log.callWithLogger): one shared
        # string per protocol class, like tcp.Client's but not per connection.
        self.logstr = _logPrefixes.get(type(protocol)) or _logPrefix(protocol)

    def getPeer(self) -> Any:
        """The address connected to (also once closed)."""
        return _address(self._peer)

    def getHost(self) -> Any:
        """The local address the kernel gave the socket (while open)."""
        return _address(self.socket.getsockname())

    def logPrefix(self) -> str:
        """How log lines from this connection are prefixed."""
        return self.logstr


_logPrefixes: dict[type, str] = {}


def _logPrefix(protocol: IProtocol) -> str:
    prefix = _logPrefixes[type(protocol)] = f"{type(protocol).__name__},client"
    return prefix


def _address(pair: tuple[Any, ...]) -> Any:
    """A Twisted address object for a socket address (host text, port)."""
    if ":" in pair[0]:
        return TwistedIPv6Address("TCP", pair[0], pair[1])
    return TwistedIPv4Address("TCP", pair[0], pair[1])
