"""
Ident (RFC 1413) for SOCKS5 clients, in memory: C{--ident} and a rule's
C{?=} ask the client's identd, the record names its answer, and only its
silence refuses (REP 02), since a SOCKS5 client claims no user for identd
to confirm.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from tests.test_socks5ops import (
    CONNECT5,
    NOAUTH,
    PASSWORD,
    SECRET,
    Server,
    close,
    users,
)
from twisted_socks import AccessRequest, Decision, IdentMode, SessionState
from twisted_socks.server._records import summaryLine
from twisted_socks.wire._identparse import IdentUnreachable
from twisted_socks.wire._userpass import encodeAuthRequest

# -- ident (RFC 1413) ----------------------------------------------------------------


class Identd:
    """An ident resolver that names C{user} (L{None}: no identd), and counts."""

    def __init__(self, user: str | None) -> None:
        self.user = user
        self.asked: list[tuple[tuple[str, int], tuple[str, int]]] = []

    def lookup(self, client: tuple[str, int], server: tuple[str, int]) -> Deferred[str]:
        """What the client host's identd says."""
        self.asked.append((client, server))
        if self.user is None:
            return fail(IdentUnreachable("connection refused"))
        return succeed(self.user)


def identServer(user: str | None, **kwargs: object) -> tuple[Server, Identd]:
    """A server asking an identd that names C{user}."""
    identd = Identd(user)
    return Server(identResolver=identd, **kwargs), identd


def test_strictIdentAsksForASOCKS5ClientAndRecordsItsAnswer() -> None:
    """
    With C{--ident strict} a SOCKS5 client's identd is asked once; its
    answer is the record's ident user and the session's (no claim to
    compare: a SOCKS5 client without authentication names no user), and
    counted as C{named}.
    """
    s, identd = identServer("bob", identMode=IdentMode.STRICT)
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + CONNECT5)
    assert len(identd.asked) == 1
    s.connector.connections[-1].succeed()
    assert protocol.state is SessionState.RELAYING
    [info] = s.factory.sessions()
    assert info.identUser == "bob"
    close(protocol)
    [record] = s.records
    assert (record.identUser, record.version, record.reply) == ("bob", 5, 0)
    assert " ident=bob " in summaryLine(record)
    samples = s.samples()
    assert (
        samples[("socks_ident_lookups_total", frozenset({("outcome", "named")}))] == 1
    )


def test_strictIdentWithoutIdentdRefusesSOCKS5WithREP02() -> None:
    """
    No identd under C{--ident strict}: the SOCKS5 client gets REP 02 (not
    allowed by ruleset) and a close, recorded as C{no identd}.
    """
    s, _ = identServer(None, identMode=IdentMode.STRICT)
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT5)
    assert transport.value() == b"\x05\x00" + bytes([5, 2, 0, 1]) + b"\0" * 6
    assert transport.writeClosed
    assert s.connector.connections == []
    close(protocol)
    [record] = s.records
    assert (record.reply, record.outcome) == (2, "no identd")
    assert record.reason.startswith("no ident answer")


def test_lenientIdentLetsASOCKS5ClientWithoutIdentdThrough() -> None:
    """C{--ident lenient}: no identd is logged and the CONNECT is granted."""
    s, _ = identServer(None, identMode=IdentMode.LENIENT)
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + CONNECT5)
    s.connector.connections[-1].succeed()
    assert protocol.state is SessionState.RELAYING


class StrictIdentRule:
    """A policy of one rule that allows everything with C{?=I}."""

    def decide(self, request: AccessRequest) -> Decision:
        """Allowed, if identd answers."""
        return Decision(True, "rule", rule="rules:1", identMode=IdentMode.STRICT)


def test_rulesStrictIdentAppliesToAuthenticatedSOCKS5() -> None:
    """
    A rule's C{?=I} asks identd for an authenticated SOCKS5 client too
    (the server's own mode off): silence is REP 02 after a good login; an
    answer naming another user than the login is recorded, not refused
    (the password proved the user; identd's users are the client host's).
    """

    for user, reply in ((None, 2), ("root", 0)):
        s, identd = identServer(user, credentialsChecker=users())
        s.factory.policy = StrictIdentRule()
        protocol, transport = s.open()
        protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", SECRET) + CONNECT5)
        if reply == 0:
            s.connector.connections[-1].succeed()
        assert transport.value()[-10:][:2] == bytes([5, reply])
        close(protocol)
        [record] = s.records
        assert len(identd.asked) == 1
        assert (record.user, record.identUser, record.reply) == ("ann", user, reply)
        assert record.rule == "rules:1"
