"""
Tests of the client side: reply parsing, L{SOCKS4ClientEndpoint} and
L{SOCKS4BindEndpoint}.

Three layers, as elsewhere in the project:

  - the sans-IO reply parser, fed prefixes, trailing bytes and garbage;
  - the endpoints over a L{MemoryReactorClock}, with the proxy hop a real
    L{TCP4ClientEndpoint} whose connection the test completes by hand onto a
    string transport: exact request bytes, every reply code, timeouts and
    cancellation at each stage (and that nothing is left on the clock);
  - real loopback sockets, against our own server, a scripted proxy, a TLS
    server and Dante (C{danted}, marked C{interop}).
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address as IPv4
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import HostnameAddress, IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    NoProtocol,
)
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests._support import Echo, closedPort, eventually, listen
from twisted_socks import SOCKSv4ServerFactory, encodeReply
from twisted_socks.client._socks4client import SOCKS4BoundPort
from twisted_socks.client._socks4endpoints import (
    SOCKS4BindEndpoint,
    SOCKS4ClientEndpoint,
)
from twisted_socks.client._socks4resolve import NoIPv4Address
from twisted_socks.testing import FakeHostnameResolver, HalfCloseableStringTransport
from twisted_socks.wire._clienterrors import (
    HandshakeTimeout,
    MalformedReply,
    SOCKSError,
)
from twisted_socks.wire._socks4 import REPLY_SIZE, ReplyCode
from twisted_socks.wire._socks4reply import (
    NoIdentdRejection,
    Reply,
    RequestRejected,
    UserIdMismatch,
    parseReply,
    rejectionFor,
)

if TYPE_CHECKING:
    from twisted_socks.client._socks5endpoints import SOCKS5BindEndpoint

#: Upper bound, in seconds, for any one wait on real sockets in this module.
TIMEOUT = 10.0

PROXY = ("10.0.0.1", 1080)
GRANTED = encodeReply(ReplyCode.GRANTED)
REJECTIONS = [
    (ReplyCode.REJECTED, RequestRejected),
    (ReplyCode.NO_IDENTD, NoIdentdRejection),
    (ReplyCode.IDENT_MISMATCH, UserIdMismatch),
]


# The reply codec.


@pytest.mark.parametrize("code", list(ReplyCode))
def test_everyPrefixOfAReplyNeedsMore(code: ReplyCode) -> None:
    """Each strict prefix of a valid reply is "need more", never an error."""
    reply = encodeReply(code, 1234, IPv4("10.1.2.3"))
    for end in range(REPLY_SIZE):
        assert parseReply(reply[:end]) is None, end
    assert parseReply(reply) == (Reply(code, 1234, IPv4("10.1.2.3")), REPLY_SIZE)


def test_replyWithTrailingDataLeavesItAlone() -> None:
    """
    Bytes after the reply are the relayed stream: the parser reports the
    reply's size and does not look at them (even when they look like garbage
    or like another reply).
    """
    buffer = encodeReply(ReplyCode.GRANTED, 80) + b"\xffHTTP/1.1 200 OK\r\n"
    assert parseReply(buffer) == (Reply(ReplyCode.GRANTED, 80, IPv4("0.0.0.0")), 8)
    buffer = encodeReply(ReplyCode.GRANTED) + encodeReply(ReplyCode.REJECTED)
    parsed = parseReply(buffer)
    assert parsed is not None and parsed[0].granted and parsed[1] == 8


@pytest.mark.parametrize(("code", "errorClass"), REJECTIONS)
def test_eachRefusalCodeMapsToItsError(
    code: ReplyCode, errorClass: type[RequestRejected]
) -> None:
    """
    91, 92 and 93 each map to their own class, which carries the reply code
    and the reply; all are L{RequestRejected} and L{SOCKSError}.
    """
    parsed = parseReply(encodeReply(code, 7, IPv4("1.2.3.4")))
    assert parsed is not None
    reply = parsed[0]
    assert not reply.granted
    error = rejectionFor(reply)
    assert type(error) is errorClass
    assert isinstance(error, RequestRejected) and isinstance(error, SOCKSError)
    assert error.replyCode == code
    assert error.reply == reply
    assert str(code.value) in str(error)


def test_grantIsNoRefusal() -> None:
    """A 90 reply is granted and maps to no error."""
    reply = Reply(ReplyCode.GRANTED, 0, IPv4("0.0.0.0"))
    assert reply.granted
    assert rejectionFor(reply) is None


def test_replyVersionFourIsAccepted() -> None:
    """Some servers answer with VN 4 (the request's); the client accepts it."""
    parsed = parseReply(b"\x04\x5a\x00\x50\x7f\x00\x00\x01")
    assert parsed == (Reply(ReplyCode.GRANTED, 80, IPv4("127.0.0.1")), 8)


@pytest.mark.parametrize("first", [b"H", b"\x05", b"\x01", b"\xff"])
def test_badReplyVersionFailsAtTheFirstByte(first: bytes) -> None:
    """
    A VN other than 0 or 4 (an HTTP proxy's "HTTP/1.1 400", a SOCKS5
    server) is a L{MalformedReply} as soon as that byte arrives.
    """
    with pytest.raises(MalformedReply, match="version"):
        parseReply(first)


@pytest.mark.parametrize("code", [0, 1, 89, 94, 0x5A + 0x80, 255])
def test_unknownReplyCodeFailsAtTheSecondByte(code: int) -> None:
    """A CD outside 90..93 is a L{MalformedReply} once its byte arrives."""
    with pytest.raises(MalformedReply, match="reply code"):
        parseReply(bytes([0, code]))


@given(
    st.one_of(
        st.binary(max_size=20),
        st.builds(
            lambda code, port, raw, rest: encodeReply(code, port, IPv4(raw)) + rest,
            st.sampled_from(list(ReplyCode)),
            st.integers(0, 0xFFFF),
            st.binary(min_size=4, max_size=4),
            st.binary(max_size=12),
        ),
    )
)
def test_anyBytesParseOrFailCleanly(data: bytes) -> None:
    """
    No input makes the reply parser raise anything but L{MalformedReply};
    whatever it accepts is exactly the first 8 bytes, re-encodable.
    """
    try:
        parsed = parseReply(data)
    except MalformedReply:
        return
    if parsed is None:
        assert len(data) < REPLY_SIZE
    else:
        assert parsed[1] == REPLY_SIZE
        assert (
            encodeReply(parsed[0].code, parsed[0].port, parsed[0].address)[1:]
            == (data[1:REPLY_SIZE])
        )


# The endpoints over a memory reactor.


class Recording(Protocol):
    """Records what happens to it, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.received = b""

    def connectionMade(self) -> None:
        self.events.append(("connectionMade", self.transport))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.events.append(("connectionLost", reason.type))


@implementer(IHalfCloseableProtocol)
class HalfCloseRecording(Recording):
    """A L{Recording} that takes half-close."""

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


class RecordingFactory(Factory):
    """Builds protocols of one class, remembering each and its address."""

    def __init__(self, protocolClass: type[Recording] = Recording) -> None:
        self.protocolClass = protocolClass
        self.built: list[tuple[Any, Recording]] = []
        self.starts = 0
        self.stops = 0

    def doStart(self) -> None:
        self.starts += 1

    def doStop(self) -> None:
        self.stops += 1

    def buildProtocol(self, addr: Any) -> Recording:
        protocol = self.protocolClass()
        protocol.factory = self
        self.built.append((addr, protocol))
        return protocol


class Harness:
    """
    A memory reactor with a fake name resolver, and a proxy endpoint on it
    whose connections the test makes by hand.
    """

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeHostnameResolver(answers)
        self.reactor.installNameResolver(self.resolver)
        self.proxyEndpoint = TCP4ClientEndpoint(self.reactor, *PROXY)

    def connectEndpoint(
        self, host: str, port: int = 80, **kwargs: Any
    ) -> SOCKS4ClientEndpoint:
        """A CONNECT endpoint through the fake proxy."""
        return SOCKS4ClientEndpoint(
            self.reactor, host, port, self.proxyEndpoint, **kwargs
        )

    def bindEndpoint(
        self, host: str = "10.9.9.9", port: int = 21, **kwargs: Any
    ) -> SOCKS4BindEndpoint:
        """A BIND endpoint through the fake proxy."""
        return SOCKS4BindEndpoint(
            self.reactor, host, port, self.proxyEndpoint, **kwargs
        )

    def acceptConnection(self) -> tuple[IProtocol, HalfCloseableStringTransport]:
        """
        Complete the latest connection attempt to the proxy: the protocol the
        endpoint stack built (Twisted's own wrapper outermost) and its
        transport, whose peer is the proxy.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = HalfCloseableStringTransport(
            peerAddress=IPv4Address("TCP", host, port)
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def assertClockIsClear(self) -> None:
        """Nothing is left scheduled."""
        assert self.reactor.getDelayedCalls() == []


def results(d: Deferred[Any]) -> list[Any]:
    """Collect what C{d} fires with (a value or a L{Failure}), consuming it."""
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_endpointsProvideTheirInterfaces() -> None:
    """The endpoints and the bound port provide the Twisted interfaces."""
    harness = Harness()
    assert verifyObject(IStreamClientEndpoint, harness.connectEndpoint("example.com"))
    assert verifyObject(IStreamServerEndpoint, harness.bindEndpoint())
    port = SOCKS4BoundPort(IPv4Address("TCP", "1.2.3.4", 5), None)  # type: ignore[arg-type]
    assert verifyObject(IListeningPort, port)


def test_socks4ARequestCarriesTheNameAndNeverResolves() -> None:
    """
    With C{remoteResolve} a name goes as SOCKS4A (DSTIP 0.0.0.1, the name
    after the USERID's NUL) and the local resolver is never asked.
    """
    harness = Harness({"example.com": ["1.2.3.4"]})
    endpoint = harness.connectEndpoint("example.com", 443, user=b"ann")
    factory = RecordingFactory()
    results(endpoint.connect(factory))
    assert [c[:2] for c in harness.reactor.tcpClients] == [PROXY]
    _, transport = harness.acceptConnection()
    assert transport.value() == (
        b"\x04\x01\x01\xbb\x00\x00\x00\x01ann\x00example.com\x00"
    )
    assert harness.resolver.lookups == []
    assert factory.built[0][0] == HostnameAddress(b"example.com", 443)


def test_ipv4LiteralGoesAsSOCKS4EvenWithRemoteResolve() -> None:
    """An IPv4 literal is sent as a plain SOCKS4 address in both modes."""
    for remoteResolve in (True, False):
        harness = Harness()
        endpoint = harness.connectEndpoint(
            "192.0.2.7", 8080, remoteResolve=remoteResolve
        )
        factory = RecordingFactory()
        results(endpoint.connect(factory))
        _, transport = harness.acceptConnection()
        assert transport.value() == b"\x04\x01\x1f\x90\xc0\x00\x02\x07\x00"
        assert harness.resolver.lookups == []
        assert factory.built[0][0] == IPv4Address("TCP", "192.0.2.7", 8080)


def test_socks4ResolvesOnceAndSendsTheFirstIPv4() -> None:
    """
    Without C{remoteResolve} the name is looked up once with the reactor's
    resolver and its first IPv4 address is sent (IPv6 answers skipped).
    """
    harness = Harness({"example.com": ["::1", "1.2.3.4", "5.6.7.8"]})
    endpoint = harness.connectEndpoint(
        "example.com", 80, remoteResolve=False, user="bob"
    )
    factory = RecordingFactory()
    results(endpoint.connect(factory))
    assert [lookup.name for lookup in harness.resolver.lookups] == ["example.com"]
    _, transport = harness.acceptConnection()
    assert transport.value() == b"\x04\x01\x00\x50\x01\x02\x03\x04bob\x00"
    assert factory.built[0][0] == IPv4Address("TCP", "1.2.3.4", 80)


@pytest.mark.parametrize("answers", [["::1", "fe80::1"], []])
def test_socks4NameWithoutIPv4FailsBeforeConnecting(answers: list[str]) -> None:
    """
    A name with no IPv4 address (only IPv6, or none) fails with
    L{NoIPv4Address} (also a L{DNSLookupError}) before the proxy is even
    connected to; nothing is left on the clock.
    """
    harness = Harness({"v6only.example": answers})
    endpoint = harness.connectEndpoint("v6only.example", remoteResolve=False)
    [failure] = results(endpoint.connect(RecordingFactory()))
    assert failure.check(NoIPv4Address)
    assert "v6only.example" in str(failure.value)
    assert isinstance(failure.value, DNSLookupError)
    assert harness.reactor.tcpClients == []
    harness.assertClockIsClear()


@pytest.mark.parametrize(
    ("host", "port", "kwargs", "message"),
    [
        ("::1", 80, {"remoteResolve": False}, "IPv4"),
        ("[2001:db8::1]", 80, {"remoteResolve": False}, "IPv4"),
        ("", 80, {}, "empty"),
        ("example.com", 0, {}, "port 0"),
        ("example.com", 65536, {}, "port"),
        ("example.com", -1, {}, "port"),
        ("example.com", 80, {"user": b"a\0b"}, "USERID"),
        ("example.com", 80, {"user": b"u" * 256}, "USERID"),
        ("a" * 256, 80, {}, "hostname"),
        ("example.com", 80, {"timeout": 0}, "timeout"),
    ],
)
def test_misuseIsRefusedAtConstruction(
    host: str, port: int, kwargs: dict[str, Any], message: str
) -> None:
    """
    Local mistakes (an IPv6 literal for SOCKS4, a bad port, USERID or
    hostname) raise L{ValueError} when the endpoint is made.
    """
    with pytest.raises(ValueError, match=message):
        Harness().connectEndpoint(host, port, **kwargs)


def test_bindAllowsPortZero() -> None:
    """A BIND's DSTPORT is informative only, so 0 is allowed there."""
    Harness().bindEndpoint("10.0.0.2", 0)


def test_textUserIsSentAsUTF8() -> None:
    """A text USERID goes on the wire UTF-8 encoded."""
    harness = Harness()
    results(
        harness.connectEndpoint("10.0.0.2", 80, user="zoë").connect(RecordingFactory())
    )
    _, transport = harness.acceptConnection()
    assert transport.value() == b"\x04\x01\x00\x50\x0a\x00\x00\x02zo\xc3\xab\x00"


def test_applicationConnectsOnlyAfterTheGrant() -> None:
    """
    The application protocol is not connected until reply 90 (a TLS wrapper
    would otherwise start its handshake with the proxy); then it is
    connected to the proxy transport and the L{Deferred} fires with it.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(harness.connectEndpoint("example.com").connect(factory))
    wrapper, transport = harness.acceptConnection()
    [(_, app)] = factory.built
    harness.reactor.advance(1)
    wrapper.dataReceived(GRANTED[:7])
    assert app.events == [] and outcome == []
    wrapper.dataReceived(GRANTED[7:])
    assert app.events == [("connectionMade", transport)]
    assert outcome == [app]
    harness.assertClockIsClear()


@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_replyAndDataInOneChunkReachProtocolAfterMakeConnection(chunking: str) -> None:
    """
    Bytes that follow the reply in the same chunk reach the application
    protocol intact, after its connectionMade and after the L{Deferred}
    fired; fed one byte at a time the outcome is the same.
    """
    harness = Harness()
    factory = RecordingFactory()
    order: list[str] = []
    d = harness.connectEndpoint("example.com").connect(factory)
    d.addCallback(lambda app: order.append("fired"))
    wrapper, _ = harness.acceptConnection()
    stream = GRANTED + b"\x00early bytes\xff" + GRANTED
    if chunking == "whole":
        wrapper.dataReceived(stream)
    else:
        for i in range(len(stream)):
            wrapper.dataReceived(stream[i : i + 1])
    [(_, app)] = factory.built
    assert order == ["fired"]
    assert app.events[0][0] == "connectionMade"
    assert app.received == b"\x00early bytes\xff" + GRANTED


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=10))
def test_anyChunkingDeliversTheSameStream(splits: list[int]) -> None:
    """However TCP splits reply and data, the application sees the same bytes."""
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(harness.connectEndpoint("example.com").connect(factory))
    wrapper, _ = harness.acceptConnection()
    stream = encodeReply(ReplyCode.GRANTED, 99, IPv4("9.9.9.9")) + bytes(range(40))
    position = 0
    for size in [*splits, len(stream)]:
        wrapper.dataReceived(stream[position : position + size])
        position += size
    [(_, app)] = factory.built
    assert outcome == [app]
    assert app.received == bytes(range(40))


@pytest.mark.parametrize(("code", "errorClass"), REJECTIONS)
def test_refusalsFailWithTheirErrorAndClose(
    code: ReplyCode, errorClass: type[RequestRejected]
) -> None:
    """
    91, 92 and 93 fail the L{Deferred} with their own error (carrying the
    code), close the connection and leave nothing on the clock; the
    application protocol is never connected.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(harness.connectEndpoint("example.com").connect(factory))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(encodeReply(code))
    [failure] = outcome
    assert failure.check(errorClass)
    assert failure.value.replyCode == code
    assert type(failure.value) is errorClass
    assert transport.aborted
    harness.assertClockIsClear()
    wrapper.connectionLost(Failure(ConnectionDone()))
    assert factory.built[0][1].events == []


def test_garbageReplyFailsAtOnce() -> None:
    """An HTTP answer is a L{MalformedReply} at its first byte; closed."""
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("example.com").connect(RecordingFactory())
    )
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(b"H")
    [failure] = outcome
    assert failure.check(MalformedReply)
    assert transport.aborted
    harness.assertClockIsClear()


@pytest.mark.parametrize("halfClose", [False, True])
def test_shortReplyThenEOFIsMalformed(halfClose: bool) -> None:
    """
    A clean close after 3 of the 8 reply bytes is a L{MalformedReply} that
    says so, whether the close arrives as a FIN to a half-closeable wrapper
    or as connectionLost.
    """
    harness = Harness()
    factory = RecordingFactory(HalfCloseRecording if halfClose else Recording)
    outcome = results(harness.connectEndpoint("example.com").connect(factory))
    wrapper, transport = harness.acceptConnection()
    assert IHalfCloseableProtocol.providedBy(wrapper) == halfClose
    wrapper.dataReceived(GRANTED[:3])
    if halfClose:
        wrapper.readConnectionLost()  # type: ignore[attr-defined]
        assert transport.aborted
    else:
        wrapper.connectionLost(Failure(ConnectionDone()))
    [failure] = outcome
    assert failure.check(MalformedReply)
    assert "3 of 8" in str(failure.value)
    harness.assertClockIsClear()


def test_connectionResetBeforeReplyKeepsItsReason() -> None:
    """A reset (not a clean close) before the reply fails with that error."""
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("example.com").connect(RecordingFactory())
    )
    wrapper, _ = harness.acceptConnection()
    wrapper.connectionLost(Failure(ConnectionLost("reset")))
    [failure] = outcome
    assert failure.check(ConnectionLost)
    harness.assertClockIsClear()


def test_timeoutWaitingForTheReply() -> None:
    """
    No reply within C{timeout} seconds of C{connect()}: L{HandshakeTimeout},
    the connection aborted, nothing left on the clock.
    """
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("example.com", timeout=5).connect(RecordingFactory())
    )
    harness.reactor.advance(2)
    _, transport = harness.acceptConnection()
    harness.reactor.advance(2.9)
    assert outcome == []
    harness.reactor.advance(0.1)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert "waiting for the proxy's reply" in str(failure.value)
    assert transport.aborted
    harness.assertClockIsClear()


def test_timeoutWhileConnectingToTheProxy() -> None:
    """
    The same clock covers connecting to the proxy: the attempt is stopped
    and the error is L{HandshakeTimeout}, not a cancellation.
    """
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("example.com", timeout=3).connect(RecordingFactory())
    )
    harness.reactor.advance(3)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert "connecting to the proxy" in str(failure.value)
    assert harness.reactor.connectors[-1].stoppedConnecting
    harness.assertClockIsClear()


def test_timeoutWhileResolving() -> None:
    """A SOCKS4 lookup that never answers times out too, and is cancelled."""
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("slow.example", timeout=3, remoteResolve=False).connect(
            RecordingFactory()
        )
    )
    harness.reactor.advance(3)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert harness.resolver.lookups[0].cancelled
    assert harness.reactor.tcpClients == []
    # A late answer is ignored.
    harness.resolver.lookups[0].complete(["1.2.3.4"])
    assert harness.reactor.tcpClients == []
    harness.assertClockIsClear()


def test_cancelWhileResolving() -> None:
    """Cancelling during the lookup cancels it; nothing is connected."""
    harness = Harness()
    d = harness.connectEndpoint("slow.example", remoteResolve=False).connect(
        RecordingFactory()
    )
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert harness.resolver.lookups[0].cancelled
    harness.resolver.lookups[0].complete(["1.2.3.4"])
    assert harness.reactor.tcpClients == []
    harness.assertClockIsClear()


def test_cancelWhileConnectingToTheProxy() -> None:
    """Cancelling before the proxy answered the SYN stops the connector."""
    harness = Harness()
    d = harness.connectEndpoint("example.com").connect(RecordingFactory())
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert harness.reactor.connectors[-1].stoppedConnecting
    harness.assertClockIsClear()


def test_cancelWhileWaitingForTheReply() -> None:
    """
    Cancelling after the request went out aborts the connection at once; a
    reply arriving afterwards changes nothing.
    """
    harness = Harness()
    factory = RecordingFactory()
    d = harness.connectEndpoint("example.com").connect(factory)
    wrapper, transport = harness.acceptConnection()
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert transport.aborted
    harness.assertClockIsClear()
    wrapper.dataReceived(GRANTED + b"late")
    wrapper.connectionLost(Failure(ConnectionDone()))
    assert factory.built[0][1].events == []


def test_cancelAfterTheGrantDoesNothing() -> None:
    """Once the application has its connection, cancelling is a no-op."""
    harness = Harness()
    d = harness.connectEndpoint("example.com").connect(RecordingFactory())
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(GRANTED)
    d.cancel()
    assert not transport.aborted and not transport.disconnecting


def test_halfCloseIsPassedThroughBothWays() -> None:
    """
    For a half-closeable application protocol the stack declares
    L{IHalfCloseableProtocol} (so TCP reports a FIN instead of closing), the
    FIN reaches the application, and the application's
    C{loseWriteConnection()} reaches the real transport.
    """
    harness = Harness()
    factory = RecordingFactory(HalfCloseRecording)
    outcome = results(harness.connectEndpoint("example.com").connect(factory))
    wrapper, transport = harness.acceptConnection()
    assert IHalfCloseableProtocol.providedBy(wrapper)
    wrapper.dataReceived(GRANTED + b"x")
    [app] = outcome
    app.transport.loseWriteConnection()
    assert transport.writeClosed
    wrapper.readConnectionLost()  # type: ignore[attr-defined]
    wrapper.writeConnectionLost()  # type: ignore[attr-defined]
    assert app.events[1:] == [
        ("data", b"x"),
        "readConnectionLost",
        "writeConnectionLost",
    ]
    assert not transport.disconnecting


def test_noHalfCloseForProtocolsWithoutIt() -> None:
    """
    For an application protocol without half-close the stack does not
    declare it, so a FIN closes the connection as TCP always does.
    """
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("example.com").connect(RecordingFactory())
    )
    wrapper, _ = harness.acceptConnection()
    assert not IHalfCloseableProtocol.providedBy(wrapper)
    wrapper.dataReceived(GRANTED)
    [app] = outcome
    wrapper.connectionLost(Failure(ConnectionDone()))
    assert app.events[-1] == ("connectionLost", ConnectionDone)


def test_factoryThatDeclinesFailsWithNoProtocol() -> None:
    """A factory returning L{None} fails the attempt with L{NoProtocol}."""
    harness = Harness()

    class Declining(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    outcome = results(harness.connectEndpoint("example.com").connect(Declining()))
    host, port, factory, _, _ = harness.reactor.tcpClients[-1]
    assert factory.buildProtocol(IPv4Address("TCP", host, port)) is None
    [failure] = outcome
    assert failure.check(NoProtocol)
    harness.assertClockIsClear()


def test_proxyConnectionFailurePassesThrough() -> None:
    """If the proxy cannot be reached, that error is what the caller sees."""
    harness = Harness()
    outcome = results(
        harness.connectEndpoint("example.com").connect(RecordingFactory())
    )
    _, _, factory, _, _ = harness.reactor.tcpClients[-1]
    factory.clientConnectionFailed(
        harness.reactor.connectors[-1], Failure(ConnectionRefusedError())
    )
    [failure] = outcome
    assert failure.check(ConnectionRefusedError)
    harness.assertClockIsClear()


# BIND over a memory reactor.


def test_bindRequestAndFirstReplyMakeAPort() -> None:
    """
    C{listen()} sends a BIND (CD 2) naming the application server, and
    fires with a port whose C{getHost()} is the first reply's address; no
    application protocol is built yet, and the handshake clock is stopped.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(harness.bindEndpoint("10.9.9.9", 21, user=b"ftp").listen(factory))
    wrapper, transport = harness.acceptConnection()
    assert transport.value() == b"\x04\x02\x00\x15\x0a\x09\x09\x09ftp\x00"
    wrapper.dataReceived(encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1")))
    [port] = outcome
    assert isinstance(port, SOCKS4BoundPort)
    assert port.getHost() == IPv4Address("TCP", "10.0.0.1", 40000)
    assert factory.built == []
    assert not port.connected.called
    harness.assertClockIsClear()


def test_bindFirstReplyZeroAddressMeansTheProxy() -> None:
    """DSTIP 0.0.0.0 in the first reply stands for the proxy's address."""
    harness = Harness()
    outcome = results(harness.bindEndpoint().listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(encodeReply(ReplyCode.GRANTED, 40001))
    [port] = outcome
    assert port.getHost() == IPv4Address("TCP", PROXY[0], 40001)


def test_bindSocks4ANameGoesAsSOCKS4A() -> None:
    """A BIND for a named application server is sent as SOCKS4A."""
    harness = Harness()
    results(harness.bindEndpoint("ftp.example", 21).listen(RecordingFactory()))
    _, transport = harness.acceptConnection()
    assert transport.value() == b"\x04\x02\x00\x15\x00\x00\x00\x01\x00ftp.example\x00"
    assert harness.resolver.lookups == []


@pytest.mark.parametrize("halfClose", [False, True])
def test_bindSecondReplyConnectsTheApplication(halfClose: bool) -> None:
    """
    The second reply builds the protocol with the peer's address from it,
    connects it, fires C{connected}, and hands it any bytes that followed
    in the same chunk.  A FIN reaches a half-closeable protocol; one
    without half-close gets the connection closed.
    """
    harness = Harness()
    factory = RecordingFactory(HalfCloseRecording if halfClose else Recording)
    outcome = results(harness.bindEndpoint().listen(factory))
    wrapper, transport = harness.acceptConnection()
    assert IHalfCloseableProtocol.providedBy(wrapper)
    wrapper.dataReceived(encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1"))[:5])
    wrapper.dataReceived(
        encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1"))[5:]
        + encodeReply(ReplyCode.GRANTED, 2020, IPv4("10.9.9.9"))
        + b"220 hello\r\n"
    )
    [port] = outcome
    [(address, app)] = factory.built
    assert address == IPv4Address("TCP", "10.9.9.9", 2020)
    assert results(port.connected) == [app]
    assert app.events == [("connectionMade", transport), ("data", b"220 hello\r\n")]
    app.transport.loseWriteConnection()
    assert transport.writeClosed
    wrapper.readConnectionLost()  # type: ignore[attr-defined]
    if halfClose:
        assert app.events[-1] == "readConnectionLost"
        assert not transport.disconnecting
    else:
        assert transport.disconnecting
    # Stopping after the peer connected leaves the connection alone.
    assert results(port.stopListening()) == [None]
    assert not transport.aborted


@pytest.mark.parametrize(("code", "errorClass"), REJECTIONS)
def test_bindFirstReplyRefusalFailsListen(
    code: ReplyCode, errorClass: type[RequestRejected]
) -> None:
    """A refused first reply fails C{listen()} with the code's error."""
    harness = Harness()
    outcome = results(harness.bindEndpoint().listen(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(encodeReply(code))
    [failure] = outcome
    assert failure.check(errorClass)
    assert transport.aborted
    harness.assertClockIsClear()


def test_bindSecondReplyRefusalFailsConnectedAndIsLogged() -> None:
    """
    A second reply of 91 (the wrong peer, or the proxy gave up waiting)
    fails C{connected} with L{RequestRejected}, is logged, and closes.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(harness.bindEndpoint().listen(factory))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1")))
    [port] = outcome
    with capturedLogs() as events:
        wrapper.dataReceived(encodeReply(ReplyCode.REJECTED))
    [failure] = results(port.connected)
    assert failure.check(RequestRejected)
    assert transport.aborted
    assert factory.built == []
    assert any("no inbound connection" in e.get("log_format", "") for e in events)


def test_bindEOFBeforeSecondReplyIsMalformed() -> None:
    """The proxy closing while we wait for the peer fails C{connected}."""
    harness = Harness()
    outcome = results(harness.bindEndpoint().listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(
        encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1")) + b"\x00"
    )
    [port] = outcome
    with capturedLogs():
        wrapper.readConnectionLost()  # type: ignore[attr-defined]
        wrapper.connectionLost(Failure(ConnectionDone()))
    [failure] = results(port.connected)
    assert failure.check(MalformedReply)
    assert "1 of 8" in str(failure.value)


def test_bindTimeoutCoversTheFirstReplyOnly() -> None:
    """
    The handshake timeout bounds the first reply; after it the wait for the
    peer is the proxy's business, so nothing is scheduled.
    """
    harness = Harness()
    outcome = results(harness.bindEndpoint(timeout=5).listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    harness.reactor.advance(4.9)
    wrapper.dataReceived(encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1")))
    [port] = outcome
    harness.assertClockIsClear()
    harness.reactor.advance(600)
    assert not port.connected.called


def test_bindTimeoutBeforeFirstReply() -> None:
    """No first reply in time: C{listen()} fails with L{HandshakeTimeout}."""
    harness = Harness()
    outcome = results(harness.bindEndpoint(timeout=5).listen(RecordingFactory()))
    _, transport = harness.acceptConnection()
    harness.reactor.advance(5)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert transport.aborted
    harness.assertClockIsClear()


def test_bindCancelBeforeFirstReply() -> None:
    """Cancelling C{listen()} before the first reply aborts the connection."""
    harness = Harness()
    d = harness.bindEndpoint().listen(RecordingFactory())
    _, transport = harness.acceptConnection()
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert transport.aborted
    harness.assertClockIsClear()


# Real sockets: helpers.


def withTimeout(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    """Fail C{d} with a cancellation if it has not fired in time."""
    return d.addTimeout(seconds, reactor)


@implementer(IHalfCloseableProtocol)
class Collector(Protocol):
    """
    A client (or peer) protocol that sends C{greeting} on connection (and
    then half-closes, if told to), keeps everything it receives, fires
    C{eof} with it at the peer's FIN and C{done} when the connection is
    gone; once both directions are shut it closes the connection.
    """

    def __init__(self, greeting: bytes = b"", closeWrite: bool = False) -> None:
        self.greeting = greeting
        self.closeWrite = closeWrite
        self.writeClosed = False
        self.received = b""
        self.eof: Deferred[bytes] = Deferred()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]
        if self.closeWrite:
            self.shutdownWrite()

    def shutdownWrite(self) -> None:
        """Send FIN; close altogether if the peer's FIN came already."""
        self.writeClosed = True
        self.transport.loseWriteConnection()  # type: ignore[union-attr]
        if self.eof.called:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        if not self.eof.called:
            self.eof.callback(self.received)
        if self.writeClosed:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.eof.called:
            self.eof.callback(self.received)
        if not self.done.called:
            self.done.callback(self.received)


async def bindAndPeer(
    endpoint: SOCKS4BindEndpoint | SOCKS5BindEndpoint,
) -> tuple[Collector, Collector]:
    """
    Listen through C{endpoint}, connect a peer to where the proxy listens,
    and exchange one greeting each way, half-closing both; the application
    protocol and the peer, once both saw the other's greeting and EOF.
    """
    client = Collector(b"from client")
    port = await withTimeout(endpoint.listen(Factory.forProtocol(lambda: client)))
    host = port.getHost()
    assert isinstance(host, IPv4Address) and host.host == "127.0.0.1"
    peer = Collector(b"from peer", closeWrite=True)
    await withTimeout(
        connectProtocol(TCP4ClientEndpoint(reactor, host.host, host.port), peer)
    )
    assert await withTimeout(port.connected) is client
    assert await withTimeout(client.eof) == b"from peer"
    client.shutdownWrite()
    assert await withTimeout(peer.done) == b"from client"
    await withTimeout(client.done)
    return client, peer


@implementer(IHalfCloseableProtocol)
class AnswerAtEOF(Protocol):
    """Keeps what arrives up to the client's FIN, then answers and closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received = b""
        self.sawEOF: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.sawEOF.callback(self.received)
        self.transport.write(self.answer)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


def startProxy(ports: list[IListeningPort], **kwargs: Any) -> int:
    """Start our SOCKS server in-process; return its port."""
    return listen(ports, SOCKSv4ServerFactory(reactor, **kwargs))


def tcp(port: int) -> TCP4ClientEndpoint:
    """A loopback TCP endpoint."""
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)


async def roundTrip(endpoint: SOCKS4ClientEndpoint, payload: bytes) -> bytes:
    """Send C{payload} to an echo server through C{endpoint}; return the echo."""
    client = Collector(payload)
    await withTimeout(connectProtocol(endpoint, client))
    await eventually(lambda: len(client.received) >= len(payload), TIMEOUT)
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)
    return client.received


# Real sockets: our server.


@pytest_twisted.ensureDeferred
async def test_connectV4ThroughOurServer(ports: list[IListeningPort]) -> None:
    """SOCKS4 CONNECT to an IPv4 literal: 256 KiB come back intact."""
    proxy = startProxy(ports)
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(256 * 1024)
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", echo, tcp(proxy))
    assert await roundTrip(endpoint, payload) == payload


@pytest_twisted.ensureDeferred
async def test_factoryHearsStartAndStop(ports: list[IListeningPort]) -> None:
    """
    The application factory's C{doStart}/C{doStop} bracket the connection,
    as they do for a direct TCP endpoint.
    """
    proxy = startProxy(ports)
    echo = listen(ports, Factory.forProtocol(Echo))
    factory = RecordingFactory()
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", echo, tcp(proxy))
    app = await withTimeout(endpoint.connect(factory))
    assert (factory.starts, factory.stops) == (1, 0)
    app.transport.loseConnection()
    await eventually(lambda: factory.stops == 1, TIMEOUT)
    assert factory.built[0][0] == IPv4Address("TCP", "127.0.0.1", echo)


@pytest_twisted.ensureDeferred
async def test_connect4AToLocalhostThroughOurServer(
    ports: list[IListeningPort],
) -> None:
    """SOCKS4A CONNECT to C{localhost}: the server resolves it, not us."""
    records: list[Any] = []
    proxy = startProxy(ports, sessionObserver=records.append)
    echo = listen(ports, Factory.forProtocol(Echo))
    endpoint = SOCKS4ClientEndpoint(reactor, "localhost", echo, tcp(proxy), user="ann")
    assert await roundTrip(endpoint, b"hello 4A") == b"hello 4A"
    await eventually(lambda: bool(records), TIMEOUT)
    assert records[0].destination == f"localhost:{echo}"
    assert records[0].user == "ann"


@pytest_twisted.ensureDeferred
async def test_socks4ResolvesLocallyThroughOurServer(
    ports: list[IListeningPort],
) -> None:
    """
    With C{remoteResolve=False} the reactor's real resolver turns
    C{localhost} into 127.0.0.1 and the server sees an address.
    """
    records: list[Any] = []
    proxy = startProxy(ports, sessionObserver=records.append)
    echo = listen(ports, Factory.forProtocol(Echo))
    endpoint = SOCKS4ClientEndpoint(
        reactor, "localhost", echo, tcp(proxy), remoteResolve=False
    )
    assert await roundTrip(endpoint, b"hello v4") == b"hello v4"
    await eventually(lambda: bool(records), TIMEOUT)
    assert records[0].destination == f"127.0.0.1:{echo}"


@pytest_twisted.ensureDeferred
async def test_chainOfTwoProxies(ports: list[IListeningPort]) -> None:
    """
    An endpoint over an endpoint: the first proxy carries a tunnel to the
    second, which carries the tunnel to the echo server.
    """
    first: list[Any] = []
    second: list[Any] = []
    proxy1 = startProxy(ports, sessionObserver=first.append)
    proxy2 = startProxy(ports, sessionObserver=second.append)
    echo = listen(ports, Factory.forProtocol(Echo))
    hop = SOCKS4ClientEndpoint(reactor, "127.0.0.1", proxy2, tcp(proxy1), user="hop1")
    endpoint = SOCKS4ClientEndpoint(reactor, "localhost", echo, hop, user="hop2")
    payload = os.urandom(100_000)
    assert await roundTrip(endpoint, payload) == payload
    await eventually(lambda: bool(first and second), TIMEOUT)
    assert (first[0].destination, first[0].user) == (f"127.0.0.1:{proxy2}", "hop1")
    assert (second[0].destination, second[0].user) == (f"localhost:{echo}", "hop2")


@pytest_twisted.ensureDeferred
async def test_halfCloseThroughTheTunnel(ports: list[IListeningPort]) -> None:
    """
    The client protocol sends, then C{loseWriteConnection()}: the server at
    the far end sees EOF after exactly those bytes, and its answer (sent
    after the EOF) still arrives in full.
    """
    proxy = startProxy(ports)
    servers: list[AnswerAtEOF] = []
    answer = os.urandom(512 * 1024)

    def build() -> AnswerAtEOF:
        servers.append(AnswerAtEOF(answer))
        return servers[-1]

    destination = listen(ports, Factory.forProtocol(build))
    upload = os.urandom(3000)
    client = Collector(upload, closeWrite=True)
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", destination, tcp(proxy))
    await withTimeout(connectProtocol(endpoint, client))
    assert await withTimeout(client.done) == answer
    assert await withTimeout(servers[0].sawEOF) == upload


class ScriptedProxy(Protocol):
    """
    A fake SOCKS server: after a full request it writes the reply and a
    greeting in one C{write}, so they leave in one segment.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.count(b"\0") >= 2 or (
            len(self.buffer) > 8
            and self.buffer[4:7] != b"\0\0\0"
            and b"\0" in self.buffer[8:]
        ):
            self.transport.write(self.answer)  # type: ignore[union-attr]
            self.answer = b""


class Silent(Protocol):
    """Accepts and says nothing; records when the client goes away."""

    def __init__(self, lost: Deferred[None]) -> None:
        self.lost = lost

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_replyAndDataInOneSegmentReachProtocol(
    ports: list[IListeningPort],
) -> None:
    """
    Over a real socket, a server greeting that arrives in the same segment
    as reply 90 reaches the application protocol, whole and once.
    """
    greeting = b"220 ready\r\n" + os.urandom(1000)
    proxy = listen(
        ports, Factory.forProtocol(lambda: ScriptedProxy(GRANTED + greeting))
    )
    client = Collector()
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", 21, tcp(proxy))
    await withTimeout(connectProtocol(endpoint, client))
    await eventually(lambda: len(client.received) >= len(greeting), TIMEOUT)
    assert client.received == greeting
    client.transport.loseConnection()  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_refusalFromARealServer(ports: list[IListeningPort]) -> None:
    """A 92 on the wire fails the connect with L{NoIdentdRejection}."""
    refusal = encodeReply(ReplyCode.NO_IDENTD)
    proxy = listen(ports, Factory.forProtocol(lambda: ScriptedProxy(refusal)))
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", 21, tcp(proxy))
    with pytest.raises(NoIdentdRejection):
        await withTimeout(endpoint.connect(Factory.forProtocol(Protocol)))


@pytest_twisted.ensureDeferred
async def test_silentServerTimesOut(ports: list[IListeningPort]) -> None:
    """
    A server that never replies: L{HandshakeTimeout} after C{timeout}, and
    the server sees the connection close.
    """
    lost: Deferred[None] = Deferred()
    proxy = listen(ports, Factory.forProtocol(lambda: Silent(lost)))
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", 21, tcp(proxy), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(HandshakeTimeout):
        await withTimeout(endpoint.connect(Factory.forProtocol(Protocol)))
    assert 0.25 < time.monotonic() - started < 5
    await withTimeout(lost)


def makeCertificates() -> tuple[Certificate, PrivateCertificate]:
    """A throwaway CA, and a certificate it signed for C{localhost}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "twisted-socks test CA")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(caName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    keyPem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (
        Certificate.loadPEM(ca.public_bytes(pem)),
        PrivateCertificate.loadPEM(leaf.public_bytes(pem) + keyPem),
    )


# Twisted's CertificateOptions hands pyOpenSSL objects to pyOpenSSL, which
# now warns about it; that is between those two projects.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tlsThroughTheTunnel(ports: list[IListeningPort]) -> None:
    """
    C{wrapClientTLS(optionsForClientTLS("localhost"), socksEndpoint)}: the
    TLS handshake runs with the destination (a TLS echo server whose
    certificate a test CA signed for C{localhost}), after reply 90, and data
    round-trips; a client expecting another name is refused.
    """
    authority, serverCertificate = makeCertificates()
    proxy = startProxy(ports)
    tlsPort = reactor.listenSSL(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), serverCertificate.options(), interface="127.0.0.1"
    )
    ports.append(tlsPort)
    socksEndpoint = SOCKS4ClientEndpoint(
        reactor, "127.0.0.1", tlsPort.getHost().port, tcp(proxy)
    )
    endpoint = wrapClientTLS(
        optionsForClientTLS("localhost", trustRoot=authority), socksEndpoint
    )
    client = Collector(b"over TLS, through SOCKS")
    await withTimeout(connectProtocol(endpoint, client))
    await eventually(lambda: len(client.received) >= 23, TIMEOUT)
    assert client.received == b"over TLS, through SOCKS"
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)

    wrongName = wrapClientTLS(
        optionsForClientTLS("not-localhost.example", trustRoot=authority), socksEndpoint
    )
    stranger = Collector(b"x")
    await withTimeout(connectProtocol(wrongName, stranger))
    await withTimeout(stranger.done)
    assert stranger.received == b""


@pytest_twisted.ensureDeferred
async def test_bindThroughOurServer(ports: list[IListeningPort]) -> None:
    """
    BIND against our server: the first reply gives an address a peer can
    reach; the peer connects from 127.0.0.1 and data flows both ways,
    half-close included.
    """
    proxy = startProxy(ports)
    await bindScenario(tcp(proxy), "127.0.0.1")


async def bindScenario(
    proxyEndpoint: IStreamClientEndpoint, applicationServer: str
) -> None:
    """
    BIND through C{proxyEndpoint}, connect a peer to the announced address,
    and move data both ways; the peer half-closes first, then the client.
    """
    endpoint = SOCKS4BindEndpoint(
        reactor, applicationServer, 21, proxyEndpoint, user="binder"
    )
    client, _ = await bindAndPeer(endpoint)
    peerHost = client.transport.getPeer()  # type: ignore[union-attr]
    assert isinstance(peerHost, IPv4Address)


# Against Dante.


def _danted() -> str:
    """The danted binary: skip where it is missing, fail on CI."""
    path = shutil.which("danted") or (
        "/usr/sbin/danted" if os.access("/usr/sbin/danted", os.X_OK) else None
    )
    if path is None:
        message = "danted is not installed (apt-get install dante-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


DANTED_CONF = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
socksmethod: none
clientmethod: none
{users}
client pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect bind bindreply
    log: error connect disconnect
}}
"""


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    A private danted in the foreground on a free loopback port; yields the
    port and stops that very process (by its pid) afterwards.
    """
    binary = _danted()
    directory = tmp_path_factory.mktemp("dante")
    log = directory / "danted.log"
    for attempt in range(3):
        port = closedPort()
        conf = directory / "danted.conf"
        # As root, danted must be told whom to run as; as anyone else it
        # cannot switch users and must not be told to.
        users = (
            "user.privileged: root\nuser.unprivileged: nobody"
            if os.geteuid() == 0
            else ""
        )
        conf.write_text(DANTED_CONF.format(log=log, port=port, users=users))
        process = subprocess.Popen(
            [binary, "-f", str(conf), "-N", "1", "-p", str(directory / "danted.pid")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if _waitForListener(port, process):
            break
        _stop(process)
        if attempt == 2:
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"danted did not start:\n{text}")
    try:
        yield port
    finally:
        _stop(process)


def _waitForListener(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return True
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop danted by its pid; its children follow their parent out."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteConnect(dante: int, ports: list[IListeningPort]) -> None:
    """
    Dante (no SOCKS4A) carries our SOCKS4 CONNECT: an IPv4 literal, and
    C{localhost} resolved locally with C{remoteResolve=False}.
    """
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(200_000)
    for host in ("127.0.0.1", "localhost"):
        endpoint = SOCKS4ClientEndpoint(
            reactor, host, echo, tcp(dante), user="dante", remoteResolve=False
        )
        assert await roundTrip(endpoint, payload) == payload


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteRefuses4A(dante: int, ports: list[IListeningPort]) -> None:
    """
    Dante has no SOCKS4A: it takes DSTIP 0.0.0.1 for an address and
    refuses, which reaches us as L{RequestRejected} with code 91.
    """
    echo = listen(ports, Factory.forProtocol(Echo))
    endpoint = SOCKS4ClientEndpoint(reactor, "localhost", echo, tcp(dante))
    with pytest.raises(RequestRejected) as caught:
        await withTimeout(endpoint.connect(Factory.forProtocol(Protocol)))
    assert caught.value.replyCode == ReplyCode.REJECTED
    assert type(caught.value) is RequestRejected


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteBind(dante: int) -> None:
    """
    BIND through Dante: both replies arrive, the peer connects to the
    address from the first, and data and half-close cross both ways.
    """
    await bindScenario(tcp(dante), "127.0.0.1")


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("example.com", "example.com:80"),
        ("::1", "[::1]:80"),
        ("evil\x1b[31m\x07.example", "evil\\x1b[31m\\x07.example:80"),
    ],
    ids=["name", "ipv6", "hostile"],
)
def test_refusalNamesTheDestinationAndTheProxy(host: str, shown: str) -> None:
    """
    A refusal's message says what was asked and of which proxy: the
    destination (escaped, an IPv6 literal bracketed) and the proxy's
    address, besides the reply code.
    """
    harness = Harness()
    outcome = results(harness.connectEndpoint(host).connect(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(encodeReply(ReplyCode.REJECTED))
    [failure] = outcome
    message = failure.getErrorMessage()
    proxyHost, proxyPort = PROXY
    assert f"CONNECT {shown} via SOCKS server {proxyHost}:{proxyPort}" in message
    assert "reply 91" in message
    assert message.isprintable()


def test_bindRefusalNamesThePeerAndTheProxy() -> None:
    """A refused BIND (second reply) names the expected peer and the proxy."""
    harness = Harness()
    outcome = results(harness.bindEndpoint().listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(encodeReply(ReplyCode.GRANTED, 40000, IPv4("10.0.0.1")))
    [port] = outcome
    with capturedLogs():
        wrapper.dataReceived(encodeReply(ReplyCode.REJECTED))
    [failure] = results(port.connected)
    proxyHost, proxyPort = PROXY
    assert (
        f"BIND 10.9.9.9:21 via SOCKS server {proxyHost}:{proxyPort}"
        in failure.getErrorMessage()
    )
