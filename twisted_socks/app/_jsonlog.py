"""
JSON-lines logging: one JSON object per log event, one per line.

Every event has C{time}, C{level}, C{namespace} and C{text}; the per-session
records (namespace C{twisted_socks.session}) also carry all their fields
(client, user, ident, command, destination, resolved, reply, bytes each way,
duration, rule, reason), ready for a log shipper.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

from .._logfields import escapeLines
from ..server._factory import SessionRecord

__all__ = ["JSONLinesObserver"]

_SESSION_FIELDS = SessionRecord.__slots__


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON to C{out}, and flushes.

    @param out: a text file (or anything with C{write} and C{flush}).
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        """Write C{event}."""
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": event.get("log_time"),
            "level": getattr(level, "name", None),
            "namespace": event.get("log_namespace"),
            "text": escapeLines(formatEvent(event)),
        }
        if event.get("log_namespace") == "twisted_socks.session":
            record.update({name: event.get(name) for name in _SESSION_FIELDS})
        failure = event.get("log_failure")
        if failure is not None:
            record["failure"] = escapeLines(failure.getTraceback())
        # Fields are already escaped where clients control them, and the
        # text and traceback once more (escapeLines), so that no decoded
        # string holds a control character; json.dumps escapes the rest, so
        # one event can never span two lines.
        self._out.write(json.dumps(record, default=str, ensure_ascii=True) + "\n")
        self._out.flush()
