"""
The password file of SOCKS5 username/password authentication (C{--users}).

One C{name:hash} per line, as Apache's C{htpasswd -B} writes it: the hash is
bcrypt (C{$2y$}, C{$2b$} or C{$2a$}); C{#} starts a comment line; blank lines
are skipped.  The file is UTF-8 and names are kept as the bytes the file
holds, since RFC 1929 carries opaque octets and clients send what they were
given (PySocks encodes UTF-8).  A name cannot contain C{:} (it ends the
name); a password may hold any byte, as it is never in the file.

This module reads, checks and edits the text only; it imports nothing from
Twisted and never runs bcrypt (the checker does, off the reactor thread).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DEFAULT_COST",
    "MAX_NAME_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "PasswordFile",
    "PasswordFileError",
    "dummyHash",
    "nameProblem",
    "parsePasswords",
    "readPasswordFile",
    "withUser",
]

#: The bcrypt cost C{passwd} uses: C{htpasswd -B} defaults to 5, which today
#: costs about 2 ms a guess on one core; 12 costs about 0.25 s, and the
#: checker's cache keeps it to one check per credential every five minutes.
DEFAULT_COST = 12

#: RFC 1929: ULEN is one byte and at least 1.
MAX_NAME_LENGTH = 255

#: bcrypt uses the first 72 bytes of a password and ignores the rest.
MAX_PASSWORD_LENGTH = 72

#: The largest file read: a user is about 70 bytes, so this is a million.
MAX_FILE_SIZE = 64 << 20

_BCRYPT = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

#: Other hash formats people find in their files, and what to call them.
_KNOWN_OTHERS = (
    (b"$apr1$", "an Apache MD5 hash (htpasswd -m)"),
    (b"{SHA}", "a SHA-1 hash (htpasswd -s)"),
    (b"$5$", "a SHA-256 crypt hash (htpasswd -2)"),
    (b"$6$", "a SHA-512 crypt hash (htpasswd -5)"),
    (b"$1$", "an MD5 crypt hash"),
    (b"$2x$", "a $2x$ hash (from a bcrypt with the 8-bit bug)"),
    (b"$2", "a malformed bcrypt hash"),
)

#: A bcrypt hash of a random password that was thrown away; see L{dummyHash}.
_DUMMY = b"$2b$04$zgCDEiBvI0dwnvA3vLXplu.61rsFZV8k0VOCMjsh20YpdLQPOr7gi"


class PasswordFileError(Exception):
    """
    A password file is invalid or cannot be read (the shape of
    L{twisted_socks.RulesError}: the message starts with C{FILE:LINE:}).

    No message ever quotes a hash field: someone may have written a
    password there.

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


def dummyHash(cost: int) -> bytes:
    """
    A bcrypt hash of cost C{cost} that no password is known to match.

    Checking a password against it takes as long as against a real hash of
    that cost, which is what an unknown user's check does: names cannot be
    told from the time of the answer.  Only the cost field changes; the
    work bcrypt does depends on nothing else.
    """
    return b"$2b$%02d$" % cost + _DUMMY[7:]


def nameProblem(name: bytes) -> str | None:
    """What makes C{name} unusable as a user name, or L{None}."""
    if not name:
        return "the user name is empty"
    if b":" in name:
        return "a user name cannot contain ':'"
    if len(name) > MAX_NAME_LENGTH:
        return f"the user name is longer than {MAX_NAME_LENGTH} bytes (RFC 1929)"
    if name != name.strip():
        return "a user name cannot start or end with blanks"
    if name.startswith(b"#"):
        return "a user name cannot start with '#' (a comment)"
    if any(byte < 0x20 or byte == 0x7F for byte in name):
        # A newline would split the line; a tab or an escape would only
        # ever be a typing or copying mistake, and trouble in the logs.
        return "a user name cannot contain control characters"
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return "the user name is not UTF-8"
    return None


def _hashProblem(hashed: bytes) -> str | None:
    """What makes C{hashed} unusable (never quoting it), or L{None}."""
    if _BCRYPT.fullmatch(hashed):
        return None
    for prefix, what in _KNOWN_OTHERS:
        if hashed.startswith(prefix):
            return f"the password hash is {what}"
    if not hashed:
        return "the password hash is empty"
    return "the password hash is not bcrypt (plain text or crypt?)"


@dataclass(frozen=True, slots=True, repr=False)
class PasswordFile:
    """
    The users of a password file.

    @ivar path: the file, as messages name it.
    @ivar hashes: each user name to its bcrypt hash.
    @ivar dummy: the hash an unknown user's password is checked against:
        of the cost most of the users' hashes have (see L{dummyHash}).
    """

    path: str
    hashes: Mapping[bytes, bytes] = field(default_factory=dict)
    dummy: bytes = dummyHash(DEFAULT_COST)

    def __repr__(self) -> str:
        return f"<PasswordFile {self.path!r}: {len(self.hashes)} users>"


def _dummyFor(hashes: Mapping[bytes, bytes]) -> bytes:
    """The dummy hash of the commonest cost of C{hashes} (the higher on a tie)."""
    counts: dict[int, int] = {}
    for hashed in hashes.values():
        cost = int(hashed[4:6])
        counts[cost] = counts.get(cost, 0) + 1
    if not counts:
        return dummyHash(DEFAULT_COST)
    return dummyHash(max(counts, key=lambda cost: (counts[cost], cost)))


def _lines(data: bytes) -> list[bytes]:
    """The lines of C{data}: LF or CRLF ends, a UTF-8 byte order mark dropped."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def parsePasswords(data: bytes, path: str) -> PasswordFile:
    """
    Read the users of a password file's bytes.

    @param path: the file's name, for messages.
    @raise PasswordFileError: at the first bad line: not UTF-8, no C{:},
        a bad name, a hash that is not bcrypt, a name given twice.
    """
    hashes: dict[bytes, bytes] = {}
    lines: dict[bytes, int] = {}
    for number, raw in enumerate(_lines(data), 1):
        line = raw.strip(b" \t\r\f\v")
        if not line or line.startswith(b"#"):
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise PasswordFileError(path, number, "the line is not UTF-8") from None
        name, colon, hashed = line.partition(b":")
        if not colon:
            raise PasswordFileError(
                path, number, "expected NAME:HASH (no ':' on the line)"
            )
        name = name.rstrip(b" \t")
        problem = nameProblem(name)
        if problem is not None:
            raise PasswordFileError(path, number, problem)
        shown = name.decode("utf-8")
        problem = _hashProblem(hashed.lstrip(b" \t"))
        if problem is not None:
            raise PasswordFileError(
                path,
                number,
                f"user {shown!r}: {problem}; only bcrypt hashes are accepted "
                "($2y$, $2b$, $2a$, as htpasswd -B writes them; or "
                f"python -m twisted_socks passwd FILE {shown})",
            )
        if name in lines:
            raise PasswordFileError(
                path, number, f"user {shown!r} is already on line {lines[name]}"
            )
        lines[name] = number
        hashes[name] = hashed.lstrip(b" \t")
    return PasswordFile(path, MappingProxyType(hashes), _dummyFor(hashes))


def readPasswordFile(path: str, complete: bool = False) -> PasswordFile:
    """
    Read and parse a password file.

    The file must not be readable by every user: the hashes are bcrypt, but
    a weak password still falls to an offline guess, and the status page's
    token file (C{--status-auth}) is held to the same rule.  C{htpasswd}
    creates files with the umask's mode (often 0644), hence the C{chmod} in
    the message; C{python -m twisted_socks passwd} creates them 0600.

    @param complete: refuse an empty file, and one whose last line does not
        end with a newline (on a reload: the file is likely half-written,
        and C{htpasswd} rewrites its file in place).
    @raise PasswordFileError: if it cannot be read, is readable by every
        user, is invalid or (with C{complete}) incomplete.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise PasswordFileError(path, 0, f"cannot read: {e.strerror or e}") from None
    if mode & stat.S_IROTH:
        raise PasswordFileError(
            path, 0, f"the password file is readable by every user (chmod o-r {path})"
        )
    if len(data) > MAX_FILE_SIZE:
        raise PasswordFileError(path, 0, f"larger than {MAX_FILE_SIZE} bytes")
    if complete and not data:
        raise PasswordFileError(
            path,
            1,
            "the file is empty: it may be half-written (replace it "
            "atomically; for no users, write a comment line)",
        )
    if complete and not data.endswith(b"\n"):
        raise PasswordFileError(
            path,
            data.count(b"\n") + 1,
            "the last line does not end with a newline: the file may be "
            "half-written (replace it atomically: write a new file, then "
            "rename it over this one)",
        )
    return parsePasswords(data, path)


def withUser(data: bytes, path: str, name: bytes, hashed: bytes) -> bytes:
    """
    The bytes of a password file with C{name}'s hash set to C{hashed}: its
    line changed in place, or a line added at the end; every other line
    (comments, blank lines, other users) kept as it was.

    @raise PasswordFileError: if the file as it is now is invalid (it is
        not rewritten around a line the server would refuse), or if
        C{name} or C{hashed} is.
    """
    current = parsePasswords(data, path)
    problem = nameProblem(name) or _hashProblem(hashed)
    if problem is not None:
        raise PasswordFileError(path, 0, problem)
    entry = name + b":" + hashed
    lines = _lines(data)
    if name in current.hashes:
        for index, raw in enumerate(lines):
            line = raw.strip(b" \t\r\f\v")
            if line.startswith(b"#"):
                continue
            if line.partition(b":")[0].rstrip(b" \t") == name:
                ending = b"\r" if raw.endswith(b"\r") else b""
                lines[index] = entry + ending
                break
    else:
        # A file of CRLF lines gets a CRLF line.
        crlf = bool(lines) and lines[-1].endswith(b"\r")
        lines.append(entry + b"\r" if crlf else entry)
    return b"".join(line + b"\n" for line in lines)
