"""
The rules file: the classic sockd.conf grammar plus extensions. No Twisted.

One rule per line, first match decides, no match denies::

    allow|permit|deny [?=n|i|I] [*=users] [cmd=connect|bind]
        CLIENT [DESTINATION] [PORT] [: shell-command]

CLIENT and an address DESTINATION are C{address mask} (any dotted mask, as
the classic sockd, which compared C{addr & mask}), C{address/prefix}, IPv6
C{address/prefix}, or octet wildcards C{140.113.*.*}. A DESTINATION may also
be a host name for SOCKS4A requests: C{www.example.com} exactly, or
C{.example.com} for the domain and everything under it. An allowing rule
reaches a destination of the family its DESTINATION names (C{0/0}: both;
omitted: IPv4, as the classic sockd). PORT is C{eq neq lt
le gt ge} with a number or a service name, or C{range LOW HIGH}. The short
form C{permit c 140.113.*.*} / C{deny b *.*.*.*} (c = connect, b = bind, any
client) is accepted too. C{#NO_IDENTD: cmd} and C{#BAD_ID: cmd} lines set
the commands run on ident failures.

Parsing is all-or-nothing: L{parseRules} returns a complete L{RuleSet} or
raises L{RulesError} naming the file, the line and the offending field.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from zope.interface import implementer

from ._codec import Command
from ._percent import UnsafeTemplate, checkTemplate
from ._policy import AccessRequest, Decision, IdentFailure, IdentMode, IPAddress
from .interfaces import IAccessPolicy

__all__ = [
    "AddressPattern",
    "HostPattern",
    "IdentMode",
    "PortPattern",
    "Rule",
    "RuleSet",
    "RulesError",
    "destinationAddress",
    "embeddedIPv4",
    "loadRules",
    "parseRules",
    "readRulesFile",
]

#: The classic sockd read lines into a 1024-byte buffer.
MAX_LINE_LENGTH = 1023

_ACTIONS = {"allow": True, "permit": True, "deny": False}
_PORT_OPERATORS = {
    "eq": "eq",
    "=": "eq",
    "neq": "neq",
    "!=": "neq",
    "lt": "lt",
    "<": "lt",
    "le": "le",
    "<=": "le",
    "gt": "gt",
    ">": "gt",
    "ge": "ge",
    ">=": "ge",
}
_COMMAND_NAMES = {"connect": Command.CONNECT, "bind": Command.BIND}
_SHORT_COMMANDS = {"c": Command.CONNECT, "b": Command.BIND}
_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


class RulesError(Exception):
    """
    A rules file is invalid.

    @ivar path: the file.
    @ivar line: the 1-based line number, or 0 for the file as a whole.
    @ivar message: what is wrong and what was expected.
    """

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """
    An address and a mask; an address matches when C{address & mask} equals
    C{value}. A zero mask matches every address of either family (so the
    classic C{0.0.0.0 0.0.0.0} still means "anything" for IPv6 clients); as
    a destination, see L{Rule.destinationMatches}.
    """

    version: int
    value: int
    mask: int
    text: str

    @property
    def universal(self) -> bool:
        """Whether every address matches."""
        return self.mask == 0

    @property
    def anyFamily(self) -> bool:
        """
        Whether this is Dante's C{0/0}: every address of both families, as
        a destination too (C{0.0.0.0/0} and C{::/0} name one family each).
        """
        return self.mask == 0 and self.text == "0/0"

    def matches(self, address: IPAddress | None) -> bool:
        """Whether C{address} (L{None}: not an IP client) matches."""
        if self.mask == 0:
            return True
        if address is None or address.version != self.version:
            return False
        return (int(address) & self.mask) == self.value


@dataclass(frozen=True, slots=True)
class HostPattern:
    """A SOCKS4A destination name: exact, or a domain and its subdomains."""

    name: str
    suffix: bool

    def matches(self, hostname: str | None) -> bool:
        """Whether C{hostname} (case-insensitive, trailing dot ignored) matches."""
        if hostname is None:
            return False
        host = hostname.lower().rstrip(".")
        if self.suffix:
            return host == self.name or host.endswith("." + self.name)
        return host == self.name


@dataclass(frozen=True, slots=True)
class PortPattern:
    """A destination-port condition: C{low <= port <= high}, or its negation."""

    low: int
    high: int
    negate: bool = False

    def matches(self, port: int) -> bool:
        """Whether C{port} satisfies the condition."""
        return (self.low <= port <= self.high) != self.negate


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
        address (L{embeddedIPv4}) is judged as that IPv4 address.
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
#: Prefixes whose addresses carry an IPv4 address in their last 32 bits:
#: IPv4-translated (RFC 2765) and NAT64's well-known prefix (RFC 6052).
_IPV4_IN_LOW_BITS = (ip_network("::ffff:0:0:0/96"), ip_network("64:ff9b::/96"))


def embeddedIPv4(address: IPAddress) -> IPv4Address | None:
    """
    The IPv4 address an IPv6 address stands for, if any.

    Each of these reaches the IPv4 host from the proxy's side, through the
    kernel (mapped C{::ffff:a.b.c.d}, IPv4-compatible C{::a.b.c.d} over an
    automatic tunnel), a 6to4 interface (C{2002:AABB:CCDD::/48}) or a NAT64
    gateway (C{64:ff9b::a.b.c.d}), so a rule about that IPv4 address must
    decide it too. C{::} and C{::1} are IPv6's own, not IPv4-compatible.
    """
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    value = int(address)
    if value >> 32 == 0:
        return IPv4Address(value) if value > 1 else None
    if any(address in prefix for prefix in _IPV4_IN_LOW_BITS):
        return IPv4Address(value & 0xFFFFFFFF)
    return address.sixtofour


def destinationAddress(address: IPAddress) -> IPAddress:
    """The address a destination is judged as: its L{embeddedIPv4}, if any."""
    return embeddedIPv4(address) or address


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


def loadRules(
    path: str,
    onMatch: MatchHook | None = None,
    onIdentFailure: IdentFailureHook | None = None,
) -> RuleSet:
    """
    Read and parse the rules file at C{path}.

    @raise RulesError: if it cannot be read or is invalid.
    """
    text = readRulesFile(path)
    return parseRules(text, path, onMatch=onMatch, onIdentFailure=onIdentFailure)


def readRulesFile(path: str) -> str:
    """
    The text of the rules file at C{path}.

    @raise RulesError: if it cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise RulesError(path, 0, f"cannot read: {e.strerror or e}") from None


def parseRules(
    text: str,
    path: str = "<rules>",
    onMatch: MatchHook | None = None,
    readUserFile: Callable[[str], list[str]] | None = None,
    onIdentFailure: IdentFailureHook | None = None,
) -> RuleSet:
    """
    Parse a whole rules file.

    @param readUserFile: reads a C{*=/path} user file, returning its names
        (default: one name per line; blank lines and C{#} comments skipped).
    @raise RulesError: at the first invalid line; nothing is half-loaded.
    """
    parser = _LineParser(path, readUserFile or _readUserFile)
    rules: list[Rule] = []
    noIdentd: str | None = None
    badId: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if len(line) > MAX_LINE_LENGTH:
            raise RulesError(
                path, number, f"line is {len(line)} characters (at most 1023)"
            )
        special = line.lstrip()
        if special.startswith("#NO_IDENTD:"):
            noIdentd = _command(path, number, special[len("#NO_IDENTD:") :])
            continue
        if special.startswith("#BAD_ID:"):
            badId = _command(path, number, special[len("#BAD_ID:") :])
            continue
        rule = parser.parse(number, line)
        if rule is not None:
            rules.append(rule)
    return RuleSet(path, tuple(rules), noIdentd, badId, onMatch, onIdentFailure)


def _command(path: str, number: int, text: str) -> str | None:
    """A shell command of the file, refused now if a token could be unsafe."""
    command = text.strip()
    if not command:
        return None
    try:
        checkTemplate(command)
    except UnsafeTemplate as e:
        raise RulesError(path, number, f"unsafe command: {e}") from None
    return command


def _readUserFile(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        names = [line.split("#", 1)[0].strip() for line in f]
    return [name for name in names if name]


class _LineParser:
    """Parses one line at a time; errors carry the file and line."""

    def __init__(self, path: str, readUserFile: Callable[[str], list[str]]) -> None:
        self.path = path
        self.readUserFile = readUserFile

    def error(self, message: str) -> RulesError:
        return RulesError(self.path, self.number, message)

    def parse(self, number: int, line: str) -> Rule | None:
        self.number = number
        # As the classic sockd: '#' starts a comment anywhere on the line.
        body = line.split("#", 1)[0]
        ruleText, shellText = _splitCommand(body)
        shellCommand = (
            _command(self.path, number, shellText) if shellText is not None else None
        )
        tokens = ruleText.split()
        if not tokens:
            if shellText is not None:
                raise self.error("a command with no rule before ':'")
            return None
        self.tokens = tokens
        self.index = 0
        return self.rule(line.strip(), shellCommand)

    # -- token cursor ---------------------------------------------------------

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.index]
        self.index += 1
        return token

    # -- grammar --------------------------------------------------------------

    def rule(self, text: str, shellCommand: str | None) -> Rule:
        word = self.take()
        allow = _ACTIONS.get(word.lower())
        if allow is None:
            raise self.error(
                f"unknown action '{word}' (expected allow, permit or deny)"
            )
        nextToken = self.peek()
        if nextToken is not None and nextToken.lower() in _SHORT_COMMANDS:
            return self.shortForm(text, allow, shellCommand)
        identMode: IdentMode | None = None
        users: frozenset[str] | None = None
        commands: frozenset[Command] | None = None
        while (token := self.peek()) is not None and "=" in token[:4]:
            self.take()
            if token.startswith("?="):
                identMode = self.identMode(token)
            elif token.startswith("*="):
                users = self.users(token)
            elif token.lower().startswith("cmd="):
                commands = self.commands(token)
            else:
                raise self.error(f"unknown field '{token}' (expected ?=, *= or cmd=)")
        if self.peek() is None:
            raise self.error(
                "missing client address (expected an address and mask, "
                "address/prefix, or a wildcard such as 10.*.*.*)"
            )
        client = self.address("client")
        destination: AddressPattern | HostPattern | None = None
        if (token := self.peek()) is not None and not self.isPortStart(token):
            destination = self.destination()
        port = self.port() if self.peek() is not None else None
        self.end()
        return Rule(
            f"{self.path}:{self.number}",
            text,
            allow,
            identMode,
            users,
            commands,
            client,
            destination,
            port,
            shellCommand,
        )

    def shortForm(self, text: str, allow: bool, shellCommand: str | None) -> Rule:
        command = _SHORT_COMMANDS[self.take().lower()]
        if self.peek() is None:
            raise self.error("missing destination after the command letter")
        destination = self.address("destination")
        port = self.port() if self.peek() is not None else None
        self.end()
        anyone = AddressPattern(4, 0, 0, "*.*.*.*")
        return Rule(
            f"{self.path}:{self.number}",
            text,
            allow,
            None,
            None,
            frozenset([command]),
            anyone,
            destination,
            port,
            shellCommand,
        )

    def end(self) -> None:
        if (token := self.peek()) is not None:
            raise self.error(
                f"unexpected '{token}' (expected the end of the rule or ': command')"
            )

    def identMode(self, token: str) -> IdentMode:
        try:
            return IdentMode(token[2:])
        except ValueError:
            raise self.error(
                f"bad ident mode '{token}' (expected ?=n, ?=i or ?=I)"
            ) from None

    def users(self, token: str) -> frozenset[str]:
        names: list[str] = []
        for entry in token[2:].split(","):
            if not entry:
                raise self.error(f"empty user name in '{token}'")
            if "/" in entry:
                path = entry
                if not os.path.isabs(path):
                    path = os.path.join(os.path.dirname(self.path), path)
                try:
                    names.extend(self.readUserFile(path))
                except OSError as e:
                    raise self.error(
                        f"cannot read user file '{entry}': {e.strerror or e}"
                    ) from None
            else:
                names.append(entry)
        return frozenset(names)

    def commands(self, token: str) -> frozenset[Command]:
        chosen = set()
        for name in token[4:].lower().split(","):
            if name not in _COMMAND_NAMES:
                raise self.error(
                    f"bad command '{name}' in '{token}' (expected connect or bind)"
                )
            chosen.add(_COMMAND_NAMES[name])
        return frozenset(chosen)

    def isPortStart(self, token: str) -> bool:
        return token.lower() in _PORT_OPERATORS or token.lower() == "range"

    def address(self, role: str) -> AddressPattern:
        token = self.take()
        expected = (
            "expected an address and mask, address/prefix, or a wildcard "
            "such as 10.*.*.*"
        )
        if token == "0/0":  # Dante's spelling of "anything"
            return AddressPattern(4, 0, 0, token)
        if "/" in token:
            try:
                network = ip_network(token, strict=False)
            except ValueError:
                raise self.error(f"bad {role} address '{token}' ({expected})") from None
            return AddressPattern(
                network.version,
                int(network.network_address),
                int(network.netmask),
                token,
            )
        if "*" in token:
            return self.wildcard(token, role, expected)
        try:
            address = ip_address(token)
        except ValueError:
            raise self.error(f"bad {role} address '{token}' ({expected})") from None
        if isinstance(address, IPv6Address):
            return AddressPattern(6, int(address), (1 << 128) - 1, token)
        return self.withMask(address, token)

    def withMask(self, address: IPv4Address, token: str) -> AddressPattern:
        maskToken = self.peek()
        expected = "expected a dotted netmask or /prefix"
        if maskToken is None or self.isPortStart(maskToken):
            raise self.error(f"missing mask after '{token}' ({expected})")
        self.take()
        parts = maskToken.split(".")
        if len(parts) != 4 or not all(_octet(p) for p in parts):
            raise self.error(f"bad mask '{maskToken}' ({expected})")
        mask = int.from_bytes(bytes(int(p) for p in parts), "big")
        return AddressPattern(4, int(address) & mask, mask, f"{token} {maskToken}")

    def wildcard(self, token: str, role: str, expected: str) -> AddressPattern:
        parts = token.split(".")
        value = mask = 0
        valid = len(parts) == 4
        for part in parts if valid else []:
            value <<= 8
            mask <<= 8
            if part == "*":
                continue
            if not _octet(part):
                valid = False
                break
            value |= int(part)
            mask |= 0xFF
        if not valid:
            raise self.error(f"bad {role} address '{token}' ({expected})")
        return AddressPattern(4, value, mask, token)

    def destination(self) -> AddressPattern | HostPattern:
        token = self.peek() or ""
        name = token.lower()
        looksLikeName = (
            "/" not in name
            and "*" not in name
            and _HOSTNAME_CHARS.issuperset(name)
            and any(c.isalpha() for c in name)
        )
        if looksLikeName:
            self.take()
            suffix = name.startswith(".")
            bare = name.strip(".")
            if not bare or ".." in bare:
                raise self.error(
                    f"bad destination host name '{token}' "
                    "(expected a name such as www.example.com or .example.com)"
                )
            return HostPattern(bare, suffix)
        return self.address("destination")

    def port(self) -> PortPattern:
        token = self.take()
        operator = _PORT_OPERATORS.get(token.lower())
        if token.lower() == "range":
            low = self.portNumber(token)
            high = self.portNumber(token)
            if low > high:
                raise self.error(f"bad range {low} {high} (expected LOW <= HIGH)")
            return PortPattern(low, high)
        if operator is None:
            raise self.error(
                f"unexpected '{token}' (expected a port condition: "
                "eq, neq, lt, le, gt, ge or range)"
            )
        number = self.portNumber(token)
        if operator == "eq":
            return PortPattern(number, number)
        if operator == "neq":
            return PortPattern(number, number, negate=True)
        if operator == "lt":
            return PortPattern(0, number - 1)
        if operator == "le":
            return PortPattern(0, number)
        if operator == "gt":
            return PortPattern(number + 1, 65535)
        return PortPattern(number, 65535)  # ge

    def portNumber(self, after: str) -> int:
        token = self.peek()
        expected = "expected a number 0-65535 or a service name"
        if token is None:
            raise self.error(f"missing port after '{after}' ({expected})")
        self.take()
        if token.isascii() and token.isdigit():
            number = int(token)
            if number <= 65535:
                return number
            raise self.error(f"bad port '{token}' ({expected})")
        try:
            if not (token.isascii() and token.isprintable()):
                raise OSError("not a service name")
            return socket.getservbyname(token, "tcp")
        except (OSError, ValueError):
            raise self.error(
                f"bad port '{token}' (unknown service; {expected})"
            ) from None


def _octet(text: str) -> bool:
    """
    Whether C{text} is a decimal octet, 0-255. A leading zero is refused:
    C's inet_addr (which the classic sockd used) reads C{010} as octal 8, so
    such a mask or wildcard would silently mean something else here.
    """
    return (
        text.isascii()
        and text.isdigit()
        and len(text) <= 3
        and (text == "0" or not text.startswith("0"))
        and int(text) <= 255
    )


def _splitCommand(body: str) -> tuple[str, str | None]:
    """
    Split C{rule : command}. The separator is a ':' starting a word; IPv6
    addresses cannot be mistaken for it, as a word starting with ':' in one
    starts with '::'.
    """
    position = 0
    while (position := body.find(":", position)) >= 0:
        atWordStart = position == 0 or body[position - 1] in " \t"
        if atWordStart and body[position + 1 : position + 2] != ":":
            return body[:position], body[position + 1 :].strip()
        position += 1
    return body, None
