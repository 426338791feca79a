"""
The labels a session's record is counted under on C{/metrics}: its SOCKS
version, its command and its reply, each from a small fixed set of values
so that no client can inflate the number of series.

Also the categories an end reason, an ident outcome and a state are
counted under.  Plain functions and tables: no Prometheus here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..server._records import SessionState
from ..wire._request import Command

if TYPE_CHECKING:
    from ..server._records import SessionRecord

__all__ = [
    "COMMAND_LABELS",
    "IDENT_LABELS",
    "REJECTION_LABELS",
    "REJECTION_REASONS",
    "VERSION_LABELS",
    "identOutcome",
    "isGrantedSeries",
    "rejectionReason",
    "sessionLabels",
    "stateLabel",
    "versionLabel",
]

#: The C{version} label's values: C{none} is a connection that named no
#: SOCKS version (its first byte was neither 04 nor 05, or it sent nothing).
VERSION_LABELS = ("4", "5", "none")

#: The C{command} label's values: the record's command (L{Command.word});
#: C{none}: no complete request came.
COMMAND_LABELS = (*(command.word for command in Command), "none")
_COMMANDS = frozenset(COMMAND_LABELS[:-1])

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
        record.command if record.command in _COMMANDS else "none",
        str(reply) if reply in _REPLIES.get(version or 0, _NO_REPLIES) else "none",
    )


#: How a session's end reason starts, and the rejection category it counts
#: under; first match wins.  A reason not listed and not a normal end counts
#: as C{other}.
REJECTION_REASONS: tuple[tuple[str, str], ...] = (
    ("denied: ", "denied"),
    ("access policy error", "policy_error"),
    ("max-connections reached", "max_connections"),
    ("shed: ", "shed"),
    ("max-connections-per-client reached", "max_connections_per_client"),
    ("connection rate per client exceeded", "client_rate"),
    ("max-binds-per-client reached", "max_binds"),
    ("max-udp-per-client reached", "max_udp"),
    ("bad request: ", "bad_request"),
    ("not SOCKS: ", "not_socks"),
    ("name lookup failed: ", "name_lookup_failed"),
    ("connect failed: ", "connect_failed"),
    ("negotiate timeout", "negotiate_timeout"),
    ("connect timeout", "connect_timeout"),
    ("bind timeout", "bind_timeout"),
    ("no ident answer", "no_ident"),
    ("ident user differs from USERID", "ident_mismatch"),
    ("BIND peer ", "bind_wrong_peer"),
)

#: How the end reasons of sessions that were not refused start: the tunnel
#: ran and closed, or the client gave up before an answer ("client closed
#: before completing its request", "... while waiting for the BIND peer").
_NORMAL_ENDS = (
    "client closed",
    "destination closed",
    "both sides closed",
    "idle timeout",
)

REJECTION_LABELS = (*dict.fromkeys(label for _, label in REJECTION_REASONS), "other")

#: The server's ident outcomes (see the factory's C{identLookup} event) as
#: label values; any other exception counts as C{other}.
_IDENT_OUTCOMES = {
    "match": "match",
    "mismatch": "mismatch",
    # identd named a user and the request claimed none to compare (SOCKS5).
    "named": "named",
    "IdentUnreachable": "unreachable",
    "IdentTimeout": "timeout",
    "IdentErrorReply": "error_reply",
    "IdentProtocolError": "protocol_error",
}
IDENT_LABELS = (*_IDENT_OUTCOMES.values(), "other")

#: The replies that say "granted", per version label, for the summary.
_GRANTED = frozenset({("4", "90"), ("5", "0")})


def rejectionReason(reason: str) -> str | None:
    """
    The rejection category of a session's end reason, or L{None} if the
    session was not refused (it relayed, or its client went away first).
    """
    if reason.startswith(_NORMAL_ENDS):
        return None
    for prefix, label in REJECTION_REASONS:
        if reason.startswith(prefix):
            return label
    return "other"


def identOutcome(outcome: str) -> str:
    """The label value for an C{identLookup} outcome (bounded: see above)."""
    return _IDENT_OUTCOMES.get(outcome, "other")


def stateLabel(state: SessionState | str) -> str:
    """
    The label value for a session state: its name in lower case
    (C{waiting} rather than the display text C{waiting for BIND peer}).
    """
    if isinstance(state, str):
        state = SessionState(state)
    return state.name.lower()


def isGrantedSeries(labels: frozenset[tuple[str, str]]) -> bool:
    """Whether a C{socks_sessions_total} series counts granted sessions."""
    named = dict(labels)
    return (named.get("version"), named.get("reply")) in _GRANTED
