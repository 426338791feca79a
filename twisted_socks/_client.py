"""
SOCKS4 and SOCKS4A client endpoints: CONNECT, and the client side of BIND.

L{SOCKS4ClientEndpoint} is an ordinary L{IStreamClientEndpoint}: it connects
another endpoint to the proxy, sends the request, and hands the connection to
the application's protocol once the proxy has granted it.  Because the
application protocol is connected only after reply 90, endpoints compose the
usual way: TLS to the destination is C{wrapClientTLS(options, socksEndpoint)},
and a chain of proxies is a L{SOCKS4ClientEndpoint} whose C{proxyEndpoint} is
another one.

L{SOCKS4BindEndpoint} is the client side of BIND, shaped like a server
endpoint: C{listen()} fires with a L{SOCKS4BoundPort} once the proxy says
where it listens, and the factory's protocol is connected when the expected
peer connects there.

The wire format lives in L{twisted_socks._codec}; this module is the Twisted
shell around it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto
from ipaddress import AddressValueError, IPv4Address, IPv6Address
from typing import Any, Generic, TypeVar

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, DNSLookupError, NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHostResolution,
    IListeningPort,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

from ._codec import (
    REPLY_SIZE,
    Command,
    MalformedReply,
    Reply,
    RequestRejected,
    SOCKSError,
    encodeRequest,
    parseReply,
    rejectionFor,
)
from ._logfields import escapeField, hostPort

__all__ = [
    "HandshakeTimeout",
    "NoIPv4Address",
    "SOCKS4BindEndpoint",
    "SOCKS4BoundPort",
    "SOCKS4ClientEndpoint",
]

_log = Logger()


class HandshakeTimeout(SOCKSError):
    """
    The proxy did not grant or refuse the request in time.

    The clock starts when C{connect()} or C{listen()} is called, so it bounds
    the local name lookup (SOCKS4), the connection to the proxy and the wait
    for the reply together.
    """


class NoIPv4Address(SOCKSError, DNSLookupError):
    """
    A plain SOCKS4 request needs an IPv4 destination, and the name has none.

    Raised before anything is sent to (or even connected to) the proxy.  A
    L{DNSLookupError} too, so code written for
    L{twisted.internet.endpoints.HostnameEndpoint} catches it.
    """


# The endpoints.


class _SOCKS4Endpoint:
    """
    What the CONNECT and BIND endpoints share: the destination, how it is
    named on the wire, and the checks of local misuse.
    """

    _command: Command

    def __init__(
        self,
        reactor: IReactorTime,
        host: str,
        port: int,
        proxyEndpoint: IStreamClientEndpoint,
        user: bytes | str = b"",
        timeout: float = 30.0,
        remoteResolve: bool = True,
    ) -> None:
        if not host:
            raise ValueError("empty destination host")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        # A BIND's DSTPORT only names the primary connection's port, so 0 is
        # acceptable there; a CONNECT to port 0 reaches nothing.
        if port == 0 and self._command is Command.CONNECT:
            raise ValueError("CONNECT to port 0")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive: {timeout}")
        self._reactor = reactor
        self._host = host
        self._port = port
        self._proxyEndpoint = proxyEndpoint
        # surrogateescape mirrors the server's decoding, so any USERID bytes
        # survive a round trip through str.
        self._userid = (
            user.encode("utf-8", "surrogateescape") if isinstance(user, str) else user
        )
        self._timeout = timeout
        self._remoteResolve = remoteResolve
        self._literal = _ipv4Literal(host)
        if self._literal is None and not remoteResolve:
            if _isIPv6Literal(host):
                raise ValueError(
                    f"SOCKS4 carries only IPv4 destinations, not {host!r}"
                    " (remoteResolve=True sends it to the server as a name)"
                )
            if not IReactorPluggableNameResolver.providedBy(reactor):
                raise TypeError(
                    "remoteResolve=False needs a reactor with a nameResolver"
                )
        # Encode once now so that a bad USERID or hostname is reported to the
        # caller who passed it, not later through a Deferred.
        if self._literal is not None or not remoteResolve:
            self._encode(self._literal or IPv4Address("0.0.0.1"))
        else:
            self._encode(None)

    def _encode(self, address: IPv4Address | None) -> bytes:
        """The request for C{address}, or for the name when L{None} (4A)."""
        if address is not None:
            return encodeRequest(
                self._command, self._port, address=address, userid=self._userid
            )
        return encodeRequest(
            self._command, self._port, hostname=self._host, userid=self._userid
        )

    def _destination(self) -> Deferred[IPv4Address | None]:
        """
        The DSTIP to send: the literal, the first IPv4 address of the name
        (SOCKS4), or L{None} for a name the proxy resolves (SOCKS4A).

        The local resolver is consulted only in the SOCKS4 case.
        """
        if self._literal is not None:
            return succeed(self._literal)
        if self._remoteResolve:
            return succeed(None)
        resolver = IReactorPluggableNameResolver(self._reactor).nameResolver
        receiver = _FirstIPv4(self._host)
        try:
            resolver.resolveHostName(
                receiver, self._host, self._port, addressTypes=[taddress.IPv4Address]
            )
        except Exception:
            return fail(Failure())
        return receiver.deferred

    def _describe(self) -> str:
        return hostPort(self._host, self._port)


@implementer(IStreamClientEndpoint)
class SOCKS4ClientEndpoint(_SOCKS4Endpoint):
    """
    Connect to C{host}:C{port} through a SOCKS4 or SOCKS4A proxy (CONNECT).

    How the destination goes on the wire:

      - an IPv4 literal is sent as plain SOCKS4;
      - with C{remoteResolve} (the default) any other host is sent as a
        SOCKS4A name for the proxy to resolve, and the local resolver is
        never asked (a name may only exist, or only be meant to be looked up,
        on the proxy's side);
      - without it, the name is resolved with C{reactor.nameResolver} and its
        first IPv4 address is sent as plain SOCKS4, for servers that lack 4A
        (Dante).  A name with no IPv4 address fails with L{NoIPv4Address}
        before the proxy is contacted.

    The application protocol is built when the connection to the proxy is
    made (with the destination as its address: an C{IPv4Address}, or a
    C{HostnameAddress} for a 4A name) and connected once the proxy answers
    90, so a TLS wrapper starts its handshake with the destination, never
    with the proxy.  Its transport is the connection to the proxy itself:
    writes, half-close, producers and C{getPeer()} (the proxy) all act on it.

    @param reactor: provides L{IReactorTime}, and L{IReactorPluggableNameResolver}
        when names are resolved locally.
    @param host: the destination: an IPv4 literal or a name (or, for
        SOCKS4A, any text the proxy can resolve, IPv6 literals included).
    @param port: the destination port.
    @param proxyEndpoint: connects to the proxy; any client endpoint,
        including another L{SOCKS4ClientEndpoint} for a chain of proxies.
    @param user: the USERID; text is sent UTF-8 encoded.
    @param timeout: seconds from C{connect()} until the proxy's reply, after
        which the attempt fails with L{HandshakeTimeout}.
    @param remoteResolve: send names as SOCKS4A (L{True}) or resolve them
        locally and send plain SOCKS4 (L{False}).

    @raise ValueError: at construction, for an empty host, a port out of
        range or 0, an oversize or NUL-holding USERID or hostname, or an IPv6
        literal without C{remoteResolve}.
    """

    _command = Command.CONNECT

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect through the proxy.

        @return: a L{Deferred} that fires with the connected application
            protocol once the proxy granted the request, or fails with a
            L{SOCKSError} (L{RequestRejected} and its subclasses,
            L{MalformedReply}, L{HandshakeTimeout}, L{NoIPv4Address}), with
            whatever error connecting to the proxy met, or with
            L{NoProtocol} if C{protocolFactory} declined.  Cancelling it
            abandons the attempt and closes the connection at once.
        """
        attempt = _ConnectAttempt(self, protocolFactory)
        attempt.start()
        return attempt.result


@implementer(IStreamServerEndpoint)
class SOCKS4BindEndpoint(_SOCKS4Endpoint):
    """
    Have a SOCKS4 proxy accept one inbound connection for us (BIND).

    BIND serves protocols whose server connects back to the client, FTP's
    active mode being the classic: after a primary CONNECT to the application
    server, the client asks the proxy to listen, tells the server the
    address the proxy reports, and the proxy relays the server's connection.

    C{host} and C{port} name the application server the inbound connection
    will come from (the request's DSTIP; the proxy checks the peer against
    it) and the port of the primary connection; they are sent exactly as
    L{SOCKS4ClientEndpoint} sends a destination.  C{timeout} bounds the wait
    for the first reply only: how long the proxy waits for the inbound
    connection is up to the proxy (the spec suggests 2 minutes).

    The other parameters are those of L{SOCKS4ClientEndpoint}.
    """

    _command = Command.BIND

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Ask the proxy to listen.

        @return: a L{Deferred} that fires with a L{SOCKS4BoundPort} once the
            proxy's first reply granted the request, or fails as
            L{SOCKS4ClientEndpoint.connect} does.  The port's C{connected}
            L{Deferred} fires with the protocol built from
            C{protocolFactory} once the peer has connected.
        """
        attempt = _BindAttempt(self, protocolFactory)
        attempt.start()
        return attempt.result


@implementer(IListeningPort)
class SOCKS4BoundPort:
    """
    Where a SOCKS4 proxy listens on our behalf after a granted BIND.

    Unlike a real listening port it accepts a single connection, over the
    connection to the proxy that asked for it.

    @ivar connected: fires with the application protocol once the proxy's
        second reply says the expected peer connected (the protocol is built
        with the peer's address from that reply, and is connected before this
        fires).  Fails with L{RequestRejected} if the proxy refused the peer
        or gave up waiting, with L{MalformedReply} if the connection ended or
        the reply was garbage, and with
        L{twisted.internet.defer.CancelledError} after
        L{stopListening}.  Cancelling it is the same as L{stopListening}.
    """

    def __init__(
        self, host: taddress.IPv4Address, handshake: _Handshake[IListeningPort]
    ) -> None:
        self._host = host
        self._handshake = handshake
        self._stopped: list[Deferred[None]] = []
        self._lost = False
        self.connected: Deferred[IProtocol] = Deferred(self._cancelAccept)

    def startListening(self) -> None:
        """Do nothing: the proxy was listening before this object existed."""

    def stopListening(self) -> Deferred[None]:
        """
        Stop waiting for the inbound connection: close the connection to the
        proxy, which makes it stop listening.

        Once the peer has connected there is nothing left to stop (as with a
        real port, stopping does not close accepted connections), so this
        does nothing.

        @return: a L{Deferred} that fires once the connection to the proxy is
            closed.
        """
        if self._lost or self.connected.called:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped.append(stopped)
        self.connected.cancel()
        return stopped

    def getHost(self) -> taddress.IPv4Address:
        """
        The address the proxy listens on, from its first reply (with the
        proxy's own address in place of 0.0.0.0, as the spec says).
        """
        return self._host

    def _cancelAccept(self, deferred: Deferred[IProtocol]) -> None:
        self._handshake.abandon()

    def _connectionLost(self) -> None:
        self._lost = True
        stopped, self._stopped = self._stopped, []
        for d in stopped:
            d.callback(None)

    def __repr__(self) -> str:
        return f"<SOCKS4BoundPort on {self._host.host}:{self._host.port}>"


# One attempt, from connect()/listen() to the end of the handshake.


class _Stage(Enum):
    RESOLVING = auto()
    CONNECTING = auto()
    NEGOTIATING = auto()
    DONE = auto()


_STAGE_TEXT = {
    _Stage.RESOLVING: "resolving the destination",
    _Stage.CONNECTING: "connecting to the proxy",
    _Stage.NEGOTIATING: "waiting for the proxy's reply",
}


_T = TypeVar("_T")


class _Handshake(Generic[_T]):
    """
    Drives one request: resolve (SOCKS4 names only), connect to the proxy,
    send the request, wait for the reply; bounded by the endpoint's timeout
    and cancellable at every stage through L{result}.

    Subclasses say what a granted reply leads to.
    """

    result: Deferred[_T]

    def __init__(self, endpoint: _SOCKS4Endpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._stage = _Stage.RESOLVING
        self._timer: IDelayedCall | None = None
        self._pending: Deferred[Any] | None = None
        self._request = b""
        self._destination: IAddress | None = None
        #: The protocol speaking to the proxy, once one is connected.
        self.protocol: _SOCKS4ClientProtocol | None = None

    def start(self) -> None:
        """Set the clock and start with the name (or the proxy)."""
        self.result = Deferred(self._cancelled)
        self._timer = self._endpoint._reactor.callLater(
            self._endpoint._timeout, self._timedOut
        )
        self._wait(self._endpoint._destination(), self._resolved)

    def _wait(self, d: Deferred[Any], then: Callable[[Any], None]) -> None:
        """Run C{then} with C{d}'s result unless the attempt has ended."""
        self._pending = d

        def succeeded(value: object) -> None:
            self._pending = None
            if self._stage is not _Stage.DONE:
                try:
                    then(value)
                except Exception:
                    self.fail(Failure())

        def failed(reason: Failure) -> None:
            self._pending = None
            # Failures after the end are the echo of our own cancellation.
            self.fail(reason)

        d.addCallbacks(succeeded, failed)

    def _resolved(self, address: object) -> None:
        endpoint = self._endpoint
        if not isinstance(address, IPv4Address | None):
            raise TypeError(address)
        self._request = endpoint._encode(address)
        self._destination = _appAddress(endpoint._host, endpoint._port, address)
        self._stage = _Stage.CONNECTING
        try:
            connecting = endpoint._proxyEndpoint.connect(_HandshakeFactory(self))
        except Exception:
            self.fail(Failure())
            return
        self._wait(connecting, lambda protocol: None)

    def buildHandshake(self) -> _SOCKS4ClientProtocol | None:
        """A protocol to speak to the proxy; L{None} to decline."""
        raise NotImplementedError()

    def connected(self, protocol: _SOCKS4ClientProtocol) -> None:
        """C{protocol} is connected to the proxy: send the request."""
        if self._stage is _Stage.DONE or self.protocol is not None:
            # Cancelled meanwhile, or a second connection from an endpoint
            # that races several (HostnameEndpoint): not ours to use.
            protocol.abort()
            return
        self.protocol = protocol
        self._stage = _Stage.NEGOTIATING
        protocol.transport.write(self._request)  # type: ignore[union-attr]

    def replyReceived(self, protocol: _SOCKS4ClientProtocol, reply: Reply) -> None:
        """The proxy answered; a refusal ends the attempt."""
        rejection = _rejection(reply, self._endpoint, protocol)
        if rejection is not None:
            self.fail(Failure(rejection))
        else:
            self.granted(protocol, reply)

    def granted(self, protocol: _SOCKS4ClientProtocol, reply: Reply) -> None:
        """The proxy answered 90."""
        raise NotImplementedError()

    def handshakeFailed(self, protocol: _SOCKS4ClientProtocol, reason: Failure) -> None:
        """The reply was garbage, or the connection ended before it."""
        if protocol is self.protocol:
            self.fail(reason)

    def fail(self, reason: Failure) -> None:
        """End the attempt with C{reason}, closing whatever is open."""
        if self._stage is _Stage.DONE:
            return
        self._end()
        self.result.errback(reason)

    def finish(self, value: _T) -> None:
        """End the attempt successfully; the connection stays open."""
        self._stage = _Stage.DONE
        self._stopTimer()
        self.result.callback(value)

    def abandon(self) -> None:
        """Close the connection to the proxy, at whatever stage."""
        if self._stage is not _Stage.DONE:
            self._end()
        elif self.protocol is not None:
            self.protocol.abort()

    def _end(self) -> None:
        self._stage = _Stage.DONE
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
                    f"no reply from the SOCKS server for {self._endpoint._describe()}"
                    f" within {self._endpoint._timeout} s ({stage})"
                )
            )
        )


class _ConnectAttempt(_Handshake[IProtocol]):
    """A CONNECT: the granted reply connects the application protocol."""

    def __init__(self, endpoint: _SOCKS4Endpoint, factory: IProtocolFactory) -> None:
        super().__init__(endpoint, factory)
        self._apps: dict[_SOCKS4ClientProtocol, IProtocol] = {}

    def buildHandshake(self) -> _SOCKS4ClientProtocol | None:
        # The application protocol is built now, not after the reply, so that
        # the handshake protocol can declare IHalfCloseableProtocol exactly
        # when the application protocol provides it: the transport's
        # endpoint wrapper (_WrappingProtocol) copies that declaration when
        # it is built, which is before any reply can arrive.
        if self._destination is None:
            raise RuntimeError("handshake built before the destination was known")
        app = self._factory.buildProtocol(self._destination)
        if app is None:
            return None
        protocol = _SOCKS4ClientProtocol(self, app)
        self._apps[protocol] = app
        return protocol

    def granted(self, protocol: _SOCKS4ClientProtocol, reply: Reply) -> None:
        app = self._apps.pop(protocol)
        self._apps.clear()
        self._stage = _Stage.DONE
        self._stopTimer()
        try:
            protocol.connectApplication(app)
        except Exception:
            self.result.errback(Failure())
            protocol.abort()
            return
        self.result.callback(app)


class _BindAttempt(_Handshake[IListeningPort]):
    """
    A BIND: the first granted reply makes a L{SOCKS4BoundPort}; the second
    one (handled by L{_Accept}) connects the application protocol.
    """

    def buildHandshake(self) -> _SOCKS4ClientProtocol | None:
        # The application protocol can only be built after the second reply,
        # which names the peer; so the handshake protocol always takes
        # half-close and emulates the default for protocols without it.
        return _SOCKS4ClientProtocol(self, None, halfCloseable=True)

    def granted(self, protocol: _SOCKS4ClientProtocol, reply: Reply) -> None:
        host = str(reply.address)
        if reply.address == IPv4Address("0.0.0.0"):
            # "the client should replace it with the IP address of the SOCKS
            # server to which the client is connected" (SOCKS4 spec, BIND).
            peer = protocol.transport.getPeer()  # type: ignore[union-attr]
            if isinstance(peer, taddress.IPv4Address):
                host = peer.host
        port = SOCKS4BoundPort(taddress.IPv4Address("TCP", host, reply.port), self)
        protocol.owner = _Accept(self._endpoint, self._factory, port)
        self.finish(port)


class _Accept:
    """Waits for a BIND's second reply on behalf of a L{SOCKS4BoundPort}."""

    def __init__(
        self,
        endpoint: _SOCKS4Endpoint,
        factory: IProtocolFactory,
        port: SOCKS4BoundPort,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._port = port

    def replyReceived(self, protocol: _SOCKS4ClientProtocol, reply: Reply) -> None:
        rejection = _rejection(reply, self._endpoint, protocol)
        if rejection is not None:
            self._failed(protocol, Failure(rejection))
            return
        peer = taddress.IPv4Address("TCP", str(reply.address), reply.port)
        try:
            app = self._factory.buildProtocol(peer)
            if app is None:
                raise NoProtocol()
            protocol.connectApplication(app)
        except Exception:
            self._failed(protocol, Failure())
            return
        self._port.connected.callback(app)

    def handshakeFailed(self, protocol: _SOCKS4ClientProtocol, reason: Failure) -> None:
        self._failed(protocol, reason)

    def connectionLost(self) -> None:
        self._port._connectionLost()

    def _failed(self, protocol: _SOCKS4ClientProtocol, reason: Failure) -> None:
        protocol.abort()
        if self._port.connected.called:
            return
        # An expected outcome (the wrong peer, or none in time), not a bug:
        # a warning with the reason, not a traceback.
        _log.warn(
            "SOCKS BIND for {destination} on {port}: no inbound connection ({reason})",
            destination=self._endpoint._describe(),
            port=self._port,
            reason=reason.getErrorMessage(),
        )
        self._port.connected.errback(reason)


def _rejection(
    reply: Reply, endpoint: _SOCKS4Endpoint, protocol: _SOCKS4ClientProtocol
) -> RequestRejected | None:
    """
    The error for a refusing C{reply}, its message naming the destination
    and the proxy that refused (an application may use several of each).
    """
    rejection = rejectionFor(reply)
    if rejection is None:
        return None
    peer: Any = protocol.transport.getPeer() if protocol.transport else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        proxy = hostPort(host, port)
    else:
        proxy = escapeField(str(peer))
    command = endpoint._command.name
    return type(rejection)(
        f"{rejection}: {command} {endpoint._describe()} via SOCKS server {proxy}",
        reply=reply,
    )


# The protocol on the connection to the proxy.


class _SOCKS4ClientProtocol(Protocol):
    """
    Reads the proxy's replies, then relays between the connection and the
    application protocol.

    During the handshake each complete reply goes to C{owner}; once the
    owner calls L{connectApplication}, everything (any bytes that came right
    after the reply included) goes to the application protocol.
    """

    def __init__(
        self,
        owner: _Handshake[Any] | _Accept,
        app: IProtocol | None,
        halfCloseable: bool = False,
    ) -> None:
        self.owner = owner
        self._app: IProtocol | None = None
        self._buffer = b""
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
        """Send the request (the owner knows it)."""
        owner = self.owner
        if isinstance(owner, _Handshake):
            owner.connected(self)

    def dataReceived(self, data: bytes) -> None:
        """Parse replies until the application protocol takes over."""
        if self._app is not None:
            self._app.dataReceived(data)
            return
        if not self._handshaking:
            return
        self._buffer += data
        while self._handshaking and self._app is None:
            try:
                parsed = parseReply(self._buffer)
            except MalformedReply:
                self._handshaking = False
                self.owner.handshakeFailed(self, Failure())
                return
            if parsed is None:
                return
            reply, used = parsed
            self._buffer = self._buffer[used:]
            self.owner.replyReceived(self, reply)
        leftover, self._buffer = self._buffer, b""
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
        if isinstance(self.owner, _Accept):
            self.owner.connectionLost()

    def _endHandshake(self, reason: Failure) -> None:
        if not self._handshaking:
            return
        self._handshaking = False
        if reason.check(ConnectionDone):
            # A clean close mid-reply: the server spoke, but not SOCKS4.  Any
            # other reason (a reset, a TLS failure) is more telling as it is.
            reason = Failure(
                MalformedReply(
                    "connection closed after"
                    f" {len(self._buffer)} of {REPLY_SIZE} reply bytes"
                )
            )
        self.owner.handshakeFailed(self, reason)


class _HandshakeFactory(Factory):
    """
    Builds the handshake protocol for the proxy endpoint, and passes start
    and stop notifications through to the application's factory.
    """

    def __init__(self, handshake: _Handshake[Any]) -> None:
        self._handshake = handshake

    def doStart(self) -> None:
        """Tell the application's factory a connection is starting."""
        self._handshake._factory.doStart()

    def doStop(self) -> None:
        """Tell the application's factory the connection is over."""
        self._handshake._factory.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """A handshake protocol; C{addr} is the proxy's and goes unused."""
        return self._handshake.buildHandshake()


# Helpers.


@implementer(IResolutionReceiver)
class _FirstIPv4:
    """Collects a lookup's first IPv4 address."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._address: IPv4Address | None = None
        self._resolution: IHostResolution | None = None
        self.deferred: Deferred[IPv4Address | None] = Deferred(self._cancel)

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        """Remember the lookup, to cancel it."""
        self._resolution = resolutionInProgress

    def addressResolved(self, address: IAddress) -> None:
        """Keep the first IPv4 address; SOCKS4 has no room for others."""
        if self._address is None and isinstance(address, taddress.IPv4Address):
            self._address = IPv4Address(address.host)

    def resolutionComplete(self) -> None:
        """Fire with the address, or fail if there was none."""
        if self.deferred.called:
            return
        if self._address is None:
            self.deferred.errback(
                NoIPv4Address(
                    f"{self._host!r} has no IPv4 address, and SOCKS4 can carry"
                    " no other (remoteResolve=True lets the proxy resolve it)"
                )
            )
        else:
            self.deferred.callback(self._address)

    def _cancel(self, deferred: Deferred[IPv4Address | None]) -> None:
        if self._resolution is not None:
            try:
                self._resolution.cancel()
            except NotImplementedError:
                # GAIResolver cannot cancel a getaddrinfo already running;
                # its answer arrives later and is dropped.
                pass


def _ipv4Literal(host: str) -> IPv4Address | None:
    try:
        return IPv4Address(host)
    except AddressValueError:
        return None


def _isIPv6Literal(host: str) -> bool:
    try:
        IPv6Address(host.strip("[]"))
    except AddressValueError:
        return False
    return True


def _appAddress(host: str, port: int, address: IPv4Address | None) -> IAddress:
    """The address the application protocol is built for."""
    if address is not None:
        return taddress.IPv4Address("TCP", str(address), port)
    return taddress.HostnameAddress(
        host.encode("ascii" if host.isascii() else "idna"), port
    )
