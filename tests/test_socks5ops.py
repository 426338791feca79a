"""
What operators see of SOCKS5 sessions, in memory: C{/metrics} labelled by
version and command, the session table and C{/sessions} naming the version,
the auth method and the user, the text log line, the negotiation deadline
and the per-client limits.  A fake clock, no sockets (the launched server
is in tests/test_socks5launch.py).
"""

from __future__ import annotations

import io
from dataclasses import asdict
from ipaddress import IPv4Address

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import address as taddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_socks import (
    Command,
    Limits,
    SessionRecord,
    SessionState,
    SOCKSv4ServerFactory,
    encodeRequest,
)
from twisted_socks.app._metriclabels import sessionLabels
from twisted_socks.app._metrics import ServerMetrics
from twisted_socks.app._sessionscli import formatTable
from twisted_socks.app._statuspage import renderPage
from twisted_socks.server._records import summaryLine
from twisted_socks.server._sniff import SOCKSServerProtocol
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
    RecordingPolicy,
)
from twisted_socks.wire._socks5 import Command5, encodeRequest5
from twisted_socks.wire._userpass import encodeAuthRequest

CLIENT = taddress.IPv4Address("TCP", "127.0.0.1", 40000)
DEST = IPv4Address("192.0.2.10")
NOAUTH = b"\x05\x01\x00"
PASSWORD = b"\x05\x01\x02"
CONNECT5 = encodeRequest5(Command5.CONNECT, 80, DEST)
CONNECT4 = encodeRequest(Command.CONNECT, 80, DEST)
#: ann's password: it must never show in a record, a line or a table.
SECRET = b"s3cret-pw"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Server:
    """An in-memory server with real metrics, and a helper to open sessions."""

    def __init__(self, allowed: bool = True, **kwargs: object) -> None:
        self.clock = MemoryReactorClock()
        self.connector = FakeConnector()
        self.records: list[SessionRecord] = []
        self.metrics = ServerMetrics()
        self.factory = SOCKSv4ServerFactory(
            self.clock,
            policy=RecordingPolicy(allowed),
            connector=self.connector,
            nameResolver=FakeHostnameResolver({}),
            sessionObserver=self.records.append,
            metrics=self.metrics,
            **kwargs,  # type: ignore[arg-type]
        )
        self.metrics.watch(self.factory)

    def open(
        self, peer: object = CLIENT
    ) -> tuple[SOCKSServerProtocol, HalfCloseableStringTransport]:
        """Accept one client connection from C{peer}."""
        protocol = self.factory.buildProtocol(peer)  # type: ignore[arg-type]
        transport = HalfCloseableStringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport  # type: ignore[return-value]

    def samples(self) -> Samples:
        """Every sample of C{/metrics} now, by name and labels."""
        text = generate_latest(self.metrics.registry).decode("utf-8")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def users() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A checker that knows ann."""
    return InMemoryUsernamePasswordDatabaseDontUse(ann=SECRET)


def close(protocol: SOCKSServerProtocol) -> None:
    """Deliver a clean connection close to C{protocol}."""
    protocol.connectionLost(Failure(ConnectionDone()))


def ended(samples: Samples, **labels: str) -> float:
    """C{socks_sessions_total} for exactly C{labels} (0 if absent)."""
    return samples.get(("socks_sessions_total", frozenset(labels.items())), 0.0)


def login(s: Server) -> tuple[SOCKSServerProtocol, HalfCloseableStringTransport]:
    """A SOCKS5 client logged in as ann, its CONNECT granted and relaying."""
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", SECRET) + CONNECT5)
    s.connector.connections[-1].succeed()
    assert protocol.state is SessionState.RELAYING
    return protocol, transport


# -- /metrics -----------------------------------------------------------------------


def test_sessionsCountedByVersionCommandAndTheirVersionsReply() -> None:
    """
    A SOCKS5 grant counts as version 5, reply 0; a SOCKS4 grant as version
    4, reply 90; a connection that is not SOCKS as version none; the
    summary's grants count both versions' grants.
    """
    s = Server()
    for first in (NOAUTH + CONNECT5, CONNECT4):
        protocol, _ = s.open()
        protocol.dataReceived(first)
        s.connector.connections[-1].succeed()
        close(protocol)
    protocol, _ = s.open()
    protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    close(protocol)
    samples = s.samples()
    assert ended(samples, version="5", command="connect", reply="0") == 1
    assert ended(samples, version="4", command="connect", reply="90") == 1
    assert ended(samples, version="none", command="none", reply="none") == 1
    assert (
        samples[
            (
                "socks_rejections_total",
                frozenset({("version", "none"), ("reason", "not_socks")}),
            )
        ]
        == 1
    )
    assert s.metrics.summary().granted == 2


def test_refusedSOCKS5RequestCountedUnderVersion5() -> None:
    """
    A SOCKS5 CONNECT the policy denies counts as version 5 with its own
    REP (02), and its rejection as a version 5 denial, not a SOCKS4 one.
    """
    s = Server(allowed=False)
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT5)
    assert transport.value()[2:4] == b"\x05\x02"
    close(protocol)
    samples = s.samples()
    assert ended(samples, version="5", command="connect", reply="2") == 1

    def rejected(version: str) -> float:
        labels = frozenset({("version", version), ("reason", "denied")})
        return samples[("socks_rejections_total", labels)]

    assert (rejected("5"), rejected("4")) == (1, 0)


def test_labelsComeFromFixedSets() -> None:
    """
    UDP ASSOCIATE counts as C{udp}; a reply code is only read in its own
    version (SOCKS5's REP 0 of a record that says version 4 is no reply
    label), and anything unknown is C{none}: no record adds a label value.
    """
    base = SessionRecord(
        client="127.0.0.1:1",
        user="",
        command="udp",
        destination=None,
        resolved=None,
        reply=7,
        bytesUp=0,
        bytesDown=0,
        duration=0.0,
        identUser=None,
        reason="bad request",
        rule=None,
        version=5,
    )
    assert sessionLabels(base) == ("5", "udp", "7")
    odd = SessionRecord(**{**asdict(base), "command": "x", "version": 4, "reply": 0})
    assert sessionLabels(odd) == ("4", "none", "none")
    unknown = SessionRecord(**{**asdict(base), "version": 6, "reply": 300})
    assert sessionLabels(unknown) == ("none", "udp", "none")


# -- the session table, /sessions and the log line ---------------------------------


def test_liveSOCKS5SessionNamesVersionAuthAndUser() -> None:
    """
    A relaying SOCKS5 session's snapshot names version 5, method
    C{password} and user ann: in C{/sessions}' JSON, the HTML table and the
    C{sessions} command's table; the password shows nowhere.
    """
    s = Server(credentialsChecker=users())
    login(s)
    [info] = s.factory.sessions()
    assert (info.version, info.auth, info.user) == (5, "password", "ann")
    assert {"version": 5, "auth": "password"}.items() <= asdict(info).items()
    page = renderPage([info], s.metrics.summary(), now=s.clock.seconds())
    assert "<th>protocol</th>" in page and "<td>socks5/password</td>" in page
    table = formatTable([asdict(info)], now=s.clock.seconds())
    header, row = table.splitlines()[:2]
    assert row[header.index("PROTO") :].startswith("socks5/password ")
    assert "ann" in row
    for shown in (page, table, repr(info)):
        assert SECRET.decode() not in shown


def test_negotiatingSessionsShowWhatIsKnownOfTheirVersion() -> None:
    """
    Before its first byte a session names no version; after a SOCKS5
    greeting, version 5 and the method chosen; a SOCKS4 session, version 4
    and no method.
    """
    s = Server()
    silent, _ = s.open()
    greeted, _ = s.open()
    greeted.dataReceived(NOAUTH)
    socks4, _ = s.open()
    socks4.dataReceived(CONNECT4)
    byId = {info.id: info for info in s.factory.sessions()}
    assert (byId[silent.id].version, byId[silent.id].auth) == (None, None)
    assert (byId[greeted.id].version, byId[greeted.id].auth) == (5, "none")
    assert (byId[socks4.id].version, byId[socks4.id].auth) == (4, None)
    table = formatTable([asdict(i) for i in s.factory.sessions()])
    assert "socks5/none" in table and "socks4" in table


def test_theFirstByteNamesTheVersionEvenOfARefusedClient() -> None:
    """
    A SOCKS4 client still sending its request is version 4 on the status
    page; a client of a version turned off (C{--protocols}) is recorded
    and counted under that version with that version's refusal; a first
    byte naming neither is C{not SOCKS}, without a version.
    """
    s = Server()
    partial, _ = s.open()
    partial.dataReceived(CONNECT4[:3])
    [info] = s.factory.sessions()
    assert (info.version, info.auth) == (4, None)
    for protocols, first, told in (
        (frozenset({5}), CONNECT4, b"\x00\x5b" + b"\0" * 6),
        (frozenset({4}), NOAUTH, b"\x05\xff"),
    ):
        s = Server(protocols=protocols)
        protocol, transport = s.open()
        protocol.dataReceived(first)
        assert transport.value() == told
        close(protocol)
        [record] = s.records
        assert record.version == first[0]
        assert record.reason.endswith("is disabled (--protocols)")
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(b"\x16\x03\x01")
    assert transport.value() == b"" and transport.writeClosed
    close(protocol)
    [record] = s.records
    assert (record.version, record.reason) == (None, "not SOCKS: first byte 0x16")
    samples = s.samples()
    assert ended(samples, version="none", command="none", reply="none") == 1


def test_logLineNamesSOCKS5AndItsMethodNeverThePassword() -> None:
    """
    The text log line of a SOCKS5 session says C{proto=socks5
    auth=password} and the user; the password is in no field.
    """
    s = Server(credentialsChecker=users())
    protocol, _ = login(s)
    close(protocol)
    [record] = s.records
    line = summaryLine(record)
    assert " user=ann " in line
    assert " proto=socks5 auth=password " in line
    assert SECRET.decode() not in line + repr(record)


def test_wrongPasswordNeverReachesTheRecord() -> None:
    """A failed login's record names the user and method, not the password."""
    s = Server(credentialsChecker=users())
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"guess-" + SECRET))
    assert transport.value().endswith(b"\x01\x01")
    close(protocol)
    [record] = s.records
    assert (record.version, record.auth) == (5, "password")
    out = io.StringIO()
    out.write(summaryLine(record) + repr(record))
    assert SECRET.decode() not in out.getvalue()
    assert "ann" in record.reason


# -- limits and timeouts --------------------------------------------------------------


def test_greetingWithoutRequestClosedAtTheNegotiationDeadline() -> None:
    """
    A SOCKS5 client that greets and then sends nothing is closed when the
    negotiation deadline (counted from accept) passes, with no reply to a
    request it never made; recorded and counted as a version 5 negotiate
    timeout.
    """
    s = Server(limits=Limits(negotiateTimeout=10))
    protocol, transport = s.open()
    s.clock.advance(4)
    protocol.dataReceived(NOAUTH)
    s.clock.advance(5.9)
    assert protocol.state is SessionState.NEGOTIATING
    s.clock.advance(0.1)
    assert protocol.state is SessionState.CLOSED
    assert transport.value() == b"\x05\x00"
    assert transport.writeClosed
    close(protocol)
    [record] = s.records
    assert (record.reason, record.version, record.reply) == (
        "negotiate timeout",
        5,
        None,
    )
    labels = frozenset({("version", "5"), ("reason", "negotiate_timeout")})
    assert s.samples()[("socks_rejections_total", labels)] == 1


def _perClient(first: bytes) -> tuple[bytes, HalfCloseableStringTransport, Server]:
    """
    With one connection per client, a second client from the same address
    sends C{first}: what it is told, its transport, the server (its session
    closed and recorded).
    """
    s = Server(limits=Limits(maxConnectionsPerClient=1))
    held, _ = s.open()
    held.dataReceived(NOAUTH)
    protocol, transport = s.open()
    assert transport.value() == b""
    protocol.dataReceived(first)
    told = transport.value()
    close(protocol)
    return told, transport, s


def test_perClientLimitRefusesASOCKS5ClientInSOCKS5() -> None:
    """
    A SOCKS5 client over its address's connection limit is told C{05 FF}
    (no acceptable method: SOCKS5's refusal before a method is chosen), not
    a SOCKS4 reply, and closed with a FIN; it never reaches the policy, and
    its record and metrics name version 5 and the limit.
    """
    told, transport, s = _perClient(NOAUTH + CONNECT5)
    assert told == b"\x05\xff"
    assert transport.writeClosed and not transport.aborted
    assert s.factory.policy.requests == []  # type: ignore[attr-defined]
    assert s.factory.connectionsByClient == {"127.0.0.1": 1}
    record = s.records[-1]
    assert (record.reason, record.version) == ("max-connections-per-client reached", 5)
    labels = frozenset({("version", "5"), ("reason", "max_connections_per_client")})
    assert s.samples()[("socks_rejections_total", labels)] == 1


def test_perClientLimitStillTellsASOCKS4Client91() -> None:
    """A SOCKS4 client over the limit gets 91, as it always has."""
    told, _, s = _perClient(CONNECT4)
    assert told == b"\x00\x5b" + b"\0" * 6
    assert (s.records[-1].reply, s.records[-1].version) == (91, 4)


def test_refusedClientThatSaysNothingIsClosedAfterTheLinger() -> None:
    """
    A client refused at accept that sends nothing is told nothing (its
    version is unknown) and closed with a FIN once the linger time passes.
    """
    s = Server(limits=Limits(maxConnectionsPerClient=1, lingerTimeout=2))
    s.open()
    protocol, transport = s.open()
    s.clock.advance(1.9)
    assert not transport.disconnecting
    s.clock.advance(0.1)
    assert transport.value() == b"" and transport.disconnecting
    assert not transport.aborted
    close(protocol)
    assert s.records[-1].reason == "max-connections-per-client reached"
    assert s.records[-1].version is None
