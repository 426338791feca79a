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

from ipaddress import IPv4Address

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorPluggableNameResolver,
    IReactorTime,
    IStreamClientEndpoint,
)

from .._logfields import hostPort
from ..wire._socks4 import Command, encodeRequest
from ..wire._socks4reply import (
    Reply,
    RequestRejected,
    SOCKS4Negotiation,
    rejectionFor,
)
from ._attempts import BoundPort
from ._handshake import Handshake
from ._socks4resolve import appAddress, firstIPv4, ipv4Literal, isIPv6Literal

__all__ = ["SOCKS4BoundPort", "SOCKS4Dialect", "SOCKS4EndpointBase"]


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


class SOCKS4BoundPort(BoundPort):
    """
    Where a SOCKS4 proxy listens on our behalf after a granted BIND: a
    L{BoundPort} (one inbound connection, over the connection to the proxy;
    C{connected} fires with the application protocol, or fails with
    L{RequestRejected} if the proxy refused the peer or gave up waiting).
    """


class SOCKS4Dialect:
    """
    How SOCKS4 and SOCKS4A word one endpoint's request and read the replies
    (a L{twisted_socks.client._attempts.Dialect}): a DSTIP looked up here for
    plain SOCKS4 names, a L{SOCKS4Negotiation}, and L{RequestRejected} (a
    subclass per CD) for a refusal.
    """

    label = "SOCKS"

    def __init__(self, endpoint: SOCKS4EndpointBase) -> None:
        self._endpoint = endpoint
        self.reactor = endpoint._reactor
        self.proxyEndpoint = endpoint._proxyEndpoint
        self.timeout = endpoint._timeout

    def describe(self) -> str:
        """The destination as text, for messages."""
        return self._endpoint._describe()

    def destination(self) -> Deferred[IPv4Address | None]:
        """The DSTIP to send, or L{None} for a 4A name."""
        return self._endpoint._destination()

    def request(self, address: object) -> tuple[bytes, IAddress]:
        """The request for C{address}, and the application's address."""
        endpoint = self._endpoint
        if not isinstance(address, IPv4Address | None):
            raise TypeError(address)
        request = endpoint._encode(address)
        return request, appAddress(endpoint._host, endpoint._port, address)

    def negotiation(self, request: bytes) -> SOCKS4Negotiation:
        """A fresh exchange for one connection to the proxy."""
        return SOCKS4Negotiation(request)

    def rejection(self, reply: Reply, proxy: str) -> RequestRejected | None:
        """
        The error for a refusing C{reply}, its message naming the command,
        the destination and the proxy that refused.
        """
        rejection = rejectionFor(reply)
        if rejection is None:
            return None
        endpoint = self._endpoint
        command = endpoint._command.name
        return type(rejection)(
            f"{rejection}: {command} {endpoint._describe()} via SOCKS server {proxy}",
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

    def boundPort(
        self,
        host: taddress.IPv4Address | taddress.IPv6Address,
        handshake: Handshake[IListeningPort],
    ) -> SOCKS4BoundPort:
        """A L{SOCKS4BoundPort}."""
        return SOCKS4BoundPort(host, handshake)
