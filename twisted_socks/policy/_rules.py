"""
The rules file: the classic sockd.conf grammar plus extensions. No Twisted.

One rule per line, first match decides, no match denies::

    allow|permit|deny [?=n|i|I] [*=users] [auth=password|none]
        [cmd=connect|bind|udp] CLIENT [DESTINATION] [PORT] [: shell-command]

CLIENT and an address DESTINATION are C{address mask} (any dotted mask, as
the classic sockd, which compared C{addr & mask}), C{address/prefix}, IPv6
C{address/prefix}, or octet wildcards C{140.113.*.*}. A DESTINATION may also
be a host name for SOCKS4A requests: C{www.example.com} exactly, or
C{.example.com} for the domain and everything under it. An allowing rule
reaches a destination of the family its DESTINATION names (C{0/0}: both;
omitted: IPv4, as the classic sockd). PORT is C{eq neq lt
le gt ge} with a number or a service name, or C{range LOW HIGH}. The short
form C{permit c 140.113.*.*} / C{deny b *.*.*.*} (c = connect, b = bind, any
client) is accepted too. C{auth=} matches how the user was established
(C{password}: a SOCKS5 login; C{none}: SOCKS4's claimed USERID or SOCKS5
without authentication); C{cmd=udp} is UDP ASSOCIATE, which only a rule
naming it allows (see L{Rule.coversCommand}). C{#NO_IDENTD: cmd} and
C{#BAD_ID: cmd} lines set the commands run on ident failures.

Parsing is all-or-nothing: L{parseRules} returns a complete L{RuleSet} or
raises L{RulesError} naming the file, the line and the offending field.

This module is the grammar of a rule line and the loading of a file; the
fields it shares with the routes file are in L{FieldParser}, the patterns
they make are L{AddressPattern}, L{HostPattern} and L{PortPattern}, and the
parsed file, which decides requests, is a L{RuleSet}.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire._request import UserSource
from ..wire._socks4 import Command
from ._fields import (
    MAX_LINE_LENGTH,
    FieldParser,
    RulesError,
    readUserFile,
)
from ._patterns import (
    AddressPattern,
    HostPattern,
    PortPattern,
    destinationAddress,
    embeddedIPv4,
)
from ._percent import UnsafeTemplate, checkTemplate
from ._policy import IdentMode
from ._ruleset import IdentFailureHook, MatchHook, Rule, RuleSet

__all__ = [
    "MAX_LINE_LENGTH",
    "AddressPattern",
    "HostPattern",
    "IdentFailureHook",
    "IdentMode",
    "MatchHook",
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

_ACTIONS = {"allow": True, "permit": True, "deny": False}
#: C{cmd=} values: each command's word, as records and C{/metrics} say it.
_COMMAND_NAMES = {command.word: command for command in Command}
#: C{auth=} values: C{none} is every way of not proving a name, a SOCKS4
#: claim included.
_AUTH_NAMES = {
    "password": frozenset([UserSource.AUTHENTICATED]),
    "none": frozenset([UserSource.CLAIMED, UserSource.NONE]),
}
_SHORT_COMMANDS = {"c": Command.CONNECT, "b": Command.BIND}
# parseRules' argument of the same name hides the function.
_readUserFile = readUserFile


def loadRules(
    path: str,
    onMatch: MatchHook | None = None,
    onIdentFailure: IdentFailureHook | None = None,
    withUsers: bool = False,
) -> RuleSet:
    """
    Read and parse the rules file at C{path}.

    @param withUsers: whether the server has users (see L{RuleSet}).
    @raise RulesError: if it cannot be read or is invalid.
    """
    text = readRulesFile(path)
    return parseRules(
        text, path, onMatch=onMatch, onIdentFailure=onIdentFailure, withUsers=withUsers
    )


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
    withUsers: bool = False,
) -> RuleSet:
    """
    Parse a whole rules file.

    @param readUserFile: reads a C{*=/path} user file, returning its names
        (default: one name per line; blank lines and C{#} comments skipped).
    @param withUsers: whether the server has users (see L{RuleSet}).
    @raise RulesError: at the first invalid line; nothing is half-loaded.
    """
    parser = _RuleParser(path, readUserFile or _readUserFile)
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
    return RuleSet(
        path, tuple(rules), noIdentd, badId, onMatch, onIdentFailure, withUsers
    )


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


class _RuleParser(FieldParser):
    """Parses one rule line at a time; errors carry the file and line."""

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
        auth: frozenset[UserSource] | None = None
        # No address has '=': before the client, such a word is a field
        # (a misspelt one is named as such, not as a bad address).
        while (token := self.peek()) is not None and "=" in token:
            self.take()
            if token.startswith("?="):
                identMode = self.identMode(token)
            elif token.startswith("*="):
                users = self.users(token)
            elif token.lower().startswith("cmd="):
                commands = self.commands(token)
            elif token.lower().startswith("auth="):
                auth = self.auth(token)
            else:
                raise self.error(
                    f"unknown field '{token}' (expected ?=, *=, auth= or cmd=)"
                )
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
            auth,
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

    def commands(self, token: str) -> frozenset[Command]:
        chosen = set()
        for name in token[4:].lower().split(","):
            if name not in _COMMAND_NAMES:
                raise self.error(
                    f"bad command '{name}' in '{token}' (expected connect, bind or udp)"
                )
            chosen.add(_COMMAND_NAMES[name])
        return frozenset(chosen)

    def auth(self, token: str) -> frozenset[UserSource]:
        """The ways of establishing the user that an C{auth=} field names."""
        chosen: set[UserSource] = set()
        for name in token[5:].lower().split(","):
            if name not in _AUTH_NAMES:
                raise self.error(
                    f"bad authentication '{name}' in '{token}' "
                    "(expected password or none)"
                )
            chosen |= _AUTH_NAMES[name]
        return frozenset(chosen)


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
