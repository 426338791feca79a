"""
The process services a server process runs (one serving, a worker, or a
supervisor of workers; L{twisted_socks.app._compose} puts them together): the
top service (which chooses twistd's log observer), where twistd's log goes,
SIGHUP reloads, SIGTERM as an orderly stop (with a grace period for the
sessions of a serving process), and listeners whose bind error is one line.
"""

from __future__ import annotations

import signal
import sys
from typing import IO, TYPE_CHECKING, Any, Protocol

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.logfile import LogFile

if TYPE_CHECKING:
    from ..server._factory import SOCKSv4ServerFactory

__all__ = [
    "GracefulShutdown",
    "ListenService",
    "NothingToReload",
    "OneLineListenErrors",
    "ReloadOnHangup",
    "Reloadable",
    "StopOnTerminate",
    "TopService",
    "cannotListen",
    "logFile",
    "logSink",
]

# The namespace these services logged under in twisted_socks.app._tap.
_log = Logger(namespace="twisted_socks.tap")


class Reloadable(Protocol):
    """What L{ReloadOnHangup} reloads: the rules, or the workers' rules."""

    def reload(self) -> object:
        """Reload; errors are logged, never raised."""


class NothingToReload:
    """What SIGHUP reloads without C{--rules}: nothing, said in the log."""

    def reload(self) -> None:
        """Say so (rather than die of SIGHUP's default action)."""
        _log.info("SIGHUP: there is no --rules file to reload")


class ReloadEach:
    """What SIGHUP reloads when there are several: each, in turn."""

    def __init__(self, *reloadables: Reloadable) -> None:
        self._reloadables = reloadables

    def reload(self) -> None:
        """Reload each; one's error does not keep the next from reloading."""
        for reloadable in self._reloadables:
            try:
                reloadable.reload()
            except Exception:
                _log.failure("reload failed")


class ReloadOnHangup(service.Service):
    """Reloads the rules on SIGHUP (twistd itself does not use SIGHUP)."""

    def __init__(self, reactor: Any, reloader: Reloadable) -> None:
        self._reactor = reactor
        self._reloader = reloader
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        return super().stopService()

    def _hangup(self, signum: int, frame: Any) -> None:
        # Signal handlers may run at any point; do the work in the reactor.
        self._reactor.callFromThread(self._reloader.reload)


class TopService(service.MultiService):
    """
    The service twistd runs. It also chooses how twistd logs (JSON lines;
    with workers, their lines copied where this process logs; text, more
    cheaply than twistd would): twistd uses an ILogObserver component of
    the application, if there is one, instead of its own observer, so this
    service sets one on the application it is added to.
    """

    logObserver: Any = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.logObserver)


def logFile(twistdOptions: Any) -> IO[str]:
    """
    The file twistd's text log goes to: standard output, or the log file of
    C{--logfile} (C{twistd.log} when daemonized). Without twistd (the
    launcher) it is standard output.
    """
    options = twistdOptions if twistdOptions is not None else {}
    name = options.get("logfile")
    if name == "-" or (options.get("nodaemon", True) and not name):
        return sys.stdout
    logFile: IO[str] = LogFile.fromFullPath(name or "twistd.log")
    return logFile


def logSink(twistdOptions: Any) -> IO[str] | None:
    """L{logFile}, or L{None} when twistd logs to syslog (C{--syslog})."""
    if twistdOptions is not None and twistdOptions.get("syslog"):
        return None
    return logFile(twistdOptions)


class StopOnTerminate(service.Service):
    """
    Makes SIGTERM an orderly stop that exits 0: the reactor stops, which
    stops every service (see L{GracefulShutdown} for what the
    server's sessions get).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        # Twisted's own SIGTERM handler makes twistd re-raise the signal
        # after shutdown, so the process "dies of SIGTERM"; an orderly stop
        # should exit 0, so our handler just stops the reactor (which runs
        # stopService below). twistd starts services before the reactor
        # installs its handlers, so ours goes in once the reactor runs.
        self._reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._terminate)

    def _terminate(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._stopReactor)

    def _stopReactor(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        if self._stopping:
            # A second SIGTERM (systemd signals every process of the unit,
            # an impatient administrator) must not cut the drain short.
            _log.info("SIGTERM again: still draining sessions")
            return
        self._stopping = True
        _log.info("SIGTERM: no new clients; draining sessions")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping for another reason (SIGINT)


class GracefulShutdown(StopOnTerminate):
    """
    On shutdown (SIGTERM), lets established sessions finish for up to
    C{grace} seconds, then closes the rest. The listeners stop at once:
    their own services stop alongside this one.
    """

    def __init__(
        self, reactor: Any, factory: SOCKSv4ServerFactory, grace: float
    ) -> None:
        super().__init__(reactor)
        self._factory = factory
        self._grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()
        done: Deferred[None] = Deferred()
        deadline = self._reactor.seconds() + self._grace
        if self._factory.activeSessions:
            _log.info(
                "shutting down: {count} sessions have {grace} s to finish",
                count=len(self._factory.activeSessions),
                grace=self._grace,
            )

        def check() -> None:
            sessions = self._factory.activeSessions
            if not sessions:
                done.callback(None)
            elif self._reactor.seconds() >= deadline:
                _log.info(
                    "closing {count} sessions at the deadline", count=len(sessions)
                )
                for session in list(sessions):
                    session.abort("server shutdown")
                # The aborts complete on the reactor's next turn.
                self._reactor.callLater(0, done.callback, None)
            else:
                self._reactor.callLater(0.05, check)

        check()
        return done


def cannotListen(programName: str, description: str, error: CannotListenError) -> None:
    """Say that a listener could not be bound, in one line, and exit 1."""
    # twistd would print a traceback; an administrator needs one line.
    sys.stderr.write(
        f"{programName}: cannot listen on {description}: {error.socketError or error}\n"
    )
    sys.exit(1)


class OneLineListenErrors(service.Service):
    """Starts a listening service; a bind error is one line, not a traceback."""

    def __init__(self, inner: Any, description: str, programName: str) -> None:
        self._inner = inner
        self._description = description
        self._programName = programName

    def privilegedStartService(self) -> None:
        try:
            self._inner.privilegedStartService()
        except CannotListenError as e:
            cannotListen(self._programName, self._description, e)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._inner.startService()

    def stopService(self) -> Any:
        super().stopService()
        return self._inner.stopService()


class ListenService(StreamServerEndpointService):
    """Listens before privileges are dropped; a bind error is one clear line."""

    def __init__(
        self,
        description: str,
        endpoint: Any,
        factory: Any,
        programName: str = "twistd socks",
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.programName = programName
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            cannotListen(self.programName, self.description, e)
        if self._waitingForPort is not None:
            self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        # The real address matters with port 0 (tests, scripts) and with
        # systemd-passed sockets.
        address = port.getHost()
        _log.info(
            "SOCKS4/4A server listening on {address} ({description})",
            address=address,
            description=self.description,
        )
        # Known before the first client is accepted: a CONNECT to it is
        # refused (the server must not tunnel to itself).
        self.factory.addListeningAddress(address)
        return port
