"""
Tests of the password file (C{--users}): its parser and reader, editing it,
C{htpasswd -B} files, and C{python -m twisted_socks passwd}.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from twisted_socks.policy._passwords import (
    DEFAULT_COST,
    PasswordFileError,
    dummyHash,
    parsePasswords,
    readPasswordFile,
    withUser,
)

#: A cheap hash (cost 4) of "secret", for files the tests write.
SECRET = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))
OTHER = bcrypt.hashpw(b"other", bcrypt.gensalt(4))
ROOT = Path(__file__).parent.parent


def writeFile(path: Path, data: bytes, mode: int = 0o600) -> str:
    """Write a password file with C{mode}; return its name."""
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


# -- the parser -------------------------------------------------------------------


def test_usersCommentsAndBlankLinesAreRead() -> None:
    """
    Each C{name:hash} line is a user; comments, blank lines, blanks around
    a line and CRLF line ends are skipped; names are bytes as in the file.
    """
    data = (
        b"# users of the proxy\n\nalice:" + SECRET + b"\r\n"
        b"  b\xc3\xb6b:" + OTHER + b"  \n   # indented comment\n"
    )
    users = parsePasswords(data, "users")
    assert dict(users.hashes) == {b"alice": SECRET, "böb".encode(): OTHER}


def test_aByteOrderMarkIsNotPartOfTheFirstName() -> None:
    """A UTF-8 byte order mark (some editors write one) is skipped."""
    users = parsePasswords(b"\xef\xbb\xbfalice:" + SECRET + b"\n", "users")
    assert list(users.hashes) == [b"alice"]


def test_allBcryptPrefixesAreAccepted() -> None:
    """C{$2y$} (htpasswd), C{$2b$} and C{$2a$} hashes are all bcrypt."""
    tail = SECRET[3:]
    for prefix in (b"$2y", b"$2b", b"$2a"):
        users = parsePasswords(b"u:" + prefix + tail + b"\n", "f")
        assert users.hashes[b"u"] == prefix + tail


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        (b"# ok\nalice\n", 2, "expected NAME:HASH (no ':' on the line)"),
        (b":" + SECRET + b"\n", 1, "the user name is empty"),
        (b"a:" + SECRET + b"\n\xff:" + SECRET + b"\n", 2, "the line is not UTF-8"),
        (b"x" * 256 + b":" + SECRET, 1, "longer than 255 bytes"),
        (b"a\tb:" + SECRET + b"\n", 1, "cannot contain control characters"),
        (b"a\x1bb:" + SECRET + b"\n", 1, "cannot contain control characters"),
        (b"alice:\n", 1, "user 'alice': the password hash is empty"),
        (b"alice:$apr1$abc$def\n", 1, "an Apache MD5 hash (htpasswd -m)"),
        (b"alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", 1, "SHA-1 hash (htpasswd -s)"),
        (b"alice:$5$salt$hash\n", 1, "SHA-256 crypt hash (htpasswd -2)"),
        (b"alice:$6$salt$hash\n", 1, "SHA-512 crypt hash (htpasswd -5)"),
        (b"alice:$1$salt$hash\n", 1, "an MD5 crypt hash"),
        (b"alice:$2x$" + SECRET[4:] + b"\n", 1, "the 8-bit bug"),
        (b"alice:" + SECRET[:-1] + b"\n", 1, "a malformed bcrypt hash"),
        (b"alice:$2b$03$" + SECRET[7:] + b"\n", 1, "a malformed bcrypt hash"),
        (b"alice:" + SECRET + b" trailing\n", 1, "a malformed bcrypt hash"),
        (b"alice:hunter2\n", 1, "not bcrypt (plain text or crypt?)"),
        (b"a:" + SECRET + b"\na:" + OTHER + b"\n", 2, "'a' is already on line 1"),
    ],
)
def test_badLinesAreNamedByFileAndLine(data: bytes, line: int, message: str) -> None:
    """
    A bad line raises L{PasswordFileError} whose text starts with
    C{FILE:LINE:} (as a rules file's errors do) and says what is wrong.
    """
    with pytest.raises(PasswordFileError) as caught:
        parsePasswords(data, "/etc/socks/users")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"/etc/socks/users:{line}: ")
    assert message in str(caught.value)


def test_errorsNeverQuoteTheHashField() -> None:
    """
    Someone may write a password where the hash goes: the error says what
    the field is not, and never repeats it.
    """
    with pytest.raises(PasswordFileError) as caught:
        parsePasswords(b"alice:correct horse battery\n", "users")
    assert "correct" not in str(caught.value)
    assert "bcrypt" in str(caught.value)
    assert "passwd FILE alice" in str(caught.value)


def test_dummyHashHasTheUsersCommonestCost() -> None:
    """
    The hash an unknown user's password is checked against has the cost
    most users' hashes have, so a check of it takes as long as theirs; with
    no users it has the default cost.
    """
    five = bcrypt.hashpw(b"x", bcrypt.gensalt(5))
    data = b"a:" + SECRET + b"\nb:" + five + b"\nc:" + five + b"\n"
    users = parsePasswords(data, "f")
    assert users.dummy == dummyHash(5)
    assert users.dummy[:7] == b"$2b$05$"
    assert parsePasswords(b"", "f").dummy[:7] == b"$2b$%02d$" % DEFAULT_COST
    assert not bcrypt.checkpw(b"", users.dummy)


def test_reprHidesTheHashes() -> None:
    """A password file's repr counts its users and shows no hash."""
    users = parsePasswords(b"alice:" + SECRET + b"\n", "users")
    assert repr(users) == "<PasswordFile 'users': 1 users>"


# -- reading the file -------------------------------------------------------------


def test_readingAFileReadableByEveryoneIsRefused(tmp_path: Path) -> None:
    """
    A world-readable password file is refused with the fix in the message,
    as the status page's token file is; group-readable is fine (a group for
    the server's user).
    """
    path = writeFile(tmp_path / "users", b"alice:" + SECRET + b"\n", 0o644)
    with pytest.raises(PasswordFileError) as caught:
        readPasswordFile(path)
    assert str(caught.value) == (
        f"{path}: the password file is readable by every user (chmod o-r {path})"
    )
    os.chmod(path, 0o640)
    assert list(readPasswordFile(path).hashes) == [b"alice"]


def test_aMissingFileIsNamed(tmp_path: Path) -> None:
    """A file that cannot be read gives its name and the system's reason."""
    path = str(tmp_path / "nope")
    with pytest.raises(PasswordFileError, match=r"nope: cannot read: No such file"):
        readPasswordFile(path)


def test_aHalfWrittenFileIsRefusedWhenComplete(tmp_path: Path) -> None:
    """
    With C{complete} (a reload), an empty file and a last line without a
    newline are refused as likely half-written; at start-up they are read.
    """
    path = writeFile(tmp_path / "users", b"alice:" + SECRET)
    assert list(readPasswordFile(path).hashes) == [b"alice"]
    with pytest.raises(PasswordFileError, match=r"users:1: the last line"):
        readPasswordFile(path, complete=True)
    writeFile(tmp_path / "users", b"")
    with pytest.raises(PasswordFileError, match=r"users:1: the file is empty"):
        readPasswordFile(path, complete=True)


# -- editing --------------------------------------------------------------------


def test_withUserChangesTheUsersLineInPlace() -> None:
    """
    Setting an existing user's hash changes that line only: comments,
    blank lines, other users and a CRLF ending stay as they were.
    """
    data = b"# head\nalice:" + SECRET + b"\r\n\n# bob below\nbob:" + SECRET + b"\n"
    edited = withUser(data, "f", b"alice", OTHER)
    assert edited == (
        b"# head\nalice:" + OTHER + b"\r\n\n# bob below\nbob:" + SECRET + b"\n"
    )


def test_withUserAppendsANewUser() -> None:
    """A new user is a line added at the end (a newline supplied if missing)."""
    assert withUser(b"# c\na:" + SECRET, "f", b"b", OTHER) == (
        b"# c\na:" + SECRET + b"\nb:" + OTHER + b"\n"
    )
    assert withUser(b"", "f", b"b", OTHER) == b"b:" + OTHER + b"\n"
    assert withUser(b"a:" + SECRET + b"\r\n", "f", b"b", OTHER) == (
        b"a:" + SECRET + b"\r\nb:" + OTHER + b"\r\n"
    )


def test_withUserRefusesAnInvalidFileOrName() -> None:
    """
    An invalid file is not rewritten around its bad line, and a name with
    C{:} is refused.
    """
    with pytest.raises(PasswordFileError, match=r"^f:2: "):
        withUser(b"a:" + SECRET + b"\nb:plain\n", "f", b"a", OTHER)
    with pytest.raises(PasswordFileError, match=r"cannot contain ':'"):
        withUser(b"", "f", b"a:b", OTHER)


# -- htpasswd -----------------------------------------------------------------------


def test_htpasswdFilesAreReadAndTheirPasswordsVerify(tmp_path: Path) -> None:
    """
    A file written by Apache's C{htpasswd -B} (Debian apache2-utils, which
    ./dev installs) is read, and its C{$2y$} hashes verify the passwords it
    was given, a non-ASCII one included, and not others.
    """
    htpasswd = shutil.which("htpasswd")
    assert htpasswd is not None, "htpasswd missing: ./dev installs apache2-utils"
    path = tmp_path / "users"
    passwords = {"alice": "s3cr:t@x%", "bob": "pässwörd"}
    for number, (name, password) in enumerate(passwords.items()):
        options = "-icB" if number == 0 else "-iB"
        subprocess.run(
            [htpasswd, options, "-C", "4", str(path), name],
            input=password.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
    path.chmod(0o600)
    users = readPasswordFile(str(path))
    assert set(users.hashes) == {b"alice", b"bob"}
    for name, password in passwords.items():
        hashed = users.hashes[name.encode()]
        assert hashed.startswith(b"$2y$04$")
        assert bcrypt.checkpw(password.encode(), hashed)
        assert not bcrypt.checkpw(b"wrong", hashed)


# -- python -m twisted_socks passwd ---------------------------------------------------


def passwd(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the passwd command with C{stdin} (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "twisted_socks", "passwd", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )


def test_passwdCreatesAPrivateFileFromStandardInput(tmp_path: Path) -> None:
    """
    Without a terminal the password is one line of standard input (its
    newline not part of it); a new file is made 0600, and the hash has the
    requested cost and verifies the password.
    """
    path = tmp_path / "users"
    result = passwd("--cost", "4", str(path), "alice", stdin=b"s3cr:t@x%\n")
    assert result.returncode == 0, result.stderr
    assert b"added user 'alice'" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    hashed = readPasswordFile(str(path)).hashes[b"alice"]
    assert hashed.startswith(b"$2b$04$")
    assert bcrypt.checkpw(b"s3cr:t@x%", hashed)


def test_passwdChangesAUserKeepingEverythingElse(tmp_path: Path) -> None:
    """
    Changing a password rewrites only that user's line, keeps the file's
    mode, and replaces the file (a new inode: a server never reads half).
    """
    path = tmp_path / "users"
    writeFile(path, b"# ours\nalice:" + SECRET + b"\nbob:" + SECRET + b"\n", 0o640)
    inode = path.stat().st_ino
    result = passwd("--cost", "4", str(path), "alice", stdin=b"new one\r\n")
    assert result.returncode == 0, result.stderr
    assert b"changed user 'alice'" in result.stdout
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b"# ours"
    assert lines[2] == b"bob:" + SECRET
    assert bcrypt.checkpw(b"new one", lines[1].partition(b":")[2])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["users"]


def test_passwdTakesAnyBytesAsThePassword(tmp_path: Path) -> None:
    """
    A password may hold any byte but a newline (which ends the line): NUL,
    bytes that are not UTF-8, C{:}.
    """
    path = tmp_path / "users"
    password = b"\x00\xff:\x01 \xc3"
    result = passwd("--cost", "4", str(path), "alice", stdin=password + b"\n")
    assert result.returncode == 0, result.stderr
    hashed = readPasswordFile(str(path)).hashes[b"alice"]
    assert bcrypt.checkpw(password, hashed)
    assert not bcrypt.checkpw(b"\x00", hashed)


def test_passwdEditsTheFileASymlinkNames(tmp_path: Path) -> None:
    """
    Given a symbolic link, the command replaces the file it points to and
    leaves the link a link.
    """
    real = tmp_path / "real"
    writeFile(real, b"bob:" + SECRET + b"\n")
    link = tmp_path / "users"
    link.symlink_to(real)
    result = passwd("--cost", "4", str(link), "alice", stdin=b"pw\n")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert sorted(readPasswordFile(str(real)).hashes) == [b"alice", b"bob"]


@pytest.mark.parametrize(
    ("name", "stdin", "message"),
    [
        ("a:b", b"pw\n", b"a user name cannot contain ':'"),
        ("", b"pw\n", b"the user name is empty"),
        ("a\nb", b"pw\n", b"a user name cannot contain control characters"),
        ("#a", b"pw\n", b"a user name cannot start with '#'"),
        ("alice", b"", b"no password on standard input"),
        ("alice", b"\n", b"the password is empty"),
        ("alice", b"x" * 73 + b"\n", b"longer than 72 bytes"),
    ],
)
def test_passwdRefusesBadNamesAndPasswords(
    tmp_path: Path, name: str, stdin: bytes, message: bytes
) -> None:
    """
    A name with C{:} or none, and an empty, missing or too long password
    are refused, the file left as it was and nothing of the password shown.
    """
    path = tmp_path / "users"
    writeFile(path, b"bob:" + SECRET + b"\n")
    result = passwd("--cost", "4", str(path), name, stdin=stdin)
    assert result.returncode != 0
    assert message in result.stderr
    assert b"xxxx" not in result.stderr
    assert path.read_bytes() == b"bob:" + SECRET + b"\n"


def test_passwdRefusesToEditAnInvalidFile(tmp_path: Path) -> None:
    """
    A file with a bad line is not edited: the error names the line, and
    the password is not even read.
    """
    path = tmp_path / "users"
    writeFile(path, b"bob:plaintext\n")
    result = passwd("--cost", "4", str(path), "alice", stdin=b"pw\n")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}:1: user 'bob'".encode())
    assert path.read_bytes() == b"bob:plaintext\n"


def test_passwdWarnsWhenTheFileIsReadableByEveryone(tmp_path: Path) -> None:
    """
    Editing a world-readable file keeps its mode (the operator's choice)
    but warns that the server refuses such a file.
    """
    path = tmp_path / "users"
    writeFile(path, b"", 0o644)
    result = passwd("--cost", "4", str(path), "alice", stdin=b"pw\n")
    assert result.returncode == 0, result.stderr
    assert b"readable by every user" in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def readUntil(fd: int, marker: bytes, deadline: float) -> bytes:
    """Read a pty until C{marker} appears (or fail at C{deadline})."""
    seen = b""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"no {marker!r} in {seen!r}"
            seen += chunk
    return seen


def runOnTerminal(args: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    """
    Run the passwd command on a new pseudo-terminal, answering its prompts
    in turn; return its exit status and everything it wrote there.
    """
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.chdir(ROOT)
        # The child replaces itself with the command: no shell is involved.
        command = [sys.executable, "-m", "twisted_socks", *args]
        os.execv(sys.executable, command)  # noqa: S606
    deadline = time.monotonic() + 60
    transcript = b""
    try:
        for answer in answers:
            transcript += readUntil(fd, b"password: ", deadline)
            os.write(fd, answer + b"\n")
        while True:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            assert ready, "the command did not finish"
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            transcript += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), transcript


def test_passwdAsksTwiceOnATerminal(tmp_path: Path) -> None:
    """
    On a terminal the password is asked twice, without echo, and set when
    both answers agree.
    """
    path = tmp_path / "users"
    status, transcript = runOnTerminal(
        ["passwd", "--cost", "4", str(path), "alice"], [b"tty pass", b"tty pass"]
    )
    assert status == 0, transcript
    assert transcript.count(b"password: ") == 2
    assert b"tty pass" not in transcript
    hashed = readPasswordFile(str(path)).hashes[b"alice"]
    assert bcrypt.checkpw(b"tty pass", hashed)


def test_passwdOnATerminalRefusesDifferingAnswers(tmp_path: Path) -> None:
    """Two different answers on a terminal change nothing."""
    path = tmp_path / "users"
    status, transcript = runOnTerminal(
        ["passwd", "--cost", "4", str(path), "alice"], [b"one", b"two"]
    )
    assert status == 1
    assert b"do not match" in transcript
    assert not path.exists()
