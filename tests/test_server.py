"""
Protocol-level tests of the server, in memory: no sockets, a fake clock.

Real-socket behaviour (half-close on the wire, backpressure, interop) is in
test_loopback.py; here each step of a session is driven and checked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

import pytest
from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from twisted_socks import (
    AccessRequest,
    CachingHostnameResolver,
    Command,
    Decision,
    IdentErrorReply,
    IdentMode,
    IdentTimeout,
    IdentUnreachable,
    Limits,
    LoopbackClientsPolicy,
    SessionRecord,
    SessionState,
    SOCKSv4ServerFactory,
    SOCKSv4ServerProtocol,
    encodeRequest,
)
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
    RecordingPolicy,
)

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6
DEST = IPv4Address("192.0.2.10")
CLIENT = taddress.IPv4Address("TCP", "127.0.0.1", 40000)


@dataclass
class Harness:
    """A server factory wired to fakes, and helpers to open sessions on it."""

    policy: object = None
    answers: dict[str, list[str]] | None = None
    limits: Limits = field(default_factory=Limits)
    clock: MemoryReactorClock = field(default_factory=MemoryReactorClock)
    connector: FakeConnector = field(default_factory=FakeConnector)
    records: list[SessionRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resolver = FakeHostnameResolver(self.answers)
        self.factory = SOCKSv4ServerFactory(
            self.clock,
            policy=self.policy,  # type: ignore[arg-type]
            connector=self.connector,
            nameResolver=self.resolver,
            limits=self.limits,
            sessionObserver=self.records.append,
        )

    def open(
        self, peer: object = CLIENT
    ) -> tuple[SOCKSv4ServerProtocol, HalfCloseableStringTransport]:
        """Accept one client connection from C{peer}."""
        protocol = self.factory.buildProtocol(peer)  # type: ignore[arg-type]
        transport = HalfCloseableStringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport


def lose(protocol: SOCKSv4ServerProtocol) -> None:
    """Deliver a clean connection close to C{protocol}."""
    protocol.connectionLost(Failure(ConnectionDone()))


def test_connectRepliesOnlyOnceConnected() -> None:
    """
    A SOCKS4 CONNECT is judged, connected to exactly DSTIP:DSTPORT, and
    answered 90 only after the outbound connection is up.
    """
    policy = RecordingPolicy()
    h = Harness(policy=policy)
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 8080, DEST, userid=b"ann"))
    assert [
        (r.client, r.clientPort, r.command, r.user, r.port, r.hostname, r.address)
        for r in policy.requests
    ] == [(IPv4Address("127.0.0.1"), 40000, Command.CONNECT, "ann", 8080, None, DEST)]
    [pending] = h.connector.connections
    assert (pending.address, pending.port) == (DEST, 8080)
    assert transport.value() == b""
    assert protocol.state is SessionState.CONNECTING
    pending.succeed()
    assert transport.value() == GRANTED
    assert protocol.state is SessionState.RELAYING


def test_relayMovesBytesBothWaysAndCountsThem() -> None:
    """After 90, bytes flow both ways unchanged and are counted."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    pending = h.connector.connections[0]
    outbound = pending.succeed()
    transport.clear()
    protocol.dataReceived(b"ping")
    outbound.dataReceived(b"pong!")
    assert pending.transport.value() == b"ping"
    assert transport.value() == b"pong!"
    assert (protocol.bytesUp, protocol.bytesDown) == (4, 5)


def test_pipelinedBytesReachDestinationInOrder() -> None:
    """
    Bytes sent with the request and before the reply are delivered after the
    reply, in order, and never parsed as a second request.
    """
    h = Harness()
    protocol, _transport = h.open()
    second = encodeRequest(Command.CONNECT, 81, IPv4Address("192.0.2.99"))
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST) + b"first ")
    protocol.dataReceived(second)
    protocol.dataReceived(b" last")
    assert len(h.connector.connections) == 1
    pending = h.connector.connections[0]
    pending.succeed()
    assert pending.transport.value() == b"first " + second + b" last"
    assert protocol.bytesUp == len(b"first " + second + b" last")


def test_pendingBytesArePausedNotDropped() -> None:
    """Beyond maxPendingBytes the client is paused; nothing is dropped."""
    h = Harness(limits=Limits(maxPendingBytes=10))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST) + b"12345")
    assert transport.producerState == "producing"
    protocol.dataReceived(b"67890abc")
    assert transport.producerState == "paused"
    pending = h.connector.connections[0]
    pending.succeed()
    assert pending.transport.value() == b"1234567890abc"
    assert transport.producerState == "producing"


def test_relayRegistersEachSideAsTheOthersProducer() -> None:
    """Backpressure: each transport throttles the other."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    pending = h.connector.connections[0]
    pending.succeed()
    assert transport.producer is pending.transport
    assert transport.streaming
    assert pending.transport.producer is transport
    assert pending.transport.streaming


def test_socks4aJudgesNameThenEachResolvedAddress() -> None:
    """
    A 4A request is judged on its name before any lookup, looked up exactly
    once, each address is judged, and the first approved one is connected to.
    """
    policy = RecordingPolicy()
    h = Harness(policy=policy, answers={"www.example": ["192.0.2.5", "192.0.2.6"]})
    protocol, _ = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 443, hostname="www.example"))
    assert [(r.hostname, r.address) for r in policy.requests] == [
        ("www.example", None),
        ("www.example", IPv4Address("192.0.2.5")),
        ("www.example", IPv4Address("192.0.2.6")),
    ]
    assert [(lookup.name, lookup.port) for lookup in h.resolver.lookups] == [
        ("www.example", 443)
    ]
    [pending] = h.connector.connections
    assert (pending.address, pending.port) == (IPv4Address("192.0.2.5"), 443)


def test_socks4aFallsBackToNextApprovedAddress() -> None:
    """
    When the first address refuses (``localhost`` gives ::1 first, the
    service listens on 127.0.0.1 only), the next approved address is tried.
    """
    h = Harness(answers={"localhost": ["::1", "127.0.0.1"]})
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="localhost"))
    h.connector.connections[0].fail(ConnectionRefusedError())
    second = h.connector.connections[1]
    assert second.address == IPv4Address("127.0.0.1")
    second.succeed()
    assert transport.value() == GRANTED
    lose(protocol)
    assert h.records[0].resolved == "127.0.0.1:80"


def test_socks4aNeverConnectsToADeniedAddress() -> None:
    """Of a name's addresses, a denied one is never tried, even as fallback."""
    h = Harness(
        policy=DenyName("bad.example", "127.0.0.1"),
        answers={"mixed.example": ["127.0.0.1", "192.0.2.8"]},
    )
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="mixed.example"))
    [only] = h.connector.connections
    assert only.address == IPv4Address("192.0.2.8")
    only.fail(ConnectionRefusedError())
    assert len(h.connector.connections) == 1
    assert transport.value() == REJECTED


def test_socks4aToIPv6Destination() -> None:
    """A name with only an IPv6 address is connected over IPv6."""
    h = Harness(answers={"v6.example": ["2001:db8::1"]})
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="v6.example"))
    [pending] = h.connector.connections
    assert pending.address == IPv6Address("2001:db8::1")
    pending.succeed()
    assert transport.value() == GRANTED
    lose(protocol)
    assert h.records[0].resolved == "[2001:db8::1]:80"


class DenyName:
    """Denies one name before resolution; denies one address after it."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = IPv4Address(address)

    def decide(self, request: AccessRequest) -> Decision:
        if request.hostname == self.name:
            return Decision.deny("name denied", "test:1")
        if request.address == self.address:
            return Decision.deny("address denied", "test:2")
        return Decision.allow("ok", "test:3")


def test_deniedNameIsNeverLookedUp() -> None:
    """A name the policy refuses gets 91 without any DNS lookup."""
    h = Harness(policy=DenyName("bad.example", "127.0.0.1"))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="bad.example"))
    assert transport.value() == REJECTED
    assert h.resolver.lookups == []
    assert h.connector.connections == []


def test_nameResolvingToDeniedAddressIsDenied() -> None:
    """A name that resolves to a denied address is denied; nothing connects."""
    h = Harness(
        policy=DenyName("bad.example", "127.0.0.1"),
        answers={"sneaky.example": ["127.0.0.1"]},
    )
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="sneaky.example"))
    assert transport.value() == REJECTED
    assert h.connector.connections == []
    lose(protocol)
    assert h.records[0].rule == "test:2"


def test_unknownNameGets91() -> None:
    """A name with no address gets 91."""
    h = Harness(answers={"nxdomain.example": []})
    protocol, transport = h.open()
    protocol.dataReceived(
        encodeRequest(Command.CONNECT, 80, hostname="nxdomain.example")
    )
    assert transport.value() == REJECTED
    assert h.connector.connections == []


def test_denialRepliesHalfClosesAndDiscardsInput() -> None:
    """
    After 91 the server sends FIN (so the reply cannot be lost to a reset),
    discards further input, and closes when the client closes.
    """
    h = Harness(policy=RecordingPolicy(allowed=False))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST) + b"junk")
    assert transport.value() == REJECTED
    assert transport.writeClosed
    assert not transport.disconnecting
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert transport.value() == REJECTED
    assert h.connector.connections == []
    protocol.readConnectionLost()
    assert transport.disconnecting


def test_lingerAfterFailureIsBounded() -> None:
    """A client that never closes after 91 is aborted at the linger limit."""
    h = Harness(policy=RecordingPolicy(allowed=False), limits=Limits(lingerTimeout=2))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    h.clock.advance(1.9)
    assert not transport.aborted
    h.clock.advance(0.2)
    assert transport.aborted


def test_connectFailureGets91() -> None:
    """A refused outbound connection is answered 91."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    h.connector.connections[0].fail(ConnectionRefusedError())
    assert transport.value() == REJECTED
    lose(protocol)
    assert h.records[0].reply == 91
    assert "refused" in h.records[0].reason


def firstReply(port: int, address: str) -> bytes:
    """BIND's first reply: 90 with the listener's port and address."""
    return b"\x00\x5a" + port.to_bytes(2, "big") + IPv4Address(address).packed


def openBind(
    h: Harness, dest: IPv4Address = DEST
) -> tuple[SOCKSv4ServerProtocol, HalfCloseableStringTransport]:
    """A client that sent a BIND for C{dest}."""
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.BIND, 21, dest, userid=b"ftp"))
    return protocol, transport


def test_bindFirstReplyNamesTheListener() -> None:
    """
    A BIND opens a listener on the address the client reached us on and
    answers 90 with that address and the listener's port; no connection.
    """
    h = Harness()
    protocol, transport = openBind(h)
    [listener] = h.connector.listeners
    assert listener.interface == "10.0.0.1"  # the transport's getHost()
    assert transport.value() == firstReply(40001, "10.0.0.1")
    assert h.connector.connections == []
    assert protocol.state is SessionState.WAITING


def test_bindRelaysWithTheExpectedPeer() -> None:
    """
    The peer from DSTIP gets the second reply 90 naming it, the listener
    closes at once, and bytes flow both ways.
    """
    h = Harness()
    protocol, transport = openBind(h)
    listener = h.connector.listeners[0]
    transport.clear()
    peer = listener.connectFrom(str(DEST), 20)
    assert peer is not None
    assert not listener.listening
    assert transport.value() == firstReply(20, str(DEST))
    protocol.dataReceived(b"PORT data")
    peer.dataReceived(b"file bytes")
    assert listener.peers[0].value() == b"PORT data"
    assert transport.value().endswith(b"file bytes")
    lose(protocol)
    assert h.records[0].resolved == f"{DEST}:20"
    assert (h.records[0].bytesUp, h.records[0].bytesDown) == (9, 10)


def test_bindWrongPeerGets91AndNoBytePasses() -> None:
    """A peer from another address is refused: second reply 91, all closed."""
    h = Harness()
    protocol, transport = openBind(h)
    listener = h.connector.listeners[0]
    protocol.dataReceived(b"queued")
    transport.clear()
    assert listener.connectFrom("192.0.2.66", 20) is None
    assert not listener.listening
    assert transport.value() == REJECTED
    assert transport.writeClosed
    assert listener.peers == []


def test_bindTimeoutGives91AndClosesListener() -> None:
    """No peer within the BIND timeout: 91, and the listener is gone."""
    h = Harness(limits=Limits(bindTimeout=120))
    protocol, transport = openBind(h)
    listener = h.connector.listeners[0]
    h.clock.advance(119)
    assert listener.listening
    h.clock.advance(2)
    assert not listener.listening
    assert transport.value().endswith(REJECTED)
    lose(protocol)
    assert h.records[0].reason == "bind timeout"


def test_bindClientLeavingClosesListener() -> None:
    """The client hanging up before the peer arrives closes the listener."""
    h = Harness()
    protocol, _ = openBind(h)
    listener = h.connector.listeners[0]
    lose(protocol)
    assert not listener.listening
    assert h.factory.bindsByClient == {}
    assert h.clock.getDelayedCalls() == []


def test_bindCapPerClient() -> None:
    """A client may hold maxBindsPerClient listeners; more get 91."""
    h = Harness(limits=Limits(maxBindsPerClient=2))
    first, _ = openBind(h)
    openBind(h)
    _third, thirdTransport = openBind(h)
    assert thirdTransport.value() == REJECTED
    assert len(h.connector.listeners) == 2
    lose(first)
    _fourth, fourthTransport = openBind(h)
    assert fourthTransport.value().startswith(b"\x00\x5a")
    assert h.factory.bindsByClient == {"127.0.0.1": 2}


def test_bind4AMatchesTheResolvedAddress() -> None:
    """For 4A, the inbound peer must come from the name's address."""
    h = Harness(answers={"ftp.example": ["192.0.2.21"]})
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.BIND, 21, hostname="ftp.example"))
    listener = h.connector.listeners[0]
    assert listener.connectFrom("192.0.2.21", 20) is not None
    assert transport.value().endswith(firstReply(20, "192.0.2.21"))


def test_bindAddressOption() -> None:
    """A configured bind address is where the listener listens and what it says."""
    h = Harness()
    h.factory.bindAddress = "198.51.100.4"
    openBind(h)
    assert h.connector.listeners[0].interface == "198.51.100.4"


def test_bindOverIPv6WithoutBindAddressIsRefused() -> None:
    """SOCKS4 replies carry IPv4 only: an IPv6 client needs --bind-address."""
    h = Harness()
    client = taddress.IPv6Address("TCP", "::1", 5000)
    protocol = h.factory.buildProtocol(client)
    transport = HalfCloseableStringTransport(
        hostAddress=taddress.IPv6Address("TCP", "::1", 1080), peerAddress=client
    )
    protocol.makeConnection(transport)
    protocol.dataReceived(encodeRequest(Command.BIND, 21, DEST))
    assert transport.value() == REJECTED
    assert h.connector.listeners == []


def test_rulesCanDenyBind() -> None:
    """cmd=bind rules allow or deny BIND apart from CONNECT."""
    from twisted_socks import parseRules

    h = Harness(policy=parseRules("deny cmd=bind 0/0\nallow 0/0\n", "r.conf"))
    _protocol, transport = openBind(h)
    assert transport.value() == REJECTED
    assert h.connector.listeners == []
    other, _otherTransport = h.open()
    other.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert len(h.connector.connections) == 1


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", b""),
        # A SOCKS5 greeting is served now; one offering no method is not.
        (b"\x05\x00", b"\x05\xff"),
        (b"\x04\x03\x00\x50\x01\x02\x03\x04\x00", REJECTED),
        (b"\x04\x01\x00\x50\x00\x00\x00\x00\x00", REJECTED),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00", REJECTED),
        (b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 300, REJECTED),
    ],
)
def test_malformedRequestAnsweredAndClosed(raw: bytes, reply: bytes) -> None:
    """
    Garbage is closed silently; a bad SOCKS4 request gets 91, a bad SOCKS5
    greeting C{05 FF}; no connect.
    """
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(raw)
    assert transport.value() == reply
    assert transport.writeClosed
    assert protocol.state is SessionState.CLOSED
    assert h.connector.connections == []


def test_negotiateTimeoutIsTotalNotPerByte() -> None:
    """A client trickling one byte every 10 s is closed at 30 s, no reply."""
    h = Harness(limits=Limits(negotiateTimeout=30))
    protocol, transport = h.open()
    raw = encodeRequest(Command.CONNECT, 80, DEST, userid=b"slowloris")
    for i in range(3):
        protocol.dataReceived(raw[i : i + 1])
        h.clock.advance(9.9)
    assert not transport.writeClosed
    h.clock.advance(0.4)
    assert transport.writeClosed
    assert transport.value() == b""
    lose(protocol)
    assert h.records[0].reason == "negotiate timeout"


def test_connectTimeoutCoversResolution() -> None:
    """A lookup that never answers gets 91 at the connect timeout, abandoned."""
    h = Harness(limits=Limits(connectTimeout=5))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="slow.example"))
    h.clock.advance(4.9)
    assert transport.value() == b""
    h.clock.advance(0.2)
    assert transport.value() == REJECTED
    # A late answer is ignored: no connection, no second reply.
    h.resolver.lookups[0].complete(["192.0.2.1"])
    assert h.connector.connections == []
    assert transport.value() == REJECTED


def test_connectTimeoutCancelsTheConnection() -> None:
    """A connection attempt still pending at the timeout is cancelled; 91."""
    h = Harness(limits=Limits(connectTimeout=5))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    h.clock.advance(5.1)
    assert h.connector.connections[0].cancelled
    assert transport.value() == REJECTED


def test_clientLeavingWhileConnectingCancelsAndLeavesNoTimer() -> None:
    """A client gone before the reply cancels the attempt and every timer."""
    h = Harness()
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    lose(protocol)
    assert h.connector.connections[0].cancelled
    assert h.clock.getDelayedCalls() == []
    assert h.factory.activeSessions == set()


def test_idleTimeoutClosesBothSidesAndActivityDefersIt() -> None:
    """No bytes either way for idleTimeout closes the tunnel; traffic resets it."""
    h = Harness(limits=Limits(idleTimeout=60))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    pending = h.connector.connections[0]
    outbound = pending.succeed()
    h.clock.advance(50)
    protocol.dataReceived(b"x")
    h.clock.advance(50)
    outbound.dataReceived(b"y")
    h.clock.advance(59)
    assert not transport.disconnecting
    h.clock.advance(2)
    assert transport.disconnecting and pending.transport.disconnecting
    # Whatever a stalled peer left buffered is dropped after the linger.
    h.clock.advance(h.limits.lingerTimeout + 0.1)
    assert transport.aborted and pending.transport.aborted


def test_idleTimeoutZeroMeansNever() -> None:
    """idleTimeout 0 leaves a quiet tunnel open with no timer at all."""
    h = Harness(limits=Limits(idleTimeout=0))
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    h.connector.connections[0].succeed()
    assert h.clock.getDelayedCalls() == []


def test_halfCloseFromClientReachesDestination() -> None:
    """Client FIN becomes FIN to the destination; the reply still flows back."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    pending = h.connector.connections[0]
    outbound = pending.succeed()
    protocol.dataReceived(b"request")
    protocol.readConnectionLost()
    assert pending.transport.writeClosed
    assert pending.transport.producer is None
    assert not transport.disconnecting
    outbound.dataReceived(b"response")
    assert transport.value().endswith(b"response")
    outbound.readConnectionLost()
    # Both sides are done: the close carries the FIN to the client, with no
    # half-close of its own first.
    assert transport.disconnecting and pending.transport.disconnecting


def test_halfCloseFromDestinationReachesClient() -> None:
    """Destination FIN becomes FIN to the client; the client may keep sending."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    pending = h.connector.connections[0]
    outbound = pending.succeed()
    outbound.readConnectionLost()
    assert transport.writeClosed
    assert transport.producer is None
    protocol.dataReceived(b"more")
    assert pending.transport.value() == b"more"
    assert not pending.transport.disconnecting


def test_clientFinBeforeReplyIsPassedOnAfterConnect() -> None:
    """`printf request | nc -N`: request, data and FIN all before the reply."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST) + b"data")
    protocol.readConnectionLost()
    assert not transport.disconnecting
    pending = h.connector.connections[0]
    pending.succeed()
    assert transport.value() == GRANTED
    assert pending.transport.value() == b"data"
    assert pending.transport.writeClosed


def test_destinationCloseClosesClientAfterFlushing() -> None:
    """A full close of the destination closes the client (not aborts it)."""
    h = Harness()
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    outbound = h.connector.connections[0].succeed()
    outbound.dataReceived(b"bye")
    outbound.connectionLost(Failure(ConnectionDone()))
    assert transport.disconnecting and not transport.aborted
    assert transport.producer is None


def test_drainIsBoundedWhenClientStopsReading() -> None:
    """A client that never reads the tail is aborted after the drain limit."""
    h = Harness(limits=Limits(idleTimeout=30))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    outbound = h.connector.connections[0].succeed()
    outbound.connectionLost(Failure(ConnectionDone()))
    h.clock.advance(29)
    assert not transport.aborted
    h.clock.advance(2)
    assert transport.aborted


def test_maxConnectionsRejectsTheExcessAndCountsIt() -> None:
    """
    Beyond maxConnections, with every admitted session past its request, a
    new client gets 91; the count frees on close.
    """
    h = Harness(limits=Limits(maxConnections=2))
    first, _ = h.open()
    first.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    second, _ = h.open()
    second.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    third, thirdTransport = h.open()
    third.dataReceived(b"\x04")
    assert thirdTransport.value() == REJECTED
    assert h.factory.rejectedOverLimit == 1
    lose(third)
    assert len(h.factory.activeSessions) == 2
    lose(first)
    _fourth, fourthTransport = h.open()
    assert fourthTransport.value() == b""
    assert len(h.factory.activeSessions) == 2


def test_defaultPolicyServesLoopbackOnly() -> None:
    """With no policy given, a client outside loopback is refused."""
    h = Harness()
    outsider = taddress.IPv4Address("TCP", "192.0.2.200", 5555)
    protocol, transport = h.open(outsider)
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert transport.value() == REJECTED
    assert h.connector.connections == []


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:192.0.2.1", False),
        ("10.0.0.1", False),
        ("2001:db8::1", False),
    ],
)
def test_loopbackClientsPolicy(host: str, allowed: bool) -> None:
    """The default policy: loopback (any form) yes, everything else no."""
    h = Harness(policy=LoopbackClientsPolicy())
    kind = taddress.IPv6Address if ":" in host else taddress.IPv4Address
    protocol, _transport = h.open(kind("TCP", host, 1))
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert bool(h.connector.connections) is allowed


def test_unixSocketClientIsLocal() -> None:
    """A client on a UNIX socket is local: the default policy serves it."""
    h = Harness()
    protocol, _transport = h.open(taddress.UNIXAddress(None))
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert len(h.connector.connections) == 1
    assert h.connector.connections[0].address == DEST


def test_asynchronousPolicy() -> None:
    """A policy may answer with a Deferred; the session waits for it."""
    answer: Deferred[Decision] = Deferred()

    class Later:
        def decide(self, request: AccessRequest) -> Deferred[Decision]:
            return answer

    h = Harness(policy=Later())
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert h.connector.connections == []
    answer.callback(Decision.allow("later"))
    assert len(h.connector.connections) == 1


def test_failingPolicyDenies() -> None:
    """A policy that raises, or fails its Deferred, means 91 (never allow)."""

    class Broken:
        def decide(self, request: AccessRequest) -> Deferred[Decision]:
            return fail(RuntimeError("database down"))

    class Raising:
        def decide(self, request: AccessRequest) -> Decision:
            raise RuntimeError("bug")

    for policy in (Broken(), Raising()):
        h = Harness(policy=policy)
        protocol, transport = h.open()
        with capturedLogs() as events:
            protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
        assert transport.value() == REJECTED
        assert any(e.get("log_failure") for e in events)


def test_oneEscapedLogRecordPerSession() -> None:
    """
    Each session logs exactly one record when it ends, with the client's
    text escaped so it cannot forge a log line.
    """
    h = Harness(answers={"x.example": ["192.0.2.1"]})
    protocol, _transport = h.open()
    with capturedLogs() as events:
        protocol.dataReceived(
            encodeRequest(
                Command.CONNECT, 80, hostname="x.example", userid=b"eve\r\nFAKE\x1b[31m"
            )
        )
        pending = h.connector.connections[0]
        outbound = pending.succeed()
        protocol.dataReceived(b"12345")
        outbound.dataReceived(b"abc")
        lose(protocol)
    sessions = [e for e in events if e["log_namespace"] == "twisted_socks.session"]
    assert len(sessions) == 1
    event = sessions[0]
    assert event["user"] == "eve\\x0d\\x0aFAKE\\x1b[31m"
    assert event["destination"] == "x.example:80"
    assert event["resolved"] == "192.0.2.1:80"
    assert (event["bytesUp"], event["bytesDown"], event["reply"]) == (5, 3, 90)
    assert event["client"] == "127.0.0.1:40000"
    assert h.records == [
        SessionRecord(**{k: event[k] for k in SessionRecord.__slots__})
    ]


def test_rejectedConnectionsAreLoggedToo() -> None:
    """A connection turned away still produces its one session record."""
    h = Harness(limits=Limits(maxConnections=1))
    holder, _ = h.open()
    holder.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    protocol, _ = h.open()
    protocol.dataReceived(b"\x04")
    lose(protocol)
    assert [(r.reply, r.reason) for r in h.records] == [(91, "max-connections reached")]


def test_flushThatFillsOutboundBufferKeepsClientPaused() -> None:
    """
    Flushing queued bytes into an outbound buffer that fills up pauses the
    client, and that pause is not undone by the server's own resume.
    """
    h = Harness(limits=Limits(maxPendingBytes=4))
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST) + b"pending")
    assert transport.producerState == "paused"
    pending = h.connector.connections[0]

    class FullBuffer(HalfCloseableStringTransport):
        def write(self, data: bytes) -> None:
            super().write(data)
            self.producer.pauseProducing()  # as a full FileDescriptor does

    pending.transport = FullBuffer()
    pending.succeed()
    assert pending.transport.value() == b"pending"
    assert transport.producerState == "paused"


def test_ruleActionRunsOnceForEachAddressTried() -> None:
    """
    A decision's action runs once for each address the server tries under
    it: not for the 4A name check, once for the first approved address and
    once more for the fallback (each address's own decision applies).
    """
    from twisted_socks import parseRules

    runs: list[str] = []
    rules = parseRules(
        "deny 0/0 0/0 eq 25\nallow 0/0 .example\n",
        "r.conf",
        onMatch=lambda rule, request, decision: runs.append(rule.location),
    )
    h = Harness(policy=rules, answers={"www.example": ["::1", "127.0.0.1"]})
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="www.example"))
    h.connector.connections[0].fail(ConnectionRefusedError())
    h.connector.connections[1].succeed()
    assert transport.value() == GRANTED
    assert runs == ["r.conf:2", "r.conf:2"]
    denied, deniedTransport = h.open()
    denied.dataReceived(encodeRequest(Command.CONNECT, 25, DEST))
    assert deniedTransport.value() == REJECTED
    assert runs == ["r.conf:2", "r.conf:2", "r.conf:1"]


def test_requestKeepsThePolicyItStartedWith() -> None:
    """A policy swapped (reloaded) mid-request does not judge that request."""
    from twisted_socks import parseRules

    old = parseRules("deny 0/0 127.0.0.0/8\nallow 0/0\n", "old.conf")
    new = parseRules("deny 0/0\n", "new.conf")
    h = Harness(policy=old)
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="slow.example"))
    h.factory.policy = new
    h.resolver.lookups[0].complete(["192.0.2.1"])
    assert len(h.connector.connections) == 1
    fresh, freshTransport = h.open()
    fresh.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert freshTransport.value() == REJECTED


class StubIdent:
    """An IIdentResolver answering every lookup the same way."""

    def __init__(self, answer: str | Exception | None) -> None:
        self.answer = answer
        self.calls: list[tuple[tuple[str, int], tuple[str, int]]] = []
        self.pending: list[Deferred[str]] = []

    def lookup(self, client: tuple[str, int], server: tuple[str, int]) -> Deferred[str]:
        self.calls.append((client, server))
        if isinstance(self.answer, str):
            return succeed(self.answer)
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        d: Deferred[str] = Deferred()
        self.pending.append(d)
        return d


def identHarness(
    answer: str | Exception | None, mode: IdentMode, rules: str | None = None
) -> tuple[Harness, StubIdent, list[tuple[str, object]]]:
    """A harness whose factory asks C{answer}'s identd in C{mode}."""
    from twisted_socks import parseRules

    hooks: list[tuple[str, object]] = []
    policy = None
    if rules is not None:
        policy = parseRules(
            rules,
            "r.conf",
            onMatch=lambda rule, request, decision: hooks.append(
                ("match", request.identUser)
            ),
            onIdentFailure=lambda kind, command, request: hooks.append(
                (kind.name, (command, request.identUser))
            ),
        )
    h = Harness(policy=policy)
    ident = StubIdent(answer)
    h.factory.identResolver = ident
    h.factory.identMode = mode
    return h, ident, hooks


IDENT_RULES = "#NO_IDENTD: echo no identd\n#BAD_ID: echo bad id %U\nallow 127.0.0.0/8\n"


@pytest.mark.parametrize(
    ("mode", "answer", "reply", "hook"),
    [
        (IdentMode.STRICT, "alice", GRANTED, ("match", "alice")),
        (
            IdentMode.STRICT,
            "mallory",
            b"\x00\x5d" + b"\0" * 6,
            ("BAD_ID", ("echo bad id %U", "mallory")),
        ),
        (
            IdentMode.STRICT,
            IdentUnreachable("refused"),
            b"\x00\x5c" + b"\0" * 6,
            ("NO_IDENTD", ("echo no identd", None)),
        ),
        (
            IdentMode.STRICT,
            IdentTimeout("slow"),
            b"\x00\x5c" + b"\0" * 6,
            ("NO_IDENTD", ("echo no identd", None)),
        ),
        (
            IdentMode.LENIENT,
            IdentUnreachable("refused"),
            GRANTED,
            ("NO_IDENTD", ("echo no identd", None)),
        ),
        (
            IdentMode.LENIENT,
            IdentErrorReply("HIDDEN-USER"),
            GRANTED,
            ("NO_IDENTD", ("echo no identd", None)),
        ),
        (
            IdentMode.LENIENT,
            "mallory",
            b"\x00\x5d" + b"\0" * 6,
            ("BAD_ID", ("echo bad id %U", "mallory")),
        ),
        (IdentMode.LENIENT, "alice", GRANTED, ("match", "alice")),
    ],
)
def test_identModes(
    mode: IdentMode, answer: str | Exception, reply: bytes, hook: tuple[str, object]
) -> None:
    """
    The classic sockd ident semantics: a matching user proceeds; another
    user gets 93 in both modes; no usable answer gets 92 when strict and
    proceeds when lenient; the rules file's hooks see the ident user.
    """
    h, ident, hooks = identHarness(answer, mode, IDENT_RULES)
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST, userid=b"alice"))
    if reply == GRANTED:
        h.connector.connections[0].succeed()
    else:
        assert h.connector.connections == []
    assert transport.value() == reply
    assert hooks[0] == hook
    assert ident.calls == [(("127.0.0.1", 40000), ("10.0.0.1", 12345))]
    lose(protocol)
    expected = answer if isinstance(answer, str) else None
    assert h.records[0].identUser == expected


def test_identOffMakesNoLookup() -> None:
    """With ident off (the default) nobody's identd is asked."""
    h, ident, _ = identHarness("alice", IdentMode.OFF)
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST, userid=b"bob"))
    assert ident.calls == []
    assert len(h.connector.connections) == 1


@pytest.mark.parametrize(
    ("serverMode", "rule", "looksUp"),
    [
        (IdentMode.OFF, "allow ?=I 127.0.0.0/8\n", True),
        (IdentMode.OFF, "allow ?=i 127.0.0.0/8\n", True),
        (IdentMode.STRICT, "allow ?=n 127.0.0.0/8\n", False),
        (IdentMode.STRICT, "allow 127.0.0.0/8\n", True),
    ],
)
def test_ruleIdentFieldOverridesServerMode(
    serverMode: IdentMode, rule: str, looksUp: bool
) -> None:
    """A rule's ?= decides the ident check for the requests it matches."""
    h, ident, _ = identHarness(IdentUnreachable("down"), serverMode, rule)
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert bool(ident.calls) is looksUp


def test_identLookupAbandonedWhenClientLeaves() -> None:
    """A client gone during the lookup cancels it; no connection is made."""
    h, ident, _ = identHarness(None, IdentMode.STRICT)
    protocol, _transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    [pending] = ident.pending
    lose(protocol)
    assert pending.called  # cancelled
    assert h.connector.connections == []
    assert h.clock.getDelayedCalls() == []


def test_identWithoutResolverOrForUnixClientIsNoIdentd() -> None:
    """No resolver, or a UNIX-socket client: strict mode answers 92."""
    h = Harness()
    h.factory.identMode = IdentMode.STRICT
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert transport.value() == b"\x00\x5c" + b"\0" * 6
    h2, ident, _ = identHarness("root", IdentMode.STRICT)
    unix, unixTransport = h2.open(taddress.UNIXAddress(None))
    unix.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert unixTransport.value() == b"\x00\x5c" + b"\0" * 6
    assert ident.calls == []


class RecordingMetrics:
    """Collects the events a factory reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __getattr__(self, name: str) -> object:
        return lambda **fields: self.events.append((name, fields))


def test_sessionSnapshotsFollowEachState() -> None:
    """factory.sessions() shows each live session's state, bytes and idle time."""
    h = Harness(answers={"www.example": ["192.0.2.5"]})
    first, _ = h.open()
    assert [(i.id, i.state, i.command) for i in h.factory.sessions()] == [
        (first.id, "negotiating", None)
    ]
    first.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="www.example"))
    [info] = h.factory.sessions()
    assert (info.state, info.destination, info.resolved) == (
        "connecting",
        "www.example:80",
        None,
    )
    outbound = h.connector.connections[0].succeed()
    first.dataReceived(b"12345")
    h.clock.advance(7)
    outbound.dataReceived(b"abc")
    h.clock.advance(3)
    [info] = h.factory.sessions()
    assert (info.state, info.resolved, info.bytesUp, info.bytesDown, info.idle) == (
        "relaying",
        "192.0.2.5:80",
        5,
        3,
        3.0,
    )
    binder, _ = openBind(h)
    assert [i.state for i in h.factory.sessions()] == [
        "relaying",
        "waiting for BIND peer",
    ]
    lose(first)
    lose(binder)
    assert h.factory.sessions() == []


def test_metricsEventsAreReported() -> None:
    """DNS, ident, handshake, start and end events reach the metrics object."""
    h, _ident, _ = identHarness("alice", IdentMode.STRICT)
    h.resolver.answers["www.example"] = ["192.0.2.5"]
    metrics = RecordingMetrics()
    h.factory.metrics = metrics
    protocol, _ = h.open()
    protocol.dataReceived(
        encodeRequest(Command.CONNECT, 80, hostname="www.example", userid=b"alice")
    )
    h.clock.advance(0.25)
    h.connector.connections[0].succeed()
    lose(protocol)
    names = [name for name, _ in metrics.events]
    assert names == [
        "sessionStarted",
        "dnsLookup",
        "identLookup",
        "handshake",
        "sessionEnded",
    ]
    fields = dict(metrics.events)
    assert fields["dnsLookup"] == {"ok": True}
    assert fields["identLookup"] == {"outcome": "match"}
    assert fields["handshake"] == {"seconds": 0.25}


def test_maxConnectionsPerClient() -> None:
    """One address may hold N connections; others are unaffected; counts free."""
    h = Harness(limits=Limits(maxConnectionsPerClient=2))
    first, _ = h.open()
    h.open()
    thirdSession, third = h.open()
    thirdSession.dataReceived(b"\x04")
    assert third.value() == REJECTED
    lose(thirdSession)
    _, other = h.open(taddress.IPv4Address("TCP", "127.0.0.2", 1))
    assert other.value() == b""
    lose(first)
    _, again = h.open()
    assert again.value() == b""
    assert h.factory.connectionsByClient == {"127.0.0.1": 2, "127.0.0.2": 1}
    for session in list(h.factory.activeSessions):
        lose(session)
    assert h.factory.connectionsByClient == {}
    assert h.records[-1].reason == "client closed"
    assert any(r.reason == "max-connections-per-client reached" for r in h.records)


def test_connectionRatePerClient() -> None:
    """N new connections per window from one address; the window slides."""
    h = Harness(limits=Limits(ratePerClient=3, rateWindow=10))
    for _ in range(3):
        protocol, transport = h.open()
        assert transport.value() == b""
        lose(protocol)
    fourthSession, fourth = h.open()
    fourthSession.dataReceived(b"\x04")
    assert fourth.value() == REJECTED
    _, other = h.open(taddress.IPv4Address("TCP", "127.0.0.9", 1))
    assert other.value() == b""
    h.clock.advance(10.1)
    _, later = h.open()
    assert later.value() == b""
    assert set(h.factory.admission.rateTracked()) <= {"127.0.0.1", "127.0.0.9"}
    h.clock.advance(30)
    h.open(taddress.IPv4Address("TCP", "127.0.0.10", 1))
    assert (
        "127.0.0.1" not in h.factory.admission.rateTracked()
        or len(h.factory.admission.rateTracked()) <= 3
    )


def test_endedRelayLeavesNoTimer() -> None:
    """
    A tunnel ending with both sides closed leaves no pending call behind
    (each one used to keep its whole session alive for the idle timeout).
    """
    from twisted.internet.testing import StringTransportWithDisconnection

    h = Harness()
    protocol = h.factory.buildProtocol(CLIENT)
    transport = StringTransportWithDisconnection(peerAddress=CLIENT)
    transport.protocol = protocol
    transport.loseWriteConnection = lambda: None  # type: ignore[method-assign]
    protocol.makeConnection(transport)
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    pending = h.connector.connections[0]
    outbound = pending.succeed()
    protocol.readConnectionLost()
    outbound.readConnectionLost()  # both closed: the client closes at once
    outbound.connectionLost(Failure(ConnectionDone()))
    assert h.clock.getDelayedCalls() == []
    assert h.factory.activeSessions == set()


@pytest.mark.parametrize("answer", ["0.0.0.0", "::"])
def test_nameResolvingToUnspecifiedAddressIsRefused(answer: str) -> None:
    """'0' or '0.0.0.0' as a 4A name reach the local host on Linux: 91."""
    h = Harness(policy=RecordingPolicy(), answers={"0": [answer]})
    protocol, transport = h.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, hostname="0"))
    assert transport.value() == REJECTED
    assert h.connector.connections == []


def test_queuedLookupsAnsweredFromTheCacheDrainWithoutRecursion() -> None:
    """
    Five hundred SOCKS4A requests for one name from one client (behind a
    NAT), queued behind the per-client lookup cap: once the first lookup
    answers, the queued ones are answered from the name cache one after
    another, not each inside the previous one's completion (which
    overflowed Python's stack at about 170 and left a lookup slot taken for
    good); every session connects, and no slot or queue entry is left.
    """
    h = Harness(limits=Limits(maxConnections=1000))
    inner = h.resolver
    h.factory.nameResolver = CachingHostnameResolver(inner, h.clock)
    cap = h.limits.maxLookupsPerClient
    for _ in range(500):
        protocol, _ = h.open()
        protocol.dataReceived(
            encodeRequest(Command.CONNECT, 443, hostname="busy.example")
        )
    assert len(inner.lookups) == cap
    inner.lookups[0].complete(["192.0.2.5"])
    assert len(h.connector.connections) == 500 - (cap - 1)
    assert not h.factory.admission.lookups.waitingTotal
    for lookup in inner.lookups[1:]:
        lookup.complete(["192.0.2.5"])
    assert len(h.connector.connections) == 500
    assert len(inner.lookups) == cap
    assert not h.factory.lookupsByClient
