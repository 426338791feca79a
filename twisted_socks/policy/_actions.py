"""
Shell actions of sockd.conf rules: running a rule's command for a request.

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

This module gathers the facts (L{ActionContext}, L{contextFor}), caps the
commands running at once and fills in their tokens (L{ShellActionRunner}),
and makes the rules' hooks (L{shellHook}, L{identFailureHook}). The tokens
and their quoting are in C{_percent} (pure functions of text, no Twisted),
the reverse lookups of C{%A}/C{%Z} in C{_reverse}, and running one command
as a process (output, timeout, killing its group) in C{_shellprocess}.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .._logfields import escapeField
from ._percent import TOKENS, UnsafeTemplate, checkTemplate, expandTokens, tokensUsed
from ._policy import AccessRequest, Decision, IdentFailure
from ._reverse import ReverseLookups, threadedReverseLookup, withDeadline
from ._ruleset import IdentFailureHook, MatchHook, Rule
from ._shellprocess import ACTION_PATH, MAX_OUTPUT, reportCommand, runShellCommand

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


#: The namespace of the runner's log events.
LOG_NAMESPACE = "twisted_socks.actions"

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
    @ivar command: C{"connect"}, C{"bind"} or C{"udp"}.
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


@functools.lru_cache(maxsize=1024)
def _serviceName(port: int) -> str:
    # The services database is a local file on any sensible system; cached,
    # so that the reactor thread reads it at most once per port.
    try:
        return socket.getservbyport(port, "tcp")
    except (OSError, OverflowError):
        return str(port)


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
        name = await withDeadline(pending, self._clock, _LOOKUP_DEADLINE)
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
            reportCommand(self._log, LogLevel.error, f"refused: {e}", template)
            return None
        return await runShellCommand(
            self._reactor,
            self._log,
            command,
            shell=self.shell,
            setsid=self._setsid,
            timeout=self.timeout,
            killGrace=self.killGrace,
        )


def contextFor(request: AccessRequest) -> ActionContext:
    """The facts about C{request} that a command's tokens may use."""
    return ActionContext(
        clientAddress=str(request.client) if request.client is not None else "",
        command=request.command.word,
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
