"""
Outcomes: how a request ended, in words no SOCKS version owns (issue 16's
first step towards one session core), and what SOCKS4 says of each.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address as TCPAddress
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    NoRouteError,
    TimeoutError,
    getConnectError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_socks import (
    Command,
    Limits,
    ReplyCode,
    SessionRecord,
    SOCKSv4ServerFactory,
    SOCKSv4ServerProtocol,
    TCPConnector,
    encodeRequest,
)
from twisted_socks.server._pipeline import _connectOutcome
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
    RecordingPolicy,
)
from twisted_socks.wire._outcome import Outcome, outcomeForErrno
from twisted_socks.wire._socks4 import replyFor

DEST = IPv4Address("192.0.2.7")
PEER = TCPAddress("TCP", "127.0.0.1", 40000)
REJECTED = b"\x00\x5b" + b"\x00" * 6


#: What SOCKS4 must say of each outcome.
SOCKS4_REPLIES = [
    (Outcome.GRANTED, ReplyCode.GRANTED),
    (Outcome.DENIED, ReplyCode.REJECTED),
    (Outcome.NO_IDENTD, ReplyCode.NO_IDENTD),
    (Outcome.IDENT_MISMATCH, ReplyCode.IDENT_MISMATCH),
    (Outcome.REFUSED, ReplyCode.REJECTED),
    (Outcome.HOST_UNREACHABLE, ReplyCode.REJECTED),
    (Outcome.NETWORK_UNREACHABLE, ReplyCode.REJECTED),
    (Outcome.TIMED_OUT, ReplyCode.REJECTED),
    (Outcome.COMMAND_NOT_SUPPORTED, ReplyCode.REJECTED),
    (Outcome.ADDRESS_TYPE_NOT_SUPPORTED, ReplyCode.REJECTED),
    (Outcome.FAILURE, ReplyCode.REJECTED),
]


@pytest.mark.parametrize(("outcome", "reply"), SOCKS4_REPLIES)
def test_socks4SaysEachOutcomeWithItsFourCodes(
    outcome: Outcome, reply: ReplyCode
) -> None:
    """
    SOCKS4 has 90 for a grant, 92 and 93 for the ident check, and 91 for
    every other failure, whatever the outcome says of it.
    """
    assert replyFor(outcome) is reply


def test_everyOutcomeIsInTheTableAbove() -> None:
    """The table names every outcome once: a new one must be mapped."""
    named = [outcome for outcome, _ in SOCKS4_REPLIES]
    assert sorted(named, key=lambda o: o.name) == sorted(Outcome, key=lambda o: o.name)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (errno.ECONNREFUSED, Outcome.REFUSED),
        (errno.EHOSTUNREACH, Outcome.HOST_UNREACHABLE),
        (errno.EHOSTDOWN, Outcome.HOST_UNREACHABLE),
        (errno.ENETUNREACH, Outcome.NETWORK_UNREACHABLE),
        (errno.ENETDOWN, Outcome.NETWORK_UNREACHABLE),
        (errno.ETIMEDOUT, Outcome.TIMED_OUT),
        (errno.EACCES, Outcome.FAILURE),
        (None, Outcome.FAILURE),
    ],
)
def test_connectErrnosSayWhatWentWrong(code: int | None, outcome: Outcome) -> None:
    """A connect's errno becomes the outcome SOCKS5 has a code for."""
    assert outcomeForErrno(code) is outcome


def _connecting(
    policy: object = None,
) -> tuple[
    SOCKSv4ServerProtocol,
    HalfCloseableStringTransport,
    FakeConnector,
    MemoryReactorClock,
    list[SessionRecord],
]:
    """A server on fakes, and one client connection that sent a CONNECT."""
    clock = MemoryReactorClock()
    connector = FakeConnector()
    records: list[SessionRecord] = []
    factory = SOCKSv4ServerFactory(
        clock,
        policy=policy,  # type: ignore[arg-type]
        connector=connector,
        nameResolver=FakeHostnameResolver(),
        limits=Limits(connectTimeout=5),
        sessionObserver=records.append,
    )
    protocol = factory.buildProtocol(PEER)
    transport = HalfCloseableStringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    return protocol, transport, connector, clock, records


def _closed(protocol: SOCKSv4ServerProtocol) -> None:
    protocol.connectionLost(Failure(Exception("client closed")))


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (getConnectError((errno.ECONNREFUSED, "refused")), "refused"),
        (ConnectionRefusedError(), "refused"),
        (getConnectError((errno.EHOSTUNREACH, "no route")), "host unreachable"),
        (NoRouteError(), "host unreachable"),
        (NoRouteError(osError=errno.ENETUNREACH), "network unreachable"),
        (TimeoutError(), "timed out"),
        (ConnectingCancelledError(None), "timed out"),
        (ConnectError(string="something else"), "general failure"),
    ],
)
def test_theRecordSaysWhyTheConnectFailed(error: Exception, outcome: str) -> None:
    """
    A failed connect is answered 91, as SOCKS4 must, and the session record
    keeps what SOCKS4 cannot say: refused, unreachable or timed out.
    """
    protocol, transport, connector, _clock, records = _connecting()
    connector.connections[0].fail(error)
    assert transport.value() == REJECTED
    _closed(protocol)
    [record] = records
    assert (record.reply, record.outcome) == (91, outcome)


def test_theRecordSaysDeniedTimedOutAndGranted() -> None:
    """
    A rule's refusal is "denied by rule" and a connect past its deadline
    "timed out" (both 91); a tunnel is "granted" (90).
    """
    denied, _t, _c, _clock, first = _connecting(RecordingPolicy(allowed=False))
    _closed(denied)
    late, _t, _c, clock, second = _connecting()
    clock.advance(5)
    _closed(late)
    granted, _t, connector, _clock, third = _connecting()
    connector.connections[0].succeed()
    _closed(granted)
    assert [(r.reply, r.outcome) for r in first + second + third] == [
        (91, "denied by rule"),
        (91, "timed out"),
        (90, "granted"),
    ]


def test_anUnknownCommandIsNotSupported() -> None:
    """A request with a command SOCKS4 lacks is "command not supported"."""
    records: list[SessionRecord] = []
    factory = SOCKSv4ServerFactory(MemoryReactorClock(), sessionObserver=records.append)
    protocol = factory.buildProtocol(PEER)
    transport = HalfCloseableStringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\x04\x09\x00\x50\xc0\x00\x02\x07\x00")
    assert transport.value() == REJECTED
    _closed(protocol)
    [record] = records
    assert (record.reply, record.outcome) == (91, "command not supported")


@pytest_twisted.ensureDeferred
async def test_aClosedLoopbackPortIsRefused() -> None:
    """
    On real sockets, the server's own connector reports a closed port in a
    way that makes the outcome "refused", not a bare failure.
    """
    from twisted.internet import reactor

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closedPort = probe.getsockname()[1]
    probe.close()
    connector = TCPConnector(reactor, timeout=None)  # type: ignore[arg-type]
    d = connector.connect(
        IPv4Address("127.0.0.1"), closedPort, Factory.forProtocol(Protocol)
    )
    failures: list[Failure] = []
    await d.addErrback(failures.append)
    [failure] = failures
    assert _connectOutcome(failure) is Outcome.REFUSED
