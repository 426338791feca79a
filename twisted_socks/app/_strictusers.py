"""
C{--users-strict-reload}: a users reload (SIGHUP) that also cuts the live
sessions of users it removed or whose password changed.

Without it, a reload changes who may log in from then on and leaves live
sessions alone, as a rules reload does.  With it, revoking a user ends
that user's access now, not when their tunnels happen to close.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from twisted.logger import Logger

from .._logfields import escapeField

__all__ = ["StrictUsersReload", "revokedUsers"]

_log = Logger(namespace="twisted_socks.users")


class _Users(Protocol):
    hashes: Mapping[bytes, bytes]


class _ReloadingChecker(Protocol):
    """What is needed of the checker (a C{PasswordFileChecker})."""

    @property
    def users(self) -> _Users: ...

    def reload(self) -> bool: ...


class _Session(Protocol):
    """What is needed of a live session (a C{SOCKSServerProtocol})."""

    @property
    def id(self) -> int: ...

    @property
    def authenticatedUser(self) -> str | None: ...

    def abort(self, reason: str) -> None: ...


class _HasSessions(Protocol):
    @property
    def activeSessions(self) -> Iterable[_Session]: ...


def revokedUsers(
    before: Mapping[bytes, bytes], after: Mapping[bytes, bytes]
) -> dict[bytes, str]:
    """
    The users a reload revoked, each with the reason: removed, or a
    changed hash (a new password: a session logged in with the old one
    must log in again).
    """
    revoked = {}
    for name, hashed in before.items():
        now = after.get(name)
        if now is None:
            revoked[name] = "removed from the users file"
        elif now != hashed:
            revoked[name] = "password changed in the users file"
    return revoked


class StrictUsersReload:
    """
    Reloads the users; when the new users are in force, aborts each live
    session whose login they revoked, and logs it with the reason.

    A session counts from its login on, whether its request has come or
    not.  An invalid users file changes nothing and cuts nothing.

    @param checker: the password checker, which reloads the users.
    @param factory: the server factory, whose C{activeSessions} are cut.
    """

    def __init__(self, checker: _ReloadingChecker, factory: _HasSessions) -> None:
        self._checker = checker
        self._factory = factory

    def reload(self) -> None:
        """Reload the users; cut the sessions of those revoked."""
        before = dict(self._checker.users.hashes)
        if not self._checker.reload():
            return
        revoked = revokedUsers(before, self._checker.users.hashes)
        if not revoked:
            return
        for session in list(self._factory.activeSessions):
            user = session.authenticatedUser
            if user is None:
                continue
            reason = revoked.get(user.encode("utf-8", "surrogateescape"))
            if reason is None:
                continue
            _log.warn(
                "session {id} of user {user} cut (--users-strict-reload): {reason}",
                id=session.id,
                user=escapeField(user),
                reason=reason,
            )
            session.abort(f"user {reason}")
