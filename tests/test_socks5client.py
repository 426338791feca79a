"""
Tests of the SOCKS5 client: L{SOCKS5Negotiation}, L{SOCKS5ClientEndpoint}
and L{SOCKS5BindEndpoint}, over a memory reactor.

The proxy hop is a real L{TCP4ClientEndpoint} on a L{MemoryReactorClock}
whose connection the test completes by hand onto a string transport, so the
test plays a scripted SOCKS5 server: exact bytes sent, every answer and
reply code, garbage, EOF at each step, timeouts and cancellation at each
stage (with nothing left on the clock).  Real servers (Dante, microsocks)
are in C{test_socks5interop}.
"""

from __future__ import annotations

from ipaddress import IPv4Address as IPv4
from ipaddress import IPv6Address as IPv6
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.test_client import (
    PROXY,
    HalfCloseRecording,
    Harness,
    RecordingFactory,
    results,
)
from twisted_socks.client._socks5endpoints import (
    SOCKS5BindEndpoint,
    SOCKS5ClientEndpoint,
)
from twisted_socks.client._socks5handshake import NoAddressFound, SOCKS5BoundPort
from twisted_socks.wire._clienterrors import (
    HandshakeTimeout,
    MalformedReply,
    SOCKSError,
)
from twisted_socks.wire._socks5 import (
    Command5,
    ReplyCode5,
    encodeReply5,
    encodeRequest5,
)
from twisted_socks.wire._socks5client import (
    AddressTypeNotSupported,
    ClosedBeforeReply5,
    CommandNotSupported,
    ConnectionRefused5,
    GeneralSOCKSFailure,
    HostUnreachable5,
    MalformedReply5,
    NetworkUnreachable5,
    NoAcceptableMethod,
    NotAllowedByRuleset,
    SOCKS5AuthenticationFailed,
    SOCKS5Negotiation,
    SOCKS5Rejected,
    TTLExpired,
)

NO_AUTH = b"\x05\x00"
USERPASS = b"\x05\x02"
AUTH_OK = b"\x01\x00"
GREETING = b"\x05\x01\x00"
GREETING_AUTH = b"\x05\x02\x00\x02"
PASSWORD = "pa55-w0rd-secret"
GRANTED = encodeReply5(ReplyCode5.SUCCEEDED, 40000, IPv4("10.0.0.1"))
REJECTIONS: list[tuple[ReplyCode5, type[SOCKS5Rejected]]] = [
    (ReplyCode5.GENERAL_FAILURE, GeneralSOCKSFailure),
    (ReplyCode5.NOT_ALLOWED, NotAllowedByRuleset),
    (ReplyCode5.NETWORK_UNREACHABLE, NetworkUnreachable5),
    (ReplyCode5.HOST_UNREACHABLE, HostUnreachable5),
    (ReplyCode5.CONNECTION_REFUSED, ConnectionRefused5),
    (ReplyCode5.TTL_EXPIRED, TTLExpired),
    (ReplyCode5.COMMAND_NOT_SUPPORTED, CommandNotSupported),
    (ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED, AddressTypeNotSupported),
]


def connect5(harness: Harness, host: str, port: int = 80, **kwargs: Any) -> Any:
    """A SOCKS5 CONNECT endpoint through the harness's fake proxy."""
    return SOCKS5ClientEndpoint(
        harness.reactor, host, port, harness.proxyEndpoint, **kwargs
    )


def bind5(harness: Harness, host: str = "10.9.9.9", port: int = 21, **kw: Any) -> Any:
    """A SOCKS5 BIND endpoint through the harness's fake proxy."""
    return SOCKS5BindEndpoint(harness.reactor, host, port, harness.proxyEndpoint, **kw)


def request(host: str, port: int = 80, command: Command5 = Command5.CONNECT) -> bytes:
    """The request bytes for C{host}: a literal as ATYP 1/4, else a name."""
    for kind in (IPv4, IPv6):
        try:
            return encodeRequest5(command, port, address=kind(host))
        except ValueError:
            pass
    return encodeRequest5(command, port, name=host)


def taken(transport: Any) -> bytes:
    """What was written to C{transport} since the last call, and clear it."""
    data: bytes = transport.value()
    transport.clear()
    return data


# The sans-IO negotiation.


def serverScript(credentials: bool) -> list[bytes]:
    """The answers of a server that grants everything, message by message."""
    if credentials:
        return [USERPASS, AUTH_OK, GRANTED]
    return [NO_AUTH, GRANTED]


@pytest.mark.parametrize("credentials", [False, True])
def test_everyPrefixOfEachServerMessageNeedsMore(credentials: bool) -> None:
    """
    Fed one byte at a time, the negotiation yields nothing until the last
    byte of the reply, answers each message only once it is complete, and
    never sends two messages ahead (microsocks loses pipelined ones).
    """
    creds = (b"alice", PASSWORD.encode()) if credentials else None
    negotiation = SOCKS5Negotiation(request("example.com"), creds)
    sent = [negotiation.dataToSend()]
    assert sent == [GREETING_AUTH if credentials else GREETING]
    script = serverScript(credentials)
    for message in script:
        for i, byte in enumerate(message):
            negotiation.receiveData(bytes([byte]))
            reply = negotiation.nextReply()
            if message is script[-1] and i == len(message) - 1:
                assert reply is not None and reply.granted
                assert reply.address == IPv4("10.0.0.1") and reply.port == 40000
            else:
                assert reply is None
                if i < len(message) - 1:
                    assert negotiation.dataToSend() == b""
        sent.append(negotiation.dataToSend())
    expected = [GREETING, request("example.com"), b""]
    if credentials:
        expected = [
            GREETING_AUTH,
            b"\x01\x05alice\x10" + PASSWORD.encode(),
            request("example.com"),
            b"",
        ]
    assert sent == expected


@given(st.lists(st.integers(min_value=1, max_value=20), max_size=12))
def test_anyChunkingNegotiatesTheSame(splits: list[int]) -> None:
    """
    However the server's answers and the stream after them are cut up, the
    negotiation sends the same messages and leaves the same stream.
    """
    negotiation = SOCKS5Negotiation(request("example.com"), (b"u", b"p"))
    stream = USERPASS + AUTH_OK + GRANTED + b"stream bytes"
    sent = negotiation.dataToSend()
    replies = []
    position = 0
    for size in [*splits, len(stream)]:
        negotiation.receiveData(stream[position : position + size])
        position += size
        while (reply := negotiation.nextReply()) is not None:
            replies.append(reply)
            break
        sent += negotiation.dataToSend()
        if replies:
            break
    rest = negotiation.takeData() + stream[position:]
    assert sent == GREETING_AUTH + b"\x01\x01u\x01p" + request("example.com")
    assert len(replies) == 1 and replies[0].granted
    assert rest == b"stream bytes"


@pytest.mark.parametrize("atyp", ["ipv4", "name", "ipv6"])
def test_repliesParseInAllThreeAddressTypes(atyp: str) -> None:
    """
    A reply may come with any ATYP (Dante echoes a failed name as ATYP 3),
    and is parsed to its end whatever it is.
    """
    bound: dict[str, Any] = {
        "ipv4": {"address": IPv4("127.0.0.1")},
        "name": {"name": "nonexistent.invalid"},
        "ipv6": {"address": IPv6("::1")},
    }[atyp]
    negotiation = SOCKS5Negotiation(request("nonexistent.invalid"))
    negotiation.dataToSend()
    negotiation.receiveData(
        NO_AUTH + encodeReply5(ReplyCode5.HOST_UNREACHABLE, 80, **bound) + b"x"
    )
    reply = negotiation.nextReply()
    assert reply is not None and reply.code is ReplyCode5.HOST_UNREACHABLE
    assert reply.port == 80
    assert negotiation.takeData() == b"x"


def test_repliesGoOnForBind() -> None:
    """A BIND's two replies come one after the other from the same exchange."""
    negotiation = SOCKS5Negotiation(request("10.9.9.9", 21, Command5.BIND))
    negotiation.dataToSend()
    second = encodeReply5(ReplyCode5.SUCCEEDED, 5555, IPv4("10.9.9.9"))
    negotiation.receiveData(NO_AUTH + GRANTED + second)
    first = negotiation.nextReply()
    assert first is not None and first.port == 40000
    peer = negotiation.nextReply()
    assert peer is not None and peer.port == 5555


def test_negotiationReprHidesThePassword() -> None:
    """The negotiation, which holds the password, never shows it."""
    negotiation = SOCKS5Negotiation(request("example.com"), (b"alice", b"hunter2"))
    assert "hunter2" not in repr(negotiation)


# The endpoint: what goes on the wire.


def test_endpointsProvideTheirInterfaces() -> None:
    """The endpoints provide Twisted's client and server endpoint interfaces."""
    harness = Harness()
    assert verifyObject(IStreamClientEndpoint, connect5(harness, "example.com"))
    assert verifyObject(IStreamServerEndpoint, bind5(harness))


def test_remoteResolveSendsTheNameAndNeverResolves() -> None:
    """
    With C{remoteResolve} (socks5h), the greeting offers no authentication
    only, then the request carries the name as ATYP 3; the local resolver is
    never asked.
    """
    harness = Harness()
    factory = RecordingFactory()
    results(connect5(harness, "example.com", 443).connect(factory))
    wrapper, transport = harness.acceptConnection()
    assert taken(transport) == GREETING
    wrapper.dataReceived(NO_AUTH)
    assert taken(transport) == b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    assert harness.resolver.lookups == []
    assert factory.built[0][0] == HostnameAddress(b"example.com", 443)


@pytest.mark.parametrize(
    ("answer", "atyp", "appAddress"),
    [
        ("192.0.2.7", b"\x01\xc0\x00\x02\x07", IPv4Address("TCP", "192.0.2.7", 80)),
        ("2001:db8::7", b"\x04" + IPv6("2001:db8::7").packed, None),
    ],
)
def test_localResolveSendsTheFirstAddress(
    answer: str, atyp: bytes, appAddress: Any
) -> None:
    """
    Without C{remoteResolve} (socks5), the name is resolved locally and its
    first address goes as ATYP 1 or ATYP 4, whichever family it is.
    """
    harness = Harness({"example.com": [answer, "192.0.2.99"]})
    factory = RecordingFactory()
    results(connect5(harness, "example.com", remoteResolve=False).connect(factory))
    wrapper, transport = harness.acceptConnection()
    taken(transport)
    wrapper.dataReceived(NO_AUTH)
    assert taken(transport) == b"\x05\x01\x00" + atyp + b"\x00\x50"
    if appAddress is None:
        appAddress = IPv6Address("TCP", answer, 80)
    assert factory.built[0][0] == appAddress


def test_localResolveOfANameWithoutAddressFailsBeforeConnecting() -> None:
    """
    A name with no address fails with L{NoAddressFound} (a L{SOCKSError} and
    a L{DNSLookupError}) and the proxy is never contacted.
    """
    harness = Harness({"nowhere.invalid": []})
    [failure] = results(
        connect5(harness, "nowhere.invalid", remoteResolve=False).connect(
            RecordingFactory()
        )
    )
    assert failure.check(NoAddressFound)
    assert isinstance(failure.value, SOCKSError)
    assert isinstance(failure.value, DNSLookupError)
    assert harness.reactor.tcpClients == []
    harness.assertClockIsClear()


@pytest.mark.parametrize("host", ["::1", "[2001:db8::1]"])
def test_ipv6LiteralGoesAsATYP4(host: str) -> None:
    """An IPv6 literal, bracketed or not, is sent as one, not as a name."""
    harness = Harness()
    results(connect5(harness, host).connect(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    taken(transport)
    wrapper.dataReceived(NO_AUTH)
    assert taken(transport) == request(host.strip("[]"))


def test_credentialsAreOfferedAndSent() -> None:
    """
    With a username and password the greeting offers methods 00 and 02; a
    server choosing 02 gets the RFC 1929 request (text UTF-8 encoded), and
    the SOCKS request goes only after its C{01 00}.
    """
    harness = Harness()
    results(
        connect5(harness, "example.com", user="élise", password=PASSWORD).connect(
            RecordingFactory()
        )
    )
    wrapper, transport = harness.acceptConnection()
    assert taken(transport) == GREETING_AUTH
    wrapper.dataReceived(USERPASS)
    user = "élise".encode()
    assert taken(transport) == (
        b"\x01" + bytes([len(user)]) + user + b"\x10" + PASSWORD.encode()
    )
    wrapper.dataReceived(AUTH_OK)
    assert taken(transport) == request("example.com")


def test_serverChoosingNoAuthenticationSkipsTheCredentials() -> None:
    """Offered both, a server choosing 00 gets the request straight away."""
    harness = Harness()
    results(
        connect5(harness, "example.com", user="a", password=PASSWORD).connect(
            RecordingFactory()
        )
    )
    wrapper, transport = harness.acceptConnection()
    taken(transport)
    wrapper.dataReceived(NO_AUTH)
    assert taken(transport) == request("example.com")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": ""}, "empty destination host"),
        ({"port": 0}, "CONNECT to port 0"),
        ({"port": 65536}, "port out of range"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"user": "alice"}, "both a username and a password"),
        ({"password": PASSWORD}, "both a username and a password"),
        ({"user": "", "password": PASSWORD}, "username must be 1..255"),
        ({"user": "a", "password": ""}, "password must be 1..255"),
        ({"user": "a", "password": PASSWORD * 20}, "password must be 1..255"),
        ({"host": "bad\r\nname"}, "DNS name"),
        ({"host": "x" * 256}, "DNS name"),
    ],
)
def test_misuseIsRefusedAtConstruction(kwargs: dict[str, Any], message: str) -> None:
    """
    Local mistakes raise L{ValueError} at construction, naming the problem
    and never the password.
    """
    harness = Harness()
    arguments: dict[str, Any] = {"host": "example.com", "port": 80, **kwargs}
    with pytest.raises(ValueError, match=message) as raised:
        SOCKS5ClientEndpoint(
            harness.reactor, proxyEndpoint=harness.proxyEndpoint, **arguments
        )
    assert PASSWORD not in str(raised.value)


def test_bindAllowsPortZero() -> None:
    """A BIND's DST.PORT is informative: 0 is accepted."""
    bind5(Harness(), port=0)


def test_bracketedIPv6IsShownOnce() -> None:
    """A bracketed IPv6 literal is stored, and named in messages, as one."""
    endpoint = connect5(Harness(), "[2001:db8::1]", 443)
    assert endpoint._describe() == "[2001:db8::1]:443"


def test_reprHidesThePassword() -> None:
    """The endpoint's C{repr} names the user and the destination, not the password."""
    endpoint = connect5(Harness(), "example.com", user="alice", password=PASSWORD)
    text = repr(endpoint)
    assert "alice" in text and "example.com:80" in text
    assert PASSWORD not in text


# The endpoint: answers.


@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_replyAndDataInOneSegmentReachTheProtocolIntact(chunking: str) -> None:
    """
    The application protocol is connected only after reply 00; the bytes
    that came with the reply reach it after C{makeConnection}, intact,
    however the segment is cut.
    """
    harness = Harness()
    outcome = results(connect5(harness, "example.com").connect(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    segment = NO_AUTH + GRANTED + b"early bytes"
    chunks = [segment] if chunking == "whole" else [bytes([b]) for b in segment]
    fed = 0
    for chunk in chunks:
        # Nothing before the reply's last byte.
        assert (outcome == []) == (fed < len(NO_AUTH + GRANTED))
        wrapper.dataReceived(chunk)
        fed += len(chunk)
    [app] = outcome
    assert app.events[0][0] == "connectionMade"
    assert app.received == b"early bytes"
    assert not transport.disconnecting
    harness.assertClockIsClear()


@pytest.mark.parametrize(("code", "errorClass"), REJECTIONS)
def test_eachReplyCodeFailsWithItsError(
    code: ReplyCode5, errorClass: type[SOCKS5Rejected]
) -> None:
    """
    Each REP 01-08 fails the attempt with its own L{SOCKS5Rejected}
    subclass carrying the code and the reply; the message names the
    destination and the proxy; the connection is closed.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(connect5(harness, "example.com", 443).connect(factory))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH + encodeReply5(code, 0, name="example.com"))
    [failure] = outcome
    assert type(failure.value) is errorClass
    error = failure.value
    assert isinstance(error, SOCKS5Rejected) and isinstance(error, SOCKSError)
    assert error.replyCode == code
    assert error.reply is not None and error.reply.code == code
    assert f"REP {int(code)}" in str(error)
    assert "example.com:443" in str(error) and f"{PROXY[0]}:{PROXY[1]}" in str(error)
    assert transport.aborted
    assert factory.built[0][1].events == []
    harness.assertClockIsClear()


def test_noAcceptableMethod() -> None:
    """
    C{05 FF} fails with L{NoAcceptableMethod}, saying the server may want
    credentials when none were offered.
    """
    harness = Harness()
    outcome = results(connect5(harness, "example.com").connect(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(b"\x05\xff")
    [failure] = outcome
    assert failure.check(NoAcceptableMethod)
    assert "username and password" in str(failure.value)
    assert transport.aborted


@pytest.mark.parametrize("status", [1, 0xFF])
def test_authenticationFailedNamesTheUserNotThePassword(status: int) -> None:
    """
    A STATUS other than 0 fails with L{SOCKS5AuthenticationFailed}, carrying
    the status; the request is never sent and the password is never shown.
    """
    harness = Harness()
    outcome = results(
        connect5(harness, "example.com", user="alice", password=PASSWORD).connect(
            RecordingFactory()
        )
    )
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(USERPASS)
    taken(transport)
    wrapper.dataReceived(bytes([1, status]))
    [failure] = outcome
    assert failure.check(SOCKS5AuthenticationFailed)
    assert failure.value.status == status
    assert "alice" in str(failure.value)
    assert PASSWORD not in str(failure.value) and PASSWORD not in repr(failure.value)
    assert PASSWORD not in failure.getTraceback()
    assert taken(transport) == b""
    assert transport.aborted


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([b"\x05\x02"], "username/password, which was not offered"),
        ([b"\x05\x01"], "GSSAPI, which was not offered"),
        ([b"\x00\x5a"], "method selection version 0"),
        ([b"HTTP/1.1 400"], "method selection version 72"),
        ([NO_AUTH, b"\x04\x5a"], "reply version 4"),
        ([NO_AUTH, b"\x05\x09"], "unknown reply code 9"),
        ([NO_AUTH, b"\x05\x00\x00\x07"], "address type 7"),
        ([NO_AUTH, b"\x05\x00\x00\x03\x00"], "name of length 0"),
    ],
)
def test_garbageFailsAtOnceAsMalformed(answers: list[bytes], message: str) -> None:
    """
    What cannot be the answer due fails with L{MalformedReply5} (a
    L{MalformedReply}) as soon as the byte that shows it arrives.
    """
    harness = Harness()
    outcome = results(connect5(harness, "example.com").connect(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    for answer in answers:
        wrapper.dataReceived(answer)
    [failure] = outcome
    assert failure.check(MalformedReply5) and isinstance(failure.value, MalformedReply)
    assert message in str(failure.value)
    assert transport.aborted
    harness.assertClockIsClear()


@pytest.mark.parametrize(
    ("answers", "message", "afterTheRequest"),
    [
        ([], "before the method selection", False),
        ([b"\x05"], "before the method selection (1 bytes of it received)", False),
        ([USERPASS], "before the authentication status", False),
        ([USERPASS, b"\x01"], "before the authentication status", False),
        ([NO_AUTH], "before the reply", True),
        ([USERPASS, AUTH_OK], "before the reply", True),
        ([NO_AUTH, GRANTED[:7]], "before the reply (7 bytes of it received)", False),
    ],
)
def test_EOFMidNegotiationSaysWhere(
    answers: list[bytes], message: str, afterTheRequest: bool
) -> None:
    """
    A clean close before an answer is complete fails with L{MalformedReply5}
    saying which answer was missing; once the request was sent and before
    any reply byte, with its subclass L{ClosedBeforeReply5} (what C{ssh -D}
    does for a destination it cannot reach), which a routing server tells
    from an upstream that failed its greeting.
    """
    harness = Harness()
    outcome = results(
        connect5(harness, "example.com", user="u", password=PASSWORD).connect(
            RecordingFactory()
        )
    )
    wrapper, _ = harness.acceptConnection()
    for answer in answers:
        wrapper.dataReceived(answer)
    wrapper.connectionLost(Failure(ConnectionDone()))
    [failure] = outcome
    assert failure.check(MalformedReply5)
    assert message in str(failure.value)
    assert isinstance(failure.value, ClosedBeforeReply5) is afterTheRequest
    harness.assertClockIsClear()


def test_connectionResetMidNegotiationKeepsItsReason() -> None:
    """A reset is more telling as it is than as a malformed reply."""
    harness = Harness()
    outcome = results(connect5(harness, "example.com").connect(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH)
    wrapper.connectionLost(Failure(ConnectionLost()))
    [failure] = outcome
    assert failure.check(ConnectionLost)


# Timeouts and cancellation, at every stage.

#: What the server has said when the clock runs out or the caller cancels.
STAGES = [
    ("method", []),
    ("auth", [USERPASS]),
    ("reply", [USERPASS, AUTH_OK]),
    ("partial reply", [USERPASS, AUTH_OK, GRANTED[:5]]),
]


@pytest.mark.parametrize(("stage", "answers"), STAGES)
def test_timeoutMidNegotiation(stage: str, answers: list[bytes]) -> None:
    """
    Whatever step the negotiation is at, C{timeout} seconds after
    C{connect()} the attempt fails with L{HandshakeTimeout}, the connection
    is aborted and nothing is left on the clock.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(
        connect5(
            harness, "example.com", timeout=5, user="u", password=PASSWORD
        ).connect(factory)
    )
    harness.reactor.advance(1)
    wrapper, transport = harness.acceptConnection()
    for answer in answers:
        wrapper.dataReceived(answer)
    harness.reactor.advance(3.9)
    assert outcome == []
    harness.reactor.advance(0.1)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert "waiting for the proxy's reply" in str(failure.value)
    assert transport.aborted
    harness.assertClockIsClear()
    wrapper.dataReceived(GRANTED)
    assert factory.built[0][1].events == []


def test_timeoutWhileConnectingAndWhileResolving() -> None:
    """The same clock covers the local lookup and the connection to the proxy."""
    harness = Harness()
    connecting = results(
        connect5(harness, "example.com", timeout=3).connect(RecordingFactory())
    )
    resolving = results(
        connect5(harness, "slow.example", timeout=3, remoteResolve=False).connect(
            RecordingFactory()
        )
    )
    harness.reactor.advance(3)
    [failure] = connecting
    assert failure.check(HandshakeTimeout)
    assert "connecting to the proxy" in str(failure.value)
    assert harness.reactor.connectors[-1].stoppedConnecting
    [failure] = resolving
    assert failure.check(HandshakeTimeout)
    assert harness.resolver.lookups[0].cancelled
    harness.assertClockIsClear()


def test_cancelWhileResolving() -> None:
    """Cancelling during the local lookup cancels it; nothing is connected."""
    harness = Harness()
    d = connect5(harness, "slow.example", remoteResolve=False).connect(
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
    d = connect5(harness, "example.com").connect(RecordingFactory())
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert harness.reactor.connectors[-1].stoppedConnecting
    harness.assertClockIsClear()


@pytest.mark.parametrize(("stage", "answers"), STAGES)
def test_cancelMidNegotiation(stage: str, answers: list[bytes]) -> None:
    """
    Cancelling at any step of the negotiation aborts the connection at once
    and leaves nothing on the clock; a late grant changes nothing.
    """
    harness = Harness()
    factory = RecordingFactory()
    d = connect5(harness, "example.com", user="u", password=PASSWORD).connect(factory)
    wrapper, transport = harness.acceptConnection()
    for answer in answers:
        wrapper.dataReceived(answer)
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
    d = connect5(harness, "example.com").connect(RecordingFactory())
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH + GRANTED)
    d.cancel()
    assert not transport.aborted and not transport.disconnecting


def test_halfCloseIsPassedThroughBothWays() -> None:
    """
    For a half-closeable application protocol the FIN reaches it, and its
    C{loseWriteConnection()} reaches the real transport.
    """
    harness = Harness()
    factory = RecordingFactory(HalfCloseRecording)
    outcome = results(connect5(harness, "example.com").connect(factory))
    wrapper, transport = harness.acceptConnection()
    assert IHalfCloseableProtocol.providedBy(wrapper)
    wrapper.dataReceived(NO_AUTH + GRANTED + b"x")
    [app] = outcome
    app.transport.loseWriteConnection()
    assert transport.writeClosed
    wrapper.readConnectionLost()  # type: ignore[attr-defined]
    assert app.events[1:] == [("data", b"x"), "readConnectionLost"]
    assert not transport.disconnecting


# BIND.


def test_bindTwoRepliesMakeAPortThenConnectTheApplication() -> None:
    """
    C{listen()} sends a BIND and fires with a L{SOCKS5BoundPort} at the
    first reply's address before any peer; the second reply builds the
    application protocol for the peer's address and connects it, with the
    bytes that followed.
    """
    harness = Harness()
    factory = RecordingFactory()
    outcome = results(bind5(harness, "10.9.9.9", 21).listen(factory))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH)
    assert taken(transport) == GREETING + request("10.9.9.9", 21, Command5.BIND)
    wrapper.dataReceived(encodeReply5(ReplyCode5.SUCCEEDED, 40001, IPv6("::1")))
    [port] = outcome
    assert isinstance(port, SOCKS5BoundPort)
    assert port.getHost() == IPv6Address("TCP", "::1", 40001)
    assert factory.built == []
    harness.assertClockIsClear()
    accepted = results(port.connected)
    peer = encodeReply5(ReplyCode5.SUCCEEDED, 5555, IPv4("10.9.9.9"))
    wrapper.dataReceived(peer + b"hello")
    [app] = accepted
    assert factory.built[0][0] == IPv4Address("TCP", "10.9.9.9", 5555)
    assert app.received == b"hello"


def test_bindWildcardFirstReplyMeansTheProxy() -> None:
    """A first reply of 0.0.0.0 means "the proxy's own address"."""
    harness = Harness()
    outcome = results(bind5(harness).listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH + encodeReply5(ReplyCode5.SUCCEEDED, 40001))
    [port] = outcome
    assert port.getHost() == IPv4Address("TCP", PROXY[0], 40001)


def test_bindSecondReplyRefusalFailsConnected() -> None:
    """A refusing second reply fails C{connected} with its error and closes."""
    harness = Harness()
    outcome = results(bind5(harness).listen(RecordingFactory()))
    wrapper, transport = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH + GRANTED)
    [port] = outcome
    accepted = results(port.connected)
    wrapper.dataReceived(encodeReply5(ReplyCode5.NOT_ALLOWED))
    [failure] = accepted
    assert failure.check(NotAllowedByRuleset)
    assert transport.aborted


def test_bindFirstReplyRefusal() -> None:
    """A refusing first reply fails C{listen()} (microsocks answers 07)."""
    harness = Harness()
    outcome = results(bind5(harness).listen(RecordingFactory()))
    wrapper, _ = harness.acceptConnection()
    wrapper.dataReceived(NO_AUTH + encodeReply5(ReplyCode5.COMMAND_NOT_SUPPORTED))
    [failure] = outcome
    assert failure.check(CommandNotSupported)
    assert "BIND" in str(failure.value)
