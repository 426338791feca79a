"""
The metrics seam: the server calls an L{IServerMetrics}; what it was given is
completed and guarded so that monitoring never ends a session.
"""

from __future__ import annotations

import pytest
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from tests.test_server import DEST, GRANTED, Harness, RecordingMetrics, lose
from twisted_socks import IServerMetrics, ServerMetrics
from twisted_socks.server._metricsguard import (
    GuardedMetrics,
    NullMetrics,
    asServerMetrics,
)
from twisted_socks.wire._socks4 import Command, encodeRequest


def serveOne(h: Harness) -> bytes:
    """One SOCKS4 CONNECT through C{h}, granted, then closed; the reply."""
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    h.connector.connections[0].succeed()
    lose(protocol)
    return transport.value()


@pytest.mark.parametrize(
    "metrics", [ServerMetrics(), NullMetrics(), GuardedMetrics(object())]
)
def test_implementationsProvideTheInterface(metrics: object) -> None:
    """The exported metrics, the null one and the guard all verify."""
    assert verifyObject(IServerMetrics, metrics)


def test_noMetricsMeansNullMetrics() -> None:
    """A factory given no C{metrics} calls a L{NullMetrics}, unguarded."""
    h = Harness()
    assert isinstance(h.factory.metrics, NullMetrics)
    assert serveOne(h) == GRANTED
    assert len(h.records) == 1


def test_anyObjectIsGuardedAndTheGuardIsKept() -> None:
    """
    An L{IServerMetrics} provider is guarded too; a guard or a null object
    given again is kept as it is (not wrapped twice).
    """
    metrics = ServerMetrics()
    guarded = asServerMetrics(metrics)
    assert isinstance(guarded, GuardedMetrics) and guarded.wrapped is metrics
    assert asServerMetrics(guarded) is guarded
    null = NullMetrics()
    assert asServerMetrics(null) is null


def test_aPartialObjectGetsTheMethodsItHas() -> None:
    """
    An object with only some of the methods (as the factory's C{metrics}
    parameter has always allowed) gets those calls, with the documented
    keyword arguments; the others do nothing, and nothing is logged.
    """

    class HandshakesOnly:
        """Counts handshakes, and has no other method."""

        def __init__(self) -> None:
            self.seconds: list[float] = []

        def handshake(self, seconds: float) -> None:
            """Keep the handshake time."""
            self.seconds.append(seconds)

    metrics = HandshakesOnly()
    h = Harness()
    h.factory.metrics = metrics
    with capturedLogs() as events:
        assert serveOne(h) == GRANTED
    assert metrics.seconds == [0.0]
    assert not [e for e in events if "log_failure" in e]


def test_aFailingMetricsMethodIsLoggedNeverFatal() -> None:
    """
    Every method raising: the session is served and recorded as usual, and
    each failure is logged once, naming the method.
    """

    class Broken(RecordingMetrics):
        """Records each event, then raises."""

        def __getattr__(self, name: str) -> object:
            def fail(**fields: object) -> None:
                self.events.append((name, fields))
                raise RuntimeError(name)

            return fail

    metrics = Broken()
    h = Harness()
    h.factory.metrics = metrics
    with capturedLogs() as events:
        assert serveOne(h) == GRANTED
    assert [name for name, _ in metrics.events] == [
        "sessionStarted",
        "handshake",
        "sessionEnded",
    ]
    assert len(h.records) == 1 and h.records[0].reply == 90
    failed = [e["name"] for e in events if "log_failure" in e]
    assert failed == ["sessionStarted", "handshake", "sessionEnded"]
    assert all(
        e["log_format"] == "metrics {name} failed"
        and e["log_namespace"] == "twisted_socks.server"
        for e in events
        if "log_failure" in e
    )
