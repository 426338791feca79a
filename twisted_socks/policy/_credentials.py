"""
The users of C{--users FILE} as a L{twisted.cred} credentials checker.

The SOCKS5 server asks an L{ICredentialsChecker} for
L{IUsernamePassword} credentials, so an embedder can give it any checker
(PAM, LDAP, a database); L{PasswordFileChecker} is the one over a password
file (L{twisted_socks.policy._passwords}).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ._passwords import (
    MAX_PASSWORD_LENGTH,
    PasswordFile,
    PasswordFileError,
    readPasswordFile,
)

__all__ = [
    "CACHE_SIZE",
    "CACHE_TTL",
    "CHECK_THREADS",
    "MAX_PENDING_CHECKS",
    "CheckerBusy",
    "PasswordFileChecker",
]

_log = Logger(namespace="twisted_socks.users")

#: Seconds a verified name and password are remembered.
CACHE_TTL = 300.0

#: Verified credentials remembered at most (about 100 bytes each).
CACHE_SIZE = 10_000

#: Threads of the checker's own pool: bcrypt holds a core for its whole
#: run, so more threads than cores only lengthen every check.
CHECK_THREADS = 2

#: bcrypt checks queued or running at most; see L{CheckerBusy}.
MAX_PENDING_CHECKS = 64

#: Runs a function in a thread; its Deferred fires in the reactor thread.
InThread = Callable[..., "Deferred[Any]"]


class CheckerBusy(UnauthorizedLogin):
    """
    Refused unchecked: L{MAX_PENDING_CHECKS} bcrypt checks are already
    queued or running (each is a quarter of a second of a core at cost 12).
    The answer does not depend on the name, so it tells nothing about which
    names exist.
    """


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """
    Checks user names and passwords against a password file.

      - bcrypt runs on a small pool of threads of the checker's own, never
        the reactor thread (it takes milliseconds to a quarter second) nor
        the reactor's pool (which name lookups use);
      - an unknown name is checked against a dummy hash of the users' cost
        (see L{twisted_socks.policy._passwords.dummyHash}), so it is refused in the
        time a wrong password takes and names cannot be probed;
      - verified credentials are remembered for C{cacheTTL} seconds, at most
        C{cacheSize} of them, as an HMAC-SHA256 of name and password under
        a key made at random for this checker (never the password itself),
        so a client opening many connections costs one bcrypt, not one a
        connection; a reload forgets them all;
      - logins with the same name and password while one is being checked
        wait for that check's answer instead of running their own, so
        a burst of them when the cache has no entry costs one bcrypt too.

    The avatar ID is the user name, as bytes.

    @ivar users: the users in force.
    @ivar pending: bcrypt checks queued or running.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        threads: int = CHECK_THREADS,
        cacheTTL: float = CACHE_TTL,
        cacheSize: int = CACHE_SIZE,
        maxPending: int = MAX_PENDING_CHECKS,
        checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw,
        inThread: InThread | None = None,
    ) -> None:
        """
        Read the file.

        @param path: the password file.
        @param reactor: provides L{IReactorTime} (the cache's clock) and,
            unless C{inThread} is given, C{IReactorFromThreads} and
            L{IReactorCore} (to stop the pool at shutdown).
        @param threads: the most bcrypt checks that run at once.
        @param cacheTTL: seconds a verified credential is remembered (0:
            never).
        @param cacheSize: the most credentials remembered.
        @param maxPending: the most checks queued or running.
        @param checkpw: checks a password against a hash (for tests).
        @param inThread: runs C{f(*args)} in a thread and returns a Deferred
            of its result (for tests); by default, the checker's own pool.
        @raise PasswordFileError: if the file cannot be read or is invalid.
        """
        if threads < 1:
            raise ValueError("threads must be positive")
        self.path = path
        self.users: PasswordFile = readPasswordFile(path)
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._checkpw = checkpw
        self.cacheTTL = cacheTTL
        self.cacheSize = cacheSize
        self.maxPending = maxPending
        self.pending = 0
        self._pool: ThreadPool | None = None
        self._threads = threads
        self._inThread: InThread = inThread or self._inPool
        # Made per checker (so per process): a cache key is worthless
        # outside this process, and keys from before a restart match nothing.
        self._secret = os.urandom(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        # Bumped by every reload: a check that started before it must not
        # put its answer (about the old users) in the new cache.
        self._generation = 0
        # Checks under way, by cache key: logins with the same name and
        # password wait on the one check (single-flight).
        self._inFlight: dict[bytes, _Flight] = {}

    def __repr__(self) -> str:
        return f"<PasswordFileChecker {self.path!r}: {len(self.users.hashes)} users>"

    # -- checking ---------------------------------------------------------------

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """
        Check a name and password.

        @param credentials: provides L{IUsernamePassword}; C{str} fields are
            taken as UTF-8.
        @return: a Deferred firing with the user name (bytes), or failing
            with L{UnauthorizedLogin} (L{CheckerBusy} when too many checks
            are under way).
        """
        name = _bytes(credentials.username)
        password = _bytes(credentials.password)
        # The interface's type admits () (an anonymous avatar), which a
        # password check never gives.
        return cast("Deferred[bytes | tuple[()]]", self._check(name, password))

    def _check(self, name: bytes, password: bytes) -> Deferred[bytes]:
        key = self._cacheKey(name, password)
        expires = self._cache.get(key)
        if expires is not None:
            if self._clock.seconds() < expires:
                return succeed(name)
            del self._cache[key]
        flight = self._inFlight.get(key)
        if flight is not None:
            # The same name and password are being checked: their answer is
            # this one's too, so a burst of logins at a cache expiry costs
            # one bcrypt, not one each (nor refusals as busy).
            return flight.wait()
        if self.pending >= self.maxPending:
            return fail(CheckerBusy("too many password checks under way"))
        if self._pool is not None and self._pool.joined:
            # Stopped at shutdown: a check handed to it would never answer.
            return fail(UnauthorizedLogin("the password checker is stopped"))
        flight = _Flight()
        self._inFlight[key] = flight
        # Waiting before the check starts: a thread stand-in that answers at
        # once must find someone to tell.
        waiter = flight.wait()
        self._bcrypt(key, name, password).addBoth(flight.settle)
        return waiter

    def _bcrypt(self, key: bytes, name: bytes, password: bytes) -> Deferred[bytes]:
        """
        Run one bcrypt check for L{_check}, whose in-flight entry it drops
        when bcrypt answers.
        """
        known = self.users.hashes.get(name)
        # An unknown name costs one bcrypt too, against the dummy.
        hashed = self.users.dummy if known is None else known
        generation = self._generation
        flight = self._inFlight[key]
        self.pending += 1

        def settled() -> None:
            self.pending -= 1
            # A reload may have emptied the table, and a check of the new
            # users may be in flight under the same key: leave that one.
            if self._inFlight.get(key) is flight:
                del self._inFlight[key]

        def checked(matched: object) -> Deferred[bytes]:
            settled()
            if generation != self._generation:
                # The users changed while bcrypt ran: ask the new ones.
                return self._check(name, password)
            if matched is True and known is not None:
                self._remember(key)
                return succeed(name)
            return fail(UnauthorizedLogin("wrong user name or password"))

        def failed(reason: Failure) -> Deferred[bytes]:
            settled()
            # An error inside bcrypt is a refusal, and is never shown: its
            # text could carry what it was given.
            _log.error(
                "password check failed unexpectedly: {kind}",
                kind=reason.type.__name__ if reason.type else "?",
            )
            return fail(UnauthorizedLogin("password check failed"))

        # bcrypt reads only 72 bytes and pyca's refuses more, while RFC 1929
        # allows 255: the hash was made of the first 72 (htpasswd cuts too).
        d = self._inThread(self._checkpw, password[:MAX_PASSWORD_LENGTH], hashed)
        return d.addCallbacks(checked, failed)

    def _cacheKey(self, name: bytes, password: bytes) -> bytes:
        # The name's length first: "ab"+"c" and "a"+"bc" must differ.
        message = len(name).to_bytes(2, "big") + name + password
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _remember(self, key: bytes) -> None:
        if self.cacheTTL <= 0 or self.cacheSize <= 0:
            return
        self._cache[key] = self._clock.seconds() + self.cacheTTL
        self._cache.move_to_end(key)
        while len(self._cache) > self.cacheSize:
            self._cache.popitem(last=False)

    @property
    def cached(self) -> int:
        """How many verified credentials are remembered (expired ones too)."""
        return len(self._cache)

    # -- the pool ---------------------------------------------------------------

    def _inPool(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._pool is None:
            self._pool = ThreadPool(0, self._threads, name="twisted_socks bcrypt")
            self._pool.start()
            IReactorCore(self._reactor).addSystemEventTrigger(
                "during", "shutdown", self.stop
            )
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def stop(self) -> None:
        """Stop the thread pool (waiting for running checks to return)."""
        if self._pool is not None and self._pool.started:
            self._pool.stop()

    # -- reloading --------------------------------------------------------------

    def reload(self) -> bool:
        """
        Read the file again (on SIGHUP).  A valid file replaces the users
        and empties the cache, so a removed user or a changed password
        fails from the next check on (live sessions are the server's
        business).  An invalid or half-written file keeps the users in
        force; the error is logged.

        @return: whether the new users are in force.
        """
        try:
            users = readPasswordFile(self.path, complete=True)
        except PasswordFileError as e:
            _log.error(
                "users not reloaded, previous users stay in force: {error}",
                error=str(e),
            )
            return False
        self.users = users
        self._cache.clear()
        # Checks of the old users still answer their waiters (by asking the
        # new users again, see _bcrypt), but no new login joins them.
        self._inFlight.clear()
        self._generation += 1
        _log.info(
            "users reloaded from {path}: {count} users",
            path=self.path,
            count=len(users.hashes),
        )
        return True


class _Flight:
    """
    One bcrypt check under way and the logins waiting for its answer.

    Each login gets a Deferred of its own, so cancelling one (a client that
    hung up) takes it off the list and leaves the check and the others be.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[bytes]] = []

    def wait(self) -> Deferred[bytes]:
        """
        @return: a Deferred of the check's answer (the name, or a failure).
        """
        waiter: Deferred[bytes] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def settle(self, outcome: bytes | Failure) -> None:
        """
        Give the check's answer to every login still waiting.

        @param outcome: the name, or the failure (an L{UnauthorizedLogin}).
        """
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)


def _bytes(value: str | bytes) -> bytes:
    """A credential field as bytes (text as UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)
