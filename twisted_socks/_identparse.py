"""
RFC 1413 (ident) responses: the error types, and the parser. No Twisted.
"""

from __future__ import annotations

__all__ = [
    "IdentError",
    "IdentErrorReply",
    "IdentProtocolError",
    "IdentTimeout",
    "IdentUnreachable",
]


class IdentError(Exception):
    """An ident lookup gave no user name."""


class IdentUnreachable(IdentError):
    """No identd could be reached on the client host (refused, unreachable)."""


class IdentErrorReply(IdentError):
    """
    The identd answered C{ERROR}.

    @ivar token: its error token: C{INVALID-PORT}, C{NO-USER},
        C{HIDDEN-USER}, C{UNKNOWN-ERROR} or a private C{X...} token.
    """

    def __init__(self, token: str) -> None:
        super().__init__(f"identd answered ERROR : {token}")
        self.token = token


class IdentTimeout(IdentError):
    """The identd did not answer in time."""


class IdentProtocolError(IdentError):
    """The identd's answer was malformed, too long, or cut short."""
