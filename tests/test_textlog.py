"""
L{TextLinesObserver} writes the lines Twisted's C{textFileLogObserver} does,
and flushes within its delay instead of per line.
"""

from __future__ import annotations

import atexit
import io
import time
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, textFileLogObserver
from twisted.python.failure import Failure

from twisted_socks.app._textlog import TextLinesObserver
from twisted_socks.server._records import SessionRecord, recordFields, summaryLine

RECORD = SessionRecord(
    client="127.0.0.1:40000",
    user="ann",
    command="connect",
    destination="example.com:443",
    resolved="192.0.2.7:443",
    reply=0,
    bytesUp=1234,
    bytesDown=56789,
    duration=1.23456,
    identUser=None,
    reason="both sides closed",
    rule="rules.conf:3",
    version=5,
    auth="password",
)


def sessionEvent(when: float) -> dict[str, Any]:
    """A session record's event, as the server emits it."""
    return {
        "log_format": "{summary}",
        "summary": summaryLine(RECORD),
        **recordFields(RECORD),
        "log_namespace": "twisted_socks.session",
        "log_level": LogLevel.info,
        "log_time": when,
    }


def failureEvent(when: float) -> dict[str, Any]:
    """An event carrying a failure (a traceback on continuation lines)."""
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    return {
        "log_format": "policy failed for {who}",
        "who": "x",
        "log_failure": failure,
        "log_namespace": "twisted_socks.server",
        "log_level": LogLevel.critical,
        "log_time": when,
    }


EVENTS = {
    "session": sessionEvent,
    "failure": failureEvent,
    "system": lambda when: {
        "log_format": "two\nlines {n}",
        "n": 2,
        "log_system": "custom",
        "log_time": when,
    },
    "no time": lambda when: {"log_format": "x", "log_namespace": "n"},
    "empty": lambda when: {"log_format": "", "log_time": when},
}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_linesMatchTwisted(name: str) -> None:
    """Every kind of event is written exactly as Twisted's text observer does."""
    when = time.time()
    ours, theirs = io.StringIO(), io.StringIO()
    TextLinesObserver(ours)(EVENTS[name](when))
    textFileLogObserver(theirs)(EVENTS[name](when))
    assert ours.getvalue() == theirs.getvalue()


def test_sessionLineIsTheFormattedRecord() -> None:
    """The session summary reads as the record's fields, escaped upstream."""
    assert summaryLine(RECORD) == (
        "session 127.0.0.1:40000 connect example.com:443 resolved=192.0.2.7:443 "
        "user=ann ident=None reply=0 up=1234 down=56789 duration=1.235s "
        "proto=socks5 auth=password rule=rules.conf:3 reason=both sides closed"
    )


class CountingFile(io.StringIO):
    """Counts flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_flushesOnceWithinTheDelay() -> None:
    """A burst of lines is flushed once, C{flushDelay} after the first."""
    clock = Clock()
    out = CountingFile()
    observer = TextLinesObserver(out, clock.callLater, flushDelay=0.2)
    for i in range(100):
        observer(sessionEvent(1_000_000 + i / 10))
    assert out.flushes == 0
    assert out.getvalue().count("\n") == 100
    clock.advance(0.19)
    assert out.flushes == 0
    clock.advance(0.01)
    assert out.flushes == 1
    observer(sessionEvent(1_000_100))
    clock.advance(0.2)
    assert out.flushes == 2


def test_withoutACallLaterEveryLineIsFlushed() -> None:
    """With no reactor to schedule on, each line is flushed as written."""
    out = CountingFile()
    observer = TextLinesObserver(out)
    observer(sessionEvent(1.0))
    observer(sessionEvent(2.0))
    assert out.flushes == 2


def test_unprintableTextIsEscaped() -> None:
    """
    A line that still holds a control byte when it reaches the observer (a
    traceback quoting a client's text, say) is escaped; printable lines,
    escaped fields among them, are written as they are.
    """
    try:
        raise ValueError("bad name \x1b[31mred\x07\r")
    except ValueError:
        failure = Failure()
    event = {
        "log_format": "lookup of {name} failed (was {old})",
        "name": "\x1b]0;title\x07",
        "old": "a\\x1b",
        "log_failure": failure,
        "log_namespace": "twisted_socks.server",
        "log_level": LogLevel.warn,
        "log_time": 1_800_000_000.0,
    }
    out = io.StringIO()
    TextLinesObserver(out)(event)
    text = out.getvalue()
    # Continuation lines start with the observer's own tab.
    assert all(line.replace("\t", "").isprintable() for line in text.split("\n"))
    assert "lookup of \\x1b]0;title\\x07 failed (was a\\\\x1b)" in text
    assert "ValueError: bad name \\x1b[31mred\\x07\\x0d" in text
    assert "Traceback (most recent call last):" in text


class FakeReactor(Clock):
    """A clock that also runs C{callFromThread} calls, at once."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        """Run C{f} now (the signal handler's hand-over to the reactor)."""
        f(*args, **kwargs)


def twistdOptions(*args: str) -> Any:
    """
    twistd's own options (C{twistd ARGS socks --port 0}), parsed as twistd
    parses them: ours are their C{subOptions}, with them as C{parent}.
    """
    from twisted.scripts.twistd import ServerOptions

    config = ServerOptions()
    config.parseOptions([*args, "socks", "--port", "0"])
    return config


def test_twistdStandardOutputLogIsThisObserver(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Under C{twistd -n} without C{--logfile}, the text log goes to standard
    output through this observer: twistd's lines, flushed within the delay.
    """
    from twisted_socks.app._processlog import twistdTextObserver

    clock = FakeReactor()
    observer = twistdTextObserver(clock, twistdOptions("--nodaemon"))
    assert isinstance(observer, TextLinesObserver)
    # Not at exit: standard output is pytest's capture, closed by then.
    atexit.unregister(observer.flush)
    when = time.time()
    observer(sessionEvent(when))
    clock.advance(1)
    theirs = io.StringIO()
    textFileLogObserver(theirs)(sessionEvent(when))
    assert capsys.readouterr().out == theirs.getvalue()


def test_twistdLogFileIsWrittenAndReopenedOnSIGUSR1(tmp_path: Any) -> None:
    """
    With C{--logfile}, the lines go to that file, and SIGUSR1 rotates it as
    twistd's own file observer does (the old log becomes C{NAME.1}).
    """
    import signal

    from twisted_socks.app._processlog import twistdTextObserver

    path = tmp_path / "socks.log"
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        options = twistdOptions("--nodaemon", f"--logfile={path}")
        observer = twistdTextObserver(FakeReactor(), options)
        assert observer is not None
        atexit.unregister(observer.flush)
        observer(sessionEvent(time.time()))
        assert "reason=both sides closed" in path.read_text()
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert "reason=both sides closed" in (tmp_path / "socks.log.1").read_text()
    observer(sessionEvent(time.time()))
    assert path.read_text().count("\n") == 1


def test_twistdSyslogKeepsTwistdsSyslogObserver() -> None:
    """
    With C{--syslog} the server sets no observer of its own on the
    application, so twistd logs through its syslog observer as before.
    """
    from twisted.application.service import Application
    from twisted.logger import ILogObserver
    from twisted.python.log import ILogObserver as ILegacyLogObserver
    from twisted.python.syslog import SyslogObserver
    from twisted.scripts._twistd_unix import UnixAppLogger

    from twisted_socks.app._tap import makeService

    config = twistdOptions("--nodaemon", "--syslog", "--prefix=socks-test")
    application = Application("socks")
    makeService(config.subOptions).setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None
    assert application.getComponent(ILegacyLogObserver, None) is None
    chosen = UnixAppLogger(config)._getLogObserver()
    assert isinstance(chosen.__self__, SyslogObserver)


def test_twistdTextLogIsTheApplicationsObserver() -> None:
    """
    Without C{--syslog}, twistd finds this observer on the application and
    uses it instead of its own text observer.
    """
    from twisted.application.service import Application
    from twisted.logger import ILogObserver

    from twisted_socks.app._tap import makeService

    application = Application("socks")
    config = twistdOptions("--nodaemon")
    makeService(config.subOptions).setServiceParent(application)
    observer = application.getComponent(ILogObserver, None)
    assert isinstance(observer, TextLinesObserver)
    atexit.unregister(observer.flush)


def test_daemonLoggingToStandardOutputIsLeftToTwistd() -> None:
    """
    A daemon told to log to standard output (C{--logfile -} without
    C{--nodaemon}) gets no observer here: twistd's own refusal stands.
    """
    from twisted_socks.app._processlog import twistdTextObserver

    assert twistdTextObserver(FakeReactor(), twistdOptions("--logfile=-")) is None
