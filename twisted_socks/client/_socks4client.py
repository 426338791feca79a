"""
The SOCKS4 and SOCKS4A client handshake, on the shared driver
(L{twisted_socks.client._handshake}).

L{SOCKS4EndpointBase} holds what an endpoint asks (checked at construction):
the command, the destination and how it is named on the wire, the USERID,
the time allowed.  A L{ConnectAttempt} or L{BindAttempt} runs one request
for it: the local lookup first when names are resolved here (plain SOCKS4),
then a L{SOCKS4Negotiation} on the connection to the proxy; a granted
CONNECT connects the application protocol, a granted BIND makes a
L{SOCKS4BoundPort} and waits for the second reply.  The public endpoints
are in L{twisted_socks.client._socks4endpoints}.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, TypeVar

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import escapeField, hostPort
from ..wire._socks4 import Command, encodeRequest
from ..wire._socks4reply import (
    Reply,
    RequestRejected,
    SOCKS4Negotiation,
    rejectionFor,
)
from ._handshake import Handshake, HandshakeProtocol
from ._socks4resolve import appAddress, firstIPv4, ipv4Literal, isIPv6Literal

__all__ = ["BindAttempt", "ConnectAttempt", "SOCKS4BoundPort", "SOCKS4EndpointBase"]

_log = Logger()

_T = TypeVar("_T")


class SOCKS4EndpointBase:
    """
    What the CONNECT and BIND endpoints share: the destination, how it is
    named on the wire, and the checks of local misuse.  The attempts below
    read what to ask from it.
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
        self._literal = ipv4Literal(host)
        if self._literal is None and not remoteResolve:
            if isIPv6Literal(host):
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
        return firstIPv4(resolver, self._host, self._port)

    def _describe(self) -> str:
        """The destination as text, for messages."""
        return hostPort(self._host, self._port)


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
        self,
        host: taddress.IPv4Address | taddress.IPv6Address,
        handshake: Handshake[IListeningPort],
    ) -> None:
        """
        @param host: where the proxy listens (IPv6 only for SOCKS5, whose
            L{twisted_socks.client._socks5handshake.SOCKS5BoundPort} subclasses this).
        """
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

    def getHost(self) -> taddress.IPv4Address | taddress.IPv6Address:
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


class _SOCKS4Attempt(Handshake[_T]):
    """
    One SOCKS4 request on the driver: the DSTIP (looked up here for plain
    SOCKS4 names), then a L{SOCKS4Negotiation} per connection to the proxy.

    Subclasses say what a granted reply leads to.
    """

    def __init__(self, endpoint: SOCKS4EndpointBase, factory: IProtocolFactory) -> None:
        super().__init__(
            endpoint._reactor,
            endpoint._proxyEndpoint,
            endpoint._timeout,
            factory,
            endpoint._describe(),
        )
        self._endpoint = endpoint
        self._request = b""
        self._destination: IAddress | None = None

    def prepare(self) -> Deferred[IPv4Address | None]:
        """The DSTIP to send, or L{None} for a 4A name."""
        return self._endpoint._destination()

    def prepared(self, address: object) -> None:
        """Encode the request for C{address}, and know whom the app talks to."""
        endpoint = self._endpoint
        if not isinstance(address, IPv4Address | None):
            raise TypeError(address)
        self._request = endpoint._encode(address)
        self._destination = appAddress(endpoint._host, endpoint._port, address)

    def negotiation(self) -> SOCKS4Negotiation:
        """A fresh exchange for one connection to the proxy."""
        return SOCKS4Negotiation(self._request)

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy answered; a refusal ends the attempt."""
        rejection = _rejection(reply, self._endpoint, protocol)
        if rejection is not None:
            self.fail(Failure(rejection))
        else:
            self.granted(protocol, reply)

    def granted(self, protocol: HandshakeProtocol, reply: Reply) -> None:
        """The proxy answered 90."""
        raise NotImplementedError()


class ConnectAttempt(_SOCKS4Attempt[IProtocol]):
    """A CONNECT: the granted reply connects the application protocol."""

    def __init__(self, endpoint: SOCKS4EndpointBase, factory: IProtocolFactory) -> None:
        super().__init__(endpoint, factory)
        self._apps: dict[HandshakeProtocol, IProtocol] = {}

    def buildHandshake(self) -> HandshakeProtocol | None:
        """The handshake protocol, with the application protocol built now."""
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
        protocol = self.makeProtocol(self.negotiation(), app)
        self._apps[protocol] = app
        return protocol

    def granted(self, protocol: HandshakeProtocol, reply: Reply) -> None:
        """Connect the application protocol; the attempt fires with it."""
        app = self._apps.pop(protocol)
        self._apps.clear()
        self.settle()
        try:
            protocol.connectApplication(app)
        except Exception:
            self.result.errback(Failure())
            protocol.abort()
            return
        self.result.callback(app)


class BindAttempt(_SOCKS4Attempt[IListeningPort]):
    """
    A BIND: the first granted reply makes a L{SOCKS4BoundPort}; the second
    one (handled by L{_Accept}) connects the application protocol.
    """

    def buildHandshake(self) -> HandshakeProtocol | None:
        """A handshake protocol that takes half-close for the app to come."""
        # The application protocol can only be built after the second reply,
        # which names the peer; so the handshake protocol always takes
        # half-close and emulates the default for protocols without it.
        return self.makeProtocol(self.negotiation(), None, halfCloseable=True)

    def granted(self, protocol: HandshakeProtocol, reply: Reply) -> None:
        """The proxy listens: fire with where, and wait for the peer."""
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
        endpoint: SOCKS4EndpointBase,
        factory: IProtocolFactory,
        port: SOCKS4BoundPort,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._port = port

    def replyReceived(self, protocol: HandshakeProtocol, reply: Reply) -> None:
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

    def handshakeFailed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
        self._failed(protocol, reason)

    def connectionLost(self) -> None:
        self._port._connectionLost()

    def _failed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
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
    reply: Reply, endpoint: SOCKS4EndpointBase, protocol: HandshakeProtocol
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
