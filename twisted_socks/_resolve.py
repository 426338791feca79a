"""
Resolve a SOCKS4A hostname once, without blocking the reactor.

The lookup goes through the reactor's pluggable L{IHostnameResolver}
(threaded C{getaddrinfo} by default), never the legacy IPv4-only
C{reactor.resolve}, which turns C{""} into 0.0.0.0.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import address as taddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from zope.interface import implementer

from ._policy import IPAddress, normalizeAddress

__all__ = ["NameNotFound", "resolveHostname"]

#: A name that resolves to more addresses than this is cut to the first ones:
#: the server connects to one address and needs no more.
MAX_ADDRESSES = 16


class NameNotFound(Exception):
    """The name resolved to no usable address."""


@implementer(IResolutionReceiver)
class _Collector:
    def __init__(
        self,
        deferred: Deferred[list[IPAddress]],
        finished: Callable[[], object] | None,
    ) -> None:
        self._deferred = deferred
        self._finished = finished
        self._addresses: list[IPAddress] = []

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if len(self._addresses) >= MAX_ADDRESSES:
            return
        if isinstance(address, (taddress.IPv4Address, taddress.IPv6Address)):
            parsed = normalizeAddress(address.host)
            if parsed is not None and parsed not in self._addresses:
                self._addresses.append(parsed)

    def resolutionComplete(self) -> None:
        if self._finished is not None:
            self._finished()
        if self._deferred.called:
            # Cancelled while the lookup thread was still running.
            return
        if self._addresses:
            self._deferred.callback(self._addresses)
        else:
            self._deferred.errback(NameNotFound("no address"))


def resolveHostname(
    resolver: IHostnameResolver,
    hostname: str,
    port: int,
    finished: Callable[[], object] | None = None,
) -> Deferred[list[IPAddress]]:
    """
    Look C{hostname} up once, for TCP, both address families.

    @param finished: called when the resolver is done with the lookup, even
        one abandoned earlier: until then it may still hold a resolver
        thread (C{getaddrinfo} cannot be interrupted).
    @return: a L{Deferred} of the addresses in the resolver's order of
        preference (at most L{MAX_ADDRESSES}), failing with L{NameNotFound}
        when there are none. Cancelling it abandons the lookup: its answer,
        when it comes, is ignored.
    """

    def cancel(d: Deferred[list[IPAddress]]) -> None:
        d.errback(CancelledError(f"lookup of {hostname!r} abandoned"))

    deferred: Deferred[list[IPAddress]] = Deferred(cancel)
    resolver.resolveHostName(
        _Collector(deferred, finished),
        hostname,
        port,
        addressTypes=[taddress.IPv4Address, taddress.IPv6Address],
        transportSemantics="TCP",
    )
    return deferred
