"""
The shared client attempts (L{twisted_socks.client._attempts}) through each
version's BIND endpoint, over a memory reactor: the second reply byte by
byte and in one segment with everything before it, each refusal to its
exception, garbage, EOF mid-reply, the timeout that covers the first reply
only, and cancellation at every stage with nothing left on the clock.

CONNECT's list is in L{tests.test_client} (SOCKS4) and
L{tests.test_socks5client} (SOCKS5); this module runs BIND's through both
versions, since one set of classes now serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address as IPv4
from ipaddress import IPv6Address as IPv6
from typing import Any

import pytest
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, NoProtocol
from twisted.internet.protocol import Factory
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from tests.test_client import Harness, RecordingFactory, results
from tests.test_socks5client import NO_AUTH, REJECTIONS, bind5
from twisted_socks import encodeReply
from twisted_socks.wire._clienterrors import (
    HandshakeTimeout,
    MalformedReply,
    SOCKSError,
)
from twisted_socks.wire._socks4 import ReplyCode
from twisted_socks.wire._socks4reply import (
    NoIdentdRejection,
    RequestRejected,
    UserIdMismatch,
)
from twisted_socks.wire._socks5 import encodeReply5
from twisted_socks.wire._socks5client import MalformedReply5
from twisted_socks.wire._socks5replies import ReplyCode5


@dataclass(frozen=True)
class Version:
    """
    What one version's proxy says in a BIND, and what the client makes of
    it.

    @ivar bind: a BIND endpoint for C{host} (C{10.9.9.9} unless told) and
        port 21 through the harness.
    @ivar opening: the proxy's answers before the first reply.
    @ivar first: a first reply granting, listening on C{10.0.0.1:40000}.
    @ivar second: a second reply naming the peer C{10.9.9.9:2020}.
    @ivar refusals: each refusing reply, and the error it stands for.
    @ivar garbage: bytes no reply can start with.
    @ivar malformed: the error for garbage, or a close mid-reply.
    @ivar label: how the log line names the version.
    """

    name: str
    bind: Callable[..., Any]
    opening: bytes
    first: bytes
    second: bytes
    refusals: list[tuple[bytes, type[SOCKSError]]]
    garbage: bytes
    malformed: type[MalformedReply]
    label: str

    def __str__(self) -> str:
        return self.name


def bind4(harness: Harness, host: str = "10.9.9.9", **kwargs: Any) -> Any:
    """A SOCKS4 BIND endpoint for C{host}:21 through the harness's fake proxy."""
    return harness.bindEndpoint(host, 21, **kwargs)


SOCKS4 = Version(
    name="socks4",
    bind=bind4,
    opening=b"",
    first=encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1")),
    second=encodeReply(ReplyCode.GRANTED, 2020, IPv4("10.9.9.9")),
    refusals=[
        (encodeReply(ReplyCode.REJECTED), RequestRejected),
        (encodeReply(ReplyCode.NO_IDENTD), NoIdentdRejection),
        (encodeReply(ReplyCode.IDENT_MISMATCH), UserIdMismatch),
    ],
    garbage=b"\x07",
    malformed=MalformedReply,
    label="SOCKS",
)
SOCKS5 = Version(
    name="socks5",
    bind=lambda harness, host="10.9.9.9", **kwargs: bind5(harness, host, 21, **kwargs),
    opening=NO_AUTH,
    first=encodeReply5(ReplyCode5.SUCCEEDED, 40000, IPv4("10.0.0.1")),
    second=encodeReply5(ReplyCode5.SUCCEEDED, 2020, IPv4("10.9.9.9")),
    refusals=[(encodeReply5(code), error) for code, error in REJECTIONS],
    garbage=b"\x06",
    malformed=MalformedReply5,
    label="SOCKS5",
)
VERSIONS = pytest.mark.parametrize("version", [SOCKS4, SOCKS5], ids=str)
REFUSALS = [
    pytest.param(version, reply, error, id=f"{version}-{error.__name__}")
    for version in (SOCKS4, SOCKS5)
    for reply, error in version.refusals
]


def listening(version: Version, factory: RecordingFactory | None = None) -> Any:
    """
    A BIND through the harness up to the first reply: the harness, the
    port, the handshake protocol, its transport and the factory.
    """
    harness = Harness()
    factory = factory or RecordingFactory()
    outcome = results(version.bind(harness).listen(factory))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(version.opening + version.first)
    [port] = outcome
    return harness, port, wrapper, transport, factory


@VERSIONS
def test_secondReplyByteByByte(version: Version) -> None:
    """
    Fed a byte at a time, the second reply connects nothing until its last
    byte; then the application protocol is built for the peer, connected,
    and given the bytes that followed.
    """
    harness, port, wrapper, transport, factory = listening(version)
    accepted = results(port.connected)
    for byte in version.second:
        assert accepted == [] and factory.built == []
        wrapper.dataReceived(bytes([byte]))
    for byte in b"220 hi":
        wrapper.dataReceived(bytes([byte]))
    [app] = accepted
    assert factory.built == [(IPv4Address("TCP", "10.9.9.9", 2020), app)]
    assert app.events[0] == ("connectionMade", transport)
    assert app.received == b"220 hi"
    harness.assertClockIsClear()


@VERSIONS
def test_wholeExchangeInOneSegment(version: Version) -> None:
    """
    The proxy's answers, both replies and the peer's first bytes in one
    segment: C{listen()} fires, then C{connected}, and the bytes reach the
    application after C{connectionMade}.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(version.bind(harness).listen(factory))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(version.opening + version.first + version.second + b"hello")
    [port] = outcome
    assert port.getHost() == IPv4Address("TCP", "10.0.0.1", 40000)
    [app] = results(port.connected)
    assert app.events == [("connectionMade", transport), ("data", b"hello")]
    harness.assertClockIsClear()


@pytest.mark.parametrize(("version", "reply", "error"), REFUSALS)
def test_secondReplyRefusalFailsConnectedWithItsError(
    version: Version, reply: bytes, error: type[SOCKSError]
) -> None:
    """
    Each refusing second reply fails C{connected} with its own exception,
    carrying the reply and naming the BIND; a warning is logged (an
    expected outcome, not a traceback) and the connection is closed.
    """
    _, port, wrapper, transport, factory = listening(version)
    with capturedLogs() as events:
        wrapper.dataReceived(reply)
    [failure] = results(port.connected)
    assert type(failure.value) is error
    assert failure.value.reply is not None  # type: ignore[attr-defined]
    assert failure.value.reply.code == failure.value.replyCode  # type: ignore[attr-defined]
    assert "BIND 10.9.9.9:21" in str(failure.value)
    assert transport.aborted
    assert factory.built == []
    [event] = [e for e in events if "no inbound connection" in e["log_format"]]
    assert event["version"] == version.label


@pytest.mark.parametrize(("version", "reply", "error"), REFUSALS)
def test_firstReplyRefusalFailsListenWithItsError(
    version: Version, reply: bytes, error: type[SOCKSError]
) -> None:
    """Each refusing first reply fails C{listen()} with its exception."""
    harness = Harness()
    outcome = results(version.bind(harness).listen(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(version.opening + reply)
    [failure] = outcome
    assert type(failure.value) is error
    assert "BIND 10.9.9.9:21" in str(failure.value)
    assert transport.aborted
    harness.assertClockIsClear()


@VERSIONS
def test_garbageSecondReplyIsMalformed(version: Version) -> None:
    """A second reply that cannot be one fails C{connected} at its first byte."""
    _, port, wrapper, transport, _ = listening(version)
    with capturedLogs():
        wrapper.dataReceived(version.garbage)
    [failure] = results(port.connected)
    assert failure.check(version.malformed)
    assert transport.aborted


@VERSIONS
def test_EOFMidSecondReplyIsMalformed(version: Version) -> None:
    """
    The proxy closing halfway through the second reply fails C{connected}
    with the version's malformed-reply error; the port has stopped.
    """
    _, port, wrapper, _, _ = listening(version)
    wrapper.dataReceived(version.second[:3])
    with capturedLogs():
        wrapper.readConnectionLost()  # type: ignore[attr-defined]
        wrapper.connectionLost(Failure(ConnectionDone()))
    [failure] = results(port.connected)
    assert failure.check(version.malformed)
    assert results(port.stopListening()) == [None]


class Declining(Factory):
    """Builds no protocol, as a factory may (C{buildProtocol} gives L{None})."""

    def buildProtocol(self, addr: object) -> None:
        """Decline."""
        return None


@VERSIONS
def test_factoryDecliningThePeerFailsConnected(version: Version) -> None:
    """A factory that builds no protocol for the peer: L{NoProtocol}, closed."""
    harness = Harness()
    outcome = results(version.bind(harness).listen(Declining()))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(version.opening + version.first)
    [port] = outcome
    with capturedLogs():
        wrapper.dataReceived(version.second)
    [failure] = results(port.connected)
    assert failure.check(NoProtocol)
    assert transport.aborted


@VERSIONS
def test_timeoutCoversTheFirstReplyOnly(version: Version) -> None:
    """
    The timeout bounds the wait for the first reply: just in time, nothing
    is left on the clock, and the wait for the peer is the proxy's.
    """
    harness = Harness()
    outcome = results(version.bind(harness, timeout=5).listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    harness.reactor.advance(4.9)
    wrapper.dataReceived(version.opening + version.first)
    [port] = outcome
    harness.assertClockIsClear()
    harness.reactor.advance(600)
    assert not port.connected.called


@VERSIONS
def test_timeoutBeforeTheFirstReply(version: Version) -> None:
    """
    No first reply in time (the proxy's opening answers, if any, came):
    L{HandshakeTimeout} naming the stage, the connection aborted.
    """
    harness = Harness()
    outcome = results(version.bind(harness, timeout=5).listen(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(version.opening + version.first[:2])
    harness.reactor.advance(5)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert "waiting for the proxy's reply" in str(failure.value)
    assert transport.aborted
    harness.assertClockIsClear()


#: How far a BIND has got when it is cancelled.
STAGES = ["resolving", "connecting", "opening", "first reply"]


@VERSIONS
@pytest.mark.parametrize("stage", STAGES)
def test_cancelAtEachStage(version: Version, stage: str) -> None:
    """
    Cancelling C{listen()} at any stage stops what is in flight (the local
    lookup, the connection attempt, the connection) and leaves nothing on
    the clock; a late answer changes nothing.
    """
    harness = Harness()
    factory = RecordingFactory()
    if stage == "resolving":
        # The harness's resolver leaves names it does not know pending.
        endpoint = version.bind(harness, "slow.example", remoteResolve=False)
    else:
        endpoint = version.bind(harness)
    d = endpoint.listen(factory)
    transport = None
    if stage in ("opening", "first reply"):
        wrapper, transport = harness.acceptConnection()
        if stage == "first reply":
            wrapper.dataReceived(version.opening + version.first[:-1])
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    if stage == "resolving":
        assert harness.resolver.lookups[0].cancelled
        harness.resolver.lookups[0].complete(["1.2.3.4"])
        assert harness.reactor.tcpClients == []
    elif stage == "connecting":
        assert harness.reactor.connectors[-1].stoppedConnecting
    else:
        assert transport is not None and transport.aborted
        wrapper.dataReceived(version.first[-1:] + version.second)
        assert factory.built == []
    harness.assertClockIsClear()


@VERSIONS
def test_stopListeningWhileWaitingForThePeer(version: Version) -> None:
    """
    C{stopListening()} after the first reply aborts the connection to the
    proxy, fails C{connected} with L{CancelledError}, and fires once the
    connection is gone (and at once when called again); nothing is on the
    clock.
    """
    harness, port, wrapper, transport, _ = listening(version)
    connected = results(port.connected)
    stopped = results(port.stopListening())
    assert transport.aborted
    assert connected[0].check(CancelledError)
    assert stopped == []
    wrapper.connectionLost(Failure(ConnectionDone()))
    assert stopped == [None]
    assert results(port.stopListening()) == [None]
    harness.assertClockIsClear()


@pytest.mark.parametrize(
    ("bound", "peer"),
    [
        ({"name": "peer.example"}, HostnameAddress(b"peer.example", 2020)),
        ({"address": IPv6("2001:db8::7")}, IPv6Address("TCP", "2001:db8::7", 2020)),
    ],
)
def test_socks5SecondReplyNamesThePeerInAnyAddressType(
    bound: dict[str, Any], peer: object
) -> None:
    """
    A SOCKS5 second reply may name the peer with ATYP 3 or 4: the
    application protocol is built for that name or IPv6 address.
    """
    _, port, wrapper, _, factory = listening(SOCKS5)
    wrapper.dataReceived(encodeReply5(ReplyCode5.SUCCEEDED, 2020, **bound))
    [app] = results(port.connected)
    assert factory.built == [(peer, app)]
