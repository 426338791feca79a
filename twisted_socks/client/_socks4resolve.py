"""
How plain SOCKS4 names a destination: an IPv4 literal as it is, and a name
by the first IPv4 address the local resolver finds for it (L{firstIPv4}),
since the protocol has room for nothing else.
"""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Address, IPv6Address

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IHostnameResolver

from ..wire._clienterrors import SOCKSError
from ._endpointbase import firstAddressOf

__all__ = [
    "NoIPv4Address",
    "firstIPv4",
    "ipv4Literal",
    "isIPv6Literal",
]


class NoIPv4Address(SOCKSError, DNSLookupError):
    """
    A plain SOCKS4 request needs an IPv4 destination, and the name has none.

    Raised before anything is sent to (or even connected to) the proxy.  A
    L{DNSLookupError} too, so code written for
    L{twisted.internet.endpoints.HostnameEndpoint} catches it.
    """


def firstIPv4(
    resolver: IHostnameResolver, host: str, port: int
) -> Deferred[IPv4Address]:
    """
    The first IPv4 address C{resolver} finds for C{host}: SOCKS4 has no
    room for others.

    @return: a L{Deferred} that fails with L{NoIPv4Address} if there is
        none; cancelling it cancels the lookup (where the resolver can).
    """
    return firstAddressOf(
        resolver,
        host,
        port,
        [taddress.IPv4Address],
        ipv4Literal,
        NoIPv4Address(
            f"{host!r} has no IPv4 address, and SOCKS4 can carry"
            " no other (remoteResolve=True lets the proxy resolve it)"
        ),
    )


def ipv4Literal(host: str) -> IPv4Address | None:
    """C{host} as an IPv4 address, if it is a dotted quad."""
    try:
        return IPv4Address(host)
    except AddressValueError:
        return None


def isIPv6Literal(host: str) -> bool:
    """Whether C{host} is an IPv6 literal, with or without brackets."""
    try:
        IPv6Address(host.strip("[]"))
    except AddressValueError:
        return False
    return True
