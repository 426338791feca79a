"""
A session's RFC 1413 check: the client's identd asked at most once (its
answer does not depend on the destination), what it said or why it said
nothing, and which ident modes that answer rules out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._logfields import escapeField
from ..policy._policy import IdentMode
from ..wire._identparse import IdentUnreachable
from ..wire._outcome import Outcome
from ..wire._request import UserSource

if TYPE_CHECKING:
    from ._session import ServerSession

__all__ = ["IdentCheck"]

_log = Logger(namespace="twisted_socks.server")


class IdentCheck:
    """
    The ident check of one session's request; what identd said is kept on
    the session (C{identUser}, for the record).
    """

    __slots__ = ("_error", "_session")

    def __init__(self, session: ServerSession) -> None:
        self._session = session
        # Why identd said nothing, once asked.
        self._error: str | None = None

    def known(self) -> bool:
        """Whether identd has been asked (and has answered, or failed to)."""
        return self._session.identUser is not None or self._error is not None

    def ask(self) -> Deferred[str]:
        """Ask the client's identd who it is."""
        session = self._session
        resolver = session.factory.identResolver
        transport: Any = session.transport
        peer, host = transport.getPeer(), transport.getHost()
        if resolver is None or session.clientAddress is None:
            return fail(IdentUnreachable("no ident for this client"))
        return resolver.lookup((peer.host, peer.port), (host.host, host.port))

    def _claimed(self) -> bool:
        """
        Whether the request claims a user for identd to confirm.  SOCKS4's
        USERID does.  A SOCKS5 client claims none: without authentication
        it names no user, and a password file's user is not an account on
        the client's host; identd's answer is then what the record knows
        of the client's user, and only its silence can refuse.
        """
        request = self._session.request
        return request is None or request.userSource is UserSource.CLAIMED

    def answered(self, user: str, requested: str) -> bool:
        """
        identd named C{user}: whether that is acceptable (the C{requested}
        user, when the request claims one).
        """
        self._session.identUser = user
        metrics = self._session.factory.metrics
        if not self._claimed():
            metrics.identLookup(outcome="named")
            return True
        matched = user == requested
        metrics.identLookup(outcome="match" if matched else "mismatch")
        return matched

    def failed(self, failure: Failure) -> None:
        """identd said nothing (or an error)."""
        metrics = self._session.factory.metrics
        metrics.identLookup(outcome=type(failure.value).__name__)
        self._error = failure.getErrorMessage()

    def refusal(self, mode: IdentMode, requested: str) -> tuple[Outcome, str] | None:
        """The outcome and reason if the answer rules out C{mode}."""
        if mode is IdentMode.OFF:
            return None
        if self._error is not None:
            if mode is IdentMode.STRICT:
                return Outcome.NO_IDENTD, f"no ident answer: {self._error}"
            _log.info(
                "no ident answer for {client}, allowed (lenient): {why}",
                client=self._session.clientText,
                # The identd runs on the client's host: its ERROR text is
                # the client's text.
                why=escapeField(self._error),
            )
            return None
        if self._session.identUser != requested and self._claimed():
            return Outcome.IDENT_MISMATCH, "ident user differs from USERID"
        return None
