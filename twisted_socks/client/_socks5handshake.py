"""
The SOCKS5 client handshake (RFC 1928, RFC 1929), on the shared driver
(L{twisted_socks.client._handshake}).

L{SOCKS5EndpointBase} holds what an endpoint asks (checked at construction):
the command, the destination and how it goes on the wire (ATYP 3 for a name
the proxy resolves, ATYP 1 or 4 for an address), the credentials, the time
allowed.  L{SOCKS5Dialect} words it for the attempts every version shares
(L{twisted_socks.client._attempts}): the local lookup first when names are
resolved here, a L{SOCKS5Negotiation} on the connection to the proxy, the
address a reply names, the error a refusal is; a granted BIND makes a
L{SOCKS5BoundPort}.  The public endpoints are in
L{twisted_socks.client._socks5endpoints}.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import AddressValueError, IPv4Address, IPv6Address

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IReactorTime,
    IStreamClientEndpoint,
)

from .._logfields import escapeField, hostPort
from ..wire._clienterrors import SOCKSError
from ..wire._socks5 import Address, Command5, encodeRequest5
from ..wire._socks5client import (
    Reply5,
    SOCKS5Negotiation,
    SOCKS5Rejected,
    rejectionFor5,
)
from ._attempts import BoundPort, EndpointDialect
from ._endpointbase import EndpointBase, appAddress, firstAddressOf

__all__ = [
    "NoAddressFound",
    "SOCKS5BoundPort",
    "SOCKS5Dialect",
    "SOCKS5EndpointBase",
    "credentialsFor",
    "firstAddress",
    "ipLiteral",
]


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
    return firstAddressOf(
        resolver,
        host,
        port,
        [taddress.IPv4Address, taddress.IPv6Address],
        ipLiteral,
        NoAddressFound(
            f"{host!r} has no address (names are resolved locally;"
            " remoteResolve=True, or socks5h:, lets the proxy resolve it)"
        ),
    )


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


class SOCKS5EndpointBase(EndpointBase[Address]):
    """
    What the SOCKS5 CONNECT and BIND endpoints share: an L{EndpointBase}
    with credentials, whose destination is an IPv4 or IPv6 address or a
    name.
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
        # An IPv6 literal is written in brackets next to a port; on the wire
        # and in messages it goes without them.
        if host.startswith("[") and host.endswith("]") and ":" in host:
            host = host[1:-1]
        super().__init__(reactor, host, port, proxyEndpoint, timeout, remoteResolve)
        self._credentials = credentialsFor(user, password)
        # Encode once now so that a bad name is reported to the caller who
        # passed it, not later through a Deferred (with local resolution
        # too: a name no DNS name can be will not resolve either).  Kept:
        # it is the request unless the name is resolved here.
        self._encoded = self._encode(self._literal)

    def __repr__(self) -> str:
        user = self._credentials[0] if self._credentials else None
        return (
            f"<{type(self).__name__} {hostPort(self._host, self._port)}"
            f" via {self._proxyEndpoint!r}"
            + (f" user={escapeField(user)!r} password=<hidden>" if user else "")
            + ">"
        )

    def _parseLiteral(self, host: str, remoteResolve: bool) -> Address | None:
        """C{host} as an IPv4 or IPv6 address, if it is a literal."""
        return ipLiteral(host)

    def _lookUp(self, resolver: IHostnameResolver) -> Deferred[Address]:
        """The name's first address, IPv4 or IPv6."""
        return firstAddress(resolver, self._host, self._port)

    def _encode(self, address: Address | None) -> bytes:
        """The request for C{address}, or for the name when L{None} (ATYP 3)."""
        if address is not None:
            return encodeRequest5(self._command, self._port, address=address)
        return encodeRequest5(self._command, self._port, name=self._host)


class SOCKS5BoundPort(BoundPort):
    """
    Where a SOCKS5 proxy listens on our behalf after a granted BIND: a
    L{BoundPort} like L{twisted_socks.SOCKS4BoundPort} (one inbound
    connection, over the connection to the proxy; C{connected} fires with
    the application protocol), except that the address may be IPv6.
    """


class SOCKS5Dialect(EndpointDialect[Address]):
    """
    How SOCKS5 words one endpoint's request and reads the replies (a
    L{twisted_socks.client._attempts.Dialect}): a DST.ADDR looked up here
    when names are resolved locally, a L{SOCKS5Negotiation} with the
    endpoint's credentials, and L{SOCKS5Rejected} (a subclass per REP) for a
    refusal.
    """

    label = "SOCKS5"
    addressTypes = (IPv4Address, IPv6Address)
    boundPortType = SOCKS5BoundPort
    _endpoint: SOCKS5EndpointBase

    def negotiation(self, request: bytes) -> SOCKS5Negotiation:
        """A fresh exchange for one connection to the proxy."""
        return SOCKS5Negotiation(request, self._endpoint._credentials)

    def rejection(
        self, reply: Reply5, proxy: Callable[[], str]
    ) -> SOCKS5Rejected | None:
        """
        The error for a refusing C{reply}, its message naming the command,
        the destination and the proxy that refused (C{proxy} gives its text).
        """
        if reply.granted:
            # Most replies: nothing to word (this runs once a session).
            return None
        endpoint = self._endpoint
        command = endpoint._command.name.replace("_", " ")
        return rejectionFor5(
            reply, f"{command} {endpoint._describe()} via SOCKS5 server {proxy()}"
        )

    def boundAddress(
        self, reply: Reply5, proxy: IAddress
    ) -> taddress.IPv4Address | taddress.IPv6Address:
        """Where the proxy listens, from a granted BIND's first reply."""
        address = reply.address
        if address is None or not int(address):
            # A name, or the wildcard: RFC 1928 is silent; the SOCKS4 rule
            # (use the proxy's own address) is the only useful reading.
            host = getattr(proxy, "host", None)
            address = ipLiteral(host) if isinstance(host, str) else None
        if address is None:
            address = IPv4Address(0)
        if isinstance(address, IPv6Address):
            return taddress.IPv6Address("TCP", str(address), reply.port)
        return taddress.IPv4Address("TCP", str(address), reply.port)

    def peerAddress(self, reply: Reply5) -> IAddress:
        """Who connected, from a BIND's second reply."""
        return appAddress(reply.destination, reply.port, reply.address)
