"""
The fields that the rules file and the client's routes file share, and the
errors of both. No Twisted, no zope.

L{FieldParser} walks the words of one line and reads the fields the two
grammars have in common (a user list, a client or destination address
pattern, a destination host name, a port condition), each error naming the
file, the line and the offending field (L{RulesError}). Each grammar's own
line parser builds on it, so a field reads and fails the same in both files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from ._patterns import AddressPattern, HostPattern, PortPattern

__all__ = [
    "HOSTNAME_CHARS",
    "MAX_LINE_LENGTH",
    "FieldParser",
    "RulesError",
    "readUserFile",
]

#: The classic sockd read lines into a 1024-byte buffer.
MAX_LINE_LENGTH = 1023

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
#: The characters of a destination host name (lowercased) in either file.
HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


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


def readUserFile(path: str) -> list[str]:
    """
    The names of a C{*=/path} user file: one name per line, blank lines and
    C{#} comments skipped.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        names = [line.split("#", 1)[0].strip() for line in f]
    return [name for name in names if name]


class FieldParser:
    """
    Reads the fields of one line at a time; errors carry the file and line.

    A grammar's line parser sets C{number}, C{tokens} (the line's words) and
    C{index} (the next word) for each line, then reads its fields with
    these methods, which consume the words they read.

    @ivar path: the file, as errors name it.
    @ivar readUserFile: reads a C{*=/path} user file (see L{readUserFile}).
    @ivar number: the 1-based number of the line being read.
    @ivar tokens: the words of that line.
    @ivar index: the position in C{tokens} of the next word.
    """

    number: int
    tokens: list[str]
    index: int

    def __init__(self, path: str, readUserFile: Callable[[str], list[str]]) -> None:
        """
        @param path: the file, as errors name it; a relative user file is
            found next to it.
        @param readUserFile: reads a C{*=/path} user file.
        """
        self.path = path
        self.readUserFile = readUserFile

    def error(self, message: str) -> RulesError:
        """The error C{message} at the current line."""
        return RulesError(self.path, self.number, message)

    # -- token cursor ---------------------------------------------------------

    def peek(self) -> str | None:
        """The next word, or L{None} at the end of the line."""
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        """Consume and return the next word (there must be one)."""
        token = self.tokens[self.index]
        self.index += 1
        return token

    # -- fields ---------------------------------------------------------------

    def users(self, token: str) -> frozenset[str]:
        """The names of a C{*=} field, user files (C{*=/path}) read in."""
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

    def isPortStart(self, token: str) -> bool:
        """Whether C{token} starts a port condition."""
        return token.lower() in _PORT_OPERATORS or token.lower() == "range"

    def address(self, role: str) -> AddressPattern:
        """An address pattern; C{role} (client, destination) names it in errors."""
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

    def network(self, text: str, role: str) -> AddressPattern:
        """
        An address pattern written as one word: C{ADDRESS/MASK},
        C{ADDRESS/PREFIX} or a bare address (a C{from=} field of a route).
        """
        try:
            network = ip_network(text, strict=False)
        except ValueError:
            raise self.error(
                f"bad {role} address '{text}' (expected ADDRESS/MASK or "
                "ADDRESS/PREFIX, as 10.0.0.0/255.0.0.0 or 10.0.0.0/8)"
            ) from None
        return AddressPattern(
            network.version, int(network.network_address), int(network.netmask), text
        )

    def withMask(self, address: IPv4Address, token: str) -> AddressPattern:
        """An IPv4 C{address} (written C{token}) and the dotted mask after it."""
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
        """An octet wildcard such as C{10.*.*.*}, already taken as C{token}."""
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
        """A destination: a host name (exact or C{.domain}) or an address."""
        token = self.peek() or ""
        name = token.lower()
        looksLikeName = (
            "/" not in name
            and "*" not in name
            and HOSTNAME_CHARS.issuperset(name)
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
        """A port condition: an operator and a port, or C{range LOW HIGH}."""
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
        """A port number or service name; C{after} is the word before it."""
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
