"""
The client handshake driver, the same for every SOCKS version: from an
endpoint's C{connect()} or C{listen()} to the proxy's answer.

A L{Handshake} runs one attempt through its stages (a local step such as a
name lookup, the connection to the proxy, the negotiation), bounded by one
timeout and cancellable as a whole through its C{result}: whatever is in
flight when the attempt ends (a lookup, a connection attempt, a connection)
is cancelled or closed, and the "has it ended?" check is made in one place
(L{Handshake._wait}).

On the connection to the proxy a L{HandshakeProtocol} speaks for the
version through a sans-IO L{Negotiation}: it writes what the negotiation has
to send, feeds it what the proxy sends, and hands each complete reply to its
owner (the L{Handshake}, or whatever the version puts in its place for a
later reply, such as a BIND's second one).  Once the owner connects the
application protocol, it only relays: the bytes that came in the same
segment as the last reply, then everything else, half-close included.

An attempt is a L{Handshake} subclass (what to do before connecting, the
negotiation for each connection, what a reply means).  CONNECT and BIND are
the same for every version (L{twisted_socks.client._attempts}), given the
version's dialect and its L{Negotiation}; SOCKS5's UDP ASSOCIATE is its own
(L{twisted_socks.client._socks5udpclient}).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from ..relay._fastio import writeNow
from ..wire._clienterrors import HandshakeTimeout, SOCKSError

__all__ = ["Handshake", "HandshakeOwner", "HandshakeProtocol", "Negotiation", "Stage"]

_T = TypeVar("_T")


class Negotiation(Protocol):
    """
    The client's side of one exchange with a proxy, without I/O: bytes in,
    replies and bytes to send out.

    One is made for each connection to the proxy.  Its replies are whatever
    the version's L{Handshake} subclass understands (a SOCKS4 C{Reply}).
    """

    def dataToSend(self) -> bytes:
        """
        What to write to the proxy now (and forget): the opening message
        once connected, later whatever an answer called for; C{b""} if
        nothing.
        """

    def receiveData(self, data: bytes) -> None:
        """Take bytes the proxy sent."""

    def nextReply(self) -> Any | None:
        """
        The next complete reply for the owner, consuming its bytes, or
        L{None} until more bytes arrive.

        @raise SOCKSError: as soon as the bytes cannot be what the proxy
            should say (a L{MalformedReply}, say).
        """

    def takeData(self) -> bytes:
        """The bytes after the last reply (the stream's start), and forget them."""

    def connectionClosed(self) -> SOCKSError:
        """The error for a connection closed cleanly before a reply was complete."""


class HandshakeOwner(Protocol):
    """Who a L{HandshakeProtocol} reports to while it reads replies."""

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy sent a complete reply."""

    def handshakeFailed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
        """The reply was garbage, or the connection ended before it."""

    def connectionLost(self) -> None:
        """The connection to the proxy is over (after any of the above)."""


class Stage(Enum):
    """Where an attempt is; the timeout's message names it."""

    #: The version's step before connecting (SOCKS4: the local name lookup).
    RESOLVING = auto()
    CONNECTING = auto()
    NEGOTIATING = auto()
    DONE = auto()


_STAGE_TEXT = {
    Stage.RESOLVING: "resolving the destination",
    Stage.CONNECTING: "connecting to the proxy",
    Stage.NEGOTIATING: "waiting for the proxy's reply",
}


class Handshake(Generic[_T]):
    """
    Drives one request: the version's preparation (SOCKS4 names resolved
    locally), the connection to the proxy, the negotiation; bounded by the
    endpoint's timeout and cancellable at every stage through L{result}.

    Subclasses say what to do before connecting (L{prepare}, L{prepared}),
    which protocol speaks to the proxy (L{buildHandshake}, usually through
    L{makeProtocol}) and what a reply means (L{replyReceived}), ending the
    attempt with L{finish} or L{fail}.

    @ivar result: fires with the attempt's outcome once L{start} has run.
    @ivar protocol: the protocol speaking to the proxy, once one is connected.
    """

    result: Deferred[_T]

    def __init__(
        self,
        reactor: IReactorTime,
        proxyEndpoint: IStreamClientEndpoint,
        timeout: float,
        factory: IProtocolFactory,
        destination: str,
    ) -> None:
        """
        @param destination: the destination as text, for the timeout's
            message.
        """
        self._reactor = reactor
        self._proxyEndpoint = proxyEndpoint
        self._timeout = timeout
        self._factory = factory
        self._destinationText = destination
        self._stage = Stage.RESOLVING
        self._timer: IDelayedCall | None = None
        self._pending: Deferred[Any] | None = None
        self.protocol: HandshakeProtocol | None = None

    # What a version says.

    def prepare(self) -> Deferred[Any]:
        """What must be known before connecting to the proxy."""
        raise NotImplementedError()

    def prepared(self, value: Any) -> None:
        """
        L{prepare}'s result arrived: get ready to negotiate.  An exception
        fails the attempt.
        """
        raise NotImplementedError()

    def buildHandshake(self) -> HandshakeProtocol | None:
        """A protocol to speak to the proxy; L{None} to decline."""
        raise NotImplementedError()

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy sent a complete reply on C{protocol}."""
        raise NotImplementedError()

    # The driver.

    def start(self) -> None:
        """Set the clock and start with the preparation (or the proxy)."""
        self.result = Deferred(self._cancelled)
        self._timer = self._reactor.callLater(self._timeout, self._timedOut)
        self._wait(self.prepare(), self._prepared)

    def _wait(self, d: Deferred[Any], then: Callable[[Any], None]) -> None:
        """Run C{then} with C{d}'s result unless the attempt has ended."""
        self._pending = d

        def succeeded(value: object) -> None:
            self._pending = None
            if self._stage is not Stage.DONE:
                try:
                    then(value)
                except Exception:
                    self.fail(Failure())

        def failed(reason: Failure) -> None:
            self._pending = None
            # Failures after the end are the echo of our own cancellation.
            self.fail(reason)

        d.addCallbacks(succeeded, failed)

    def _prepared(self, value: object) -> None:
        self.prepared(value)
        self._stage = Stage.CONNECTING
        try:
            connecting = self._proxyEndpoint.connect(_HandshakeFactory(self))
        except Exception:
            self.fail(Failure())
            return
        self._wait(connecting, lambda protocol: None)

    def makeProtocol(
        self,
        negotiation: Negotiation,
        app: IProtocol | None,
        halfCloseable: bool = False,
    ) -> HandshakeProtocol:
        """A protocol owned by this attempt, negotiating with C{negotiation}."""
        return HandshakeProtocol(self, negotiation, app, halfCloseable)

    def connected(self, protocol: HandshakeProtocol) -> None:
        """C{protocol} is connected to the proxy: start the negotiation."""
        if self._stage is Stage.DONE or self.protocol is not None:
            # Cancelled meanwhile, or a second connection from an endpoint
            # that races several (HostnameEndpoint): not ours to use.
            protocol.abort()
            return
        self.protocol = protocol
        self._stage = Stage.NEGOTIATING
        protocol.sendPending()

    def handshakeFailed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
        """The reply was garbage, or the connection ended before it."""
        if protocol is self.protocol:
            self.fail(reason)

    def connectionLost(self) -> None:
        """
        Nothing to do: an end before the last reply was reported through
        L{handshakeFailed}, and one after it concerns the application.
        """

    def fail(self, reason: Failure) -> None:
        """End the attempt with C{reason}, closing whatever is open."""
        if self._stage is Stage.DONE:
            return
        self._end()
        self.result.errback(reason)

    def settle(self) -> None:
        """
        The negotiation is over: stop the clock.  The caller fires
        L{result}; from now on only L{abandon} closes the connection.
        """
        self._stage = Stage.DONE
        self._stopTimer()

    def finish(self, value: _T) -> None:
        """End the attempt successfully; the connection stays open."""
        self.settle()
        self.result.callback(value)

    def abandon(self) -> None:
        """Close the connection to the proxy, at whatever stage."""
        if self._stage is not Stage.DONE:
            self._end()
        elif self.protocol is not None:
            self.protocol.abort()

    def _end(self) -> None:
        self._stage = Stage.DONE
        self._stopTimer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self.protocol is not None:
            self.protocol.abort()

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancelled(self, result: Deferred[_T]) -> None:
        # Deferred.cancel() fails the result with CancelledError after this.
        self._end()

    def _timedOut(self) -> None:
        self._timer = None
        stage = _STAGE_TEXT.get(self._stage, "")
        self.fail(
            Failure(
                HandshakeTimeout(
                    f"no reply from the SOCKS server for {self._destinationText}"
                    f" within {self._timeout} s ({stage})"
                )
            )
        )


class HandshakeProtocol(TwistedProtocol):
    """
    Negotiates with the proxy, then relays between the connection and the
    application protocol.

    During the handshake each complete reply goes to C{owner}; once the
    owner calls L{connectApplication}, everything (any bytes that came right
    after the reply included) goes to the application protocol.
    """

    def __init__(
        self,
        owner: HandshakeOwner,
        negotiation: Negotiation,
        app: IProtocol | None,
        halfCloseable: bool = False,
    ) -> None:
        self.owner = owner
        self._negotiation = negotiation
        self._app: IProtocol | None = None
        self._handshaking = True
        self._lost = False
        self._aborted = False
        if halfCloseable or IHalfCloseableProtocol.providedBy(app):
            directlyProvides(self, IHalfCloseableProtocol)
        self._pendingApp = app

    def logPrefix(self) -> str:
        """The application protocol's log prefix, once there is one."""
        app = self._app or self._pendingApp
        if app is None:
            return self.__class__.__name__
        if ILoggingContext.providedBy(app):
            return ILoggingContext(app).logPrefix()
        return app.__class__.__name__

    def connectionMade(self) -> None:
        """Tell the attempt, which starts the negotiation."""
        owner = self.owner
        if isinstance(owner, Handshake):
            owner.connected(self)

    def sendPending(self) -> None:
        """Write whatever the negotiation has to send now."""
        data = self._negotiation.dataToSend()
        if data:
            # At once when the socket can take it (it almost always can: a
            # greeting or a request), sparing a buffered write's reactor
            # turn and its two epoll_ctl calls; otherwise Twisted's write.
            writeNow(self.transport, data)

    def dataReceived(self, data: bytes) -> None:
        """Negotiate until the application protocol takes over."""
        if self._app is not None:
            self._app.dataReceived(data)
            return
        if not self._handshaking:
            return
        negotiation = self._negotiation
        negotiation.receiveData(data)
        while self._handshaking and self._app is None:
            try:
                reply = negotiation.nextReply()
            except SOCKSError:
                self._handshaking = False
                self.owner.handshakeFailed(self, Failure())
                return
            # A multi-step negotiation answers as it goes; SOCKS4's has
            # nothing more to say after its request.
            self.sendPending()
            if reply is None:
                return
            self.owner.replyReceived(self, reply)
        leftover = negotiation.takeData()
        if self._app is not None and leftover and not self._lost:
            self._app.dataReceived(leftover)

    def connectApplication(self, app: IProtocol) -> None:
        """Hand the connection to C{app}: from now on this only relays."""
        self._handshaking = False
        self._app = app
        if self.transport is None:
            raise RuntimeError("handshake protocol is not connected")
        app.makeConnection(self.transport)

    def abort(self) -> None:
        """Close the connection at once, dropping anything unsent."""
        self._handshaking = False
        transport = self.transport
        if transport is None or self._lost or self._aborted:
            return
        self._aborted = True
        abortConnection = getattr(transport, "abortConnection", None)
        if abortConnection is not None:
            abortConnection()
        else:
            transport.loseConnection()

    def readConnectionLost(self) -> None:
        """
        The proxy sent FIN: pass it on, or end the handshake.

        An application protocol without half-close gets what TCP would give
        it: the connection closes.
        """
        if self._app is not None:
            if IHalfCloseableProtocol.providedBy(self._app):
                IHalfCloseableProtocol(self._app).readConnectionLost()
            else:
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._endHandshake(Failure(ConnectionDone()))
        self.abort()

    def writeConnectionLost(self) -> None:
        """Pass on the end of our write side (never called for TCP)."""
        if self._app is not None and IHalfCloseableProtocol.providedBy(self._app):
            IHalfCloseableProtocol(self._app).writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Pass the end on to the application protocol, or the owner."""
        self._lost = True
        if self._app is not None:
            self._app.connectionLost(reason)
        else:
            self._endHandshake(reason)
        self.owner.connectionLost()

    def _endHandshake(self, reason: Failure) -> None:
        if not self._handshaking:
            return
        self._handshaking = False
        if reason.check(ConnectionDone):
            # A clean close mid-reply: the server spoke, but not SOCKS.  Any
            # other reason (a reset, a TLS failure) is more telling as it is.
            reason = Failure(self._negotiation.connectionClosed())
        self.owner.handshakeFailed(self, reason)


class _HandshakeFactory(Factory):
    """
    Builds the handshake protocol for the proxy endpoint, and passes start
    and stop notifications through to the application's factory.
    """

    def __init__(self, handshake: Handshake[Any]) -> None:
        self._handshake = handshake

    def doStart(self) -> None:
        """Tell the application's factory a connection is starting."""
        self._handshake._factory.doStart()

    def doStop(self) -> None:
        """Tell the application's factory the connection is over."""
        self._handshake._factory.doStop()

    def buildProtocol(self, addr: IAddress | None) -> TwistedProtocol | None:
        """A handshake protocol; C{addr} is the proxy's and goes unused."""
        return self._handshake.buildHandshake()
