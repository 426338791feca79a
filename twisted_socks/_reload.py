"""Load a rules file into a running server, and reload it safely."""

from __future__ import annotations

from typing import Protocol

from twisted.logger import Logger

from ._rules import IdentFailureHook, MatchHook, RulesError, RuleSet, loadRules
from .interfaces import IAccessPolicy

__all__ = ["RulesReloader"]

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

    @param factory: the server factory whose C{policy} is replaced.
    @param path: the rules file.
    @param onMatch: the hook run when a rule settles a request (for example
        the shell-command runner), passed to every loaded L{RuleSet}.
    @param onIdentFailure: the hook run when an ident check fails (for the
        C{#NO_IDENTD:}/C{#BAD_ID:} commands), likewise.
    """

    def __init__(
        self,
        factory: _HasPolicy,
        path: str,
        onMatch: MatchHook | None = None,
        onIdentFailure: IdentFailureHook | None = None,
    ) -> None:
        self.factory = factory
        self.path = path
        self.onMatch = onMatch
        self.onIdentFailure = onIdentFailure

    def load(self) -> RuleSet:
        """
        Load the file and install it (at start-up).

        @raise RulesError: if it is invalid; the policy is left unchanged.
        """
        rules = loadRules(self.path, self.onMatch, self.onIdentFailure)
        self.factory.policy = rules
        return rules

    def reload(self) -> bool:
        """
        Load the file again; on any error keep the current rules and log it.

        @return: whether the new rules are in force.
        """
        try:
            rules = self.load()
        except RulesError as e:
            _log.error(
                "rules not reloaded, previous rules stay in force: {error}",
                error=str(e),
            )
            return False
        _log.info(
            "rules reloaded from {path}: {count} rules",
            path=self.path,
            count=len(rules.rules),
        )
        return True
