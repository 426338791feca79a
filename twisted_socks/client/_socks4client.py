"""
The SOCKS4 and SOCKS4A client handshake, on the shared driver
(L{twisted_socks.client._handshake}).

L{SOCKS4EndpointBase} holds what an endpoint asks (checked at construction):
the command, the destination and how it is named on the wire, the USERID,
the time allowed.  L{SOCKS4Dialect} words it for the attempts every version
shares (L{twisted_socks.client._attempts}): the local lookup first when
names are resolved here (plain SOCKS4), a L{SOCKS4Negotiation} on the
connection to the proxy, the address a reply names, the error a refusal
is; a granted BIND makes a L{SOCKS4BoundPort}.  The public endpoints are in
L{twisted_socks.client._socks4endpoints}.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IReactorTime,
    IStreamClientEndpoint,
)

from ..wire._socks4 import Command, encodeRequest
from ..wire._socks4reply import (
    Reply,
    RequestRejected,
    SOCKS4Negotiation,
    rejectionFor,
)
from ._attempts import BoundPort, EndpointDialect
from ._endpointbase import EndpointBase
from ._socks4resolve import firstIPv4, ipv4Literal, isIPv6Literal

__all__ = ["SOCKS4BoundPort", "SOCKS4Dialect", "SOCKS4EndpointBase"]


class SOCKS4EndpointBase(EndpointBase[IPv4Address]):
    """
    What the CONNECT and BIND endpoints share: an L{EndpointBase} with a
    USERID, whose destination is an IPv4 address (looked up here for plain
    SOCKS4) or a name (SOCKS4A).
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
        super().__init__(reactor, host, port, proxyEndpoint, timeout, remoteResolve)
        # surrogateescape mirrors the server's decoding, so any USERID bytes
        # survive a round trip through str.
        self._userid = (
            user.encode("utf-8", "surrogateescape") if isinstance(user, str) else user
        )
        # Encode once now so that a bad USERID or hostname is reported to the
        # caller who passed it, not later through a Deferred.
        # What is sent for the literal (or the proxy-resolved name) is kept.
        if self._literal is not None or remoteResolve:
            self._encoded = self._encode(self._literal)
        else:
            self._encode(IPv4Address("0.0.0.1"))

    def _parseLiteral(self, host: str, remoteResolve: bool) -> IPv4Address | None:
        """
        C{host} as an IPv4 address, if it is a dotted quad.

        @raise ValueError: for an IPv6 literal resolved here, which plain
            SOCKS4 cannot carry.
        """
        literal = ipv4Literal(host)
        if literal is None and not remoteResolve and isIPv6Literal(host):
            raise ValueError(
                f"SOCKS4 carries only IPv4 destinations, not {host!r}"
                " (remoteResolve=True sends it to the server as a name)"
            )
        return literal

    def _lookUp(self, resolver: IHostnameResolver) -> Deferred[IPv4Address]:
        """The name's first IPv4 address: plain SOCKS4 carries no other."""
        return firstIPv4(resolver, self._host, self._port)

    def _encode(self, address: IPv4Address | None) -> bytes:
        """The request for C{address}, or for the name when L{None} (4A)."""
        if address is not None:
            return encodeRequest(
                self._command, self._port, address=address, userid=self._userid
            )
        return encodeRequest(
            self._command, self._port, hostname=self._host, userid=self._userid
        )


class SOCKS4BoundPort(BoundPort):
    """
    Where a SOCKS4 proxy listens on our behalf after a granted BIND: a
    L{BoundPort} (one inbound connection, over the connection to the proxy;
    C{connected} fires with the application protocol, or fails with
    L{RequestRejected} if the proxy refused the peer or gave up waiting).
    """


class SOCKS4Dialect(EndpointDialect[IPv4Address]):
    """
    How SOCKS4 and SOCKS4A word one endpoint's request and read the replies
    (a L{twisted_socks.client._attempts.Dialect}): a DSTIP looked up here for
    plain SOCKS4 names, a L{SOCKS4Negotiation}, and L{RequestRejected} (a
    subclass per CD) for a refusal.
    """

    label = "SOCKS"
    addressTypes = (IPv4Address,)
    boundPortType = SOCKS4BoundPort
    _endpoint: SOCKS4EndpointBase

    def negotiation(self, request: bytes) -> SOCKS4Negotiation:
        """A fresh exchange for one connection to the proxy."""
        return SOCKS4Negotiation(request)

    def rejection(
        self, reply: Reply, proxy: Callable[[], str]
    ) -> RequestRejected | None:
        """
        The error for a refusing C{reply}, its message naming the command,
        the destination and the proxy that refused (C{proxy} gives its text).
        """
        rejection = rejectionFor(reply)
        if rejection is None:
            return None
        endpoint = self._endpoint
        command = endpoint._command.name
        return type(rejection)(
            f"{rejection}: {command} {endpoint._describe()} via SOCKS server {proxy()}",
            reply=reply,
        )

    def boundAddress(self, reply: Reply, proxy: IAddress) -> taddress.IPv4Address:
        """Where the proxy listens, from a granted BIND's first reply."""
        host = str(reply.address)
        if reply.address == IPv4Address("0.0.0.0"):
            # "the client should replace it with the IP address of the SOCKS
            # server to which the client is connected" (SOCKS4 spec, BIND).
            if isinstance(proxy, taddress.IPv4Address):
                host = proxy.host
        return taddress.IPv4Address("TCP", host, reply.port)

    def peerAddress(self, reply: Reply) -> taddress.IPv4Address:
        """Who connected, from a BIND's second reply."""
        return taddress.IPv4Address("TCP", str(reply.address), reply.port)
