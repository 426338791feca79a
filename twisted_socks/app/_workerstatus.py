"""
The status site of a server with worker processes (C{--workers} above 1
with C{--status}): the supervisor serves it, built at each request from the
snapshots its workers answer (L{twisted_socks.app._workers}).

  - C{/sessions}: every worker's live sessions in one list, oldest first,
    each with a C{worker} field (session numbers are per worker); the
    counters summed over the workers; and C{workers}, one entry per worker
    (its pid, restarts, and why it did not answer, if it did not).
  - C{/metrics}: every worker's series with a C{worker} label added (sum
    them in the query: a restarted worker's counters start again from zero,
    which Prometheus handles per series but not in a pre-summed total),
    plus C{socks_worker_up} and C{socks_worker_restarts_total}.
  - C{/}: the page of a single server, with a worker column; the
    upstreams of C{--routes} (each worker keeps its own marks and
    counters) in one table: sessions summed, and marked bad when every
    worker has it marked (else in how many), until the latest expiry.

The same C{Host} check and headers apply as for a single server's site
(L{twisted_socks.app._status}).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..server._factory import SessionInfo
from ..server._records import UDPStats
from ._metrics import CounterSummary
from ._status import GuardedRoot, QuietSite, StatusService, requestHeader
from ._statusauth import StatusToken
from ._statuspage import COMMON_HEADERS, CSP, renderPage
from ._upstreammetrics import combineUpstreams

if TYPE_CHECKING:
    from ._workers import Supervisor, WorkerState

__all__ = ["makeWorkersStatusService", "mergeMetrics", "sumCounters"]

_log = Logger(namespace="twisted_socks.status")

_SESSION_FIELDS = tuple(f.name for f in fields(SessionInfo))


def sumCounters(counters: Iterable[dict[str, Any]]) -> CounterSummary:
    """
    The counters of several workers (each as in C{/sessions}) added up;
    the sessions active in each state likewise.
    """
    totals: dict[str, Any] = {}
    byState: dict[str, int] = {}
    for summary in counters:
        for f in fields(CounterSummary):
            if f.name == "activeByState":
                for state, count in summary.get(f.name, {}).items():
                    byState[state] = byState.get(state, 0) + int(count)
            else:
                totals[f.name] = totals.get(f.name, 0) + summary.get(f.name, 0)
    for f in fields(CounterSummary):
        totals.setdefault(f.name, 0)
    totals["activeByState"] = byState
    totals["handshakeSecondsTotal"] = float(totals["handshakeSecondsTotal"])
    return CounterSummary(**totals)


class _Families:
    """A collector of metric families gathered beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        """The families."""
        return self._families


def mergeMetrics(states: Iterable[WorkerState]) -> CollectorRegistry:
    """
    A registry of every answering worker's metrics, each series labelled
    with its C{worker}, and of the supervisor's own per-worker series.
    """
    merged: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "socks_worker_up",
        "Whether the worker process answered this scrape (1) or not (0).",
        labels=["worker"],
    )
    restarts = CounterMetricFamily(
        "socks_worker_restarts",
        "Times the supervisor restarted the worker after it died.",
        labels=["worker"],
    )
    for state in states:
        worker = str(state.index)
        up.add_metric([worker], 0 if state.snapshot is None else 1)
        restarts.add_metric([worker], state.restarts)
        if state.snapshot is None:
            continue
        for family in text_string_to_metric_families(state.snapshot["metrics"]):
            target = merged.get(family.name)
            if target is None:
                target = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                merged[family.name] = target
            for sample in family.samples:
                target.add_sample(
                    sample.name,
                    {**sample.labels, "worker": worker},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), up, restarts]))
    return registry


def _sessions(states: Iterable[WorkerState]) -> list[tuple[int, SessionInfo]]:
    """
    Every answering worker's sessions with its number, oldest first; a
    worker whose answer does not fit is marked as failed instead.
    """
    sessions: list[tuple[int, SessionInfo]] = []
    for state in states:
        if state.snapshot is None:
            continue
        try:
            mine = [(state.index, _sessionInfo(s)) for s in state.snapshot["sessions"]]
        except (TypeError, KeyError):
            state.error = "its snapshot does not fit"
            state.snapshot = None
            continue
        sessions.extend(mine)
    sessions.sort(key=lambda pair: (pair[1].started, pair[0], pair[1].id))
    return sessions


def _sessionInfo(fromWorker: dict[str, Any]) -> SessionInfo:
    """
    A worker's session as its snapshot says it (a UDP association's counts
    are a mapping there).

    @raise TypeError: for a snapshot that does not fit.
    @raise KeyError: likewise.
    """
    values = {name: fromWorker[name] for name in _SESSION_FIELDS}
    if values["udp"] is not None:
        values["udp"] = UDPStats(**values["udp"])
    return SessionInfo(**values)


def _counters(states: Iterable[WorkerState]) -> CounterSummary:
    return sumCounters(
        state.snapshot.get("counters", {})
        for state in states
        if state.snapshot is not None
    )


def _workers(states: Iterable[WorkerState]) -> list[dict[str, Any]]:
    """What C{/sessions} says about each worker."""
    return [
        {
            "worker": state.index,
            "pid": state.pid,
            "restarts": state.restarts,
            "sessions": (
                len(state.snapshot["sessions"]) if state.snapshot is not None else None
            ),
            "error": state.error,
        }
        for state in states
    ]


class _WorkersResource(Resource):
    """
    A leaf rendered from the workers' snapshots, gathered when the request
    comes (so the answer is asynchronous).
    """

    isLeaf = True

    def __init__(self, reactor: Any, supervisor: Supervisor) -> None:
        super().__init__()
        self._reactor = reactor
        self._supervisor = supervisor

    def render_GET(self, request: Request) -> int:
        """Ask every worker, then answer."""
        gone: list[object] = []
        request.notifyFinish().addBoth(gone.append)

        def respond(states: list[WorkerState]) -> None:
            if gone:
                return  # the client left meanwhile
            contentType, body = self.renderStates(states, request)
            for name, value in COMMON_HEADERS.items():
                request.setHeader(name, value)
            request.setHeader(b"content-type", contentType)
            request.write(body)
            request.finish()

        def failed(reason: Failure) -> None:
            _log.failure("the status page failed", reason)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        self._supervisor.snapshots().addCallback(respond).addErrback(failed)
        return NOT_DONE_YET

    def renderStates(
        self, states: list[WorkerState], request: Request
    ) -> tuple[bytes, bytes]:
        """The content type and body for these worker states."""
        raise NotImplementedError()


class _WorkersPage(_WorkersResource):
    """C{/}: the HTML page, all workers' sessions in one table."""

    def renderStates(
        self, states: list[WorkerState], request: Request
    ) -> tuple[bytes, bytes]:
        """Render the summed counters and the merged session table."""
        sessions = _sessions(states)
        request.setHeader(b"content-security-policy", CSP)
        now = self._reactor.seconds()
        upstreams = combineUpstreams(
            (s.snapshot.get("upstreams", []) for s in states if s.snapshot is not None),
            now,
        )
        page = renderPage(
            [info for _, info in sessions],
            _counters(states),
            now,
            workers=[worker for worker, _ in sessions],
            upstreams=upstreams,
        )
        return b"text/html; charset=utf-8", page.encode("utf-8")


class _WorkersSessions(_WorkersResource):
    """C{/sessions}: JSON, as a single server's, plus the workers."""

    def renderStates(
        self, states: list[WorkerState], request: Request
    ) -> tuple[bytes, bytes]:
        """Render the merged session table and the summed counters as JSON."""
        sessions = _sessions(states)
        answer = {
            "now": self._reactor.seconds(),
            "sessions": [
                {**{n: getattr(info, n) for n in _SESSION_FIELDS}, "worker": worker}
                for worker, info in sessions
            ],
            "counters": _counters(states).asDict(),
            "workers": _workers(states),
        }
        return b"application/json", json.dumps(answer, indent=1).encode("ascii") + b"\n"


class _WorkersMetrics(_WorkersResource):
    """C{/metrics}: every worker's metrics, labelled, in one exposition."""

    def renderStates(
        self, states: list[WorkerState], request: Request
    ) -> tuple[bytes, bytes]:
        """Render the merged metrics in the format the scraper accepts."""
        encoder, contentType = choose_encoder(requestHeader(request, b"accept") or "")
        return contentType.encode("ascii"), encoder(mergeMetrics(states))


class _WorkersRoot(GuardedRoot):
    """The root of the supervisor's status site."""

    def __init__(
        self,
        reactor: Any,
        supervisor: Supervisor,
        allowedHosts: Iterable[str] = (),
        token: StatusToken | None = None,
    ) -> None:
        super().__init__(allowedHosts, token)
        self.putChild(b"", _WorkersPage(reactor, supervisor))
        self.putChild(b"sessions", _WorkersSessions(reactor, supervisor))
        self.putChild(b"metrics", _WorkersMetrics(reactor, supervisor))


def makeWorkersStatusService(
    reactor: Any,
    description: str,
    supervisor: Supervisor,
    token: StatusToken | None = None,
) -> StatusService:
    """
    A service serving the status site of all of C{supervisor}'s workers on
    the server endpoint C{description}; every request must present
    C{token} if one is given.
    """
    endpoint = serverFromString(reactor, description)
    return StatusService(
        description,
        endpoint,
        QuietSite(_WorkersRoot(reactor, supervisor, token=token)),
        authenticated=token is not None,
    )
