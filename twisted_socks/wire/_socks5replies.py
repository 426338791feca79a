"""
The SOCKS5 reply codes (RFC 1928 section 6) and what a SOCKS5 client is told
of each version-neutral outcome, with no I/O and no Twisted imports.
L{twisted_socks.wire._socks5} re-exports both.
"""

from __future__ import annotations

from enum import IntEnum

from ._outcome import Outcome

__all__ = ["ReplyCode5", "replyFor5"]


class ReplyCode5(IntEnum):
    """The REP field of a reply (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


#: What a SOCKS5 client is told of each outcome.  The ident refusals are
#: policy refusals (SOCKS5 has no ident codes); "TTL expired" is what every
#: peer sends for a connect that timed out.
_SOCKS5_REPLIES = {
    Outcome.GRANTED: ReplyCode5.SUCCEEDED,
    Outcome.DENIED: ReplyCode5.NOT_ALLOWED,
    Outcome.NO_IDENTD: ReplyCode5.NOT_ALLOWED,
    Outcome.IDENT_MISMATCH: ReplyCode5.NOT_ALLOWED,
    Outcome.NETWORK_UNREACHABLE: ReplyCode5.NETWORK_UNREACHABLE,
    Outcome.HOST_UNREACHABLE: ReplyCode5.HOST_UNREACHABLE,
    Outcome.REFUSED: ReplyCode5.CONNECTION_REFUSED,
    Outcome.TIMED_OUT: ReplyCode5.TTL_EXPIRED,
    Outcome.COMMAND_NOT_SUPPORTED: ReplyCode5.COMMAND_NOT_SUPPORTED,
    Outcome.ADDRESS_TYPE_NOT_SUPPORTED: ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED,
}


def replyFor5(outcome: Outcome) -> ReplyCode5:
    """The SOCKS5 reply code (REP) that tells a client C{outcome}."""
    return _SOCKS5_REPLIES.get(outcome, ReplyCode5.GENERAL_FAILURE)
