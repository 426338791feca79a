"""
C{--workers N}: N worker processes serve on listening sockets they share;
this module is the supervisor that runs them (the worker's own side is
L{twisted_socks.app._workerchild}, the snapshots they exchange
L{twisted_socks.app._snapshots}, and L{twisted_socks.app._compose} builds both).

The process the administrator starts (under twistd or the launcher) becomes
a supervisor.  It binds every listener itself, before twistd drops
privileges, and never accepts on them: it passes them to N workers as
inherited file descriptors 3, 4, ...  Each worker is the lean launcher
(C{python -m twisted_socks serve}, the same options) in worker mode, told
by the environment variable L{WORKER_ENVIRONMENT} which descriptors to
adopt (C{IReactorSocket.adoptStreamPort}) and what share of the limits is
its own.  All workers wait on the same sockets and the kernel hands each
new connection to one of them.

The supervisor:
  - restarts a worker that dies, after a delay that doubles while workers
    keep dying soon after they start (so a crash loop does not spin);
  - forwards SIGHUP (reload the rules) to every worker;
  - on SIGTERM forwards it, waits for the workers' graceful shutdown
    (C{--shutdown-grace}, then a margin, then SIGKILL), and exits 0;
  - copies the workers' log lines, whole, to its own log;
  - with C{--status}, serves the status site itself, built from snapshots
    each worker answers on a private UNIX socket (L{twisted_socks.app._workerstatus}).

A worker notices when its supervisor is gone, however it went (even by
SIGKILL): its standard input is a pipe from the supervisor, which only the
supervisor's death closes; it then stops as on SIGTERM
(L{twisted_socks.app._workerchild}).

Which listeners can be shared: C{tcp:}, C{tcp6:}, C{unix:} and C{systemd:}
(and those inside C{haproxy:}): plain listening sockets a worker can adopt.
Any other type (C{ssl:}, a plugin's) is refused when C{--workers} is above 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._snapshots import fetchSnapshot
from ._workerspec import (
    FIRST_INHERITED_FD,
    WORKER_ENVIRONMENT,
    WorkerSpec,
    shareOf,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["Supervisor", "WorkerState"]

_log = Logger(namespace="twisted_socks.workers")

#: Restart delays: the first after a worker that ran at least
#: L{_STABLE_SECONDS}, doubling (up to the last) while a worker keeps dying
#: sooner than that.
_FIRST_DELAY = 0.25
_MAX_DELAY = 30.0
_STABLE_SECONDS = 10.0

#: Seconds past C{--shutdown-grace} that workers get to exit before they are
#: killed: closing the remaining sessions and the log take a moment.
_KILL_MARGIN = 5.0

#: The longest directory path the snapshot sockets may be put in: the
#: socket's name (C{worker-256.sock}) must still fit the 108 bytes of a
#: UNIX socket address.
_MAX_SOCKET_DIRECTORY = 90

#: A worker's log line is copied once it is complete; a "line" longer than
#: this (a runaway write without newlines) is copied in pieces instead.
_MAX_LINE = 1 << 20


@dataclass
class _Slot:
    """One worker position: the process filling it now, and its history."""

    index: int
    process: Any = None
    pid: int | None = None
    startedAt: float = 0.0
    #: Deaths in a row, each soon after its start: the restart delay
    #: doubles with each.
    failures: int = 0
    restarts: int = 0
    pendingStart: IDelayedCall | None = None
    snapshotPath: str | None = None
    ended: Deferred[None] = field(default_factory=Deferred)


class _WorkerProtocol(ProcessProtocol):
    """
    The supervisor's side of one worker process: copies its log lines and
    tells the supervisor when it ends.
    """

    def __init__(self, supervisor: Supervisor, slot: _Slot) -> None:
        self._supervisor = supervisor
        self._slot = slot
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        """Copy complete log lines (a partial one waits for its end)."""
        self._out = self._copy(self._out + data, self._supervisor.relayLog)

    def errReceived(self, data: bytes) -> None:
        """Log what the worker wrote to standard error (a crash, a warning)."""
        self._err = self._copy(self._err + data, self._logError)

    def _copy(self, buffered: bytes, emit: Callable[[str], None]) -> bytes:
        end = buffered.rfind(b"\n") + 1
        if end == 0 and len(buffered) > _MAX_LINE:
            end = len(buffered)
        if end:
            emit(buffered[:end].decode("utf-8", "replace"))
        return buffered[end:]

    def _logError(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                _log.warn(
                    "worker {worker} (pid {pid}): {line}",
                    worker=self._slot.index,
                    pid=self._slot.pid,
                    line=line,
                )

    def processEnded(self, reason: Failure) -> None:
        """Flush what is left of its output; the supervisor decides what next."""
        if self._out:
            self._supervisor.relayLog(self._out.decode("utf-8", "replace") + "\n")
        if self._err:
            self._logError(self._err.decode("utf-8", "replace"))
        self._out = self._err = b""
        self._supervisor.workerEnded(self._slot, reason)


def _howItEnded(reason: Failure) -> str:
    """A process's end, in words: C{exited with status 1}, C{killed by SIGKILL}."""
    value = reason.value
    signalNumber = getattr(value, "signal", None)
    if signalNumber:
        try:
            return f"was killed by {signal.Signals(signalNumber).name}"
        except ValueError:
            return f"was killed by signal {signalNumber}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


class Supervisor(service.Service):
    """
    Runs C{count} worker processes on the shared listeners, restarts them,
    forwards SIGHUP, stops them on shutdown.

    @param reactor: provides C{IReactorProcess} and C{IReactorTime}.
    @param argv: the server options the workers get (the supervisor's own).
    @param count: how many workers.
    @param maxConnections: C{--max-connections}, split between the workers.
    @param listeners: the listening services whose sockets are shared.
    @param relay: where the workers' log lines go (whole lines of text).
    @param grace: C{--shutdown-grace}: how long workers may drain on stop.
    @param snapshots: whether the workers answer snapshots (for C{--status}).
    @param rules: whether the workers have a rules file (for SIGHUP to reload).
    @param python: the interpreter the workers run.
    """

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        count: int,
        maxConnections: int,
        listeners: Sequence[Any],
        relay: Callable[[str], None],
        grace: float,
        snapshots: bool = False,
        rules: bool = False,
        python: str = sys.executable,
    ) -> None:
        self._reactor = reactor
        self._argv = list(argv)
        self.count = count
        self._maxConnections = maxConnections
        self._listeners = list(listeners)
        self.relayLog = relay
        self._grace = grace
        self._snapshots = snapshots
        self._rules = rules
        self._python = python
        self._stopping = False
        self._directory: str | None = None
        #: The worker positions, 1 to C{count}.
        self.slots = [_Slot(index) for index in range(1, count + 1)]

    def startService(self) -> None:
        """Start every worker (the listeners are bound by now)."""
        super().startService()
        if self._snapshots:
            # Private to this user: the snapshots name every client.
            self._directory = tempfile.mkdtemp(prefix="twisted-socks-workers-")
            if len(self._directory) > _MAX_SOCKET_DIRECTORY:
                # A UNIX socket's path is limited (108 bytes on Linux); a
                # long TMPDIR would make every worker fail to start.
                os.rmdir(self._directory)
                self._directory = tempfile.mkdtemp(
                    prefix="twisted-socks-workers-", dir="/tmp"
                )
            for slot in self.slots:
                slot.snapshotPath = os.path.join(
                    self._directory, f"worker-{slot.index}.sock"
                )
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> None:
        slot.pendingStart = None
        if self._stopping:
            return
        inherited = []
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for number, listening in enumerate(self._listeners):
            listener, fd = listening.inherited(FIRST_INHERITED_FD + number)
            inherited.append(listener)
            childFDs[listener.fd] = fd
        spec = WorkerSpec(
            index=slot.index,
            count=self.count,
            maxConnections=shareOf(self._maxConnections, self.count, slot.index),
            listeners=tuple(inherited),
            snapshotPath=slot.snapshotPath,
        )
        slot.startedAt = self._reactor.seconds()
        try:
            if slot.snapshotPath is not None and os.path.exists(slot.snapshotPath):
                # Left by the worker this one replaces, if it was killed.
                os.unlink(slot.snapshotPath)
            # The worker starts with SIGHUP blocked (a new process inherits
            # the signal mask): a reload forwarded while it is starting
            # waits until it can handle it, instead of killing it with the
            # signal's default action.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            try:
                slot.process = self._reactor.spawnProcess(
                    _WorkerProtocol(self, slot),
                    self._python,
                    [self._python, "-m", "twisted_socks", "serve", *self._argv],
                    env=_workerEnvironment(spec),
                    childFDs=childFDs,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        except OSError as e:
            # Out of processes or descriptors, say: try again later, as if
            # the worker had died at once.
            slot.process = slot.pid = None
            self._restartLater(slot, f"could not be started ({e})")
            return
        slot.pid = slot.process.pid
        _log.info("worker {worker} started: pid {pid}", worker=slot.index, pid=slot.pid)

    def workerEnded(self, slot: _Slot, reason: Failure) -> None:
        """A worker process ended: restart it, unless the server is stopping."""
        slot.process = None
        ended, slot.ended = slot.ended, Deferred()
        how = _howItEnded(reason)
        if self._stopping:
            _log.info(
                "worker {worker} (pid {pid}) {how}",
                worker=slot.index,
                pid=slot.pid,
                how=how,
            )
        else:
            self._restartLater(slot, f"(pid {slot.pid}) {how}")
        ended.callback(None)

    def _restartLater(self, slot: _Slot, what: str) -> None:
        """Start C{slot}'s worker again, after the crash-loop backoff."""
        uptime = self._reactor.seconds() - slot.startedAt
        if uptime >= _STABLE_SECONDS:
            slot.failures = 0
        delay = min(_FIRST_DELAY * 2 ** min(slot.failures, 16), _MAX_DELAY)
        slot.failures += 1
        slot.restarts += 1
        _log.error(
            "worker {worker} {what} after {uptime:.1f} s; restarting it in {delay} s",
            worker=slot.index,
            what=what,
            uptime=uptime,
            delay=delay,
        )
        slot.pendingStart = self._reactor.callLater(delay, self._start, slot)

    def reload(self) -> None:
        """Forward SIGHUP: every running worker reloads its rules."""
        if not self._rules:
            _log.info("SIGHUP: there is no --rules file to reload")
            return
        running = [slot for slot in self.slots if slot.process is not None]
        _log.info("SIGHUP: reloading the rules in {count} workers", count=len(running))
        for slot in running:
            self._signal(slot, "HUP")

    def _signal(self, slot: _Slot, name: str) -> None:
        try:
            slot.process.signalProcess(name)
        except (ProcessExitedAlready, OSError, AttributeError):
            pass  # it ended meanwhile; workerEnded deals with that

    def stopService(self) -> Deferred[None]:
        """Stop every worker gracefully, then (past the grace) kill the rest."""
        super().stopService()
        self._stopping = True
        waiting = []
        for slot in self.slots:
            if slot.pendingStart is not None and slot.pendingStart.active():
                slot.pendingStart.cancel()
            slot.pendingStart = None
            if slot.process is not None:
                waiting.append(slot.ended)
                self._signal(slot, "TERM")
        if waiting:
            _log.info(
                "stopping {count} workers (they have {grace} s to finish sessions)",
                count=len(waiting),
                grace=self._grace,
            )
        killer = self._reactor.callLater(
            self._grace + _KILL_MARGIN, self._killRemaining
        )
        done: Deferred[Any] = gatherResults(waiting)

        def finished(result: object) -> None:
            if killer.active():
                killer.cancel()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)

        return done.addBoth(finished)

    def _killRemaining(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                _log.warn(
                    "worker {worker} (pid {pid}) did not stop in time: killing it",
                    worker=slot.index,
                    pid=slot.pid,
                )
                self._signal(slot, "KILL")

    def snapshots(self, timeout: float = 5.0) -> Deferred[list[WorkerState]]:
        """
        Every worker's state, with its snapshot when it answers within
        C{timeout} seconds (it may be restarting, or too busy).
        """
        return gatherResults(
            [self._state(slot, timeout) for slot in self.slots], consumeErrors=True
        )

    def _state(self, slot: _Slot, timeout: float) -> Deferred[WorkerState]:
        state = WorkerState(
            index=slot.index,
            pid=slot.pid if slot.process is not None else None,
            restarts=slot.restarts,
        )
        if slot.process is None or slot.snapshotPath is None:
            state.error = "not running" if slot.process is None else "no snapshots"
            return succeed(state)
        fetched = fetchSnapshot(self._reactor, slot.snapshotPath, timeout)

        def got(snapshot: dict[str, Any]) -> WorkerState:
            state.snapshot = snapshot
            return state

        def failed(reason: Failure) -> WorkerState:
            state.error = reason.getErrorMessage() or str(reason.type)
            return state

        return fetched.addCallbacks(got, failed)


@dataclass
class WorkerState:
    """
    One worker as the supervisor's status site shows it.

    @ivar index: its number.
    @ivar pid: its process ID, or L{None} when it is not running.
    @ivar restarts: how many times it was restarted.
    @ivar snapshot: what it answered (see L{twisted_socks.app._snapshots}), if it did.
    @ivar error: why there is no snapshot.
    """

    index: int
    pid: int | None
    restarts: int
    snapshot: dict[str, Any] | None = None
    error: str | None = None


def _workerEnvironment(spec: WorkerSpec) -> dict[str, str]:
    """A worker's environment: the supervisor's, its spec, this code's path."""
    env = dict(os.environ)
    env[WORKER_ENVIRONMENT] = spec.toJSON()
    # The workers must run this very code, even if it is not installed
    # (a checkout on sys.path).
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = here + (os.pathsep + paths if paths else "")
    # The supervisor adopted systemd's sockets; they are not the workers'.
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    return env
