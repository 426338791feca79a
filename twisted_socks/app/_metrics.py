"""
Monitoring counters for a SOCKS server, in Prometheus's model.

L{ServerMetrics} is the C{metrics} collaborator of L{SOCKSv4ServerFactory}:
the factory tells it about events (a session started or ended, a DNS or ident
lookup, a completed handshake) and it keeps counters in a registry of its
own.  What is I{in progress} is never counted by events: the sessions active
by state and the bytes of live tunnels are read from the factory's session
table when the metrics are collected, so they cannot drift from the truth.

Every label has a small fixed set of values (a reason text becomes one of a
few categories), so a hostile client cannot inflate the number of series.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from zope.interface import implementer

from ..interfaces import IServerMetrics
from ..server._factory import SessionInfo, SessionRecord, SessionState
from ..server._records import UDPStats
from ._metriclabels import (
    IDENT_LABELS,
    REJECTION_LABELS,
    REJECTION_REASONS,
    VERSION_LABELS,
    identOutcome,
    isGrantedSeries,
    rejectionReason,
    sessionLabels,
    stateLabel,
    versionLabel,
)

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "HANDSHAKE_BUCKETS",
    "REJECTION_REASONS",
    "CounterSummary",
    "ServerMetrics",
    "SessionSource",
    "identOutcome",
    "rejectionReason",
    "stateLabel",
]

#: Upper bounds (seconds) of the handshake histogram's buckets: from a local
#: connect (well under a millisecond) to a BIND peer arriving after minutes.
HANDSHAKE_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

#: The most labelled children a counter's per-record cache holds: the
#: labels come from a few fixed values, so only an embedder's odd records
#: could reach it, and then they are counted without the cache.
_CACHE_LIMIT = 256


class SessionSource(Protocol):
    """What L{ServerMetrics} needs of a server: its table of live sessions."""

    def sessions(self) -> list[SessionInfo]:
        """Snapshots of the sessions in progress."""


@dataclass(frozen=True, slots=True)
class CounterSummary:
    """
    The main counters at one moment, for the status page and the C{sessions}
    command (the C{/metrics} page has them all, in full detail).

    @ivar active: sessions in progress.
    @ivar activeByState: sessions in progress per state label (every state
        present, zeros included).
    @ivar sessionsStarted: sessions admitted since start.
    @ivar sessionsEnded: sessions ended since start, refused ones included.
    @ivar granted: ended sessions whose last reply was a grant (SOCKS4's
        90, SOCKS5's 00).
    @ivar rejected: ended sessions that were refused (any category).
    @ivar shed: sessions closed while still negotiating, at max-connections,
        to admit a new client.
    @ivar bytesUp: bytes relayed from clients, live tunnels included.
    @ivar bytesDown: bytes relayed to clients, live tunnels included.
    @ivar dnsLookups: SOCKS4A name lookups finished.
    @ivar dnsFailures: of those, the ones that failed.
    @ivar identLookups: ident lookups finished.
    @ivar identMatches: of those, the ones naming the USERID's user.
    @ivar handshakes: handshakes completed (reply 90 and relaying).
    @ivar handshakeSecondsTotal: their summed duration.
    """

    active: int
    activeByState: dict[str, int]
    sessionsStarted: int
    sessionsEnded: int
    granted: int
    rejected: int
    shed: int
    bytesUp: int
    bytesDown: int
    dnsLookups: int
    dnsFailures: int
    identLookups: int
    identMatches: int
    handshakes: int
    handshakeSecondsTotal: float

    def asDict(self) -> dict[str, Any]:
        """The summary as plain JSON-serialisable values."""
        return asdict(self)


@implementer(IServerMetrics)
class ServerMetrics:
    """
    The monitoring collaborator of one L{SOCKSv4ServerFactory}: an
    L{IServerMetrics} exporting Prometheus metrics.

    Create it first, give it to the factory as C{metrics=}, then tell it
    which factory to read live sessions from::

        metrics = ServerMetrics()
        factory = SOCKSv4ServerFactory(reactor, metrics=metrics)
        metrics.watch(factory)

    Its metrics live in L{registry}, a registry of its own (never
    C{prometheus_client}'s global one), so several servers in one process do
    not clash.  Collecting reads the factory's sessions, so it must happen in
    the reactor thread (as the status page does), not in
    C{prometheus_client}'s own HTTP server thread.

    @ivar registry: where the metrics are registered; give it to
        C{prometheus_client.generate_latest}.
    """

    def __init__(self, factory: SessionSource | None = None) -> None:
        self.registry = CollectorRegistry()
        self._factory = factory
        # Bytes of sessions that have ended; live tunnels' bytes are added at
        # collection time, so the exported total is exact at any moment.
        self._endedBytesUp = 0
        self._endedBytesDown = 0
        # The same for UDP associations: datagrams by what became of them,
        # and their payload bytes by direction.
        self._endedUDP: _Tally[str] = _Tally()
        r = self.registry
        self._started = Counter(
            "socks_sessions_started",
            "Sessions admitted (not refused for max-connections).",
            registry=r,
        )
        self._sessions = Counter(
            "socks_sessions",
            "Sessions ended, by SOCKS version (none: not SOCKS, or nothing "
            "sent), command (none: no request came) and last reply code of "
            "that version (none: no reply was sent).",
            ["version", "command", "reply"],
            registry=r,
        )
        self._rejections = Counter(
            "socks_rejections",
            "Sessions refused, by SOCKS version and reason category.",
            ["version", "reason"],
            registry=r,
        )
        # The labelled children by the record's raw values: a session's end
        # then costs a dict lookup, not prometheus_client's label checks.
        self._sessionChildren: dict[tuple[object, ...], Any] = {}
        self._rejectionChildren: dict[tuple[object, ...], Any] = {}
        self._shed = Counter(
            "socks_sessions_shed",
            "Sessions closed before their request was complete, at "
            "max-connections, to admit a new client (oldest first).",
            registry=r,
        )
        self._ident = Counter(
            "socks_ident_lookups",
            "Ident (RFC 1413) lookups finished, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._dns = Counter(
            "socks_dns_lookups",
            "SOCKS4A host name lookups finished, by result.",
            ["result"],
            registry=r,
        )
        self._handshake = Histogram(
            "socks_handshake_seconds",
            "Seconds from accepting a client to its reply 90 and relaying "
            "(for BIND: to the second reply).",
            buckets=HANDSHAKE_BUCKETS,
            registry=r,
        )
        # Every series of a fixed label set exists from the start, so a
        # dashboard's rate() sees the first event rather than a new series.
        for version in VERSION_LABELS:
            for label in REJECTION_LABELS:
                self._rejections.labels(version=version, reason=label)
        for label in IDENT_LABELS:
            self._ident.labels(outcome=label)
        for label in ("ok", "failed"):
            self._dns.labels(result=label)
        r.register(_LiveCollector(self))

    def watch(self, factory: SessionSource) -> None:
        """
        Read live sessions from C{factory} (the one this object is the
        C{metrics} of); until then no session counts as active.
        """
        self._factory = factory

    def liveSessions(self) -> list[SessionInfo]:
        """The watched factory's sessions in progress (none if unwatched)."""
        return self._factory.sessions() if self._factory is not None else []

    # -- the factory's events ------------------------------------------------

    def sessionStarted(self, session: object) -> None:
        """A client connection was admitted."""
        self._started.inc()

    def sessionEnded(self, record: SessionRecord) -> None:
        """A session ended: count it, its reply, its bytes, its refusal."""
        key: tuple[object, ...] = (record.version, record.command, record.reply)
        child = self._sessionChildren.get(key)
        if child is None:
            child = self._sessions.labels(*sessionLabels(record))
            if len(self._sessionChildren) < _CACHE_LIMIT:
                self._sessionChildren[key] = child
        child.inc()
        self._endedBytesUp += record.bytesUp
        self._endedBytesDown += record.bytesDown
        if record.udp is not None:
            self._endedUDP.update(
                _udpTally(record.udp, record.bytesUp, record.bytesDown)
            )
        category = rejectionReason(record.reason)
        if category is not None:
            key = (record.version, category)
            child = self._rejectionChildren.get(key)
            if child is None:
                child = self._rejections.labels(versionLabel(record.version), category)
                if len(self._rejectionChildren) < _CACHE_LIMIT:
                    self._rejectionChildren[key] = child
            child.inc()

    def sessionShed(self) -> None:
        """A session still negotiating gave way to a new client."""
        self._shed.inc()

    def dnsLookup(self, ok: bool) -> None:
        """A SOCKS4A name lookup finished (cancelled ones are not reported)."""
        self._dns.labels(result="ok" if ok else "failed").inc()

    def identLookup(self, outcome: str) -> None:
        """
        An ident lookup finished: C{match}, C{mismatch} or the name of the
        exception it failed with.
        """
        self._ident.labels(outcome=identOutcome(outcome)).inc()

    def handshake(self, seconds: float) -> None:
        """A session started relaying, C{seconds} after it was accepted."""
        self._handshake.observe(max(0.0, seconds))

    # -- reading ---------------------------------------------------------------

    def bytesRelayed(self, sessions: Iterable[SessionInfo]) -> tuple[int, int]:
        """
        Bytes relayed up (from clients) and down (to clients) since start:
        the ended sessions' totals plus those of C{sessions}, which must be
        the live ones.
        """
        up, down = self._endedBytesUp, self._endedBytesDown
        for info in sessions:
            up += info.bytesUp
            down += info.bytesDown
        return up, down

    def udpRelayed(self, sessions: Iterable[SessionInfo]) -> dict[str, int]:
        """
        UDP associations' counts since start, ended and live (C{sessions}):
        datagrams up, down, and dropped as C{fragment}, C{denied} or
        C{dropped}; payload bytes as C{bytesUp}, C{bytesDown}.
        """
        tally = _Tally({key: 0 for key in _UDP_KEYS})
        tally.update(self._endedUDP)
        for info in sessions:
            if info.udp is not None:
                tally.update(_udpTally(info.udp, info.bytesUp, info.bytesDown))
        return dict(tally)

    def summary(self, sessions: list[SessionInfo] | None = None) -> CounterSummary:
        """
        The main counters now; C{sessions} is the live session table if the
        caller already has it (read from the factory otherwise).
        """
        if sessions is None:
            sessions = self.liveSessions()
        byState = _activeByState(sessions)
        up, down = self.bytesRelayed(sessions)
        ended = dict(_samples(self._sessions))
        identLookups = sum(value for _, value in _samples(self._ident))
        return CounterSummary(
            active=len(sessions),
            activeByState=byState,
            sessionsStarted=int(_value(self._started, "socks_sessions_started_total")),
            sessionsEnded=int(sum(ended.values())),
            granted=int(
                sum(v for labels, v in ended.items() if isGrantedSeries(labels))
            ),
            rejected=int(sum(value for _, value in _samples(self._rejections))),
            shed=int(_value(self._shed, "socks_sessions_shed_total")),
            bytesUp=up,
            bytesDown=down,
            dnsLookups=int(sum(value for _, value in _samples(self._dns))),
            dnsFailures=int(_value(self._dns, "socks_dns_lookups_total", "failed")),
            identLookups=int(identLookups),
            identMatches=int(_value(self._ident, "socks_ident_lookups_total", "match")),
            handshakes=int(_value(self._handshake, "socks_handshake_seconds_count")),
            handshakeSecondsTotal=_value(
                self._handshake, "socks_handshake_seconds_sum"
            ),
        )


#: What L{ServerMetrics.udpRelayed} counts.
_UDP_KEYS = ("up", "down", "fragment", "denied", "dropped", "bytesUp", "bytesDown")


def _udpTally(udp: UDPStats, bytesUp: int, bytesDown: int) -> dict[str, int]:
    """One association's counts under L{_UDP_KEYS}."""
    counts = (udp.datagramsUp, udp.datagramsDown, udp.fragments, udp.denied)
    return dict(zip(_UDP_KEYS, (*counts, udp.dropped, bytesUp, bytesDown), strict=True))


def _activeByState(sessions: Iterable[SessionInfo]) -> dict[str, int]:
    """Live sessions per state label, every state present."""
    tally = _Tally(stateLabel(info.state) for info in sessions)
    return {
        stateLabel(state): tally.get(stateLabel(state), 0) for state in SessionState
    }


def _samples(
    metric: MetricWrapperBase,
) -> Iterator[tuple[frozenset[tuple[str, str]], float]]:
    """The C{_total} samples of a counter: (labels, value) pairs."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield frozenset(sample.labels.items()), sample.value


def _value(
    metric: MetricWrapperBase, name: str, labelValue: str | None = None
) -> float:
    """One sample's value, by name and (optionally) its one label's value."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name and (
                labelValue is None or labelValue in sample.labels.values()
            ):
                return float(sample.value)
    return 0.0


class _LiveCollector:
    """
    Exports what is read from the live session table at collection time:
    sessions active by state and the bytes relayed (ended plus live).
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        """The metric names (without samples), for the registry's checks."""
        return self._families([])

    def collect(self) -> list[Metric]:
        """The metrics now."""
        return self._families(self._metrics.liveSessions())

    def _families(self, sessions: list[SessionInfo]) -> list[Metric]:
        active = GaugeMetricFamily(
            "socks_sessions_active",
            "Sessions in progress, by state (closed: refused or ended, still "
            "delivering the last bytes).",
            labels=["state"],
        )
        for state, count in _activeByState(sessions).items():
            active.add_metric([state], count)
        relayed = CounterMetricFamily(
            "socks_bytes_relayed",
            "Bytes relayed, up (client to destination) and down (destination "
            "to client), live tunnels included.",
            labels=["direction"],
        )
        up, down = self._metrics.bytesRelayed(sessions)
        relayed.add_metric(["up"], up)
        relayed.add_metric(["down"], down)
        udp = self._metrics.udpRelayed(sessions)
        datagrams = CounterMetricFamily(
            "socks_udp_datagrams",
            "UDP ASSOCIATE datagrams, live associations included: relayed up "
            "(client to destination) and down, or dropped: fragment (FRAG not "
            "0), denied (by the policy), dropped (any other reason).",
            labels=["what"],
        )
        for what in ("up", "down", "fragment", "denied", "dropped"):
            datagrams.add_metric([what], udp[what])
        udpBytes = CounterMetricFamily(
            "socks_udp_bytes",
            "UDP ASSOCIATE payload bytes relayed, up and down, live "
            "associations included (also counted in socks_bytes_relayed).",
            labels=["direction"],
        )
        udpBytes.add_metric(["up"], udp["bytesUp"])
        udpBytes.add_metric(["down"], udp["bytesDown"])
        return [active, relayed, datagrams, udpBytes]
