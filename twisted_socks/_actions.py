"""
Shell actions of sockd.conf rules: C{%} tokens, quoting, and running them.

A classic (CSTC) sockd.conf rule line may end with C{: shell-command}; the
command runs when the line matches a request, after C{%} tokens in it are
replaced by facts about the request (see L{TOKENS}). The C{#NO_IDENTD:} and
C{#BAD_ID:} lines use the same tokens.

Several of those facts come from the client: the USERID it sends, the
SOCKS4A hostname it asks for, and the names that reverse DNS gives for its
address. The original C{percent_x.c} pasted them into the command as they
were, so a USERID of C{x; rm -rf /} ran C{rm -rf /} as the server's user.
Here every substituted value is quoted so that the shell reads it back as
exactly the original text and nothing else (L{expandTokens}).

L{expandTokens}, L{tokensUsed} and L{checkTemplate} are pure functions of
text and import nothing from Twisted; L{ShellActionRunner} runs a command
for a request without blocking the reactor.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorCore,
    IReactorProcess,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ._logfields import escapeField
from ._percent import TOKENS, UnsafeTemplate, checkTemplate, expandTokens, tokensUsed
from ._policy import AccessRequest, Decision, IdentFailure
from ._ruleset import IdentFailureHook, MatchHook, Rule

__all__ = [
    "ACTION_PATH",
    "LOG_NAMESPACE",
    "MAX_OUTPUT",
    "MAX_RUNNING",
    "TOKENS",
    "ActionContext",
    "ReverseLookups",
    "ShellActionRunner",
    "UnsafeTemplate",
    "checkTemplate",
    "contextFor",
    "expandTokens",
    "identFailureHook",
    "shellHook",
    "threadedReverseLookup",
    "tokensUsed",
]


#: The whole environment of an action: nothing of the server's own
#: environment (credentials, C{LD_PRELOAD}, C{IFS} ...) leaks to it.
ACTION_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Bytes of standard output, and again of standard error, kept per action for
#: the log; the rest is read and dropped so that the action never blocks on a
#: full pipe.
MAX_OUTPUT = 64 * 1024

#: The namespace of the runner's log events.
LOG_NAMESPACE = "twisted_socks.actions"

#: Seconds that the default reverse lookup waits for C{getnameinfo}.
REVERSE_LOOKUP_TIMEOUT = 5.0

#: Threads of the reverse lookups' own pool (L{ReverseLookups}).
REVERSE_LOOKUP_THREADS = 2

#: Reverse lookups queued or running at most (L{ReverseLookups}): twice
#: the default command cap, for a C{%A} and a C{%Z} each.
MAX_PENDING_LOOKUPS = 32

#: Seconds that L{ShellActionRunner} waits for any reverse lookup, injected
#: ones included, before using the bare address.
_LOOKUP_DEADLINE = 10.0

#: Commands that may run at once by default (C{--max-rule-commands}). Each
#: is a shell, often with a child, and holds two pipes in the server until
#: it ends; it outlives the session that started it, so the connection
#: limits do not bound them. Sixteen covers a burst of alerts; a flood of
#: refused requests then costs at most this many processes.
MAX_RUNNING = 16

#: Seconds between two log lines about commands dropped at the cap: a
#: flood must not turn into a flood of log lines.
DROP_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class ActionContext:
    """
    The facts about one request that the tokens of an action can show.

    @ivar clientAddress: the client's IP address as text; C{""} if the client
        is not on IP (a UNIX socket).
    @ivar command: C{"connect"} or C{"bind"}.
    @ivar destinationPort: the requested port.
    @ivar destinationAddress: the requested, or resolved, IP address as text;
        C{""} if not known (a SOCKS4A name not yet resolved).
    @ivar destinationName: the SOCKS4A hostname, if the request had one.
    @ivar userid: the USERID the client sent, decoded with
        C{surrogateescape}; may hold anything.
    @ivar identUser: the user name the client's ident server gave, if any.
    @ivar serverPid: the server's process id.
    """

    clientAddress: str
    command: str
    destinationPort: int
    destinationAddress: str
    destinationName: str | None
    userid: str
    identUser: str | None
    serverPid: int


def _withDeadline(
    deferred: Deferred[Any], clock: IReactorTime, seconds: float
) -> Deferred[str | None]:
    """
    Fire with C{deferred}'s result, or C{None} on failure or after C{seconds}.

    A thread's Deferred cannot be cancelled (its result would arrive later
    and fail with AlreadyCalledError), so the result is relayed instead.
    """
    result: Deferred[str | None] = Deferred()

    def deliver(name: object) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(name if isinstance(name, str) and name else None)

    timer = clock.callLater(seconds, deliver, None)
    deferred.addCallbacks(deliver, deliver)
    return result


def _getnameinfo(address: str) -> str:
    # NI_NAMEREQD: fail rather than return the address as a "name".
    return socket.getnameinfo((address, 0), socket.NI_NAMEREQD)[0]


def threadedReverseLookup(
    reactor: IReactorThreads,
    address: str,
    timeout: float = REVERSE_LOOKUP_TIMEOUT,
    pool: ThreadPool | None = None,
) -> Deferred[str | None]:
    """
    Find the name of an IP address with C{getnameinfo}, in a thread pool.

    The lookup in the thread cannot be interrupted; after C{timeout} its
    result is ignored, but it keeps a pool thread until the system resolver
    gives up. If it is still queued by then, it is skipped.

    @param reactor: provides L{IReactorThreads} and L{IReactorTime}.
    @param address: an IPv4 or IPv6 address as text.
    @param timeout: seconds to wait for the answer.
    @param pool: the thread pool; by default the reactor's, which SOCKS4A
        lookups need too (L{ReverseLookups} has a pool of its own).
    @return: a L{Deferred} that fires with the name, or C{None} when there is
        none, the lookup failed or took too long; it never fails.
    """
    if not address:
        return succeed(None)
    lookup = deferToThreadPool(
        reactor, pool or reactor.getThreadPool(), _lookUpWithin(address, timeout)
    )
    return _withDeadline(lookup, IReactorTime(reactor), timeout)


def _lookUpWithin(address: str, timeout: float) -> Callable[[], str | None]:
    """C{getnameinfo} for a thread, skipped if it starts after C{timeout}."""
    expires = time.monotonic() + timeout

    def lookUp() -> str | None:
        # Still queued at the deadline: nobody waits for the answer now.
        if time.monotonic() >= expires:
            return None
        return _getnameinfo(address)

    return lookUp


class ReverseLookups:
    """
    The reverse lookups of the C{%A}/C{%Z} tokens, in a budget of their own.

    C{getnameinfo} blocks a thread for as long as the PTR lookup takes, and
    a client chooses its address's PTR servers (and so how slow they are).
    In the reactor's thread pool, which SOCKS4A lookups (C{getaddrinfo})
    use, twelve refused requests with slow names took every thread and
    every other client's SOCKS4A request then failed. Here the lookups have
    their own small pool, started at the first lookup and stopped with the
    reactor, so they can never take a thread of the forward lookups; at
    most C{maxPending} are queued or running (beyond that, and after
    C{timeout}, the command gets the address itself).

    @ivar pool: the thread pool.
    @ivar pending: lookups queued or running, hung ones included.
    """

    def __init__(
        self,
        reactor: Any,
        threads: int = REVERSE_LOOKUP_THREADS,
        timeout: float = REVERSE_LOOKUP_TIMEOUT,
        maxPending: int = MAX_PENDING_LOOKUPS,
    ) -> None:
        """
        @param reactor: provides L{IReactorThreads}, L{IReactorTime} and
            L{IReactorCore} (to stop the pool at shutdown).
        @param threads: the most threads the pool has.
        @param timeout: seconds to wait for a name.
        @param maxPending: see above.
        """
        self._reactor = reactor
        self.timeout = timeout
        self.maxPending = maxPending
        self.pending = 0
        self.pool = ThreadPool(0, threads, name="twisted_socks reverse lookups")

    def __call__(self, address: str) -> Deferred[str | None]:
        """The name of C{address}, or C{None}; see L{threadedReverseLookup}."""
        if not address or self.pending >= self.maxPending:
            return succeed(None)
        if not self.pool.started:
            self.pool.start()
            IReactorCore(self._reactor).addSystemEventTrigger(
                "during", "shutdown", self.stop
            )
        self.pending += 1
        lookup = deferToThreadPool(
            self._reactor, self.pool, _lookUpWithin(address, self.timeout)
        )

        def done(result: object) -> object:
            # When the thread is done, which for a hung lookup is long after
            # the deadline has given the command the address.
            self.pending -= 1
            return result

        lookup.addBoth(done)
        return _withDeadline(lookup, IReactorTime(self._reactor), self.timeout)

    def stop(self) -> None:
        """Stop the pool (waiting for running lookups to return)."""
        if self.pool.started:
            self.pool.stop()


@functools.lru_cache(maxsize=1024)
def _serviceName(port: int) -> str:
    # The services database is a local file on any sensible system; cached,
    # so that the reactor thread reads it at most once per port.
    try:
        return socket.getservbyport(port, "tcp")
    except (OSError, OverflowError):
        return str(port)


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

    def connectionMade(self) -> None:
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


class ShellActionRunner:
    """
    Run the shell command of a rule for a request, without blocking the
    reactor.

    The command runs as C{shell -c COMMAND} with standard input at
    end-of-file and C{PATH=}L{ACTION_PATH} as its whole environment. Its
    standard output and error (up to L{MAX_OUTPUT} bytes each) and its fate
    are logged as one event in the C{twisted_socks.actions} namespace.

    When C{setsid} is found (util-linux; on C{ACTION_PATH}) the shell runs as
    the leader of a new session, hence of its own process group: a timeout
    then signals the whole group, so the C{finger} or C{mail} that the shell
    started, even in the background (C{&}), dies with it; and the action has
    no controlling terminal. Without C{setsid} only the shell is signalled.
    Processes that start their own session escape either way; once the
    C{timeout} is over their output is no longer read.

    A command runs until it has exited and every process holding its output
    pipes has closed them, so a background job counts against C{timeout}.

    At most C{maxRunning} commands run at once, counted from the request
    (their reverse lookups included) until the command has ended and its
    pipes are closed. Beyond that a command is dropped, not queued (a queue
    would only delay the same flood): the drops are counted in L{dropped}
    and logged as one line per L{DROP_LOG_INTERVAL} seconds at most. The
    shell gets no descriptor of the server but its own standard input (at
    end-of-file), output and error pipes (Twisted closes every other
    descriptor in the child), so the server holds at most two descriptors
    per running command.

    @ivar timeout: seconds a command may run before it is stopped.
    @ivar shell: the shell to run commands with.
    @ivar killGrace: seconds between SIGTERM and SIGKILL after a timeout, and
        again between SIGKILL and giving up on the output pipes.
    @ivar maxRunning: how many commands may run at once.
    @ivar running: how many run now.
    @ivar dropped: how many were dropped at the cap since the start.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        timeout: float = 30.0,
        shell: str = "/bin/sh",
        reverseLookup: Callable[[str], Deferred[str | None]] | None = None,
        *,
        killGrace: float = 1.0,
        newSession: bool = True,
        maxRunning: int = MAX_RUNNING,
    ) -> None:
        """
        @param reactor: provides L{IReactorProcess} and L{IReactorTime}, and
            L{IReactorThreads} unless C{reverseLookup} is given.
        @param timeout: seconds a command may run.
        @param shell: the shell, run as C{shell -c COMMAND}.
        @param reverseLookup: address to name, or C{None}; by default
            L{ReverseLookups} on C{reactor}, a thread pool of its own. Only
            called for templates with C{%A} or C{%Z}.
        @param killGrace: see L{killGrace}.
        @param newSession: run the shell in a new session with C{setsid},
            if found, so that a timeout kills its children too.
        @param maxRunning: see L{maxRunning}.
        """
        # Not a class attribute: Logger's descriptor would replace the
        # namespace with the class's name.
        self._log = Logger(namespace=LOG_NAMESPACE, source=self)
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self.timeout = timeout
        self.shell = shell
        self.killGrace = killGrace
        if reverseLookup is None:
            reverseLookup = ReverseLookups(reactor)
        self._reverseLookup = reverseLookup
        self._setsid = shutil.which("setsid", path=ACTION_PATH) if newSession else None
        self.maxRunning = maxRunning
        self.running = 0
        self.dropped = 0
        self._droppedUnlogged = 0
        self._dropLog: IDelayedCall | None = None

    def run(self, template: str, context: ActionContext) -> Deferred[int | None]:
        """
        Expand C{template} for C{context} and run it.

        Reverse lookups are made only for the tokens that need them: C{%A},
        and C{%Z} when the request had no SOCKS4A name; they run at the same
        time, each given at most ten seconds, before the command's own
        C{timeout} starts.

        @param template: the command, as written in the rules file.
        @param context: the request.
        @return: a L{Deferred} that fires with the shell's exit status, or
            C{None} if it was killed by a signal, timed out or could not be
            started; it never fails (failures are logged).
        """
        if self.running >= self.maxRunning:
            self._drop()
            return succeed(None)
        self.running += 1
        result = ensureDeferred(self._run(template, context))

        def unexpected(failure: Failure) -> None:
            self._log.failure(
                "shell action {command} failed", failure, command=escapeField(template)
            )

        def ended(status: int | None) -> int | None:
            self.running -= 1
            return status

        return result.addErrback(unexpected).addCallback(ended)

    def _drop(self) -> None:
        """Count a dropped command; say so at most once per interval."""
        self.dropped += 1
        self._droppedUnlogged += 1
        if self._dropLog is None:
            self._logDrops()

    def _logDrops(self) -> None:
        # The first drop after a quiet interval is logged at once, later
        # ones in one line per interval, then the timer stops.
        if not self._droppedUnlogged:
            self._dropLog = None
            return
        self._log.warn(
            "shell actions: {count} dropped ({total} in all): {running} "
            "already running, the most allowed (--max-rule-commands)",
            count=self._droppedUnlogged,
            total=self.dropped,
            running=self.running,
        )
        self._droppedUnlogged = 0
        self._dropLog = self._clock.callLater(DROP_LOG_INTERVAL, self._logDrops)

    async def _lookup(self, address: str) -> str:
        # Any failure of an injected lookup means "no name": use the address.
        if not address:
            return ""
        try:
            pending = self._reverseLookup(address)
        except Exception:
            self._log.failure(
                "reverse lookup of {address} failed", address=escapeField(address)
            )
            return address
        name = await _withDeadline(pending, self._clock, _LOOKUP_DEADLINE)
        return name or address

    async def _values(
        self, used: frozenset[str], context: ActionContext
    ) -> dict[str, str]:
        values = {
            "a": context.clientAddress,
            "c": context.command,
            "p": str(context.serverPid),
            "s": str(context.destinationPort),
            "U": context.identUser or "",
            "u": context.userid,
            "z": context.destinationAddress,
        }
        if "S" in used:
            values["S"] = _serviceName(context.destinationPort)
        # Both lookups at once: each may take seconds.
        lookups: dict[str, Deferred[str]] = {}
        if "A" in used:
            lookups["A"] = ensureDeferred(self._lookup(context.clientAddress))
        if "Z" in used:
            if context.destinationName is not None:
                values["Z"] = context.destinationName
            else:
                lookups["Z"] = ensureDeferred(self._lookup(context.destinationAddress))
        names = await gatherResults(list(lookups.values()))
        values.update(zip(lookups, names, strict=True))
        return values

    async def _run(self, template: str, context: ActionContext) -> int | None:
        values = await self._values(tokensUsed(template), context)
        try:
            command = expandTokens(template, values)
        except UnsafeTemplate as e:
            self._report(LogLevel.error, f"refused: {e}", template)
            return None
        if "\0" in command:
            # No quoting can put a NUL into an argument of exec.
            self._report(LogLevel.error, "refused: NUL character", command)
            return None
        try:
            argv = [os.fsencode(self.shell), b"-c", os.fsencode(command)]
        except UnicodeError:
            self._report(LogLevel.error, "refused: text not encodable", command)
            return None
        if self._setsid is not None:
            argv.insert(0, os.fsencode(self._setsid))
        capture = _Capture(MAX_OUTPUT)
        try:
            transport = self._reactor.spawnProcess(
                capture,
                argv[0],
                argv,
                env={"PATH": ACTION_PATH},
                usePTY=False,
            )
        except Exception as e:
            self._report(LogLevel.error, f"could not start: {e}", command)
            return None
        return await self._watch(transport, capture, command)

    async def _watch(
        self, transport: IProcessTransport, capture: _Capture, command: str
    ) -> int | None:
        """Wait for the command to end, stopping it after the timeout."""
        pid: int = transport.pid
        ownGroup = self._setsid is not None
        timers: list[IDelayedCall] = []
        timedOut = False
        clock = self._clock

        def send(signum: int) -> None:
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
            timers.append(clock.callLater(self.killGrace, send, signal.SIGKILL))
            timers.append(clock.callLater(2 * self.killGrace, giveUp))

        started = clock.seconds()
        timers.append(clock.callLater(self.timeout, timeUp))
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
            outcome = f"timed out after {self.timeout:g} s and was killed"
            exitCode = None
        elif exitCode is not None:
            outcome = f"exited with status {exitCode}"
        else:
            outcome = f"was killed by signal {signum}"
        self._report(
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

    def _report(
        self,
        level: LogLevel,
        outcome: str,
        command: str,
        capture: _Capture | None = None,
        **fields: object,
    ) -> None:
        """Log the one event of a command."""
        self._log.emit(
            level,
            "shell action {outcome}: {command}; stdout: {stdout}; stderr: {stderr}",
            outcome=outcome,
            command=escapeField(command, cap=4096),
            stdout=capture.text(1) if capture else "",
            stderr=capture.text(2) if capture else "",
            **fields,
        )


def contextFor(request: AccessRequest) -> ActionContext:
    """The facts about C{request} that a command's tokens may use."""
    return ActionContext(
        clientAddress=str(request.client) if request.client is not None else "",
        command=request.command.name.lower(),
        destinationPort=request.port,
        destinationAddress=str(request.address) if request.address is not None else "",
        destinationName=request.hostname,
        userid=request.user,
        identUser=request.identUser,
        serverPid=os.getpid(),
    )


def shellHook(runner: ShellActionRunner) -> MatchHook:
    """
    A rules hook that runs the deciding rule's C{: shell-command} (if it has
    one) with C{runner}, without waiting for it.
    """

    def onMatch(rule: Rule, request: AccessRequest, decision: Decision) -> None:
        if rule.shellCommand is not None:
            runner.run(rule.shellCommand, contextFor(request))

    return onMatch


def identFailureHook(runner: ShellActionRunner) -> IdentFailureHook:
    """
    A rules hook that runs the file's C{#NO_IDENTD:} or C{#BAD_ID:} command
    (if it has one) when an ident check fails.
    """

    def onIdentFailure(
        kind: IdentFailure, command: str | None, request: AccessRequest
    ) -> None:
        if command is not None:
            runner.run(command, contextFor(request))

    return onIdentFailure
