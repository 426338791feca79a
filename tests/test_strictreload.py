"""
C{--users-strict-reload}: on SIGHUP, the live sessions of users removed
from the users file (or whose password changed) are cut; without the flag
they continue.  In a running C{twistd socks} over loopback sockets, and in
memory for the reasons and the sessions picked.
"""

from __future__ import annotations

import os
import signal
import socket
from ipaddress import IPv4Address
from pathlib import Path

import bcrypt
import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError

from tests._support import (
    EchoDestination,
    recvExactly,
    startServer,
    stopServer,
    waitUntil,
)
from tests._support import Server as Twistd
from tests.test_config import configOf
from tests.test_socks5server import Server
from tests.test_socks5serverinterop import LOOPBACK, credentials, request5
from twisted_socks import Command, encodeRequest
from twisted_socks.app._strictusers import StrictUsersReload, revokedUsers
from twisted_socks.wire._socks5 import Command5, encodeRequest5
from twisted_socks.wire._userpass import encodeAuthRequest

ANN, BOB = b"ann-pw", b"bob-pw"


def hashed(password: bytes) -> bytes:
    """A cheap bcrypt hash of C{password}."""
    return bcrypt.hashpw(password, bcrypt.gensalt(4))


def usersFile(path: Path, **hashes: bytes) -> None:
    """Write the users file atomically, as an administrator's tool would."""
    text = b"".join(name.encode() + b":" + h + b"\n" for name, h in hashes.items())
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(text)
    temporary.chmod(0o600)
    os.replace(temporary, path)


def tunnel(proxy: Twistd, port: int, name: bytes, password: bytes) -> socket.socket:
    """A SOCKS5 tunnel to 127.0.0.1:C{port}, logged in as C{name}, echoing."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(
        b"\x05\x01\x02" + credentials(name, password) + request5(1, LOOPBACK, port)
    )
    assert recvExactly(sock, 14)[:6] == b"\x05\x02\x01\x00\x05\x00"
    assert echoes(sock)
    return sock


def echoes(sock: socket.socket) -> bool:
    """Whether the tunnel still carries data both ways."""
    try:
        sock.sendall(b"ping")
        return recvExactly(sock, 4) == b"ping"
    except OSError:
        return False


def closed(sock: socket.socket) -> bool:
    """Whether the proxy closed the tunnel (EOF or reset), within 10 s."""
    sock.settimeout(10)
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def reloadUsers(proxy: Twistd) -> None:
    """SIGHUP, and wait until the server says the users were reloaded."""
    count = proxy.log().count("users reloaded from")
    proxy.process.send_signal(signal.SIGHUP)
    waitUntil(lambda: proxy.log().count("users reloaded from") > count, 10)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_removedUsersSessionsCutOnlyWhenStrict(
    tmp_path: Path, echo: EchoDestination, strict: bool
) -> None:
    """
    ann is removed from the users file and bob's password changes, then
    SIGHUP: with C{--users-strict-reload} both their tunnels are closed
    and logged with the reason, carol's continues; without it all continue.
    New logins follow the new file either way.
    """
    users = tmp_path / "users"
    carolHash = hashed(b"carol-pw")
    usersFile(users, ann=hashed(ANN), bob=hashed(BOB), carol=carolHash)
    # With a rules file, so SIGHUP reloads both (the users through the
    # strict reload), and auth=password names the logins.
    rules = tmp_path / "rules.conf"
    rules.write_text("permit auth=password 127.0.0.0/8 0/0\n")
    flag = ("--users-strict-reload",) if strict else ()
    proxy = startServer(tmp_path, "--users", str(users), "--rules", str(rules), *flag)
    try:
        ann = tunnel(proxy, echo.port, b"ann", ANN)
        bob = tunnel(proxy, echo.port, b"bob", BOB)
        carol = tunnel(proxy, echo.port, b"carol", b"carol-pw")
        # carol's line is unchanged: only her hash says who she is.
        usersFile(users, bob=hashed(b"new-pw"), carol=carolHash)
        reloadUsers(proxy)
        if strict:
            assert closed(ann) and closed(bob)
            log = proxy.log()
            assert "of user ann cut (--users-strict-reload): removed from" in log
            assert "of user bob cut (--users-strict-reload): password changed" in log
        else:
            assert echoes(ann) and echoes(bob)
            assert "cut (--users-strict-reload)" not in proxy.log()
        assert echoes(carol)
        # The new file decides new logins, strict or not.
        tunnel(proxy, echo.port, b"bob", b"new-pw").close()
        for sock in (ann, bob, carol):
            sock.close()
    finally:
        stopServer(proxy)


def test_strictReloadNeedsUsers() -> None:
    """The flag without C{--users} is a usage error naming both."""
    with pytest.raises(UsageError, match=r"^--users-strict-reload needs --users$"):
        configOf(["--users-strict-reload"])


def test_revokedUsersAreTheRemovedAndTheChanged() -> None:
    """Removed and re-hashed names are revoked, with the reason; added are not."""
    before = {b"ann": b"h1", b"bob": b"h2", b"carol": b"h3"}
    after = {b"bob": b"h2x", b"carol": b"h3", b"dave": b"h4"}
    assert revokedUsers(before, after) == {
        b"ann": "removed from the users file",
        b"bob": "password changed in the users file",
    }


class FakeUsers:
    """The users in force: names to hashes."""

    def __init__(self, hashes: dict[bytes, bytes]) -> None:
        self.hashes = hashes


class FakeChecker:
    """A checker whose reload puts C{nextHashes} in force, or fails."""

    def __init__(self, hashes: dict[bytes, bytes]) -> None:
        self.users = FakeUsers(hashes)
        self.nextHashes: dict[bytes, bytes] | None = None

    def reload(self) -> bool:
        """Put the next users in force; L{False} (nothing changes) if none."""
        if self.nextHashes is None:
            return False
        self.users = FakeUsers(self.nextHashes)
        return True


class FakeSession:
    """A live session, logged in as C{authenticatedUser} (or not)."""

    def __init__(self, id: int, user: str | None) -> None:
        self.id = id
        self.authenticatedUser = user
        self.aborted: list[str] = []

    def abort(self, reason: str) -> None:
        """Record the reason."""
        self.aborted.append(reason)


class FakeFactory:
    """The factory's live sessions."""

    def __init__(self, *sessions: FakeSession) -> None:
        self.activeSessions = set(sessions)


def test_onlyRevokedLoginsAreCut() -> None:
    """
    Sessions of revoked users are aborted with the reason (a name that is
    not UTF-8 included); others, and sessions without a login (SOCKS4 with
    C{auth=none}), are not. A failed reload cuts nothing.
    """
    odd = "\udcff"  # a name's undecodable byte, as the server keeps it
    checker = FakeChecker({b"ann": b"h1", b"bob": b"h2", b"\xff": b"h3"})
    sessions = [
        FakeSession(1, "ann"),
        FakeSession(2, "bob"),
        FakeSession(3, None),
        FakeSession(4, odd),
    ]
    reload = StrictUsersReload(checker, FakeFactory(*sessions))
    reload.reload()
    assert [s.aborted for s in sessions] == [[], [], [], []]
    checker.nextHashes = {b"bob": b"h2"}
    with capturedLogs() as events:
        reload.reload()
    assert [s.aborted for s in sessions] == [
        ["user removed from the users file"],
        [],
        [],
        ["user removed from the users file"],
    ]
    assert sorted(formatEvent(e) for e in events) == [
        "session 1 of user ann cut (--users-strict-reload): removed from the users file",
        "session 4 of user \\xff cut (--users-strict-reload): removed from the users file",
    ]


def test_aSessionCountsAsLoggedInFromItsLogin() -> None:
    """
    A session's C{authenticatedUser} is set from its login on, before its
    request (so a strict reload cuts it too), and never for SOCKS4.
    """
    s = Server(credentialsChecker=InMemoryUsernamePasswordDatabaseDontUse(ann=b"pw"))
    protocol, _ = s.open()
    protocol.dataReceived(b"\x05\x01\x02")
    assert protocol.authenticatedUser is None
    protocol.dataReceived(encodeAuthRequest(b"ann", b"pw"))
    assert protocol.authenticatedUser == "ann"
    protocol.dataReceived(
        encodeRequest5(Command5.CONNECT, 80, IPv4Address("192.0.2.1"))
    )
    assert protocol.authenticatedUser == "ann"
    socks4, _ = Server().open()
    socks4.dataReceived(encodeRequest(Command.CONNECT, 80, IPv4Address("192.0.2.1")))
    assert socks4.authenticatedUser is None
