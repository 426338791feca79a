"""
The UDP ASSOCIATE request in the server's session, on a memory reactor with
fake UDP ports and a clock: the association is judged with no destination,
its grant names the relay (or C{--udp-address}), refusals are well-formed
10-byte replies then a close, the per-client cap, the idle timeout, the end
with the TCP connection, and the record's counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from prometheus_client import generate_latest
from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from zope.interface import implementer

from tests.test_socks5server import CLIENT, NOAUTH, Server, close, failure5
from twisted_socks import Decision, Limits, SessionRecord, SOCKSv4ServerFactory
from twisted_socks.app import _workerstatus
from twisted_socks.app._metrics import ServerMetrics
from twisted_socks.app._workers import WorkerState
from twisted_socks.interfaces import IAccessPolicy
from twisted_socks.policy._actions import contextFor
from twisted_socks.policy._policy import AccessRequest
from twisted_socks.policy._rules import parseRules
from twisted_socks.server._records import recordFields, summaryLine
from twisted_socks.server._sniff import SOCKSServerProtocol
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
)
from twisted_socks.wire._request import Command, UserSource
from twisted_socks.wire._socks5 import Command5, encodeReply5, encodeRequest5
from twisted_socks.wire._socks5udp import encodeDatagram

ASSOCIATE = encodeRequest5(Command5.UDP_ASSOCIATE, 0)
#: Where the session's TCP connection arrived (the fake transport's host).
LOCAL = taddress.IPv4Address("TCP", "127.0.0.1", 1080)


class FakeUDPPort:
    """What L{UDPReactor.listenUDP} returns: records writes, can stop."""

    def __init__(self, protocol: Any, interface: str, port: int) -> None:
        self.protocol = protocol
        self.interface = interface
        self.port = port
        self.written: list[tuple[bytes, Any]] = []
        self.stopped = False

    def getHost(self) -> taddress.IPv4Address | taddress.IPv6Address:
        """The fake bound address."""
        if ":" in self.interface:
            return taddress.IPv6Address("UDP", self.interface, self.port)
        return taddress.IPv4Address("UDP", self.interface, self.port)

    def write(self, data: bytes, addr: Any) -> None:
        """Keep what would be sent."""
        self.written.append((data, addr))

    def stopListening(self) -> None:
        """Note the close."""
        self.stopped = True


@implementer(IReactorUDP)
class UDPReactor(MemoryReactorClock):
    """A memory reactor whose C{listenUDP} hands out L{FakeUDPPort}s."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[FakeUDPPort] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        """A fake port numbered from 40000 up."""
        fake = FakeUDPPort(protocol, interface, 40000 + len(self.udp))
        self.udp.append(fake)
        return fake


@implementer(IAccessPolicy)
class AssociationPolicy:
    """
    Allows the association if C{associate}; allows destinations but those
    on C{deniedPort} or at C{deniedAddress}; records what it was asked.
    """

    def __init__(
        self, associate: bool = True, deniedPort: int = 9, deniedAddress: str = ""
    ) -> None:
        self.associate = associate
        self.deniedPort = deniedPort
        self.deniedAddress = deniedAddress
        self.requests: list[AccessRequest] = []

    def decide(self, request: AccessRequest) -> Decision:
        """The fixed answers."""
        self.requests.append(request)
        if request.isAssociation:
            ok = self.associate
        else:
            ok = request.port != self.deniedPort and (
                str(request.address) != self.deniedAddress
            )
        return Decision(ok, "test", "test rule")


class UDPServer:
    """A server factory on a L{UDPReactor}, and a helper to open sessions."""

    def __init__(self, policy: IAccessPolicy | None = None, **kwargs: Any) -> None:
        self.clock = UDPReactor()
        self.policy: Any = policy if policy is not None else AssociationPolicy()
        self.records: list[SessionRecord] = []
        self.resolver = FakeHostnameResolver(
            {"two.test": ["192.0.2.8", "192.0.2.9"], "bad.test": ["192.0.2.8"]}
        )
        self.factory = SOCKSv4ServerFactory(
            self.clock,
            policy=self.policy,
            connector=FakeConnector(),
            nameResolver=self.resolver,
            sessionObserver=self.records.append,
            **kwargs,
        )

    def open(
        self, peer: taddress.IPv4Address | taddress.IPv6Address = CLIENT
    ) -> tuple[SOCKSServerProtocol, HalfCloseableStringTransport]:
        """
        Accept one client connection from C{peer}, arriving on the loopback
        address of its family, port 1080.
        """
        local: object = (
            LOCAL
            if isinstance(peer, taddress.IPv4Address)
            else taddress.IPv6Address("TCP", "::1", 1080)
        )
        protocol: Any = self.factory.buildProtocol(peer)
        transport = HalfCloseableStringTransport(hostAddress=local, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport


def granted(host: str, port: int) -> bytes:
    """The method choice and the grant naming C{host:port}."""
    address: IPv4Address | IPv6Address = (
        IPv6Address(host) if ":" in host else IPv4Address(host)
    )
    return b"\x05\x00" + encodeReply5(0, port, address)


def test_associationIsJudgedWithoutDestination() -> None:
    """
    The policy is asked about the association itself: UDP ASSOCIATE, no
    name, no address, port 0, the client's address, user source NONE.
    """
    s = UDPServer()
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    [asked] = s.policy.requests
    assert asked.isAssociation
    assert (asked.command, asked.port, asked.client) == (
        Command.UDP_ASSOCIATE,
        0,
        IPv4Address("127.0.0.1"),
    )
    assert (asked.userSource, asked.version) == (UserSource.NONE, 5)


def test_grantNamesTheRelaySocketOnTheReachedAddress() -> None:
    """
    The relay socket listens on the address the client reached, and the
    grant names it and its port; the session stays open.
    """
    s = UDPServer()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    [relay] = s.clock.udp
    assert relay.interface == "127.0.0.1"
    assert transport.value() == granted("127.0.0.1", relay.port)
    assert not transport.disconnecting


def test_ipv6ClientGetsAnIPv6Relay() -> None:
    """An IPv6 client (reaching ::1) gets a relay socket on ::1."""
    s = UDPServer()
    peer = taddress.IPv6Address("TCP", "::1", 40000)
    protocol, transport = s.open(peer)
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    [relay] = s.clock.udp
    assert relay.interface == "::1"
    assert transport.value() == granted("::1", relay.port)


def test_udpAddressIsAnnounced() -> None:
    """With C{udpAddress} (C{--udp-address}), the grant names it instead."""
    s = UDPServer(udpAddress="203.0.113.5")
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    [relay] = s.clock.udp
    assert relay.interface == "127.0.0.1"
    assert transport.value() == granted("203.0.113.5", relay.port)


def test_deniedAssociationIsReply02ThenClose() -> None:
    """A denied association is a 10-byte REP 02, then a close; no socket."""
    s = UDPServer(policy=AssociationPolicy(associate=False))
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value() == b"\x05\x00" + failure5(2)
    assert s.clock.udp == []
    close(protocol)
    [record] = s.records
    assert (record.command, record.reply, record.rule) == (
        "udp",
        2,
        "test rule",
    )


def test_perClientCapRefusesTheNextAssociation() -> None:
    """
    At C{maxUDPPerClient} associations, the next one is refused with REP 02;
    when one ends, its slot is free again.
    """
    s = UDPServer(limits=Limits(maxUDPPerClient=1))
    first, _ = s.open()
    first.dataReceived(NOAUTH + ASSOCIATE)
    second, transport = s.open(taddress.IPv4Address("TCP", "127.0.0.1", 40001))
    second.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value() == b"\x05\x00" + failure5(2)
    close(second)
    [refused] = s.records
    assert (refused.reason, refused.udp) == ("max-udp-per-client reached", None)
    close(first)
    assert s.clock.udp[0].stopped
    third, transport = s.open(taddress.IPv4Address("TCP", "127.0.0.1", 40002))
    third.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value()[:3] == b"\x05\x00\x05"
    assert transport.value()[3:5] == b"\x00\x00"


def test_idleTimeoutEndsTheAssociation() -> None:
    """
    With no datagram for C{udpIdleTimeout} seconds the association ends:
    its socket closes and so does the TCP connection; a datagram before
    then pushes the deadline back (and the live table's idle time).
    """
    s = UDPServer(limits=Limits(udpIdleTimeout=60))
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    [relay] = s.clock.udp
    s.clock.advance(50)
    relay.protocol.datagramReceived(
        encodeDatagram(b"x", 53, IPv4Address("192.0.2.1")), ("127.0.0.1", 5000)
    )
    s.clock.advance(50)
    assert not relay.stopped
    assert s.factory.sessions()[0].idle == 50  # since the datagram
    s.clock.advance(11)
    assert relay.stopped
    assert transport.writeClosed or transport.disconnecting
    close(protocol)
    [record] = s.records
    assert record.reason == "idle timeout (UDP association)"
    assert record.udp is not None and record.udp.datagramsUp == 1


def test_tcpEOFEndsTheAssociation() -> None:
    """The client's FIN on the TCP connection ends the association."""
    s = UDPServer()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    protocol.readConnectionLost()
    [relay] = s.clock.udp
    assert relay.stopped
    assert transport.disconnecting
    assert s.factory.admission.udpByClient == {}


def test_bytesOnTheTCPConnectionAreDiscarded() -> None:
    """What the client sends on the TCP connection after the grant is dropped."""
    s = UDPServer()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    reply = transport.value()
    protocol.dataReceived(b"stray bytes" * 10000)
    assert transport.value() == reply
    assert not transport.disconnecting
    assert s.factory.sessions()[0].state == "udp association"


def test_datagramsCountedInRecordLogLineAndJSON() -> None:
    """
    The record counts datagrams and payload bytes each way, fragments,
    denied and other drops; the log line and the JSON fields carry them.
    """
    s = UDPServer()
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    relay = s.clock.udp[0]
    client = ("127.0.0.1", 5000)
    to = IPv4Address("192.0.2.1")
    relay.protocol.datagramReceived(encodeDatagram(b"abc", 53, to), client)
    relay.protocol.datagramReceived(encodeDatagram(b"abc", 9, to), client)
    relay.protocol.datagramReceived(encodeDatagram(b"ab", 53, to, fragment=1), client)
    relay.protocol.datagramReceived(b"\x00\x00", client)
    outbound = s.clock.udp[1]
    assert outbound.written == [(b"abc", ("192.0.2.1", 53))]
    outbound.protocol.datagramReceived(b"hello", ("192.0.2.1", 53))
    outbound.protocol.datagramReceived(b"nope", ("192.0.2.1", 54))
    assert relay.written == [(encodeDatagram(b"hello", 53, to), client)]
    info = s.factory.sessions()[0]
    assert (info.bytesUp, info.bytesDown) == (3, 5)
    close(protocol)
    [record] = s.records
    assert (record.bytesUp, record.bytesDown) == (3, 5)
    assert record.udp is not None
    assert (
        record.udp.datagramsUp,
        record.udp.datagramsDown,
        record.udp.fragments,
        record.udp.denied,
        record.udp.dropped,
    ) == (1, 1, 1, 1, 2)
    assert summaryLine(record).endswith(
        "datagrams-up=1 datagrams-down=1 fragments=1 denied=1 dropped=2"
    )
    assert recordFields(record)["udp"] == {
        "datagramsUp": 1,
        "datagramsDown": 1,
        "fragments": 1,
        "denied": 1,
        "dropped": 2,
    }


def test_tcpRecordSaysNothingOfUDP() -> None:
    """A TCP session's record says nothing of UDP: C{udp} is L{None}."""
    s = Server()
    protocol, _ = s.open()
    protocol.dataReceived(
        NOAUTH + encodeRequest5(Command5.CONNECT, 80, IPv4Address("192.0.2.1"))
    )
    close(protocol)
    [record] = s.records
    assert record.udp is None
    assert recordFields(record)["udp"] is None
    assert "datagrams" not in summaryLine(record)


def test_metricsCountDatagramsLiveAndEnded() -> None:
    """
    C{/metrics} counts UDP datagrams (relayed each way, and each kind of
    drop) and payload bytes, live associations included, and the same
    once they have ended.
    """
    metrics = ServerMetrics()
    s = UDPServer(metrics=metrics)
    metrics.watch(s.factory)
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    relay = s.clock.udp[0]
    client = ("127.0.0.1", 5000)
    to = IPv4Address("192.0.2.1")
    relay.protocol.datagramReceived(encodeDatagram(b"abcd", 53, to), client)
    relay.protocol.datagramReceived(encodeDatagram(b"x", 9, to), client)
    relay.protocol.datagramReceived(encodeDatagram(b"x", 53, to, fragment=2), client)
    s.clock.udp[1].protocol.datagramReceived(b"hi", ("192.0.2.1", 53))
    expected = {
        "up": 1,
        "down": 1,
        "fragment": 1,
        "denied": 1,
        "dropped": 0,
        "bytesUp": 4,
        "bytesDown": 2,
    }
    assert metrics.udpRelayed(s.factory.sessions()) == expected
    close(protocol)
    assert s.factory.sessions() == []
    assert metrics.udpRelayed([]) == expected
    text = generate_latest(metrics.registry).decode()
    assert 'socks_udp_datagrams_total{what="fragment"} 1.0' in text
    assert 'socks_udp_bytes_total{direction="up"} 4.0' in text


def clientDatagram(s: UDPServer, payload: bytes, name: str, port: int = 53) -> None:
    """The client (127.0.0.1:5000) sends C{payload} to C{name}."""
    datagram = encodeDatagram(payload, port, name=name)
    s.clock.udp[0].protocol.datagramReceived(datagram, ("127.0.0.1", 5000))


def test_nameGoesToAnApprovedAddressOnly() -> None:
    """
    A name's every address is judged: datagrams go to the first approved
    one (not the denied first answer); a name whose only address is denied
    counts its datagrams as denied, and is not looked up again.
    """
    s = UDPServer(policy=AssociationPolicy(deniedAddress="192.0.2.8"))
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    clientDatagram(s, b"a", "two.test")
    clientDatagram(s, b"b", "bad.test")
    clientDatagram(s, b"c", "BAD.test")
    assert s.clock.udp[1].written == [(b"a", ("192.0.2.9", 53))]
    assert [r.name for r in s.resolver.lookups] == ["two.test", "bad.test"]
    close(protocol)
    [record] = s.records
    assert record.udp is not None and record.udp.denied == 2


def test_datagramsWaitBoundedlyForTheLookup() -> None:
    """
    While a name is being looked up, its datagrams wait (8 at most; the
    rest are dropped and counted), then all go, in order, to its address.
    A name that does not resolve drops what waited, and is tried again.
    """
    s = UDPServer()
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    for i in range(10):
        clientDatagram(s, bytes([i]), "slow.test")
    [lookup] = s.resolver.lookups
    assert len(s.clock.udp) == 1  # nothing sent yet
    lookup.complete(["192.0.2.5"])
    sent = s.clock.udp[1].written
    assert sent == [(bytes([i]), ("192.0.2.5", 53)) for i in range(8)]
    clientDatagram(s, b"x", "nowhere.test")
    s.resolver.lookups[-1].complete([])
    clientDatagram(s, b"y", "nowhere.test")
    assert [r.name for r in s.resolver.lookups][-2:] == ["nowhere.test"] * 2
    close(protocol)
    [record] = s.records
    assert record.udp is not None
    assert (record.udp.datagramsUp, record.udp.dropped) == (8, 3)


def test_ipv4MappedDestinationIsTheIPv4Address() -> None:
    """
    A datagram to C{::ffff:192.0.2.1} is judged and sent as one to
    192.0.2.1 (an IPv4 rule cannot be dodged); to C{::ffff:0.0.0.0} it is
    dropped, unjudged.
    """
    s = UDPServer()
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    client = ("127.0.0.1", 5000)
    relay = s.clock.udp[0].protocol
    relay.datagramReceived(
        encodeDatagram(b"m", 53, IPv6Address("::ffff:192.0.2.1")), client
    )
    relay.datagramReceived(
        encodeDatagram(b"z", 53, IPv6Address("::ffff:0.0.0.0")), client
    )
    [asked] = [r for r in s.policy.requests if not r.isAssociation]
    assert asked.address == IPv4Address("192.0.2.1")
    outbound = s.clock.udp[1]
    assert (outbound.interface, outbound.written) == (
        "0.0.0.0",
        [(b"m", ("192.0.2.1", 53))],
    )
    close(protocol)
    [record] = s.records
    assert record.udp is not None and record.udp.dropped == 1


def test_clientOnAUnixSocketIsRefused() -> None:
    """
    A client on a UNIX socket has no address its datagrams could come
    from: REP 07 and a close, no UDP socket.
    """
    s = UDPServer()
    protocol: Any = s.factory.buildProtocol(None)
    transport = HalfCloseableStringTransport(
        hostAddress=taddress.UNIXAddress("/tmp/s.sock"),
        peerAddress=taddress.UNIXAddress(None),
    )
    protocol.makeConnection(transport)
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value() == b"\x05\x00" + failure5(7)
    assert s.clock.udp == []


@implementer(IAccessPolicy)
class LaterPolicy:
    """
    Allows the association at once; answers about destinations later
    (the test fires C{pending}), or raises for port 13.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[Decision]] = []

    def decide(self, request: AccessRequest) -> Decision | Deferred[Decision]:
        """At once for the association; later, or an error, for the rest."""
        if request.isAssociation:
            return Decision(True, "test", "test rule")
        if request.port == 13:
            raise RuntimeError("broken policy")
        d: Deferred[Decision] = Deferred()
        self.pending.append(d)
        return d


def test_policyAnsweringLaterOrFailing() -> None:
    """
    A policy that answers later: datagrams wait for it, then go; one that
    raises: the datagram is dropped, the failure logged, and the next
    datagram to that destination asks again.
    """
    policy = LaterPolicy()
    s = UDPServer(policy=policy)
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    relay = s.clock.udp[0].protocol
    client = ("127.0.0.1", 5000)
    to = IPv4Address("192.0.2.1")
    relay.datagramReceived(encodeDatagram(b"1", 53, to), client)
    relay.datagramReceived(encodeDatagram(b"2", 53, to), client)
    assert len(s.clock.udp) == 1
    [later] = policy.pending
    later.callback(Decision(True, "later", "later rule"))
    assert s.clock.udp[1].written == [
        (b"1", ("192.0.2.1", 53)),
        (b"2", ("192.0.2.1", 53)),
    ]
    with capturedLogs() as events:
        relay.datagramReceived(encodeDatagram(b"x", 13, to), client)
        relay.datagramReceived(encodeDatagram(b"y", 13, to), client)
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    close(protocol)
    [record] = s.records
    assert record.udp is not None
    assert (record.udp.datagramsUp, record.udp.dropped) == (2, 2)


def test_workersSnapshotCarriesTheUDPCounts() -> None:
    """
    A worker's UDP session, through its JSON snapshot, is the same
    L{SessionInfo} in the parent's C{/sessions} (its counts a L{UDPStats}).
    """
    s = UDPServer()
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    s.clock.udp[0].protocol.datagramReceived(
        encodeDatagram(b"abc", 53, IPv4Address("192.0.2.1")), ("127.0.0.1", 5000)
    )
    [info] = s.factory.sessions()
    snapshot = json.loads(json.dumps({"sessions": [asdict(info)]}))
    states = [WorkerState(1, 100, 0, snapshot=snapshot)]
    [(worker, parsed)] = _workerstatus._sessions(states)
    assert (worker, parsed) == (1, info)
    assert parsed.udp is not None and parsed.udp.datagramsUp == 1


def test_udpIsTheCommandWordEverywhere() -> None:
    """
    An association's command is C{udp} wherever an operator reads it: the
    live table, the record, its log line and JSON fields, C{/metrics}'
    C{command} label, a rule command's C{%c}; and C{cmd=udp} is the
    rules' word for it.
    """
    metrics = ServerMetrics()
    s = UDPServer(metrics=metrics)
    metrics.watch(s.factory)
    protocol, _ = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    assert s.factory.sessions()[0].command == "udp"
    close(protocol)
    [record] = s.records
    assert record.command == "udp"
    assert " udp 0.0.0.0:0 " in summaryLine(record)
    assert json.loads(json.dumps(recordFields(record)))["command"] == "udp"
    assert 'command="udp"' in generate_latest(metrics.registry).decode()
    [asked] = s.policy.requests
    assert contextFor(asked).command == "udp"
    [rule] = parseRules("permit cmd=udp 0/0 0/0\n").rules
    assert rule.commands == frozenset([Command.UDP_ASSOCIATE])
