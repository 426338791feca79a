"""
Resolve a SOCKS4A hostname once, without blocking the reactor.

The lookup goes through a pluggable L{IHostnameResolver} (threaded
C{getaddrinfo}: the reactor's, or L{ThreadedHostnameResolver} on threads of
its own), never the legacy IPv4-only C{reactor.resolve}, which turns C{""}
into 0.0.0.0.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, Literal

from twisted.internet import address as taddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorCore,
    IReactorFromThreads,
    IResolutionReceiver,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..policy._policy import IPAddress, normalizeAddress
from ._namecache import CachingHostnameResolver, NameResolution

__all__ = [
    "NameNotFound",
    "ThreadedHostnameResolver",
    "answeredFromMemory",
    "resolveHostname",
]

_log = Logger(namespace="twisted_socks.server")

#: What a SOCKS4A name is looked up for: TCP, both families.
_BOTH: Sequence[type[IAddress]] = [taddress.IPv4Address, taddress.IPv6Address]

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
        self.completed = False

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
        if self.completed:
            return
        self.completed = True
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
    try:
        # getaddrinfo encodes a name with the IDNA codec first, and a label
        # over 63 characters or an empty one ("a..b") makes it raise
        # UnicodeError, not gaierror: Twisted's resolver then never
        # completes the resolution, and the lookup would hold its place in
        # the lookup budget for ever.  Such a name resolves nowhere anyway.
        hostname.encode("idna")
    except UnicodeError:
        if finished is not None:
            finished()
        deferred.errback(NameNotFound("not a valid host name"))
        return deferred
    collector = _Collector(deferred, finished)
    try:
        resolver.resolveHostName(
            collector,
            hostname,
            port,
            addressTypes=_BOTH,
            transportSemantics="TCP",
        )
    except Exception:
        # A resolver that raises has not started a lookup: it holds no
        # thread, so the lookup's turn ends here, as a failed lookup.
        _log.failure("name resolver raised")
        collector.resolutionComplete()
    return deferred


def answeredFromMemory(resolver: IHostnameResolver, hostname: str) -> bool:
    """
    Whether L{resolveHostname} would be answered at once from a name cache,
    holding no resolver thread (so it needs no turn in a lookup budget).
    """
    return isinstance(resolver, CachingHostnameResolver) and resolver.answers(
        hostname, _BOTH, "TCP"
    )


_FAMILIES = {
    frozenset({taddress.IPv4Address}): socket.AF_INET,
    frozenset({taddress.IPv6Address}): socket.AF_INET6,
}


@implementer(IHostnameResolver)
class ThreadedHostnameResolver:
    """
    C{getaddrinfo} on a pool of threads of the resolver's own.

    The same call as Twisted's default resolver makes, so C{/etc/hosts},
    C{nsswitch.conf} and the system's address order hold as users expect;
    but on threads nothing else uses.  The reactor's pool (10 threads) also
    runs other work (the reverse lookups of rule commands, any
    C{deferToThread}): a lookup there may wait for a thread however the
    server budgets its own lookups.  With a pool as large as the server's
    lookup budget (L{twisted_socks.Limits.maxLookups}), a lookup the budget
    lets start always has a thread.

    The pool starts with the first lookup and stops when the reactor shuts
    down (as the reactor's own pool does).  A name C{getaddrinfo} fails on
    in any way resolves to nothing: the resolution always completes.

    @param reactor: delivers the answers to the reactor thread.
    @param threads: the most lookups that run at once; more wait for a
        thread.
    @param getaddrinfo: for tests: L{socket.getaddrinfo} by default.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        threads: int,
        getaddrinfo: Callable[..., Sequence[tuple[Any, ...]]] = socket.getaddrinfo,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be positive")
        self._reactor = reactor
        self._getaddrinfo = getaddrinfo
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="socks-resolver")

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Look C{hostName} up on the pool; answer in the reactor thread."""
        if not self.pool.started and not self.pool.joined:
            self.pool.start()
            IReactorCore(self._reactor).addSystemEventTrigger(
                "during", "shutdown", self._stop
            )
        family = _FAMILIES.get(frozenset(addressTypes or ()), socket.AF_UNSPEC)
        transport: Literal["TCP", "UDP"] = (
            "UDP" if transportSemantics == "UDP" else "TCP"
        )
        kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
        resolution = NameResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        d = deferToThreadPool(
            self._reactor,
            self.pool,
            self._getaddrinfo,
            hostName,
            portNumber,
            family,
            kind,
        )

        def answered(results: Sequence[tuple[Any, ...]]) -> None:
            for resultFamily, _, _, _, sockaddr in results:
                if resultFamily == socket.AF_INET:
                    resolutionReceiver.addressResolved(
                        taddress.IPv4Address(transport, *sockaddr[:2])
                    )
                elif resultFamily == socket.AF_INET6:
                    resolutionReceiver.addressResolved(
                        taddress.IPv6Address(transport, *sockaddr)
                    )

        # Any failure (gaierror, UnicodeError for a name IDNA cannot encode)
        # is an answer with no address, and the resolution completes.
        d.addCallbacks(answered, lambda _: None)
        d.addBoth(lambda _: resolutionReceiver.resolutionComplete())
        return resolution

    def _stop(self) -> None:
        # Whoever owns the resolver may have stopped the pool already.
        if not self.pool.joined:
            self.pool.stop()
