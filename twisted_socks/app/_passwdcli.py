"""
C{python -m twisted_socks passwd FILE NAME}: add a user to a password file
(C{--users}), or change a user's password.

The password never comes from the command line (every user of the host can
read a process's arguments): on a terminal it is asked for twice, without
echo; otherwise one line is read from standard input, for scripts
(C{printf '%s\\n' "$PW" | python -m twisted_socks passwd FILE NAME}).

The file is replaced atomically (a new file, then a rename over the old
one), so a server reloading it never reads half of it; it keeps its mode,
and a new file is made 0600.
"""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from typing import BinaryIO

from ..policy._passwords import (
    DEFAULT_COST,
    MAX_NAME_LENGTH,
    MAX_PASSWORD_LENGTH,
    PasswordFileError,
    nameProblem,
    parsePasswords,
    withUser,
)

__all__ = ["main"]

#: The most read of a password line from standard input.
MAX_LINE = 1024

#: Exit statuses.
OK, FAILED, USAGE = 0, 1, 2


class _Refused(Exception):
    """The command cannot go on; the message says why."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_socks passwd",
        description=(
            "Add a user to a password file (--users), or change a user's "
            "password. The password is asked twice on a terminal, or read as "
            "one line from standard input; never from the command line."
        ),
    )
    parser.add_argument("file", help="the password file (created 0600 if missing)")
    parser.add_argument(
        "name", help=f"the user name (no ':', 1-{MAX_NAME_LENGTH} bytes)"
    )
    parser.add_argument(
        "--cost",
        type=int,
        default=DEFAULT_COST,
        help=f"the bcrypt cost, 4-31 (default {DEFAULT_COST}; each step doubles "
        "the time of a check)",
    )
    return parser


def _passwordProblem(password: bytes) -> str | None:
    if not password:
        return "the password is empty (RFC 1929 needs at least one byte)"
    if len(password) > MAX_PASSWORD_LENGTH:
        # htpasswd cuts silently; a user who believes in bytes 73 and on
        # should be told.
        return (
            f"the password is longer than {MAX_PASSWORD_LENGTH} bytes, and "
            "bcrypt ignores what follows them"
        )
    return None


def readPassword(stdin: BinaryIO, isTerminal: bool) -> bytes:
    """
    The new password: asked twice on a terminal, else one line of
    C{stdin} (its line end removed).

    @raise _Refused: if the two answers differ, or no line was given.
    """
    if isTerminal:
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Re-type new password: ")
        if first != second:
            raise _Refused("the passwords do not match; nothing changed")
        return first.encode("utf-8", "surrogateescape")
    # Far more than a password may be: a longer line is refused as too
    # long all the same, and nothing unbounded is read.
    line = stdin.readline(MAX_LINE)
    if not line:
        raise _Refused("no password on standard input (one line expected)")
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _read(path: str) -> bytes:
    """
    The bytes of the password file, or none if it does not exist yet.

    @raise _Refused: if it exists but cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise _Refused(f"{path}: cannot read: {e.strerror or e}") from None


def _writeAtomically(path: str, data: bytes) -> None:
    """
    Replace C{path} by C{data}: written to a new file beside it, flushed,
    then renamed over it, keeping its mode (and owner, where allowed).
    """
    target = os.path.realpath(path)
    try:
        current: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        current = None
    directory = os.path.dirname(target) or "."
    # mkstemp makes the file 0600: the hashes are never readable by others,
    # even for the moment before the mode is set.
    fd, temporary = tempfile.mkstemp(prefix=".passwd-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if current is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(current.st_mode))
                if hasattr(os, "fchown"):
                    try:
                        os.fchown(f.fileno(), current.st_uid, current.st_gid)
                    except PermissionError:
                        # Not root: the file becomes ours, as any edit makes it.
                        pass
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # The rename itself reaches the disk with the directory.
    try:
        dirfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dirfd)
    except OSError:
        pass
    finally:
        os.close(dirfd)


def main(
    argv: Sequence[str] | None = None,
    stdin: BinaryIO | None = None,
    isTerminal: bool | None = None,
) -> int:
    """
    Run the command; return the exit status.

    @param stdin: where a password line is read (default: standard input).
    @param isTerminal: whether to ask on the terminal (default: whether
        standard input is one).
    """
    args = _parser().parse_args(argv)
    if not 4 <= args.cost <= 31:
        print("--cost must be from 4 to 31", file=sys.stderr)
        return USAGE
    # The bytes of the name as given (undecodable ones too, which
    # nameProblem then refuses as not UTF-8).
    name = os.fsencode(args.name)
    problem = nameProblem(name)
    if problem is not None:
        print(f"{problem}; nothing changed", file=sys.stderr)
        return USAGE
    if stdin is None:
        stdin = sys.stdin.buffer
    if isTerminal is None:
        isTerminal = sys.stdin.isatty()
    try:
        # Checked before the password is asked for: a file that cannot be
        # edited should not cost anyone their typing.
        added = name not in parsePasswords(_read(args.file), args.file).hashes
        password = readPassword(stdin, isTerminal)
        problem = _passwordProblem(password)
        if problem is not None:
            raise _Refused(f"{problem}; nothing changed")
        # Imported here: the other commands never need bcrypt.
        import bcrypt

        hashed = bcrypt.hashpw(password, bcrypt.gensalt(args.cost))
        # Read again: the file may have changed while the password was
        # being typed, and those changes must not be lost.
        data = _read(args.file)
        added = name not in parsePasswords(data, args.file).hashes
        _writeAtomically(args.file, withUser(data, args.file, name, hashed))
    except (_Refused, PasswordFileError) as e:
        print(e, file=sys.stderr)
        return FAILED
    except (KeyboardInterrupt, EOFError):
        print("\ninterrupted; nothing changed", file=sys.stderr)
        return FAILED
    except OSError as e:
        print(f"{args.file}: cannot write: {e.strerror or e}", file=sys.stderr)
        return FAILED
    shown = name.decode("utf-8")
    print(f"{args.file}: {'added' if added else 'changed'} user {shown!r}")
    if os.stat(args.file).st_mode & stat.S_IROTH:
        print(
            f"warning: {args.file} is readable by every user, and the server "
            f"refuses such a file (chmod o-r {args.file})",
            file=sys.stderr,
        )
    return OK
