"""
The text log of the launcher and of C{twistd socks}: the lines twistd writes,
at less cost.

Twisted's C{textFileLogObserver} formats every event's timestamp from
scratch (a time-zone lookup and C{strftime}), runs the event's format string
through C{string.Formatter}, and flushes after every line.  With one session
record per connection that was about an eighth of the server's CPU time in
the handshake benchmark.  This observer writes the same lines, but:

  - formats the timestamp once per second;
  - takes a session record's text as the server already rendered it (the
    C{summary} field, see L{twisted_socks.server._factory}) instead of formatting it
    again;
  - flushes at most a fraction of a second after a line is written, not per
    line, when given a C{callLater} (and always when the reactor stops).

Fields from the client's side are escaped where they are logged; any line
that still holds an unprintable character (say, a traceback quoting one) is
escaped here as well (L{escapeLines}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent, formatTime
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import escapeLines

__all__ = ["TextLinesObserver"]


@implementer(ILogObserver)
class TextLinesObserver:
    """
    Write events as C{twistd}'s text log does:
    C{2026-11-21T12:00:00+0000 [namespace#level] text}.

    @param out: where lines go.
    @param callLater: if given (a reactor's C{callLater}), lines are flushed
        at most C{flushDelay} seconds after they are written; otherwise after
        every line.
    @param flushDelay: see C{callLater}.
    """

    def __init__(
        self,
        out: IO[str],
        callLater: Callable[..., Any] | None = None,
        flushDelay: float = 0.2,
    ) -> None:
        self._out = out
        self._callLater = callLater
        self._flushDelay = flushDelay
        self._flushPending = False
        self._second: int | None = None
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> None:
        """Write one event as one line (continuation lines indented)."""
        when = event.get("log_time")
        if when is None:
            stamp = "-"
        else:
            second = int(when)
            if second != self._second:
                self._second = second
                self._stamp = formatTime(when)
            stamp = self._stamp
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        if event.get("log_format") == "{summary}" and "summary" in event:
            text = str(event["summary"])
        else:
            text = formatEvent(event)
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            text = f"{text}\n{failure.getTraceback()}"
        if not text:
            return
        text = escapeLines(text)
        text = text.replace("\n", "\n\t")
        self._out.write(f"{stamp} [{system}] {text}\n")
        if self._callLater is None:
            self._out.flush()
        elif not self._flushPending:
            self._flushPending = True
            self._callLater(self._flushDelay, self.flush)

    def flush(self) -> None:
        """Write out whatever is buffered."""
        self._flushPending = False
        self._out.flush()
