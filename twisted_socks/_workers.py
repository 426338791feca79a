"""
C{--workers N}: N worker processes serve on listening sockets they share.

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
    each worker answers on a private UNIX socket (L{twisted_socks._workerstatus}).

A worker notices when its supervisor is gone, however it went (even by
SIGKILL): its standard input is a pipe from the supervisor, which only the
supervisor's death closes; it then stops as on SIGTERM.

Which listeners can be shared: C{tcp:}, C{tcp6:}, C{unix:} and C{systemd:}
(and those inside C{haproxy:}): plain listening sockets a worker can adopt.
Any other type (C{ssl:}, a plugin's) is refused when C{--workers} is above 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import (
    ProcessExitedAlready,
    ReactorNotRunning,
)
from twisted.internet.interfaces import (
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import (
    Factory,
    ProcessProtocol,
    Protocol,
    connectionDone,
)
from twisted.logger import ILogObserver, Logger, textFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from ._services import (
    ListenService,
    OneLineListenErrors,
    ReloadOnHangup,
    StopOnTerminate,
    TopService,
    logFile,
    logSink,
)
from ._workerspec import (
    FIRST_INHERITED_FD,
    HAPROXY,
    WORKER_ENVIRONMENT,
    InheritedListener,
    WorkerSpec,
    endpointTypes,
    shareOf,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall

    from ._metrics import ServerMetrics
    from ._server import SOCKSv4ServerFactory
    from ._tap import Options

__all__ = [
    "Supervisor",
    "WorkerState",
    "addWorkerServices",
    "fetchSnapshot",
    "makeSupervisorService",
    "workerEndpoints",
    "workerLogObserver",
]

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


def workerEndpoints(
    spec: WorkerSpec, reactor: Any, trustedProxies: Sequence[Any] | None = None
) -> list[tuple[str, IStreamServerEndpoint]]:
    """
    A worker's endpoints: its inherited sockets, with their descriptions.

    @param trustedProxies: who may send PROXY headers to its C{haproxy:}
        listeners (L{twisted_socks._proxyprotocol}); loopback by default.
    """
    from ._proxyprotocol import DEFAULT_TRUSTED_PROXIES, proxyProtocolEndpoint

    result: list[tuple[str, IStreamServerEndpoint]] = []
    for listener in spec.listeners:
        # Adopted once, then the inherited descriptor is closed (the port
        # holds a duplicate), so it cannot leak into commands the worker runs.
        endpoint: IStreamServerEndpoint = AdoptedStreamServerEndpoint(
            reactor, listener.fd, listener.family
        )
        if endpointTypes(listener.description)[0] == HAPROXY:
            endpoint = proxyProtocolEndpoint(
                endpoint, trustedProxies or DEFAULT_TRUSTED_PROXIES
            )
        result.append((listener.description, endpoint))
    return result


def addWorkerServices(
    spec: WorkerSpec,
    reactor: Any,
    parent: service.MultiService,
    factory: SOCKSv4ServerFactory,
    metrics: ServerMetrics | None,
) -> None:
    """Add what a worker runs besides the server to C{parent}."""
    _log.info(
        "worker {worker} of {count}: at most {maxConnections} concurrent clients "
        "(its share of --max-connections)",
        worker=spec.index,
        count=spec.count,
        maxConnections=spec.maxConnections,
    )
    _WatchSupervisor(reactor).setServiceParent(parent)
    if spec.snapshotPath is not None and metrics is not None:
        from twisted.internet.endpoints import UNIXServerEndpoint

        snapshots = _SnapshotFactory(reactor, spec, factory, metrics)
        endpoint = UNIXServerEndpoint(reactor, spec.snapshotPath, mode=0o600)
        OneLineListenErrors(
            _snapshotService(endpoint, snapshots),
            f"unix:{spec.snapshotPath}",
            f"twisted-socks worker {spec.index}",
        ).setServiceParent(parent)


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


@implementer(IReadDescriptor)
class _SupervisorPipe:
    """
    The read end of the pipe from the supervisor (the worker's standard
    input): the supervisor never writes to it, so it becomes readable only
    at end of file, when the supervisor has exited, however it exited.
    """

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone

    def fileno(self) -> int:
        """The descriptor watched."""
        return self._fd

    def logPrefix(self) -> str:
        """How the reactor names this in its log."""
        return "supervisor pipe"

    def doRead(self) -> None:
        """Read what there is; end of file (or an error) means it is gone."""
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the pipe hang up (epoll reports a pipe whose writer
        has gone as a hang-up, without a read event) and dropped it.
        """
        self._gone()


class _WatchSupervisor(service.Service):
    """Stops the worker (gracefully, as SIGTERM does) if its supervisor dies."""

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self._reactor = reactor
        self._pipe = _SupervisorPipe(fd, self._supervisorGone)
        self._watching = False

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self._pipe.fileno(), False)
        self._reactor.addReader(self._pipe)
        self._watching = True

    def stopService(self) -> Any:
        self._unwatch()
        return super().stopService()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self._pipe)

    def _supervisorGone(self) -> None:
        if not self._watching:
            return
        self._unwatch()
        _log.warn("the supervisor is gone: stopping")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


class _SnapshotProtocol(Protocol):
    """Writes the worker's snapshot and closes: one per supervisor request."""

    def __init__(self, snapshot: bytes) -> None:
        self._snapshot = snapshot

    def connectionMade(self) -> None:
        """Answer at once; the supervisor reads to end of file."""
        if self.transport is not None:
            self.transport.write(self._snapshot)
            self.transport.loseConnection()


class _SnapshotFactory(Factory):
    """
    Answers the supervisor's snapshot requests: the worker's live sessions,
    its counters and its Prometheus metrics, as one JSON object.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
        spec: WorkerSpec,
        factory: SOCKSv4ServerFactory,
        metrics: ServerMetrics,
    ) -> None:
        self._reactor = reactor
        self._spec = spec
        self._factory = factory
        self._metrics = metrics

    def logPrefix(self) -> str:
        """How Twisted's log names the snapshot socket."""
        return "snapshots for the supervisor"

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """A protocol that answers with the snapshot as of now."""
        return _SnapshotProtocol(self.snapshot())

    def snapshot(self) -> bytes:
        """The snapshot, encoded."""
        # OpenMetrics rather than the classic text format: it keeps each
        # counter's _created sample in its family, so the supervisor can
        # parse and merge the families without renaming anything.
        from prometheus_client.openmetrics.exposition import generate_latest

        sessions = self._factory.sessions()
        answer = {
            "worker": self._spec.index,
            "pid": os.getpid(),
            "now": self._reactor.seconds(),
            "sessions": [asdict(info) for info in sessions],
            "counters": self._metrics.summary(sessions).asDict(),
            "metrics": generate_latest(self._metrics.registry).decode("utf-8"),
        }
        return json.dumps(answer, separators=(",", ":")).encode("ascii")


def _snapshotService(endpoint: IStreamServerEndpoint, factory: Factory) -> Any:
    """A listening service for the snapshot socket that fails start-up loudly."""
    from twisted.application.internet import StreamServerEndpointService

    snapshots = StreamServerEndpointService(endpoint, factory)
    snapshots._raiseSynchronously = True
    return snapshots


# -- the supervisor ------------------------------------------------------------


class _HeldOnly(Factory):
    """The factory of a listener the supervisor holds: it never accepts."""

    noisy = False

    def logPrefix(self) -> str:
        """How Twisted's log names the listener."""
        return "listener shared by the workers"

    def buildProtocol(self, addr: IAddress | None) -> None:
        """Never called: the supervisor does not read its listeners."""
        return None


def _sharedListenService(
    description: str, endpoint: IStreamServerEndpoint, workers: int, programName: str
) -> Any:
    """
    The supervisor's listener for one description: bound like a server's
    (before privileges are dropped, one line if it fails), then never read.
    """

    class SharedListenService(ListenService):
        """Binds a listener for the workers and holds it."""

        #: The bound port, once listening.
        port: Any = None

        def _listening(self, port: Any) -> Any:
            # Not reading it: accepting is the workers' job.  The socket
            # stays open and listening; connections queue in the kernel.
            port.stopReading()
            self.port = port
            _log.info(
                "SOCKS4/4A server listening on {address} ({description}), "
                "shared by {workers} workers",
                address=port.getHost(),
                description=self.description,
                workers=workers,
            )
            return port

        def inherited(self, fd: int) -> tuple[InheritedListener, int]:
            """What a worker is told about it, and the supervisor's descriptor."""
            listener = InheritedListener(
                fd=fd, family=self.port.socket.family, description=self.description
            )
            return listener, int(self.port.fileno())

    return SharedListenService(description, endpoint, _HeldOnly(), programName)


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
    @ivar snapshot: what it answered (see L{_SnapshotFactory}), if it did.
    @ivar error: why there is no snapshot.
    """

    index: int
    pid: int | None
    restarts: int
    snapshot: dict[str, Any] | None = None
    error: str | None = None


class _SnapshotReader(Protocol):
    """Reads one snapshot to end of file, capped in size."""

    #: Far more than the JSON of any real server's sessions (each a few
    #: hundred bytes).
    maxBytes = 64 << 20

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[dict[str, Any]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Keep it, unless there is too much."""
        self._size += len(data)
        if self._size > self.maxBytes:
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """End of file: decode what came."""
        if self.done.called:
            return
        if self._size > self.maxBytes:
            self.done.errback(ValueError("snapshot too large"))
            return
        try:
            snapshot = json.loads(b"".join(self._chunks))
        except ValueError:
            self.done.errback(ValueError("snapshot is not JSON"))
            return
        if not isinstance(snapshot, dict) or not isinstance(
            snapshot.get("sessions"), list
        ):
            self.done.errback(ValueError("snapshot has no sessions"))
            return
        self.done.callback(snapshot)


class _SnapshotClient(Factory):
    """Connects one L{_SnapshotReader}; quietly (one per worker per request)."""

    noisy = False

    def __init__(self, reader: _SnapshotReader) -> None:
        self._reader = reader

    def buildProtocol(self, addr: IAddress | None) -> _SnapshotReader:
        """The reader."""
        return self._reader


def fetchSnapshot(reactor: Any, path: str, timeout: float) -> Deferred[dict[str, Any]]:
    """A worker's snapshot, read from its UNIX socket at C{path}."""
    from twisted.internet.endpoints import UNIXClientEndpoint

    reader = _SnapshotReader()
    connecting = UNIXClientEndpoint(reactor, path, timeout=timeout).connect(
        _SnapshotClient(reader)
    )
    result: Deferred[dict[str, Any]] = connecting.addCallback(lambda _: reader.done)

    def tooSlow() -> None:
        if reader.transport is not None:
            reader.transport.abortConnection()  # type: ignore[attr-defined]
        elif not connecting.called:
            connecting.cancel()

    timer = reactor.callLater(timeout, tooSlow)

    def stopTimer(outcome: object) -> object:
        if timer.active():
            timer.cancel()
        return outcome

    return result.addBoth(stopTimer)


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


def makeSupervisorService(reactor: Any, options: Options) -> service.MultiService:
    """
    The service of a server with C{--workers} above 1: the shared listeners,
    the supervisor, signal handling and, with C{--status}, the status site
    over all workers.
    """
    top = TopService()
    twistdOptions = getattr(options, "parent", None)
    # The workers' lines are already formatted: they are written as they
    # are to the file this process logs to, with this process's own lines.
    sink: IO[str] | None
    if options["log-format"] == "json":
        from ._jsonlog import JSONLinesObserver

        sink = logFile(twistdOptions)
        top.logObserver = JSONLinesObserver(sink)
    else:
        sink = logSink(twistdOptions)
        if sink is not None:
            top.logObserver = textFileLogObserver(sink)
    listeners = []
    for description, endpoint in options["endpoints"]:
        listening = _sharedListenService(
            description, endpoint, options["workers"], options.programName
        )
        listening.setServiceParent(top)
        listeners.append(listening)
    supervisor = Supervisor(
        reactor,
        argv=options.argv,
        count=options["workers"],
        maxConnections=options["max-connections"],
        listeners=listeners,
        relay=_relayTo(sink),
        grace=options["shutdown-grace"],
        snapshots=options["status"] is not None,
        rules=options["rules"] is not None,
    )
    supervisor.setServiceParent(top)
    StopOnTerminate(reactor).setServiceParent(top)
    ReloadOnHangup(reactor, supervisor).setServiceParent(top)
    if options["status"] is not None:
        from ._workerstatus import makeWorkersStatusService

        status = makeWorkersStatusService(
            reactor, options["status"], supervisor, token=options["status-token"]
        )
        OneLineListenErrors(
            status, options["status"], options.programName
        ).setServiceParent(top)
    return top


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
