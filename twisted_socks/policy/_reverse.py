"""
The reverse DNS lookups of the C{%A} and C{%Z} tokens of rule commands:
C{getnameinfo} in threads of their own, each answer bounded in time.

C{getnameinfo} blocks a thread for as long as the PTR lookup takes, and the
client chooses how slow that is (it picks its address, hence its PTR
servers). So the lookups never fail (no name, a failure and a timeout are
all L{None}, and the command shows the address instead), and by default
they run in a small pool of their own (L{ReverseLookups}), never in the
reactor's, which the SOCKS4A forward lookups need.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = [
    "MAX_PENDING_LOOKUPS",
    "REVERSE_LOOKUP_THREADS",
    "REVERSE_LOOKUP_TIMEOUT",
    "ReverseLookups",
    "threadedReverseLookup",
    "withDeadline",
]

#: Seconds that the default reverse lookup waits for C{getnameinfo}.
REVERSE_LOOKUP_TIMEOUT = 5.0

#: Threads of the reverse lookups' own pool (L{ReverseLookups}).
REVERSE_LOOKUP_THREADS = 2

#: Reverse lookups queued or running at most (L{ReverseLookups}): twice
#: the default command cap, for a C{%A} and a C{%Z} each.
MAX_PENDING_LOOKUPS = 32


def withDeadline(
    deferred: Deferred[Any], clock: IReactorTime, seconds: float
) -> Deferred[str | None]:
    """
    Fire with C{deferred}'s result, or C{None} on failure or after C{seconds}.

    A thread's Deferred cannot be cancelled (its result would arrive later
    and fail with AlreadyCalledError), so the result is relayed instead.
    """
    result: Deferred[str | None] = Deferred()

    def deliver(name: object) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(name if isinstance(name, str) and name else None)

    timer = clock.callLater(seconds, deliver, None)
    deferred.addCallbacks(deliver, deliver)
    return result


def _getnameinfo(address: str) -> str:
    # NI_NAMEREQD: fail rather than return the address as a "name".
    return socket.getnameinfo((address, 0), socket.NI_NAMEREQD)[0]


def threadedReverseLookup(
    reactor: IReactorThreads,
    address: str,
    timeout: float = REVERSE_LOOKUP_TIMEOUT,
    pool: ThreadPool | None = None,
) -> Deferred[str | None]:
    """
    Find the name of an IP address with C{getnameinfo}, in a thread pool.

    The lookup in the thread cannot be interrupted; after C{timeout} its
    result is ignored, but it keeps a pool thread until the system resolver
    gives up. If it is still queued by then, it is skipped.

    @param reactor: provides L{IReactorThreads} and L{IReactorTime}.
    @param address: an IPv4 or IPv6 address as text.
    @param timeout: seconds to wait for the answer.
    @param pool: the thread pool; by default the reactor's, which SOCKS4A
        lookups need too (L{ReverseLookups} has a pool of its own).
    @return: a L{Deferred} that fires with the name, or C{None} when there is
        none, the lookup failed or took too long; it never fails.
    """
    if not address:
        return succeed(None)
    lookup = deferToThreadPool(
        reactor, pool or reactor.getThreadPool(), _lookUpWithin(address, timeout)
    )
    return withDeadline(lookup, IReactorTime(reactor), timeout)


def _lookUpWithin(address: str, timeout: float) -> Callable[[], str | None]:
    """C{getnameinfo} for a thread, skipped if it starts after C{timeout}."""
    expires = time.monotonic() + timeout

    def lookUp() -> str | None:
        # Still queued at the deadline: nobody waits for the answer now.
        if time.monotonic() >= expires:
            return None
        return _getnameinfo(address)

    return lookUp


class ReverseLookups:
    """
    The reverse lookups of the C{%A}/C{%Z} tokens, in a budget of their own.

    C{getnameinfo} blocks a thread for as long as the PTR lookup takes, and
    a client chooses its address's PTR servers (and so how slow they are).
    In the reactor's thread pool, which SOCKS4A lookups (C{getaddrinfo})
    use, twelve refused requests with slow names took every thread and
    every other client's SOCKS4A request then failed. Here the lookups have
    their own small pool, started at the first lookup and stopped with the
    reactor, so they can never take a thread of the forward lookups; at
    most C{maxPending} are queued or running (beyond that, and after
    C{timeout}, the command gets the address itself).

    @ivar pool: the thread pool.
    @ivar pending: lookups queued or running, hung ones included.
    """

    def __init__(
        self,
        reactor: Any,
        threads: int = REVERSE_LOOKUP_THREADS,
        timeout: float = REVERSE_LOOKUP_TIMEOUT,
        maxPending: int = MAX_PENDING_LOOKUPS,
    ) -> None:
        """
        @param reactor: provides L{IReactorThreads}, L{IReactorTime} and
            L{IReactorCore} (to stop the pool at shutdown).
        @param threads: the most threads the pool has.
        @param timeout: seconds to wait for a name.
        @param maxPending: see above.
        """
        self._reactor = reactor
        self.timeout = timeout
        self.maxPending = maxPending
        self.pending = 0
        self.pool = ThreadPool(0, threads, name="twisted_socks reverse lookups")

    def __call__(self, address: str) -> Deferred[str | None]:
        """The name of C{address}, or C{None}; see L{threadedReverseLookup}."""
        if not address or self.pending >= self.maxPending:
            return succeed(None)
        if not self.pool.started:
            self.pool.start()
            IReactorCore(self._reactor).addSystemEventTrigger(
                "during", "shutdown", self.stop
            )
        self.pending += 1
        lookup = deferToThreadPool(
            self._reactor, self.pool, _lookUpWithin(address, self.timeout)
        )

        def done(result: object) -> object:
            # When the thread is done, which for a hung lookup is long after
            # the deadline has given the command the address.
            self.pending -= 1
            return result

        lookup.addBoth(done)
        return withDeadline(lookup, IReactorTime(self._reactor), self.timeout)

    def stop(self) -> None:
        """Stop the pool (waiting for running lookups to return)."""
        if self.pool.started:
            self.pool.stop()
