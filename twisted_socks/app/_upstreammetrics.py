"""
The upstreams of C{--routes} on C{/metrics}: sessions carried, failures,
failovers and state, per upstream, read from the factory's router at
collection time (so a reload's new upstreams appear at the next scrape).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["UpstreamCollector"]


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
