"""
One shell command of a rule as a child process: started as C{shell -c} with
a bare environment, the head of its output kept, stopped with its whole
process group after a timeout, and its fate logged as one event.

The command text arrives expanded and quoted (the rules' action runner,
C{ShellActionRunner}, does that and caps how many run); this module only
runs it, without blocking the reactor.
"""

from __future__ import annotations

import os
import signal

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .._logfields import escapeField

__all__ = ["ACTION_PATH", "MAX_OUTPUT", "reportCommand", "runShellCommand"]

#: The whole environment of an action: nothing of the server's own
#: environment (credentials, C{LD_PRELOAD}, C{IFS} ...) leaks to it.
ACTION_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Bytes of standard output, and again of standard error, kept per action for
#: the log; the rest is read and dropped so that the action never blocks on a
#: full pipe.
MAX_OUTPUT = 64 * 1024


def _signal(pid: int, ownGroup: bool, signum: int) -> None:
    """Send C{signum} to process C{pid} and, if it leads one, its group."""
    try:
        if ownGroup:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


class _Capture(ProcessProtocol):
    """Keep the first bytes of each output stream; report the end."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.output = {1: bytearray(), 2: bytearray()}
        self.dropped = {1: 0, 2: 0}
        # Fires once the process has ended, with its reason in self.reason
        # (a Failure given to callback() would turn into an errback).
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()
        #: The child's pid, kept at connection (L{None} until then).
        self.pid: int | None = None

    def connectionMade(self) -> None:
        # Kept now: Twisted reaps a child that has already exited as soon
        # as it registers it, right after this, and the transport's pid is
        # then None before spawnProcess even returns.  A shell that puts a
        # job in the background and exits at once does that on a loaded
        # machine, and its process group must still be killed.
        self.pid = self.transport.pid  # type: ignore[union-attr]
        # The action reads end-of-file, never the server's standard input.
        self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        kept = self.output.setdefault(childFD, bytearray())
        room = self.cap - len(kept)
        if room > 0:
            kept += data[:room]
        self.dropped[childFD] = self.dropped.get(childFD, 0) + max(
            0, len(data) - max(room, 0)
        )

    def processEnded(self, reason: Failure) -> None:
        if not self.ended.called:
            self.reason = reason
            self.ended.callback(None)

    def text(self, childFD: int) -> str:
        """The kept output of C{childFD}, escaped for the log."""
        text = escapeField(bytes(self.output[childFD]), cap=self.cap)
        if self.dropped[childFD]:
            text += f"...[{self.dropped[childFD]} more bytes]"
        return text


async def runShellCommand(
    reactor: IReactorProcess,
    log: Logger,
    command: str,
    *,
    shell: str,
    setsid: str | None,
    timeout: float,
    killGrace: float,
) -> int | None:
    """
    Run C{command} as C{shell -c COMMAND} and wait for it to end.

    @param reactor: provides L{IReactorProcess} and L{IReactorTime}.
    @param log: where the command's one event goes (L{reportCommand}).
    @param command: the expanded command.
    @param shell: the shell.
    @param setsid: the C{setsid} program, to run the shell as the leader of
        a new session (so a timeout signals its whole process group), or
        L{None} to signal the shell alone.
    @param timeout: seconds the command may run.
    @param killGrace: seconds between SIGTERM and SIGKILL after a timeout,
        and again between SIGKILL and giving up on the output pipes.
    @return: the shell's exit status, or L{None} if it was killed by a
        signal, timed out or could not be started.
    """
    if "\0" in command:
        # No quoting can put a NUL into an argument of exec.
        reportCommand(log, LogLevel.error, "refused: NUL character", command)
        return None
    try:
        argv = [os.fsencode(shell), b"-c", os.fsencode(command)]
    except UnicodeError:
        reportCommand(log, LogLevel.error, "refused: text not encodable", command)
        return None
    if setsid is not None:
        argv.insert(0, os.fsencode(setsid))
    capture = _Capture(MAX_OUTPUT)
    try:
        transport = reactor.spawnProcess(
            capture,
            argv[0],
            argv,
            env={"PATH": ACTION_PATH},
            usePTY=False,
        )
    except Exception as e:
        reportCommand(log, LogLevel.error, f"could not start: {e}", command)
        return None
    clock = IReactorTime(reactor)
    return await _watch(
        clock, log, transport, capture, command, setsid is not None, timeout, killGrace
    )


async def _watch(
    clock: IReactorTime,
    log: Logger,
    transport: IProcessTransport,
    capture: _Capture,
    command: str,
    ownGroup: bool,
    timeout: float,
    killGrace: float,
) -> int | None:
    """Wait for the command to end, stopping it after the timeout."""
    pid = capture.pid
    timers: list[IDelayedCall] = []
    timedOut = False

    def send(signum: int) -> None:
        if pid is None:
            # Never connected: nothing of ours to signal (and never
            # killpg(0), which would be the server's own group).
            return
        if transport.pid is not None:
            # Not reaped yet (all this runs in the reactor thread, as the
            # reaping does), so the pid is still ours. setsid may not
            # have made it a group leader yet if the timeout is tiny.
            try:
                leader = ownGroup and os.getpgid(pid) == pid
            except ProcessLookupError:
                leader = False
            _signal(pid, leader, signum)
        elif ownGroup:
            # The shell is gone but something still holds its pipes. A
            # process group id is not reused while the group has members,
            # so this reaches only what is left of ours.
            _signal(pid, True, signum)

    def giveUp() -> None:
        # Processes outside the group may still hold the pipes.
        transport.loseConnection()
        capture.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))

    def timeUp() -> None:
        nonlocal timedOut
        timedOut = True
        send(signal.SIGTERM)
        timers.append(clock.callLater(killGrace, send, signal.SIGKILL))
        timers.append(clock.callLater(2 * killGrace, giveUp))

    started = clock.seconds()
    timers.append(clock.callLater(timeout, timeUp))
    try:
        await capture.ended
    finally:
        for timer in timers:
            if timer.active():
                timer.cancel()
    elapsed = clock.seconds() - started
    exitCode: int | None = None
    signum: int | None = None
    ended = capture.reason.value if capture.reason else None
    if isinstance(ended, ProcessDone | ProcessTerminated):
        exitCode = ended.exitCode
        signum = ended.signal
    if timedOut:
        outcome = f"timed out after {timeout:g} s and was killed"
        exitCode = None
    elif exitCode is not None:
        outcome = f"exited with status {exitCode}"
    else:
        outcome = f"was killed by signal {signum}"
    reportCommand(
        log,
        LogLevel.info if exitCode == 0 else LogLevel.warn,
        outcome,
        command,
        capture=capture,
        exitCode=exitCode,
        signal=signum,
        timedOut=timedOut,
        elapsed=elapsed,
    )
    return exitCode


def reportCommand(
    log: Logger,
    level: LogLevel,
    outcome: str,
    command: str,
    capture: _Capture | None = None,
    **fields: object,
) -> None:
    """
    Log the one event of a command to C{log}: C{outcome}, the command and
    what it wrote (from C{capture}, if it ran), with C{fields} added.
    """
    log.emit(
        level,
        "shell action {outcome}: {command}; stdout: {stdout}; stderr: {stderr}",
        outcome=outcome,
        command=escapeField(command, cap=4096),
        stdout=capture.text(1) if capture else "",
        stderr=capture.text(2) if capture else "",
        **fields,
    )
