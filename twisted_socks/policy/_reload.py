"""Load a rules file into a running server, and reload it safely."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger

from ..interfaces import IAccessPolicy
from ._rules import (
    IdentFailureHook,
    MatchHook,
    RulesError,
    RuleSet,
    parseRules,
    readRulesFile,
)

__all__ = ["BackgroundReloads", "RulesReloader"]

_log = Logger(namespace="twisted_socks.rules")


class _HasPolicy(Protocol):
    policy: IAccessPolicy


class RulesReloader:
    """
    Keeps a server's policy in step with a rules file.

    A reload parses the whole file first; only a valid file replaces the
    rules, in one assignment, so every request is judged wholly by the old
    or wholly by the new rules (a session takes the factory's policy once,
    when its request arrives). Established sessions are untouched.

    On a reload (not at start-up), a file whose last line does not end with
    a newline, or an empty one, is refused as well: it is most likely still
    being written (an editor or a deployment tool writing it in place), and
    a prefix of a rules file is often a valid file that allows what the rest
    would deny.

    @param factory: the server factory whose C{policy} is replaced.
    @param path: the rules file.
    @param onMatch: the hook run when a rule settles a request (for example
        the shell-command runner), passed to every loaded L{RuleSet}.
    @param onIdentFailure: the hook run when an ident check fails (for the
        C{#NO_IDENTD:}/C{#BAD_ID:} commands), likewise.
    @param withUsers: whether the server has users (C{--users}), for every
        loaded L{RuleSet}.
    """

    def __init__(
        self,
        factory: _HasPolicy,
        path: str,
        onMatch: MatchHook | None = None,
        onIdentFailure: IdentFailureHook | None = None,
        withUsers: bool = False,
    ) -> None:
        self.factory = factory
        self.path = path
        self.onMatch = onMatch
        self.onIdentFailure = onIdentFailure
        self.withUsers = withUsers

    def parse(self, complete: bool = True) -> RuleSet:
        """
        Read and parse the file; change nothing. Safe to call in a thread.

        @param complete: refuse a file whose last line has no newline.
        @raise RulesError: if it cannot be read, is invalid or incomplete.
        """
        text = readRulesFile(self.path)
        if complete and not text:
            # An empty file would deny everything; on a reload it is far more
            # often a file truncated before it is rewritten in place.
            raise RulesError(
                self.path,
                1,
                "the file is empty: it may be half-written (replace it "
                "atomically; to deny everything, write a comment line)",
            )
        if complete and not text.endswith("\n"):
            raise RulesError(
                self.path,
                text.count("\n") + 1,
                "the last line does not end with a newline: the file may be "
                "half-written (replace it atomically: write a new file, then "
                "rename it over this one)",
            )
        return parseRules(
            text,
            self.path,
            onMatch=self.onMatch,
            onIdentFailure=self.onIdentFailure,
            withUsers=self.withUsers,
        )

    def install(self, rules: RuleSet) -> None:
        """Put C{rules} in force (in the reactor thread)."""
        self.factory.policy = rules

    def load(self) -> RuleSet:
        """
        Load the file and install it (at start-up).

        @raise RulesError: if it is invalid; the policy is left unchanged.
        """
        rules = self.parse(complete=False)
        self.install(rules)
        return rules

    def reload(self) -> bool:
        """
        Load the file again, here and now; on any error keep the current
        rules and log it. (A server's SIGHUP uses L{BackgroundReloads}.)

        @return: whether the new rules are in force.
        """
        try:
            rules = self.parse()
        except RulesError as e:
            self.failed(e)
            return False
        self.reloaded(rules)
        return True

    def reloaded(self, rules: RuleSet) -> None:
        """Install the rules of a reload, and log it."""
        self.install(rules)
        _log.info(
            "rules reloaded from {path}: {count} rules",
            path=self.path,
            count=len(rules.rules),
        )

    def failed(self, error: RulesError) -> None:
        """Log why a reload left the previous rules in force."""
        _log.error(
            "rules not reloaded, previous rules stay in force: {error}",
            error=str(error),
        )


class BackgroundReloads:
    """
    Reloads on request (SIGHUP), parsing in a thread, one at a time.

    With 100,000 rules a parse takes over a second of CPU; on the reactor
    thread it froze every tunnel for that long, once per SIGHUP. Here the
    file is read and parsed in a thread of its own (the parser is pure: it
    touches nothing the reactor uses), and only the result is installed in
    the reactor thread. Requests coalesce: while a reload runs, any number
    of further requests make exactly one more reload when it ends (the file
    may have changed after the running parse read it), never a queue.

    @ivar parses: how many parses were started.
    """

    def __init__(
        self,
        reactor: Any,
        reloader: RulesReloader,
        startThread: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """
        @param reactor: provides C{callFromThread}.
        @param reloader: what parses and installs.
        @param startThread: runs a callable in a new thread (for tests).
        """
        self._reactor = reactor
        self._reloader = reloader
        self._startThread = startThread or _daemonThread
        self._running = False
        self._pending = False
        self.parses = 0

    def reload(self) -> None:
        """Reload soon; in the reactor thread (as a signal handler's call)."""
        if self._running:
            if not self._pending:
                _log.info(
                    "rules reload requested during a reload: one more will "
                    "follow this one"
                )
            self._pending = True
            return
        self._running = True
        self.parses += 1
        self._startThread(self._parse)

    def _parse(self) -> None:
        # In the thread: nothing but reading and parsing. The parse makes
        # about ten objects a rule, which triggers CPython's cyclic garbage
        # collector again and again; each run walks every object of the
        # process holding the GIL, and with 100,000 rules in force each run
        # stalled the reactor thread 0.2-0.5 s. The parser makes no cycles,
        # so collection waits until the parse is over: one run, not three.
        collecting = gc.isenabled()
        gc.disable()
        try:
            result: RuleSet | RulesError = self._reloader.parse()
        except RulesError as e:
            result = e
        except BaseException as e:  # a bug must not wedge reloads for good
            result = RulesError(self._reloader.path, 0, f"internal error: {e!r}")
        finally:
            if collecting:
                gc.enable()
        self._reactor.callFromThread(self._parsed, result)

    def _parsed(self, result: RuleSet | RulesError) -> None:
        if isinstance(result, RulesError):
            self._reloader.failed(result)
        else:
            self._reloader.reloaded(result)
        self._running = False
        if self._pending:
            self._pending = False
            self.reload()


def _daemonThread(target: Callable[[], None]) -> None:
    # A daemon thread: a parse under way never delays the process's exit.
    threading.Thread(target=target, name="rules reload", daemon=True).start()
