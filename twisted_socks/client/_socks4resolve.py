"""
How plain SOCKS4 names a destination: an IPv4 literal as it is, and a name
by the first IPv4 address the local resolver finds for it (L{firstIPv4}),
since the protocol has room for nothing else; and the address an
application protocol is built for.
"""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Address, IPv6Address

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ..wire._clienterrors import SOCKSError

__all__ = [
    "NoIPv4Address",
    "appAddress",
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
) -> Deferred[IPv4Address | None]:
    """
    The first IPv4 address C{resolver} finds for C{host}.

    @return: a L{Deferred} that fails with L{NoIPv4Address} if there is
        none; cancelling it cancels the lookup (where the resolver can).
    """
    receiver = _FirstIPv4(host)
    try:
        resolver.resolveHostName(
            receiver, host, port, addressTypes=[taddress.IPv4Address]
        )
    except Exception:
        return fail(Failure())
    return receiver.deferred


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


def appAddress(host: str, port: int, address: IPv4Address | None) -> IAddress:
    """The address the application protocol is built for."""
    if address is not None:
        return taddress.IPv4Address("TCP", str(address), port)
    return taddress.HostnameAddress(
        host.encode("ascii" if host.isascii() else "idna"), port
    )
