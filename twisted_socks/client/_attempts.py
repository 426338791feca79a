"""
One set of client attempts for every SOCKS version: a CONNECT, a BIND, and
the wait for a BIND's second reply, on the shared driver
(L{twisted_socks.client._handshake}).

What differs between versions is not how an attempt goes (look up what to
send, connect to the proxy, negotiate, then connect the application protocol
or report where the proxy listens) but the words: how the request is encoded
and negotiated, what address a reply names, and which exception a refusal
is.  A version says those through a L{Dialect}, which the attempts are given
rather than subclassed for: L{twisted_socks.client._socks4client.SOCKS4Dialect}
and L{twisted_socks.client._socks5handshake.SOCKS5Dialect}.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import escapeField, hostPort
from ..wire._clienterrors import SOCKSError
from ._endpointbase import EndpointBase, appAddress
from ._handshake import Handshake, HandshakeProtocol, Negotiation

__all__ = [
    "BindAttempt",
    "BoundPort",
    "ConnectAttempt",
    "Dialect",
    "EndpointDialect",
    "proxyText",
]

_log = Logger()

_T = TypeVar("_T")
_A = TypeVar("_A", bound=IPv4Address | IPv6Address)

#: Where a proxy listens, or who connected there: IPv6 only for SOCKS5.
BoundAddress = taddress.IPv4Address | taddress.IPv6Address


class Dialect(Protocol):
    """
    How one SOCKS version words one endpoint's request and reads the replies
    to it: the part of an attempt that is not the same for every version.

    @ivar reactor: the endpoint's reactor (its clock bounds the attempt).
    @ivar proxyEndpoint: connects to the proxy.
    @ivar timeout: seconds from the start until the (first) reply.
    @ivar label: names the version in log lines (C{"SOCKS5"}).
    """

    reactor: IReactorTime
    proxyEndpoint: IStreamClientEndpoint
    timeout: float
    label: str

    def describe(self) -> str:
        """The destination as text, for messages."""

    def destination(self) -> Deferred[Any]:
        """
        The destination's address to send, looked up here when names are
        resolved locally, or L{None} for a name the proxy resolves.
        """

    def request(self, address: object) -> tuple[bytes, IAddress]:
        """
        The encoded request for what L{destination} gave, and the address
        the application protocol is built for.

        @raise TypeError: for anything L{destination} cannot give.
        """

    def negotiation(self, request: bytes) -> Negotiation:
        """A fresh exchange, sending C{request}, for one connection to the proxy."""

    def rejection(self, reply: Any, proxy: Callable[[], str]) -> SOCKSError | None:
        """
        The error for a refusing C{reply} (a subclass per reply code,
        carrying the reply), naming the destination and the proxy (C{proxy}
        gives its text, asked for only when there is an error to word);
        L{None} for a grant.
        """

    def boundAddress(self, reply: Any, proxy: IAddress) -> BoundAddress:
        """
        Where a granted BIND's first C{reply} says the proxy listens; for a
        wildcard, the address of the C{proxy} we are connected to.
        """

    def peerAddress(self, reply: Any) -> IAddress:
        """Who connected, from a BIND's second C{reply}."""

    def boundPort(
        self, host: BoundAddress, handshake: Handshake[IListeningPort]
    ) -> BoundPort:
        """The version's L{BoundPort} (which differ only by name)."""


class EndpointDialect(Generic[_A]):
    """
    The part of a L{Dialect} every version words alike, from its endpoint
    (an L{EndpointBase}); a version adds its negotiation, how its replies
    read, and the class attributes.

    @cvar addressTypes: the address literals the version carries.
    @cvar boundPortType: the version's L{BoundPort}.
    """

    label: str
    addressTypes: tuple[type[_A], ...]
    boundPortType: type[BoundPort]

    def __init__(self, endpoint: EndpointBase[_A]) -> None:
        """
        @param endpoint: the endpoint whose C{connect()} or C{listen()} this
            dialect words.
        """
        self._endpoint = endpoint
        self.reactor = endpoint._reactor
        self.proxyEndpoint = endpoint._proxyEndpoint
        self.timeout = endpoint._timeout

    def describe(self) -> str:
        """The destination as text, for messages."""
        return self._endpoint._describe()

    def destination(self) -> Deferred[_A | None]:
        """The address to send, or L{None} for a name the proxy resolves."""
        return self._endpoint._destination()

    def request(self, address: object) -> tuple[bytes, IAddress]:
        """The request for C{address}, and the application's address."""
        if address is not None and not isinstance(address, self.addressTypes):
            raise TypeError(address)
        endpoint = self._endpoint
        encoded = endpoint._encoded
        if encoded is not None and address is endpoint._literal:
            request = encoded  # encoded (and checked) at construction
        else:
            request = endpoint._encode(address)
        return request, appAddress(endpoint._host, endpoint._port, address)

    def boundPort(
        self, host: BoundAddress, handshake: Handshake[IListeningPort]
    ) -> BoundPort:
        """A L{boundPortType}."""
        return self.boundPortType(host, handshake)


def proxyText(protocol: HandshakeProtocol) -> str:
    """
    The proxy C{protocol} is connected to, as text for a message (an
    application may use several proxies, and the message says which refused).
    """
    peer: Any = protocol.transport.getPeer() if protocol.transport else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return hostPort(host, port)
    return escapeField(str(peer))


@implementer(IListeningPort)
class BoundPort:
    """
    Where a proxy listens on our behalf after a granted BIND.

    Unlike a real listening port it accepts a single connection, over the
    connection to the proxy that asked for it.

    @ivar connected: fires with the application protocol once the proxy's
        second reply says the expected peer connected (the protocol is built
        with the peer's address from that reply, and is connected before this
        fires).  Fails with the version's refusal if the proxy refused the
        peer or gave up waiting, with L{MalformedReply} if the connection
        ended or the reply was garbage, and with
        L{twisted.internet.defer.CancelledError} after
        L{stopListening}.  Cancelling it is the same as L{stopListening}.
    """

    def __init__(
        self, host: BoundAddress, handshake: Handshake[IListeningPort]
    ) -> None:
        """
        @param host: where the proxy listens (IPv6 only for SOCKS5).
        @param handshake: the attempt whose connection carries the peer's.
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

    def getHost(self) -> BoundAddress:
        """
        The address the proxy listens on, from its first reply (with the
        proxy's own address in place of a wildcard, as the SOCKS4 spec says).
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
        host = self._host
        return f"<{type(self).__name__} on {hostPort(host.host, host.port)}>"


class _Attempt(Handshake[_T]):
    """
    One request on the driver: the destination (looked up here when names
    are resolved locally), then the dialect's negotiation per connection to
    the proxy.  Subclasses say what a granted reply leads to.
    """

    def __init__(self, dialect: Dialect, factory: IProtocolFactory) -> None:
        super().__init__(
            dialect.reactor,
            dialect.proxyEndpoint,
            dialect.timeout,
            factory,
            dialect.describe(),
        )
        self._dialect = dialect
        self._request = b""
        self._destination: IAddress | None = None

    def prepare(self) -> Deferred[Any]:
        """The address to send, or L{None} for a name."""
        return self._dialect.destination()

    def prepared(self, address: object) -> None:
        """Encode the request for C{address}, and know whom the app talks to."""
        self._request, self._destination = self._dialect.request(address)

    def negotiation(self) -> Negotiation:
        """A fresh exchange for one connection to the proxy."""
        return self._dialect.negotiation(self._request)

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy answered; a refusal ends the attempt."""
        rejection = self._dialect.rejection(reply, lambda: proxyText(protocol))
        if rejection is not None:
            self.fail(Failure(rejection))
        else:
            self.granted(protocol, reply)

    def granted(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy granted the request."""
        raise NotImplementedError()


class ConnectAttempt(_Attempt[IProtocol]):
    """A CONNECT: the granted reply connects the application protocol."""

    def __init__(self, dialect: Dialect, factory: IProtocolFactory) -> None:
        super().__init__(dialect, factory)
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

    def granted(self, protocol: HandshakeProtocol, reply: Any) -> None:
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


class BindAttempt(_Attempt[IListeningPort]):
    """
    A BIND: the first granted reply makes a L{BoundPort}; the second one
    (handled by L{_Accept}) connects the application protocol.
    """

    def buildHandshake(self) -> HandshakeProtocol | None:
        """A handshake protocol that takes half-close for the app to come."""
        # The application protocol can only be built after the second reply,
        # which names the peer; so the handshake protocol always takes
        # half-close and emulates the default for protocols without it.
        return self.makeProtocol(self.negotiation(), None, halfCloseable=True)

    def granted(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy listens: fire with where, and wait for the peer."""
        proxy = protocol.transport.getPeer()  # type: ignore[union-attr]
        host = self._dialect.boundAddress(reply, proxy)
        port = self._dialect.boundPort(host, self)
        protocol.owner = _Accept(self._dialect, self._factory, port)
        self.finish(port)


class _Accept:
    """Waits for a BIND's second reply on behalf of a L{BoundPort}."""

    def __init__(
        self, dialect: Dialect, factory: IProtocolFactory, port: BoundPort
    ) -> None:
        self._dialect = dialect
        self._factory = factory
        self._port = port

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The second reply: the peer connected (or the proxy gave up)."""
        rejection = self._dialect.rejection(reply, lambda: proxyText(protocol))
        if rejection is not None:
            self._failed(protocol, Failure(rejection))
            return
        try:
            app = self._factory.buildProtocol(self._dialect.peerAddress(reply))
            if app is None:
                raise NoProtocol()
            protocol.connectApplication(app)
        except Exception:
            self._failed(protocol, Failure())
            return
        self._port.connected.callback(app)

    def handshakeFailed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
        """Garbage, or the connection ended before the second reply."""
        self._failed(protocol, reason)

    def connectionLost(self) -> None:
        """The connection to the proxy is over: the port has stopped."""
        self._port._connectionLost()

    def _failed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
        protocol.abort()
        if self._port.connected.called:
            return
        # An expected outcome (the wrong peer, or none in time), not a bug:
        # a warning with the reason, not a traceback.
        _log.warn(
            "{version} BIND for {destination} on {port}: no inbound connection"
            " ({reason})",
            version=self._dialect.label,
            destination=self._dialect.describe(),
            port=self._port,
            reason=reason.getErrorMessage(),
        )
        self._port.connected.errback(reason)
