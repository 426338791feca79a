"""
A short-lived cache in front of a hostname resolver, for SOCKS4A names.

Twisted's default resolver runs C{getaddrinfo} on a thread pool; handing a
lookup to a thread and its answer back to the reactor cost the server more
CPU than the rest of a SOCKS4A session together (about 230 us of 510 us in
the handshake benchmark), and clients ask for the same few names over and
over.  Answers are kept for a fixed time (C{getaddrinfo} does not report
DNS TTLs), at most C{maxEntries} names, least recently used first out.

Only answers with addresses are kept; a name that does not resolve is asked
again next time.  Every request is still judged by the policy on the
addresses it will connect to, so a cached answer cannot let a request past
the rules, and within the cache's lifetime a name cannot be rebound at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twisted.internet import address as taddress
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorTime,
    IResolutionReceiver,
)
from zope.interface import implementer

__all__ = ["CachingHostnameResolver"]

_Key = tuple[str, tuple[Any, ...], str]


def _key(
    hostName: str,
    addressTypes: Sequence[type[IAddress]] | None,
    transportSemantics: str,
) -> _Key:
    return (
        hostName.lower(),
        tuple(addressTypes) if addressTypes is not None else (),
        transportSemantics,
    )


@implementer(IHostResolution)
class NameResolution:
    """
    A resolution that has nothing to cancel: a cached name (answered at
    once), or a C{getaddrinfo} call (which cannot be interrupted; its late
    answer is ignored by whoever asked).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to stop: see the class."""


@implementer(IHostnameResolver)
class CachingHostnameResolver:
    """
    Answer repeated lookups of a name from memory for C{ttl} seconds.

    @param resolver: the resolver asked on a miss.
    @param clock: tells the time.
    @param ttl: seconds an answer is kept.
    @param maxEntries: names kept at most.
    """

    def __init__(
        self,
        resolver: IHostnameResolver,
        clock: IReactorTime,
        ttl: float = 30.0,
        maxEntries: int = 4096,
    ) -> None:
        if ttl <= 0 or maxEntries < 1:
            raise ValueError("ttl and maxEntries must be positive")
        self._resolver = resolver
        self._clock = clock
        self._ttl = ttl
        self._maxEntries = maxEntries
        # key -> (expiry, [(address class, host), ...])
        self._entries: OrderedDict[_Key, tuple[float, list[tuple[Any, str]]]] = (
            OrderedDict()
        )
        #: Lookups answered from memory, and passed on (for tests and
        #: monitoring).
        self.hits = 0
        self.misses = 0

    def answers(
        self,
        hostName: str,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> bool:
        """
        Whether a lookup of C{hostName} would be answered from memory now
        (at once, and without asking the resolver).
        """
        entry = self._entries.get(_key(hostName, addressTypes, transportSemantics))
        return entry is not None and entry[0] > self._clock.seconds()

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Resolve C{hostName}, from memory when a fresh answer is there."""
        key = _key(hostName, addressTypes, transportSemantics)
        entry = self._entries.get(key)
        now = self._clock.seconds()
        if entry is not None and entry[0] > now:
            self.hits += 1
            self._entries.move_to_end(key)
            resolution = NameResolution(hostName)
            resolutionReceiver.resolutionBegan(resolution)
            for kind, host in entry[1]:
                resolutionReceiver.addressResolved(
                    kind(transportSemantics, host, portNumber)
                )
            resolutionReceiver.resolutionComplete()
            return resolution
        self.misses += 1
        return self._resolver.resolveHostName(
            _Recorder(self, key, resolutionReceiver),
            hostName,
            portNumber,
            addressTypes,
            transportSemantics,
        )

    def _store(self, key: _Key, addresses: list[tuple[Any, str]]) -> None:
        if not addresses:
            return
        self._entries[key] = (self._clock.seconds() + self._ttl, addresses)
        self._entries.move_to_end(key)
        while len(self._entries) > self._maxEntries:
            self._entries.popitem(last=False)


@implementer(IResolutionReceiver)
class _Recorder:
    """Passes a real resolution on, and remembers its addresses."""

    def __init__(
        self,
        cache: CachingHostnameResolver,
        key: _Key,
        receiver: IResolutionReceiver,
    ) -> None:
        self._cache = cache
        self._key = key
        self._receiver = receiver
        self._addresses: list[tuple[Any, str]] = []

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        """Passed on."""
        self._receiver.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: IAddress) -> None:
        """Passed on, and remembered if it is an IP address."""
        if isinstance(address, (taddress.IPv4Address, taddress.IPv6Address)):
            self._addresses.append((type(address), address.host))
        self._receiver.addressResolved(address)

    def resolutionComplete(self) -> None:
        """Passed on; the answer is kept if it had addresses."""
        self._cache._store(self._key, self._addresses)
        self._receiver.resolutionComplete()
