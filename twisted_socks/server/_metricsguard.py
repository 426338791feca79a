"""
The server's side of L{IServerMetrics}: what it calls when no metrics are
given, and the guard around metrics that are.

The server factory holds an L{IServerMetrics} and its sessions call its
methods directly.  L{asServerMetrics} turns whatever the factory was given
into one: L{None} into L{NullMetrics} (nothing to do, nothing to guard), any
other object into a L{GuardedMetrics}, which logs and swallows an exception
from the object (monitoring never ends a session) and stands in for the
methods an object without the interface lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IServerMetrics

if TYPE_CHECKING:
    from ._factory import SessionRecord

__all__ = ["GuardedMetrics", "NullMetrics", "asServerMetrics"]

# The namespace the factory logged a failing metrics method under.
_log = Logger(namespace="twisted_socks.server")


@implementer(IServerMetrics)
class NullMetrics:
    """Metrics that do nothing: a server given no C{metrics}."""

    def sessionStarted(self, session: object) -> None:
        """Nothing to count."""

    def sessionEnded(self, record: SessionRecord) -> None:
        """Nothing to count."""

    def sessionShed(self) -> None:
        """Nothing to count."""

    def dnsLookup(self, ok: bool) -> None:
        """Nothing to count."""

    def identLookup(self, outcome: str) -> None:
        """Nothing to count."""

    def handshake(self, seconds: float) -> None:
        """Nothing to count."""


def _absent(**fields: object) -> None:
    """A method the wrapped object does not have: nothing to call."""


@implementer(IServerMetrics)
class GuardedMetrics:
    """
    An object's metrics methods, each called with the server's keyword
    arguments; an exception is logged (C{metrics <name> failed}), never
    raised.

    The methods are looked up once, here: one without the object (an object
    not providing L{IServerMetrics} may have any subset) does nothing.

    @ivar wrapped: the object given.
    """

    __slots__ = (
        "_dnsLookup",
        "_handshake",
        "_identLookup",
        "_sessionEnded",
        "_sessionShed",
        "_sessionStarted",
        "wrapped",
    )

    def __init__(self, wrapped: object) -> None:
        self.wrapped = wrapped
        self._sessionStarted = _method(wrapped, "sessionStarted")
        self._sessionEnded = _method(wrapped, "sessionEnded")
        self._sessionShed = _method(wrapped, "sessionShed")
        self._dnsLookup = _method(wrapped, "dnsLookup")
        self._identLookup = _method(wrapped, "identLookup")
        self._handshake = _method(wrapped, "handshake")

    def sessionStarted(self, session: object) -> None:
        """Tell the object; log what it raises."""
        try:
            self._sessionStarted(session=session)
        except Exception:
            _log.failure("metrics {name} failed", name="sessionStarted")

    def sessionEnded(self, record: SessionRecord) -> None:
        """Tell the object; log what it raises."""
        try:
            self._sessionEnded(record=record)
        except Exception:
            _log.failure("metrics {name} failed", name="sessionEnded")

    def sessionShed(self) -> None:
        """Tell the object; log what it raises."""
        try:
            self._sessionShed()
        except Exception:
            _log.failure("metrics {name} failed", name="sessionShed")

    def dnsLookup(self, ok: bool) -> None:
        """Tell the object; log what it raises."""
        try:
            self._dnsLookup(ok=ok)
        except Exception:
            _log.failure("metrics {name} failed", name="dnsLookup")

    def identLookup(self, outcome: str) -> None:
        """Tell the object; log what it raises."""
        try:
            self._identLookup(outcome=outcome)
        except Exception:
            _log.failure("metrics {name} failed", name="identLookup")

    def handshake(self, seconds: float) -> None:
        """Tell the object; log what it raises."""
        try:
            self._handshake(seconds=seconds)
        except Exception:
            _log.failure("metrics {name} failed", name="handshake")


def _method(wrapped: object, name: str) -> Callable[..., object]:
    method: Callable[..., object] | None = getattr(wrapped, name, None)
    return _absent if method is None else method


def asServerMetrics(metrics: object) -> IServerMetrics:
    """
    What a server factory calls for the C{metrics} it was given.

    @param metrics: L{None}, an L{IServerMetrics} provider, or any object
        with some of its methods.
    @return: a L{NullMetrics} for L{None}; a L{NullMetrics} or
        L{GuardedMetrics} as it is; else a L{GuardedMetrics} around
        C{metrics} (an L{IServerMetrics} provider is guarded too: the rule
        that a failing metrics method is only logged holds for every
        object).
    """
    if metrics is None:
        return NullMetrics()
    if isinstance(metrics, (NullMetrics, GuardedMetrics)):
        return metrics
    return GuardedMetrics(metrics)
