"""
Which log observer each kind of server process writes through: under
twistd (its text log at a fraction of twistd's own observer's cost, or
JSON lines), a worker process of C{--workers} (its lines marked with its
number, for its supervisor to copy), and a supervisor (its own lines and
its workers', already formatted, to one place).

The composition root (L{twisted_socks.app._compose}) picks one per process;
where each writes is L{twisted_socks.app._services.logFile}.
"""

from __future__ import annotations

import atexit
import signal
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from twisted.logger import ILogObserver, Logger, textFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import implementer

from ._services import logFile, logSink

if TYPE_CHECKING:
    from ._textlog import TextLinesObserver
    from ._workerspec import WorkerSpec

__all__ = [
    "jsonObserver",
    "supervisorLog",
    "twistdTextObserver",
    "workerLogObserver",
]

# The namespace the supervisor's copies of unformatted lines had in
# twisted_socks.app._workers.
_log = Logger(namespace="twisted_socks.workers")


def twistdTextObserver(reactor: Any, twistdOptions: Any) -> TextLinesObserver | None:
    """
    twistd's text log, written by the launcher's observer: the lines
    twistd's own C{textFileLogObserver} writes, to the same place, at a
    fraction of its cost (L{twisted_socks.app._textlog}: with one record per
    session, twistd's observer made C{twistd socks} measurably slower per
    session than the launcher).

    Standard output is flushed within 0.2 s rather than per line (a log
    file is unbuffered either way), and at exit, for the lines twistd logs
    after the reactor has stopped.  A log file is reopened on SIGUSR1, as
    twistd does for its own.

    @return: L{None} where twistd's own choice must stand: C{--syslog}, and
        a daemon told to log to standard output (which twistd refuses).
    """
    if twistdOptions.get("syslog"):
        return None
    if twistdOptions.get("logfile") == "-" and not twistdOptions.get("nodaemon"):
        return None
    from ._textlog import TextLinesObserver

    sink = logFile(twistdOptions)
    if isinstance(sink, LogFile) and not signal.getsignal(signal.SIGUSR1):
        # What twistd's own file observer installs (unless SIGUSR1 is
        # taken), and in the same way: the rotation runs in the reactor.
        rotating = sink

        def rotate(signum: int, frame: Any) -> None:
            reactor.callFromThread(rotating.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    observer = TextLinesObserver(sink, reactor.callLater)
    atexit.register(observer.flush)
    return observer


def jsonObserver(twistdOptions: Any) -> ILogObserver:
    """A JSON-lines observer writing where twistd's text log would go."""
    from ._jsonlog import JSONLinesObserver

    # JSON lines make no sense in syslog: with --syslog they go to the file
    # twistd would otherwise have used.
    return JSONLinesObserver(logFile(twistdOptions))


def supervisorLog(
    logFormat: str, twistdOptions: Any
) -> tuple[ILogObserver | None, Callable[[str], None]]:
    """
    How a supervisor of workers logs: its own observer (L{None} to leave
    twistd's), and where its workers' log lines go.  The workers' lines are
    already formatted: they are written as they are to the file this
    process logs to, with this process's own lines.
    """
    sink: IO[str] | None
    observer: ILogObserver | None = None
    if logFormat == "json":
        from ._jsonlog import JSONLinesObserver

        sink = logFile(twistdOptions)
        observer = JSONLinesObserver(sink)
    else:
        sink = logSink(twistdOptions)
        if sink is not None:
            observer = textFileLogObserver(sink)
    return observer, _relayTo(sink)


def _relayTo(sink: IO[str] | None) -> Callable[[str], None]:
    """How workers' log lines reach this process's log."""
    if sink is None:
        # twistd logs to syslog: each line becomes an event of its own.
        def logLines(text: str) -> None:
            for line in text.splitlines():
                _log.info("{line}", line=line)

        return logLines

    def write(text: str) -> None:
        sink.write(text)
        sink.flush()

    return write


def workerLogObserver(
    spec: WorkerSpec,
    logFormat: str,
    out: IO[str],
    callLater: Callable[..., Any] | None = None,
) -> ILogObserver:
    """
    A worker's log observer: the format the administrator chose, on C{out},
    each event marked with the worker's number; text lines are flushed
    within a fraction of a second when C{callLater} is given.
    """
    if logFormat == "json":
        from ._jsonlog import JSONLinesObserver

        return JSONLinesObserver(_WorkerJSONLines(out, spec.index))  # type: ignore[arg-type]
    from ._textlog import TextLinesObserver

    return _WorkerTextObserver(TextLinesObserver(out, callLater), spec.index)


class _WorkerJSONLines:
    """
    A text file for L{JSONLinesObserver} that puts C{"worker": N} first in
    every object: the observer writes each event as one JSON object, in one
    call, so the object's opening brace starts every write.
    """

    def __init__(self, out: IO[str], index: int) -> None:
        self._out = out
        self._prefix = f'{{"worker": {index}, '

    def write(self, text: str) -> None:
        """Write one event's line, marked."""
        if text.startswith("{") and not text.startswith("{}"):
            text = self._prefix + text[1:]
        self._out.write(text)

    def flush(self) -> None:
        """Flush the file."""
        self._out.flush()


@implementer(ILogObserver)
class _WorkerTextObserver:
    """
    Text log lines marked with the worker's number in their system field:
    C{[twisted_socks.session#info worker=2]}.
    """

    def __init__(self, observer: ILogObserver, index: int) -> None:
        self._observer = observer
        self._mark = f" worker={index}"

    def __call__(self, event: dict[str, Any]) -> None:
        """Mark the event and pass it on."""
        system = event.get("log_system")
        if system is None:
            # What the text format shows when an event names no system.
            level = event.get("log_level")
            levelName = "-" if level is None else level.name
            system = f"{event.get('log_namespace', '-')}#{levelName}"
        self._observer({**event, "log_system": f"{system}{self._mark}"})
