"""
The labels a session's record is counted under on C{/metrics}: its SOCKS
version, its command and its reply, each from a small fixed set of values
so that no client can inflate the number of series.

Plain functions of a L{SessionRecord}: no Prometheus here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..server._records import SessionRecord

__all__ = ["COMMAND_LABELS", "VERSION_LABELS", "sessionLabels", "versionLabel"]

#: The C{version} label's values: C{none} is a connection that named no
#: SOCKS version (its first byte was neither 04 nor 05, or it sent nothing).
VERSION_LABELS = ("4", "5", "none")

#: The C{command} label's values by the record's command; C{none}: no
#: complete request came.  UDP ASSOCIATE is C{udp}, shorter on a dashboard.
_COMMANDS = {"connect": "connect", "bind": "bind", "udp_associate": "udp"}
COMMAND_LABELS = (*_COMMANDS.values(), "none")

#: The reply codes each version can send: SOCKS4's CD (90-93), SOCKS5's REP
#: (00-08).  Anything else (an embedder's record) counts as C{none}.
_REPLIES = {4: frozenset(range(90, 94)), 5: frozenset(range(9))}
_NO_REPLIES: frozenset[int] = frozenset()


def versionLabel(version: int | None) -> str:
    """The C{version} label value of a record's C{version}."""
    return "4" if version == 4 else "5" if version == 5 else "none"


def sessionLabels(record: SessionRecord) -> tuple[str, str, str]:
    """
    The C{version}, C{command} and C{reply} label values of an ended
    session: a reply code is only ever read as its own version's code (REP
    1 of SOCKS5 is not SOCKS4's anything), so the pair says what was sent.
    """
    version = record.version
    reply = record.reply
    return (
        versionLabel(version),
        _COMMANDS.get(record.command or "", "none"),
        str(reply) if reply in _REPLIES.get(version or 0, _NO_REPLIES) else "none",
    )
