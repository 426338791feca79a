"""
A parsed rules file as an access policy: its rules, and how the first rule
that matches a request decides it. No Twisted (zope only, to declare
L{IAccessPolicy}).

A L{Rule} is one line of the file; a L{RuleSet} the whole file, immutable,
which a reload swaps whole. The hooks behind a rule's C{: shell-command} and
the C{#NO_IDENTD:}/C{#BAD_ID:} lines are given to the L{RuleSet} and called
through the L{Decision} it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from zope.interface import implementer

from ..interfaces import IAccessPolicy
from ..wire._socks4 import Command
from ._patterns import AddressPattern, HostPattern, PortPattern, destinationAddress
from ._policy import AccessRequest, Decision, IdentFailure, IdentMode

__all__ = ["IdentFailureHook", "MatchHook", "Rule", "RuleSet"]


@dataclass(frozen=True, slots=True)
class Rule:
    """
    One line of a rules file.

    @ivar location: C{file:line}, as logged and reported by the rule tester.
    @ivar text: the line as written.
    @ivar allow: the action: allow (C{allow}/C{permit}) or deny.
    @ivar identMode: the C{?=} field, or L{None} for the server's default.
    @ivar users: USERIDs the rule applies to (C{*=}), or L{None} for all.
    @ivar commands: CONNECT/BIND the rule applies to, or L{None} for both.
    @ivar client: the client address pattern.
    @ivar destination: the destination pattern, or L{None} for any.
    @ivar port: the destination port condition, or L{None} for any.
    @ivar shellCommand: the C{: command} to run when the rule decides.
    """

    location: str
    text: str
    allow: bool
    identMode: IdentMode | None
    users: frozenset[str] | None
    commands: frozenset[Command] | None
    client: AddressPattern
    destination: AddressPattern | HostPattern | None
    port: PortPattern | None
    shellCommand: str | None

    def appliesTo(self, request: AccessRequest) -> bool:
        """Whether everything but the destination address matches."""
        return (
            (self.commands is None or request.command in self.commands)
            and (self.users is None or request.user in self.users)
            and (self.port is None or self.port.matches(request.port))
            and self.client.matches(request.client)
        )

    def destinationMatches(self, request: AccessRequest) -> bool | None:
        """
        Whether the destination matches; L{None} when that depends on an
        address not yet known (a SOCKS4A request before its lookup).

        An address pattern matches destinations of its own family only, so
        that a file written for IPv4 never lets IPv6 through by accident:
        C{deny ... 127.0.0.0 255.0.0.0} followed by a classic catch-all
        C{permit 0.0.0.0 0.0.0.0} must not reach C{::1}. Hence an allowing
        rule reaches IPv6 destinations only when its destination names IPv6
        or is Dante's both-families C{0/0}; an omitted destination allows
        IPv4 only, as the classic sockd, which never reached IPv6. A denial
        is never narrower than it reads: omitted or with a zero mask
        (C{0.0.0.0 0.0.0.0}, C{*.*.*.*}, C{::/0}), it denies every
        destination, as before. An IPv6 destination that carries an IPv4
        address (L{destinationAddress}) is judged as that IPv4 address.
        """
        destination = self.destination
        if isinstance(destination, HostPattern):
            return destination.matches(request.hostname)
        if destination is None:
            if not self.allow:
                return True
            destination = _ANY_IPV4
        elif destination.anyFamily or (destination.universal and not self.allow):
            return True
        if request.address is None:
            return None
        address = destinationAddress(request.address)
        # Not AddressPattern.matches alone: for clients, and for routes, a
        # zero mask matches both families.
        return address.version == destination.version and destination.matches(address)


#: What an omitted destination allows: IPv4, as the classic sockd.
_ANY_IPV4 = AddressPattern(4, 0, 0, "0.0.0.0/0")


#: Called with the deciding rule, the request (with its ident user, if any)
#: and the decision when a rule settles a request (behind C{: shell-command}).
MatchHook = Callable[[Rule, AccessRequest, Decision], object]
#: Called with the kind of failure, the command of the matching
#: C{#NO_IDENTD:}/C{#BAD_ID:} line (L{None} if the file has none) and the
#: request (with the ident user for C{BAD_ID}) when an ident check fails.
IdentFailureHook = Callable[[IdentFailure, "str | None", AccessRequest], object]


@implementer(IAccessPolicy)
@dataclass(frozen=True)
class RuleSet:
    """
    A parsed rules file; immutable, so a reload swaps a whole new one in.

    @ivar path: the file it came from.
    @ivar rules: the rules, in file order.
    @ivar noIdentdCommand: the C{#NO_IDENTD:} command, if any.
    @ivar badIdCommand: the C{#BAD_ID:} command, if any.
    @ivar onMatch: called when a rule settles a request (see L{Decision}'s
        C{action}); L{None} for no hook.
    @ivar onIdentFailure: called when the ident check a rule asked for
        fails (see L{Decision}'s C{identFailed}); L{None} for no hook.
    """

    path: str
    rules: tuple[Rule, ...]
    noIdentdCommand: str | None = None
    badIdCommand: str | None = None
    onMatch: MatchHook | None = field(default=None, compare=False)
    onIdentFailure: IdentFailureHook | None = field(default=None, compare=False)

    def match(self, request: AccessRequest) -> Rule | None:
        """
        The first rule that matches C{request}, L{None} if none does.

        @raise LookupError: if the answer depends on the resolved address of
            a SOCKS4A request that has none yet.
        """
        for rule in self.rules:
            if not rule.appliesTo(request):
                continue
            verdict = rule.destinationMatches(request)
            if verdict is None:
                raise LookupError(rule.location)
            if verdict:
                return rule
        return None

    def decide(self, request: AccessRequest) -> Decision:
        """
        First match decides; no match denies. Before a SOCKS4A lookup, a
        request that only an address rule could decide is let through to the
        lookup (it is judged again, wholly, on each resolved address).
        """
        try:
            rule = self.match(request)
        except LookupError as pending:
            return Decision.allow(f"pending lookup ({pending})")
        if rule is None:
            return Decision.deny("no rule matched", f"{self.path}:end")
        verb = "allowed" if rule.allow else "denied"
        decision = Decision(
            rule.allow, f"{verb} by {rule.location}", rule.location, rule.identMode
        )
        onMatch, onIdentFailure = self.onMatch, self.onIdentFailure
        if onMatch is not None:

            def action(identUser: str | None) -> None:
                onMatch(rule, replace(request, identUser=identUser), decision)

            decision = replace(decision, action=action)
        if onIdentFailure is not None:
            commands = {
                IdentFailure.NO_IDENTD: self.noIdentdCommand,
                IdentFailure.BAD_ID: self.badIdCommand,
            }

            def identFailed(kind: IdentFailure, identUser: str | None) -> None:
                onIdentFailure(
                    kind, commands[kind], replace(request, identUser=identUser)
                )

            decision = replace(decision, identFailed=identFailed)
        return decision
