"""
Tests of L{PasswordFileChecker}, the L{twisted.cred} checker over a
password file: results, the unknown-user path, the cache, reloads, the
pending cap, and (on real threads) that bcrypt runs off the reactor thread.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_socks.policy._credentials import CheckerBusy, PasswordFileChecker
from twisted_socks.policy._passwords import dummyHash

#: Cheap hashes (cost 4) of the tests' passwords.
ALICE = bcrypt.hashpw(b"alice pw", bcrypt.gensalt(4))
BOB = bcrypt.hashpw(b"bob pw", bcrypt.gensalt(4))


class Threads:
    """
    A stand-in for the checker's thread pool: calls wait until the test
    runs them, so it can see what is pending and when answers arrive.
    """

    def __init__(self) -> None:
        self.queued: list[
            tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]
        ] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queued.append((f, args, d))
        return d

    def runAll(self) -> None:
        """Run every queued call, delivering each result or exception."""
        queued, self.queued = self.queued, []
        for f, args, d in queued:
            maybeDeferred(f, *args).chainDeferred(d)


class CountingCheck:
    """C{bcrypt.checkpw}, counting its calls and what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls.append((password, hashed))
        return bcrypt.checkpw(password, hashed)


def writeUsers(path: Path, data: bytes) -> str:
    """Write a private password file; return its name."""
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def makeChecker(
    tmp_path: Path, data: bytes | None = None, **kwargs: Any
) -> tuple[PasswordFileChecker, Threads, CountingCheck, MemoryReactorClock]:
    """A checker over a file of alice and bob, with test threads and clock."""
    if data is None:
        data = b"alice:" + ALICE + b"\nbob:" + BOB + b"\n"
    path = writeUsers(tmp_path / "users", data)
    threads, check, clock = Threads(), CountingCheck(), MemoryReactorClock()
    checkpw = kwargs.pop("checkpw", check)
    checker = PasswordFileChecker(
        path, clock, checkpw=checkpw, inThread=threads, **kwargs
    )
    return checker, threads, check, clock


def result(d: Deferred[Any]) -> Any:
    """The result of a fired Deferred (a failure's exception is returned)."""
    box: list[Any] = []
    d.addBoth(lambda r: box.append(r.value if hasattr(r, "value") else r))
    assert box, "the Deferred has not fired"
    return box[0]


def login(
    checker: PasswordFileChecker, threads: Threads, name: bytes, password: bytes
) -> Any:
    """Ask the checker, run the thread work, and return the outcome."""
    d = checker.requestAvatarId(UsernamePassword(name, password))
    threads.runAll()
    return result(d)


def test_providesICredentialsCheckerForUsernamePassword(tmp_path: Path) -> None:
    """
    The checker is a L{twisted.cred} checker of L{IUsernamePassword}
    credentials, so a server can take it or an embedder's own.
    """
    checker, *_ = makeChecker(tmp_path)
    assert verifyObject(ICredentialsChecker, checker)
    assert checker.credentialInterfaces == (IUsernamePassword,)


def test_theRightPasswordGivesTheUserName(tmp_path: Path) -> None:
    """
    A user's password fires the Deferred with the name, as bytes, after one
    bcrypt check of that password against that user's hash, in a thread.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    assert not d.called and checker.pending == 1
    threads.runAll()
    assert result(d) == b"alice"
    assert check.calls == [(b"alice pw", ALICE)]
    assert checker.pending == 0


def test_textCredentialsAreTakenAsUTF8(tmp_path: Path) -> None:
    """C{str} names and passwords are compared as their UTF-8 bytes."""
    hashed = bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(4))
    checker, threads, _, _ = makeChecker(tmp_path, "jürgen:".encode() + hashed + b"\n")
    d = checker.requestAvatarId(UsernamePassword("jürgen", "pässwörd"))
    threads.runAll()
    assert result(d) == "jürgen".encode()


def test_aWrongPasswordIsUnauthorized(tmp_path: Path) -> None:
    """A wrong password fails with L{UnauthorizedLogin}, one check spent."""
    checker, threads, check, _ = makeChecker(tmp_path)
    assert isinstance(login(checker, threads, b"alice", b"bob pw"), UnauthorizedLogin)
    assert check.calls == [(b"bob pw", ALICE)]


def test_anUnknownUserCostsOneCheckOfTheDummyHash(tmp_path: Path) -> None:
    """
    An unknown name is refused as a wrong password is, and by the same
    work: one bcrypt check, in a thread, against a dummy hash of the users'
    cost. (This is the structural proof that both take the same time; a
    wall-clock comparison would be flaky.)
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    d = checker.requestAvatarId(UsernamePassword(b"mallory", b"alice pw"))
    assert not d.called and checker.pending == 1
    threads.runAll()
    assert isinstance(result(d), UnauthorizedLogin)
    assert check.calls == [(b"alice pw", dummyHash(4))]
    assert check.calls[0][1][4:6] == ALICE[4:6] == b"04"


def test_theDummyHashMatchesNoOnesPasswordEvenIfRight(tmp_path: Path) -> None:
    """
    An unknown user is refused even when the dummy check would say yes:
    only a known user's match is a success.
    """
    checker, threads, _, _ = makeChecker(
        tmp_path, checkpw=lambda password, hashed: True
    )
    assert isinstance(login(checker, threads, b"mallory", b"x"), UnauthorizedLogin)


def test_verifiedCredentialsAreCachedWithoutBcrypt(tmp_path: Path) -> None:
    """
    A name and password verified once are answered from the cache, without
    bcrypt and at once, until the TTL passes; then bcrypt checks again.
    """
    checker, threads, check, clock = makeChecker(tmp_path, cacheTTL=300)
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    clock.advance(299)
    d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    assert result(d) == b"alice"
    assert len(check.calls) == 1
    clock.advance(1)
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert len(check.calls) == 2


def test_wrongPasswordsAreNeverCached(tmp_path: Path) -> None:
    """
    Failures are not remembered: each wrong password costs a check (which
    the failed-attempt limit bounds), and a correct password after them is
    checked too.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    for _ in range(3):
        assert isinstance(login(checker, threads, b"alice", b"nope"), UnauthorizedLogin)
    assert checker.cached == 0
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert len(check.calls) == 4


def test_theCacheKeepsAKeyedDigestNotThePassword(tmp_path: Path) -> None:
    """
    The cache holds 32-byte HMAC digests; moving bytes between name and
    password gives a different key (C{ab}+C{c} is not C{a}+C{bc}).
    """
    hashed = bcrypt.hashpw(b"cdefgh", bcrypt.gensalt(4))
    data = b"ab:" + hashed + b"\nabc:" + hashed + b"\n"
    checker, threads, check, _ = makeChecker(tmp_path, data)
    assert login(checker, threads, b"ab", b"cdefgh") == b"ab"
    keys = list(checker._cache)
    assert [len(k) for k in keys] == [32]
    assert not any(b"cdefgh" in key for key in keys)
    assert login(checker, threads, b"abc", b"defgh") != b"abc"
    assert len(check.calls) == 2


def test_theCacheIsBounded(tmp_path: Path) -> None:
    """
    Beyond C{cacheSize} the least recently verified credential is forgotten
    (and costs a check again).
    """
    checker, threads, check, _ = makeChecker(tmp_path, cacheSize=1)
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert login(checker, threads, b"bob", b"bob pw") == b"bob"
    assert checker.cached == 1
    assert login(checker, threads, b"bob", b"bob pw") == b"bob"
    assert len(check.calls) == 2
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert len(check.calls) == 3


def test_aZeroTTLDisablesTheCache(tmp_path: Path) -> None:
    """With C{cacheTTL=0} every authentication runs bcrypt."""
    checker, threads, check, _ = makeChecker(tmp_path, cacheTTL=0)
    for _ in range(2):
        assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert len(check.calls) == 2 and checker.cached == 0


def test_passwordsBeyond72BytesAreCutAsBcryptDoes(tmp_path: Path) -> None:
    """
    RFC 1929 allows 255-byte passwords, bcrypt reads 72 (htpasswd cuts
    there too): the checker checks the first 72 bytes, where pyca's bcrypt
    would otherwise raise.
    """
    long = bytes(range(1, 101))
    hashed = bcrypt.hashpw(long[:72], bcrypt.gensalt(4))
    checker, threads, check, _ = makeChecker(tmp_path, b"u:" + hashed + b"\n")
    assert login(checker, threads, b"u", long) == b"u"
    assert check.calls == [(long[:72], hashed)]


def test_aBcryptErrorIsARefusalAndShowsNoPassword(tmp_path: Path) -> None:
    """
    Should bcrypt raise, the login is refused and the log names the error's
    type only (its text could carry the password).
    """

    def broken(password: bytes, hashed: bytes) -> bool:
        raise ValueError(f"cannot check {password!r}")

    checker, threads, _, _ = makeChecker(tmp_path, checkpw=broken)
    with capturedLogs() as events:
        outcome = login(checker, threads, b"alice", b"alice pw")
    assert isinstance(outcome, UnauthorizedLogin)
    assert checker.pending == 0
    assert [e["kind"] for e in events] == ["ValueError"]
    assert "alice pw" not in repr(events)


def test_tooManyPendingChecksAreRefusedUnchecked(tmp_path: Path) -> None:
    """
    Beyond C{maxPending} checks queued or running, a login fails at once
    with L{CheckerBusy} (an L{UnauthorizedLogin}), whatever the name; a
    cached credential is still answered.
    """
    checker, threads, check, _ = makeChecker(tmp_path, maxPending=2)
    assert login(checker, threads, b"bob", b"bob pw") == b"bob"
    first = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    second = checker.requestAvatarId(UsernamePassword(b"x", b"y"))
    busy = checker.requestAvatarId(UsernamePassword(b"alice", b"other pw"))
    refusal = result(busy)
    assert isinstance(refusal, CheckerBusy)
    assert isinstance(refusal, UnauthorizedLogin)
    assert (
        result(checker.requestAvatarId(UsernamePassword(b"bob", b"bob pw"))) == b"bob"
    )
    threads.runAll()
    assert result(first) == b"alice"
    assert isinstance(result(second), UnauthorizedLogin)
    assert len(check.calls) == 3


# -- concurrent logins of one user -----------------------------------------------


def test_concurrentLoginsOfOneUserShareOneBcrypt(tmp_path: Path) -> None:
    """
    Fifty logins with the same name and password while none is cached run
    one bcrypt between them (one pending check, not fifty, so none is
    refused as busy although C{maxPending} is 2), and all get the name;
    the check then leaves the in-flight table and the answer is cached.
    """
    checker, threads, check, _ = makeChecker(tmp_path, maxPending=2)
    ds = [
        checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
        for _ in range(50)
    ]
    assert len(threads.queued) == 1 and checker.pending == 1
    assert not any(d.called for d in ds)
    threads.runAll()
    assert [result(d) for d in ds] == [b"alice"] * 50
    assert check.calls == [(b"alice pw", ALICE)]
    assert checker.pending == 0 and checker._inFlight == {}
    assert checker.cached == 1


def test_aWrongPasswordBesideARightOneIsCheckedOnItsOwn(tmp_path: Path) -> None:
    """
    A wrong password for a user, asked while her right one is being
    checked, is not merged with it: two bcrypt checks, like an unknown
    user's beside hers (the dummy hash), each answered for itself, and the
    wrong ones are not cached. Logins repeating the wrong password share
    its check, so a refusal costs the same bcrypt a success does.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    right = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    wrong = [
        checker.requestAvatarId(UsernamePassword(b"alice", b"guess")) for _ in range(3)
    ]
    unknown = checker.requestAvatarId(UsernamePassword(b"mallory", b"alice pw"))
    assert len(threads.queued) == 3 and checker.pending == 3
    threads.runAll()
    assert result(right) == b"alice"
    for d in [*wrong, unknown]:
        assert isinstance(result(d), UnauthorizedLogin)
    assert check.calls == [
        (b"alice pw", ALICE),
        (b"guess", ALICE),
        (b"alice pw", checker.users.dummy),
    ]
    assert checker.cached == 1 and checker.pending == 0


def test_aCancelledLoginLeavesTheSharedCheckToTheOthers(tmp_path: Path) -> None:
    """
    A login whose client gave up (its Deferred cancelled) stops waiting;
    the check goes on and answers the logins still waiting.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    first = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    second = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    first.cancel()
    assert type(result(first)).__name__ == "CancelledError"
    assert not second.called and len(threads.queued) == 1
    threads.runAll()
    assert result(second) == b"alice"
    assert len(check.calls) == 1 and checker.cached == 1


def test_aSharedCheckWhoseLoginsAllLeftStillFillsTheCache(tmp_path: Path) -> None:
    """
    When every waiting login is cancelled the check still answers, quietly
    (no unhandled failure), and a right password is cached for the next.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    refused = checker.requestAvatarId(UsernamePassword(b"alice", b"guess"))
    d.cancel()
    refused.cancel()
    result(d), result(refused)
    threads.runAll()
    assert checker.cached == 1 and checker._inFlight == {}
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert len(check.calls) == 2


def test_aReloadDuringASharedCheckAsksTheNewUsers(tmp_path: Path) -> None:
    """
    A login after a reload does not join a check of the old users; the
    logins that were waiting on the old check, when it answers (a match,
    for the old hash), are asked again of the new users (joining the new
    check), so nobody is let in by the old password and nothing enters the
    new cache.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    before = [
        checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
        for _ in range(2)
    ]
    writeUsers(tmp_path / "users", b"alice:" + BOB + b"\n")
    assert checker.reload()
    after = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    assert len(threads.queued) == 2 and checker.pending == 2
    threads.runAll()
    for d in [*before, after]:
        assert isinstance(result(d), UnauthorizedLogin)
    assert check.calls == [(b"alice pw", ALICE), (b"alice pw", BOB)]
    assert checker.cached == 0 and checker.pending == 0
    assert checker._inFlight == {}


# -- reloading --------------------------------------------------------------------


def test_reloadRemovesAUserAndForgetsTheCache(tmp_path: Path) -> None:
    """
    After a reload without alice, her next authentication fails although
    her credentials were cached; bob's cached credentials are checked again.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert login(checker, threads, b"bob", b"bob pw") == b"bob"
    writeUsers(tmp_path / "users", b"bob:" + BOB + b"\n")
    assert checker.reload() is True
    assert checker.cached == 0
    assert isinstance(login(checker, threads, b"alice", b"alice pw"), UnauthorizedLogin)
    assert login(checker, threads, b"bob", b"bob pw") == b"bob"
    assert len(check.calls) == 4


def test_reloadChangesAPassword(tmp_path: Path) -> None:
    """After a reload with a new hash, the old password fails, the new works."""
    checker, threads, _, _ = makeChecker(tmp_path)
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    writeUsers(tmp_path / "users", b"alice:" + BOB + b"\n")
    assert checker.reload()
    assert isinstance(login(checker, threads, b"alice", b"alice pw"), UnauthorizedLogin)
    assert login(checker, threads, b"alice", b"bob pw") == b"alice"


def test_aBadReloadKeepsTheUsersAndSaysWhy(tmp_path: Path) -> None:
    """
    A reload of an invalid file, or of one still being written (no final
    newline), keeps the users and the cache in force and logs the error
    with its file and line.
    """
    checker, threads, check, _ = makeChecker(tmp_path)
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    path = tmp_path / "users"
    for data, where in [
        (b"alice:" + ALICE + b"\nbob:plain\n", ":2: user 'bob'"),
        (b"alice:" + ALICE[:30], ":1: the last line does not end"),
    ]:
        writeUsers(path, data)
        with capturedLogs() as events:
            assert checker.reload() is False
        assert [e["log_level"].name for e in events] == ["error"]
        assert f"{path}{where}" in events[0]["error"]
        assert sorted(checker.users.hashes) == [b"alice", b"bob"]
    assert login(checker, threads, b"alice", b"alice pw") == b"alice"
    assert login(checker, threads, b"bob", b"bob pw") == b"bob"
    assert len(check.calls) == 2


def test_aCheckUnderWayAtAReloadIsAnsweredByTheNewUsers(tmp_path: Path) -> None:
    """
    A check that started before a reload removed its user does not succeed
    (nor enter the new cache) when bcrypt answers after it: it is asked
    again of the new users.
    """
    checker, threads, _, _ = makeChecker(tmp_path)
    d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    writeUsers(tmp_path / "users", b"bob:" + BOB + b"\n")
    assert checker.reload()
    threads.runAll()
    # The answer about the old users started a check of the new ones.
    assert len(threads.queued) == 1 and checker.pending == 1
    threads.runAll()
    assert isinstance(result(d), UnauthorizedLogin)
    assert checker.cached == 0 and checker.pending == 0


def test_anHtpasswdFileAuthenticatesItsUsers(tmp_path: Path) -> None:
    """
    Through the checker, a file written by C{htpasswd -B} (apache2-utils,
    which ./dev installs) lets its users in with their passwords only.
    """
    htpasswd = shutil.which("htpasswd")
    assert htpasswd is not None, "htpasswd missing: ./dev installs apache2-utils"
    path = tmp_path / "users"
    subprocess.run(
        [htpasswd, "-icB", "-C", "4", str(path), "alice"],
        input=b"s3cr:t@x%",
        check=True,
        capture_output=True,
        timeout=30,
    )
    path.chmod(0o600)
    threads = Threads()
    checker = PasswordFileChecker(str(path), MemoryReactorClock(), inThread=threads)
    assert login(checker, threads, b"alice", b"s3cr:t@x%") == b"alice"
    assert isinstance(login(checker, threads, b"alice", b"s3cr"), UnauthorizedLogin)


def test_reprNamesTheFileOnly(tmp_path: Path) -> None:
    """The checker's repr shows its file and user count, no hash."""
    checker, *_ = makeChecker(tmp_path)
    assert (
        repr(checker) == f"<PasswordFileChecker {str(tmp_path / 'users')!r}: 2 users>"
    )


# -- in a real reactor --------------------------------------------------------------


@implementer(IRealm)
class NameRealm:
    """A realm whose avatar is the user name itself."""

    def requestAvatar(
        self, avatarId: bytes, mind: object, *interfaces: Any
    ) -> tuple[Any, bytes, Callable[[], None]]:
        return interfaces[0], avatarId, lambda: None


@pytest_twisted.inlineCallbacks
def test_bcryptRunsInTheCheckersOwnThreads(tmp_path: Path) -> Any:
    """
    Through a L{Portal}, with the real reactor and bcrypt: the check runs in
    a thread of the checker's pool (never the reactor's thread), and the
    answers arrive in the reactor thread.
    """
    path = writeUsers(tmp_path / "users", b"alice:" + ALICE + b"\n")
    threadsSeen: list[str] = []

    def check(password: bytes, hashed: bytes) -> bool:
        threadsSeen.append(threading.current_thread().name)
        return bcrypt.checkpw(password, hashed)

    checker = PasswordFileChecker(path, reactor, checkpw=check)
    try:
        portal = Portal(NameRealm(), [checker])
        _, avatar, _ = yield portal.login(
            UsernamePassword(b"alice", b"alice pw"), None, IUsernamePassword
        )
        assert avatar == b"alice"
        assert threading.current_thread() is threading.main_thread()
        with pytest.raises(UnauthorizedLogin):
            yield portal.login(
                UsernamePassword(b"alice", b"no"), None, IUsernamePassword
            )
        assert len(threadsSeen) == 2
        # Twisted names pool threads PoolThread-POOLNAME-N.
        assert all("-twisted_socks bcrypt-" in name for name in threadsSeen)
    finally:
        checker.stop()


@pytest_twisted.inlineCallbacks
def test_aStoppedCheckerRefusesAtOnce(tmp_path: Path) -> Any:
    """
    After its pool is stopped (at reactor shutdown), a check is refused at
    once instead of waiting for a thread that will never run it.
    """
    path = writeUsers(tmp_path / "users", b"alice:" + ALICE + b"\n")
    checker = PasswordFileChecker(path, reactor)
    avatar = yield checker.requestAvatarId(UsernamePassword(b"alice", b"alice pw"))
    assert avatar == b"alice"
    checker.stop()
    with pytest.raises(UnauthorizedLogin, match="stopped"):
        yield checker.requestAvatarId(UsernamePassword(b"alice", b"other"))
