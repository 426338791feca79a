"""
The SOCKS5 client handshake (RFC 1928, RFC 1929), on the shared driver
(L{twisted_socks.client._handshake}).

L{SOCKS5EndpointBase} holds what an endpoint asks (checked at construction):
the command, the destination and how it goes on the wire (ATYP 3 for a name
the proxy resolves, ATYP 1 or 4 for an address), the credentials, the time
allowed.  A L{ConnectAttempt5} or L{BindAttempt5} runs one request for it:
the local lookup first when names are resolved here, then a
L{SOCKS5Negotiation} on the connection to the proxy; a granted CONNECT
connects the application protocol, a granted BIND makes a
L{SOCKS5BoundPort} and waits for the second reply.  The public endpoints
are in L{twisted_socks.client._socks5endpoints}.
"""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Address, IPv6Address
from typing import Any, TypeVar

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError, NoProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import escapeField, hostPort
from ..wire._clienterrors import SOCKSError
from ..wire._socks5 import Address, Command5, encodeRequest5
from ..wire._socks5client import (
    Reply5,
    SOCKS5Negotiation,
    SOCKS5Rejected,
    rejectionFor5,
)
from ._handshake import Handshake, HandshakeProtocol
from ._socks4client import SOCKS4BoundPort

__all__ = [
    "BindAttempt5",
    "ConnectAttempt5",
    "NoAddressFound",
    "SOCKS5BoundPort",
    "SOCKS5EndpointBase",
    "credentialsFor",
    "firstAddress",
    "ipLiteral",
]

_log = Logger()

_T = TypeVar("_T")


class NoAddressFound(SOCKSError, DNSLookupError):
    """
    With names resolved locally (C{socks5:}), the destination's name has no
    address.  Raised before the proxy is contacted; a L{DNSLookupError} too,
    so code written for L{twisted.internet.endpoints.HostnameEndpoint}
    catches it.
    """


def firstAddress(
    resolver: IHostnameResolver, host: str, port: int
) -> Deferred[Address]:
    """
    The first address, IPv4 or IPv6, C{resolver} finds for C{host}: the one
    the system prefers (C{getaddrinfo}'s order), as curl's C{socks5://} sends.

    @return: a L{Deferred} that fails with L{NoAddressFound} if there is
        none; cancelling it cancels the lookup (where the resolver can).
    """
    receiver = _FirstAddress(host)
    try:
        resolver.resolveHostName(
            receiver,
            host,
            port,
            addressTypes=[taddress.IPv4Address, taddress.IPv6Address],
        )
    except Exception:
        return fail(Failure())
    return receiver.deferred


@implementer(IResolutionReceiver)
class _FirstAddress:
    """Collects a lookup's first address."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._address: Address | None = None
        self._resolution: IHostResolution | None = None
        self.deferred: Deferred[Address] = Deferred(self._cancel)

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        """Remember the lookup, to cancel it."""
        self._resolution = resolutionInProgress

    def addressResolved(self, address: IAddress) -> None:
        """Keep the first address."""
        if self._address is None and isinstance(
            address, taddress.IPv4Address | taddress.IPv6Address
        ):
            self._address = ipLiteral(address.host)

    def resolutionComplete(self) -> None:
        """Fire with the address, or fail if there was none."""
        if self.deferred.called:
            return
        if self._address is None:
            self.deferred.errback(
                NoAddressFound(
                    f"{self._host!r} has no address (names are resolved locally;"
                    " remoteResolve=True, or socks5h:, lets the proxy resolve it)"
                )
            )
        else:
            self.deferred.callback(self._address)

    def _cancel(self, deferred: Deferred[Address]) -> None:
        if self._resolution is not None:
            try:
                self._resolution.cancel()
            except NotImplementedError:
                # GAIResolver cannot cancel a getaddrinfo already running;
                # its answer arrives later and is dropped.
                pass


def ipLiteral(host: str) -> Address | None:
    """C{host} as an IP address, if it is a literal (IPv6 with or without [])."""
    try:
        return IPv4Address(host)
    except AddressValueError:
        pass
    try:
        # Scoped addresses (fe80::1%eth0) mean nothing on the proxy's side.
        return IPv6Address(host[1:-1] if host.startswith("[") else host)
    except AddressValueError:
        return None


def _appAddress(host: str, port: int, address: Address | None) -> IAddress:
    """The address the application protocol is built for."""
    if isinstance(address, IPv4Address):
        return taddress.IPv4Address("TCP", str(address), port)
    if isinstance(address, IPv6Address):
        return taddress.IPv6Address("TCP", str(address), port)
    return taddress.HostnameAddress(
        host.encode("ascii" if host.isascii() else "idna"), port
    )


def credentialsFor(
    user: bytes | str | None, password: bytes | str | None
) -> tuple[bytes, bytes] | None:
    """
    The RFC 1929 username and password as bytes (text UTF-8 encoded), or
    L{None} for neither.

    @raise ValueError: for only one of the two, or one outside 1..255
        bytes; the message never shows the password.
    """
    if (user is None) != (password is None):
        raise ValueError("give both a username and a password (RFC 1929), or neither")
    if user is None or password is None:
        return None
    credentials = (_textToBytes(user), _textToBytes(password))
    # Checked here rather than by the encoder, whose message is not written
    # with a password in mind.
    if not 1 <= len(credentials[0]) <= 255:
        raise ValueError("the username must be 1..255 bytes (RFC 1929)")
    if not 1 <= len(credentials[1]) <= 255:
        raise ValueError("the password must be 1..255 bytes (RFC 1929)")
    return credentials


def _textToBytes(value: bytes | str) -> bytes:
    # surrogateescape mirrors how the server decodes, so any bytes survive a
    # round trip through str.
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


class SOCKS5EndpointBase:
    """
    What the SOCKS5 CONNECT and BIND endpoints share: the destination, how
    it is named on the wire, the credentials, and the checks of local
    misuse.  The attempts below read what to ask from it.
    """

    _command: Command5

    def __init__(
        self,
        reactor: IReactorTime,
        host: str,
        port: int,
        proxyEndpoint: IStreamClientEndpoint,
        user: bytes | str | None = None,
        password: bytes | str | None = None,
        timeout: float = 30.0,
        remoteResolve: bool = True,
    ) -> None:
        if not host:
            raise ValueError("empty destination host")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        # A BIND's DST.PORT only informs the proxy, so 0 is acceptable there;
        # a CONNECT to port 0 reaches nothing.
        if port == 0 and self._command is Command5.CONNECT:
            raise ValueError("CONNECT to port 0")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive: {timeout}")
        self._credentials = credentialsFor(user, password)
        self._reactor = reactor
        # An IPv6 literal is written in brackets next to a port; on the wire
        # and in messages it goes without them.
        if host.startswith("[") and host.endswith("]") and ":" in host:
            host = host[1:-1]
        self._host = host
        self._port = port
        self._proxyEndpoint = proxyEndpoint
        self._timeout = timeout
        self._remoteResolve = remoteResolve
        self._literal = ipLiteral(host)
        if self._literal is None and not remoteResolve:
            if not IReactorPluggableNameResolver.providedBy(reactor):
                raise TypeError(
                    "remoteResolve=False needs a reactor with a nameResolver"
                )
        # Encode once now so that a bad name is reported to the caller who
        # passed it, not later through a Deferred (with local resolution
        # too: a name no DNS name can be will not resolve either).
        self._encode(self._literal)

    def __repr__(self) -> str:
        user = self._credentials[0] if self._credentials else None
        return (
            f"<{type(self).__name__} {hostPort(self._host, self._port)}"
            f" via {self._proxyEndpoint!r}"
            + (f" user={escapeField(user)!r} password=<hidden>" if user else "")
            + ">"
        )

    def _encode(self, address: Address | None) -> bytes:
        """The request for C{address}, or for the name when L{None} (ATYP 3)."""
        if address is not None:
            return encodeRequest5(self._command, self._port, address=address)
        return encodeRequest5(self._command, self._port, name=self._host)

    def _destination(self) -> Deferred[Address | None]:
        """
        The DST.ADDR to send: the literal, the first address of the name
        (local resolution), or L{None} for a name the proxy resolves.
        """
        if self._literal is not None:
            return succeed(self._literal)
        if self._remoteResolve:
            return succeed(None)
        resolver = IReactorPluggableNameResolver(self._reactor).nameResolver
        return firstAddress(resolver, self._host, self._port)  # type: ignore[return-value]

    def _describe(self) -> str:
        """The destination as text, for messages."""
        return hostPort(self._host, self._port)


class SOCKS5BoundPort(SOCKS4BoundPort):
    """
    Where a SOCKS5 proxy listens on our behalf after a granted BIND: the
    same object as L{SOCKS4BoundPort} (one inbound connection, over the
    connection to the proxy; C{connected} fires with the application
    protocol), except that the address may be IPv6.
    """

    def __repr__(self) -> str:
        host = self.getHost()
        return f"<SOCKS5BoundPort on {hostPort(host.host, host.port)}>"


class _SOCKS5Attempt(Handshake[_T]):
    """
    One SOCKS5 request on the driver: the DST.ADDR (looked up here when
    names are resolved locally), then a L{SOCKS5Negotiation} per connection
    to the proxy.  Subclasses say what a granted reply leads to.
    """

    def __init__(self, endpoint: SOCKS5EndpointBase, factory: IProtocolFactory) -> None:
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

    def prepare(self) -> Deferred[Address | None]:
        """The DST.ADDR to send, or L{None} for a name."""
        return self._endpoint._destination()

    def prepared(self, address: object) -> None:
        """Encode the request for C{address}, and know whom the app talks to."""
        endpoint = self._endpoint
        if not isinstance(address, IPv4Address | IPv6Address | None):
            raise TypeError(address)
        self._request = endpoint._encode(address)
        self._destination = _appAddress(endpoint._host, endpoint._port, address)

    def negotiation(self) -> SOCKS5Negotiation:
        """A fresh exchange for one connection to the proxy."""
        return SOCKS5Negotiation(self._request, self._endpoint._credentials)

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """The proxy answered; a refusal ends the attempt."""
        rejection = _rejection(reply, self._endpoint, protocol)
        if rejection is not None:
            self.fail(Failure(rejection))
        else:
            self.granted(protocol, reply)

    def granted(self, protocol: HandshakeProtocol, reply: Reply5) -> None:
        """The proxy answered 00."""
        raise NotImplementedError()


class ConnectAttempt5(_SOCKS5Attempt[IProtocol]):
    """A CONNECT: the granted reply connects the application protocol."""

    def __init__(self, endpoint: SOCKS5EndpointBase, factory: IProtocolFactory) -> None:
        super().__init__(endpoint, factory)
        self._apps: dict[HandshakeProtocol, IProtocol] = {}

    def buildHandshake(self) -> HandshakeProtocol | None:
        """The handshake protocol, with the application protocol built now."""
        # Built now, not after the reply, so that the handshake protocol
        # declares IHalfCloseableProtocol exactly when the application
        # protocol does (see the SOCKS4 ConnectAttempt).
        if self._destination is None:
            raise RuntimeError("handshake built before the destination was known")
        app = self._factory.buildProtocol(self._destination)
        if app is None:
            return None
        protocol = self.makeProtocol(self.negotiation(), app)
        self._apps[protocol] = app
        return protocol

    def granted(self, protocol: HandshakeProtocol, reply: Reply5) -> None:
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


class BindAttempt5(_SOCKS5Attempt[IListeningPort]):
    """
    A BIND: the first granted reply makes a L{SOCKS5BoundPort}; the second
    one (handled by L{_Accept5}) connects the application protocol.
    """

    def buildHandshake(self) -> HandshakeProtocol | None:
        """A handshake protocol that takes half-close for the app to come."""
        return self.makeProtocol(self.negotiation(), None, halfCloseable=True)

    def granted(self, protocol: HandshakeProtocol, reply: Reply5) -> None:
        """The proxy listens: fire with where, and wait for the peer."""
        address = reply.address
        peer: Any = protocol.transport.getPeer()  # type: ignore[union-attr]
        if address is None or not int(address):
            # A name, or the wildcard: RFC 1928 is silent; the SOCKS4 rule
            # (use the proxy's own address) is the only useful reading.
            host = getattr(peer, "host", None)
            address = ipLiteral(host) if isinstance(host, str) else None
        if address is None:
            address = IPv4Address(0)
        bound: taddress.IPv4Address | taddress.IPv6Address
        if isinstance(address, IPv6Address):
            bound = taddress.IPv6Address("TCP", str(address), reply.port)
        else:
            bound = taddress.IPv4Address("TCP", str(address), reply.port)
        port = SOCKS5BoundPort(bound, self)
        protocol.owner = _Accept5(self._endpoint, self._factory, port)
        self.finish(port)


class _Accept5:
    """Waits for a BIND's second reply on behalf of a L{SOCKS5BoundPort}."""

    def __init__(
        self,
        endpoint: SOCKS5EndpointBase,
        factory: IProtocolFactory,
        port: SOCKS5BoundPort,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._port = port

    def replyReceived(self, protocol: HandshakeProtocol, reply: Reply5) -> None:
        """The second reply: the peer connected (or the proxy gave up)."""
        rejection = _rejection(reply, self._endpoint, protocol)
        if rejection is not None:
            self._failed(protocol, Failure(rejection))
            return
        peer = _appAddress(reply.destination, reply.port, reply.address)
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
        """Garbage, or the connection ended before the second reply."""
        self._failed(protocol, reason)

    def connectionLost(self) -> None:
        """The connection to the proxy is over: the port has stopped."""
        self._port._connectionLost()

    def _failed(self, protocol: HandshakeProtocol, reason: Failure) -> None:
        protocol.abort()
        if self._port.connected.called:
            return
        _log.warn(
            "SOCKS5 BIND for {destination} on {port}: no inbound connection ({reason})",
            destination=self._endpoint._describe(),
            port=self._port,
            reason=reason.getErrorMessage(),
        )
        self._port.connected.errback(reason)


def _rejection(
    reply: Reply5, endpoint: SOCKS5EndpointBase, protocol: HandshakeProtocol
) -> SOCKS5Rejected | None:
    """
    The error for a refusing C{reply}, its message naming the destination
    and the proxy that refused.
    """
    if reply.granted:
        return None
    peer: Any = protocol.transport.getPeer() if protocol.transport else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        proxy = hostPort(host, port)
    else:
        proxy = escapeField(str(peer))
    command = endpoint._command.name.replace("_", " ")
    return rejectionFor5(
        reply, f"{command} {endpoint._describe()} via SOCKS5 server {proxy}"
    )
