"""
The upstreams of C{--routes} on C{/metrics}: sessions carried, failures,
failovers and state, per upstream, read from the factory's router at
collection time (so a reload's new upstreams appear at the next scrape);
and on the status page, of one server or, combined, of the workers of
C{--workers} (each worker keeps its own upstream state).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "UpstreamCollector",
    "UpstreamRow",
    "combineUpstreams",
    "upstreamRows",
    "upstreamSnapshot",
]


class UpstreamCollector(Collector):
    """
    Exports each upstream of the routes in force, labelled by its name (a
    URL or C{host:port}, never with a password).

    @param factory: the server factory; its C{router} is read each time.
    @param clock: provides C{seconds()}, the clock the marks are set by.
    """

    def __init__(self, factory: Any, clock: Any) -> None:
        self._factory = factory
        self._clock = clock

    def describe(self) -> list[Any]:
        """The metric names (without samples), for the registry's checks."""
        return self._families(None)

    def collect(self) -> list[Any]:
        """The metrics now."""
        return self._families(self._factory.router)

    def _families(self, router: Any) -> list[Any]:
        label = ["upstream"]
        sessions = CounterMetricFamily(
            "socks_upstream_sessions",
            "Sessions granted through each upstream SOCKS server (--routes).",
            labels=label,
        )
        failures = CounterMetricFamily(
            "socks_upstream_failures",
            "Attempts through each upstream that failed (connection, "
            "handshake or SOCKS5 01): the ones that count toward route.maxfail.",
            labels=label,
        )
        failovers = CounterMetricFamily(
            "socks_upstream_failovers",
            "Times the next upstream of a route was tried after this one failed.",
            labels=label,
        )
        up = GaugeMetricFamily(
            "socks_upstream_up",
            "1 if the upstream is tried, 0 while it is marked bad.",
            labels=label,
        )
        badUntil = GaugeMetricFamily(
            "socks_upstream_bad_until_seconds",
            "When the upstream's bad mark expires (Unix time; 0: not marked).",
            labels=label,
        )
        now = self._clock.seconds()
        for state in router.upstreams() if router is not None else []:
            name = [state.name]
            sessions.add_metric(name, state.sessions)
            failures.add_metric(name, state.failures)
            failovers.add_metric(name, state.failovers)
            bad = state.isBad(now)
            up.add_metric(name, 0 if bad else 1)
            badUntil.add_metric(name, state.badUntil if bad else 0)
        return [sessions, failures, failovers, up, badUntil]


class UpstreamRow(NamedTuple):
    """
    One upstream as the status page lists it.

    @ivar name: its name (a URL or C{host:port}, never with a password).
    @ivar state: C{up}, C{bad until HH:MM:SS UTC}, or with workers, C{bad
        in K of N workers until ...} when only some have it marked.
    @ivar sessions: sessions it carried (over all workers).
    """

    name: str
    state: str
    sessions: int


def _clock(until: float) -> str:
    """When a bad mark expires, as the page says it."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(until))


def upstreamRows(router: Any, now: float) -> list[UpstreamRow]:
    """The upstreams of C{router} (L{None}: no routes) for the status page."""
    rows = []
    for state in router.upstreams() if router is not None else []:
        bad = state.isBad(now)
        text = f"bad until {_clock(state.badUntil)}" if bad else "up"
        rows.append(UpstreamRow(state.name, text, state.sessions))
    return rows


def upstreamSnapshot(router: Any, now: float) -> list[dict[str, Any]]:
    """
    The upstreams of C{router} as a worker's snapshot carries them: the
    counters, and C{badUntil} while marked bad at C{now} (else L{None}).
    """
    return [
        {
            "name": state.name,
            "sessions": state.sessions,
            "failures": state.failures,
            "failovers": state.failovers,
            "badUntil": state.badUntil if state.isBad(now) else None,
        }
        for state in (router.upstreams() if router is not None else [])
    ]


def combineUpstreams(
    snapshots: Iterable[list[dict[str, Any]]], now: float
) -> list[UpstreamRow]:
    """
    The upstreams of several workers' snapshots (L{upstreamSnapshot}) as one
    table, in the order first seen: sessions summed; C{up} if no worker has
    it marked bad; C{bad until} the latest expiry if every worker that lists
    it does; else C{bad in K of N workers until} the latest (the others
    still try it).  An entry that does not fit is passed over.
    """
    sessions: dict[str, int] = {}
    listedBy: dict[str, int] = {}
    marks: dict[str, list[float]] = {}
    for upstreams in snapshots:
        for entry in upstreams if isinstance(upstreams, list) else []:
            try:
                name = str(entry["name"])
                count = int(entry["sessions"])
                raw = entry.get("badUntil")
                until = None if raw is None else float(raw)
            except (TypeError, KeyError, ValueError, AttributeError):
                continue
            sessions[name] = sessions.get(name, 0) + count
            listedBy[name] = listedBy.get(name, 0) + 1
            if until is not None and until > now:
                marks.setdefault(name, []).append(until)
    rows = []
    for name, count in sessions.items():
        bad = marks.get(name, [])
        if not bad:
            text = "up"
        elif len(bad) == listedBy[name]:
            text = f"bad until {_clock(max(bad))}"
        else:
            text = f"bad in {len(bad)} of {listedBy[name]} workers until"
            text += f" {_clock(max(bad))}"
        rows.append(UpstreamRow(name, text, count))
    return rows
