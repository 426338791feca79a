"""
Admission: who may hold a connection, a BIND listener or a name lookup.

One L{Admission} per server factory keeps every count that a limit is
checked against: the sessions admitted, per client key their connections,
recent arrivals and BIND listeners, and (in its L{LookupBudget}) the SOCKS4A
lookups running and waiting.  The session protocol asks it and tells it; it
never reaches into a session beyond calling back.

Per-client limits count by L{clientKey}: an IPv4 address, or an IPv6
address's prefix (a /64 by default), since one host or one customer of an
ISP is given a whole /64 and could otherwise be as many clients as it likes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ._factory import Limits

__all__ = ["Admission", "LookupBudget", "clientKey"]

#: Why a session still negotiating was closed: it gave way to a new client.
SHED_REASON = "shed: max-connections reached, gave way to a new client"

_LOOPBACK6 = IPv6Address("::1")


def clientKey(address: IPv4Address | IPv6Address | None, host: str, prefix: int) -> str:
    """
    The key a client's per-client limits count under.

    @param address: the client's address (IPv4-mapped IPv6 already made
        IPv4), or L{None} for a UNIX socket or an unparsable host.
    @param host: the client's host text, the key when C{address} is L{None}.
    @param prefix: the IPv6 prefix length that makes one client.
    @return: the IPv4 address; for IPv6, C{::1} and a full-length prefix
        the address, any other the network, C{2001:db8:1:2::/64}; else
        C{host}.
    """
    if address is None:
        return host
    if isinstance(address, IPv4Address) or prefix >= 128 or address == _LOOPBACK6:
        return str(address)
    drop = 128 - prefix
    return f"{IPv6Address(int(address) >> drop << drop)}/{prefix}"


def _release(counts: dict[str, int], key: str) -> None:
    """Count one off C{key}; a key at zero leaves the table (bounded size)."""
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class LookupBudget:
    """
    When a SOCKS4A name lookup may start.

    A threaded resolver cannot interrupt C{getaddrinfo}: a name whose DNS
    server never answers holds a thread for seconds, and when every thread
    is held, every client's lookups wait.  So three caps apply.  One client
    key runs at most C{perClient} lookups at once.  All clients together run
    at most C{total} (sized to the resolver's threads, so that a lookup that
    starts also gets a thread).  And the last C{reserve} of those are kept
    for clients with no lookup running: however many slow names a few
    clients hold, another client's first lookup starts at once.  Blocking
    that takes C{(total - reserve) / perClient + reserve} client keys all
    holding slow names at the same time.

    A lookup that may not start waits; waiting clients take turns (round
    robin), those with nothing running first.  Every operation is O(1) but
    L{forget}, which is linear in one client's waiting lookups.

    @ivar running: lookups running per client key (only keys above zero).
    """

    def __init__(self, total: int, reserve: int, perClient: int) -> None:
        self._total = total
        self._shared = total - reserve
        self._perClient = perClient
        self.running: dict[str, int] = {}
        self._runningTotal = 0
        self._queues: dict[str, deque[tuple[Hashable, Callable[[], object]]]] = {}
        # Client keys with lookups waiting: those with none running (which
        # may use the reserve), and those below their own cap (which may
        # not).  A key at its own cap is in neither until a lookup ends.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._busy: OrderedDict[str, None] = OrderedDict()
        self._dispatching = False

    @property
    def runningTotal(self) -> int:
        """Lookups running, all clients together."""
        return self._runningTotal

    @property
    def waitingTotal(self) -> int:
        """Lookups waiting, all clients together."""
        return sum(len(queue) for queue in self._queues.values())

    def waiting(self, key: str) -> list[Hashable]:
        """The owners of C{key}'s waiting lookups, first to start first."""
        return [owner for owner, _ in self._queues.get(key, ())]

    def request(self, key: str, owner: Hashable, start: Callable[[], object]) -> None:
        """
        Call C{start} when a lookup for C{owner} of client C{key} may run
        (now, if the caps allow); it must end with L{finished}.
        """
        self._queues.setdefault(key, deque()).append((owner, start))
        self._place(key)
        self._dispatch()

    def finished(self, key: str) -> None:
        """A lookup of C{key} is done with the resolver; start waiting ones."""
        if key not in self.running:
            return
        _release(self.running, key)
        self._runningTotal -= 1
        self._place(key)
        self._dispatch()

    def forget(self, key: str, owner: Hashable) -> None:
        """C{owner} no longer wants its waiting lookup (if it has one)."""
        queue = self._queues.get(key)
        if not queue:
            return
        for entry in queue:
            if entry[0] is owner:
                queue.remove(entry)
                break
        else:
            return
        if not queue:
            del self._queues[key]
        self._place(key)

    def _place(self, key: str) -> None:
        # Re-inserting moves the key to the end: the next turn is another's.
        self._idle.pop(key, None)
        self._busy.pop(key, None)
        if key in self._queues:
            held = self.running.get(key, 0)
            if held == 0:
                self._idle[key] = None
            elif held < self._perClient:
                self._busy[key] = None

    def _dispatch(self) -> None:
        if self._dispatching:
            # A lookup started by the loop below finished at once (a name
            # the cache knew): the loop goes on, rather than a recursion as
            # deep as the queue is long.
            return
        self._dispatching = True
        try:
            while self._runningTotal < self._total:
                if self._idle:
                    key = next(iter(self._idle))
                elif self._busy and self._runningTotal < self._shared:
                    key = next(iter(self._busy))
                else:
                    break
                queue = self._queues[key]
                _, start = queue.popleft()
                if not queue:
                    del self._queues[key]
                self.running[key] = self.running.get(key, 0) + 1
                self._runningTotal += 1
                self._place(key)
                start()
        finally:
            self._dispatching = False


class Admission:
    """
    The counts a server's limits are checked against, and the checks.

    At max-connections, a session that has not sent a complete request yet
    gives way to a new client, oldest first: a flood of connections that
    send a byte and then nothing would otherwise hold every slot until the
    negotiation deadline, and every good client would be refused meanwhile.
    Only when every admitted session is past its request is a new client
    refused.

    @param limits: the limits (see L{twisted_socks.Limits}).
    @param clock: tells the time, for the per-client rate.
    @param shed: called with a session that must give way; it has already
        been counted off, and must be closed now.

    @ivar active: the sessions admitted and not ended.
    @ivar connectionsByClient: admitted connections per client key.
    @ivar bindsByClient: open BIND listeners per client key.
    @ivar udpByClient: open UDP associations per client key.
    @ivar lookups: the SOCKS4A lookup budget.
    @ivar rejectedOverLimit: clients refused by a connection limit.
    @ivar shedCount: sessions closed while negotiating, to admit others.
    """

    def __init__(
        self, limits: Limits, clock: IReactorTime, shed: Callable[[Any], object]
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._shed = shed
        self.active: set[Any] = set()
        self.connectionsByClient: dict[str, int] = {}
        self.bindsByClient: dict[str, int] = {}
        self.udpByClient: dict[str, int] = {}
        self.lookups = LookupBudget(
            limits.maxLookups, limits.lookupReserve, limits.maxLookupsPerClient
        )
        self.rejectedOverLimit = 0
        self.shedCount = 0
        # Recent admissions per client key, for the rate limit.
        self._recentByClient: dict[str, deque[float]] = {}
        # Admitted sessions with no complete request yet, oldest first, with
        # their keys; an OrderedDict pops its oldest in O(1) where a dict
        # slows down as deletions pile up at its front.
        self._negotiating: OrderedDict[Any, str] = OrderedDict()

    @property
    def negotiating(self) -> int:
        """Admitted sessions that have not sent a complete request."""
        return len(self._negotiating)

    def rateTracked(self) -> list[str]:
        """The client keys whose recent arrivals are kept for the rate."""
        return list(self._recentByClient)

    def admit(self, session: Hashable, key: str) -> str | None:
        """Admit C{session} of client C{key}, or say which limit refuses it."""
        limits = self.limits
        full = len(self.active) >= limits.maxConnections
        if full and not self._negotiating:
            self.rejectedOverLimit += 1
            return "max-connections reached"
        held = self.connectionsByClient.get(key, 0)
        if limits.maxConnectionsPerClient and held >= limits.maxConnectionsPerClient:
            self.rejectedOverLimit += 1
            return "max-connections-per-client reached"
        now = 0.0
        recent = None
        if limits.ratePerClient:
            now = self._clock.seconds()
            recent = self._recentByClient.setdefault(key, deque())
            while recent and recent[0] <= now - limits.rateWindow:
                recent.popleft()
            if len(recent) >= limits.ratePerClient:
                self.rejectedOverLimit += 1
                return "connection rate per client exceeded"
        if full:
            # Only once this client is known to be admitted otherwise: a
            # client refused for its own limits sheds nobody.
            victim, victimKey = self._negotiating.popitem(last=False)
            self._countOff(victim, victimKey)
            self.shedCount += 1
            self._shed(victim)
        if recent is not None:
            recent.append(now)
            self._forgetIdleRates(now)
        self.connectionsByClient[key] = self.connectionsByClient.get(key, 0) + 1
        self.active.add(session)
        self._negotiating[session] = key
        return None

    def negotiated(self, session: Hashable) -> None:
        """C{session} sent its complete request: it no longer gives way."""
        self._negotiating.pop(session, None)

    def ended(self, session: Hashable, key: str) -> None:
        """C{session} (admitted under C{key}, or refused) has closed."""
        self._negotiating.pop(session, None)
        if session in self.active:
            self._countOff(session, key)

    def bindStarted(self, key: str) -> bool:
        """Whether client C{key} may open another BIND listener (counted)."""
        held = self.bindsByClient.get(key, 0)
        if held >= self.limits.maxBindsPerClient:
            return False
        self.bindsByClient[key] = held + 1
        return True

    def bindEnded(self, key: str) -> None:
        """A BIND listener of client C{key} is closed."""
        _release(self.bindsByClient, key)

    def udpStarted(self, key: str) -> bool:
        """Whether client C{key} may open another UDP association (counted)."""
        held = self.udpByClient.get(key, 0)
        if held >= self.limits.maxUDPPerClient:
            return False
        self.udpByClient[key] = held + 1
        return True

    def udpEnded(self, key: str) -> None:
        """A UDP association of client C{key} has ended."""
        _release(self.udpByClient, key)

    def _countOff(self, session: Hashable, key: str) -> None:
        self.active.discard(session)
        _release(self.connectionsByClient, key)

    def _forgetIdleRates(self, now: float) -> None:
        # Bounded memory: a client whose window has emptied is forgotten,
        # checked for a few entries per admission.
        window = self.limits.rateWindow
        for key in list(itertools.islice(self._recentByClient, 4)):
            recent = self._recentByClient[key]
            while recent and recent[0] <= now - window:
                recent.popleft()
            if not recent:
                del self._recentByClient[key]
            else:
                # Move it to the end so the scan walks the whole table.
                self._recentByClient[key] = self._recentByClient.pop(key)
