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
from ..wire._request import UserSource
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
    @ivar commands: the commands the rule applies to (C{cmd=}), or L{None}
        for CONNECT and BIND (and, for a denial only, UDP ASSOCIATE too: see
        L{coversCommand}).
    @ivar client: the client address pattern.
    @ivar destination: the destination pattern, or L{None} for any.
    @ivar port: the destination port condition, or L{None} for any.
    @ivar shellCommand: the C{: command} to run when the rule decides.
    @ivar auth: how the user must have been established (C{auth=}), or
        L{None} for the default, which depends on whether the server has
        users (see L{coversClient}).
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
    auth: frozenset[UserSource] | None = None

    def appliesTo(self, request: AccessRequest, withUsers: bool = False) -> bool:
        """
        Whether everything but the destination address matches.

        @param withUsers: whether the server has users (C{--users}), which
            changes what a rule without C{auth=} matches.
        """
        # coversCommand and coversClient, inlined: every request is matched
        # against every rule before the one that decides it, and the calls
        # (with enum members read through their classes) cost about a fifth
        # more time on a 10,000-rule file.
        commands = self.commands
        command = request.command
        if commands is not None:
            if command not in commands:
                return False
        elif command is _UDP and self.allow:
            return False
        users = self.users
        if users is not None and request.user not in users:
            return False
        port = self.port
        if port is not None and not port.matches(request.port):
            return False
        if not self.client.matches(request.client):
            return False
        auth = self.auth
        if auth is None:
            return (
                not (withUsers and self.allow) or request.userSource is _AUTHENTICATED
            )
        return request.userSource in auth

    def coversCommand(self, command: Command) -> bool:
        """
        Whether the rule is about C{command}.

        UDP is allowed only by a rule that names it (C{cmd=udp}): a file
        written before UDP existed must not start relaying datagrams. A
        denial without C{cmd=} covers UDP as well, as a denial is never
        narrower than it reads: C{deny 10.0.0.0/8} keeps those clients
        away from a later C{permit cmd=udp 0/0}.
        """
        if self.commands is not None:
            return command in self.commands
        return command is not _UDP or not self.allow

    def coversClient(self, request: AccessRequest, withUsers: bool = False) -> bool:
        """
        Whether the client's side matches: its address, its user and how
        the user was established.

        Without C{auth=}, a rule matches every client on a server without
        users (as before C{auth=} existed); on a server with users, an
        allowing rule matches only authenticated SOCKS5 sessions: a SOCKS4
        USERID is a claim, and a file written for logged-in users must not
        admit claims by accident (C{auth=none} admits them explicitly). A
        denial without C{auth=} still matches everyone, as a denial is
        never narrower than it reads: C{deny 0/0 10.0.0.0/8} protects the
        network from a later C{permit auth=none} too.
        """
        auth = self.auth
        if auth is None:
            authMatches = (
                not (withUsers and self.allow) or request.userSource is _AUTHENTICATED
            )
        else:
            authMatches = request.userSource in auth
        return (
            authMatches
            and (self.users is None or request.user in self.users)
            and self.client.matches(request.client)
        )

    def decidesAssociation(self, request: AccessRequest, withUsers: bool) -> bool:
        """
        Whether the rule decides a UDP association itself (a request of
        L{AccessRequest.isAssociation}, which names no destination).

        An allowing C{cmd=udp} rule decides it when its client's side
        matches: its destination and port can match some datagram, which is
        judged on its own later. A denial decides it only when it denies
        every destination (no port condition, no destination or a zero
        mask): one that denies some destinations is about datagrams.
        """
        if not (self.coversCommand(_UDP) and self.coversClient(request, withUsers)):
            return False
        if self.allow:
            return True
        destination = self.destination
        return self.port is None and (
            destination is None
            or (isinstance(destination, AddressPattern) and destination.universal)
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


#: Looked up once: an enum member read through its class costs a lookup
#: on every rule of every request.
_UDP = Command.UDP_ASSOCIATE
_AUTHENTICATED = UserSource.AUTHENTICATED

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
    @ivar withUsers: whether the server has users (C{--users}): then a rule
        without C{auth=} matches authenticated SOCKS5 sessions only, and the
        server lets these rules judge SOCKS4 requests (which it would
        otherwise refuse outright, as they cannot authenticate).
    """

    path: str
    rules: tuple[Rule, ...]
    noIdentdCommand: str | None = None
    badIdCommand: str | None = None
    onMatch: MatchHook | None = field(default=None, compare=False)
    onIdentFailure: IdentFailureHook | None = field(default=None, compare=False)
    withUsers: bool = False

    def match(self, request: AccessRequest) -> Rule | None:
        """
        The first rule that matches C{request}, L{None} if none does.

        @raise LookupError: if the answer depends on the resolved address of
            a SOCKS4A request that has none yet.
        """
        withUsers = self.withUsers
        if request.isAssociation:
            for rule in self.rules:
                if rule.decidesAssociation(request, withUsers):
                    return rule
            return None
        for rule in self.rules:
            if not rule.appliesTo(request, withUsers):
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
            reason = "no rule matched"
            if self.withUsers and request.userSource is not _AUTHENTICATED:
                # The usual surprise with --users: say what would admit it.
                reason = "not authenticated and no auth=none rule matched"
            return Decision.deny(reason, f"{self.path}:end")
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
