"""
The SOCKS5 front end of the server, in memory: the first-byte dispatch,
the greeting, username/password, the request, the replies and the record.
No sockets, a fake clock (real clients are in tests/test_socks5serverinterop.py).
"""

from __future__ import annotations

import errno
import gc
from ipaddress import IPv4Address, IPv6Address

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, NoRouteError
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
from twisted_socks.server import _socks5
from twisted_socks.server._authfailures import AuthFailureLimit, AuthFailures
from twisted_socks.server._sniff import SOCKSServerProtocol
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
    RecordingPolicy,
)
from twisted_socks.wire._outcome import Outcome
from twisted_socks.wire._request import UserSource
from twisted_socks.wire._socks5 import Command5, encodeReply5, encodeRequest5
from twisted_socks.wire._userpass import encodeAuthRequest

CLIENT = taddress.IPv4Address("TCP", "127.0.0.1", 40000)
DEST = IPv4Address("192.0.2.10")
NOAUTH = b"\x05\x01\x00"
PASSWORD = b"\x05\x01\x02"
CONNECT = encodeRequest5(Command5.CONNECT, 80, DEST)
#: The grant of a CONNECT, naming the fake outbound socket's local address.
GRANTED5 = encodeReply5(0, 12345, IPv4Address("10.0.0.1"))


def failure5(code: int) -> bytes:
    """The 10-byte failure reply with REP C{code}."""
    return bytes([5, code, 0, 1]) + b"\0" * 6


class Server:
    """A server factory wired to fakes, and a helper to open sessions."""

    def __init__(self, **kwargs: object) -> None:
        self.clock = MemoryReactorClock()
        self.connector = FakeConnector()
        self.policy = RecordingPolicy()
        self.records: list[SessionRecord] = []
        self.factory = SOCKSv4ServerFactory(
            self.clock,
            policy=self.policy,
            connector=self.connector,
            nameResolver=FakeHostnameResolver({"example.com": ["192.0.2.20"]}),
            sessionObserver=self.records.append,
            **kwargs,  # type: ignore[arg-type]
        )

    def open(
        self, peer: object = CLIENT
    ) -> tuple[SOCKSServerProtocol, HalfCloseableStringTransport]:
        """Accept one client connection from C{peer}."""
        protocol = self.factory.buildProtocol(peer)  # type: ignore[arg-type]
        transport = HalfCloseableStringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport  # type: ignore[return-value]


def users() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A checker that knows ann, whose password is C{p:@%}."""
    return InMemoryUsernamePasswordDatabaseDontUse(ann=b"p:@%")


def close(protocol: SOCKSServerProtocol) -> None:
    """Deliver a clean connection close to C{protocol}."""
    protocol.connectionLost(Failure(ConnectionDone()))


def test_connectWithoutAuthentication() -> None:
    """
    Without users: greeting answered C{05 00}; the request reaches the
    policy as version 5 with no user; the grant comes only once connected
    and names the outbound socket's local address; pipelined data follows.
    """
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT + b"early")
    assert transport.value() == b"\x05\x00"
    [asked] = s.policy.requests
    assert (asked.command, asked.address, asked.port, asked.user) == (
        Command.CONNECT,
        DEST,
        80,
        "",
    )
    assert protocol.request is not None
    assert protocol.request.version == 5
    assert protocol.request.userSource is UserSource.NONE
    [pending] = s.connector.connections
    pending.succeed()
    assert transport.value() == b"\x05\x00" + GRANTED5
    assert pending.transport.value() == b"early"
    assert protocol.state is SessionState.RELAYING


def test_connectGrantNamesAnIPv6LocalAddress() -> None:
    """An outbound socket on IPv6 is named with ATYP 4."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT)
    [pending] = s.connector.connections
    pending.transport = HalfCloseableStringTransport(
        hostAddress=taddress.IPv6Address("TCP", "::1", 5555)
    )
    pending.succeed()
    assert transport.value() == b"\x05\x00" + encodeReply5(0, 5555, IPv6Address("::1"))


def test_grantsNameEachSessionsOwnAddressAndPort() -> None:
    """
    The grant's head (all but the port) is made once per local address,
    but each session's reply names its own outbound address and port:
    sessions on two addresses, two ports on one, an IPv4-mapped address
    (named as the IPv4 address it maps) and IPv6 each get exactly the
    reply the encoder makes for them, again when asked a second time.
    """
    hosts = [
        (taddress.IPv4Address("TCP", "10.0.0.1", 1), IPv4Address("10.0.0.1")),
        (taddress.IPv4Address("TCP", "10.0.0.1", 65535), IPv4Address("10.0.0.1")),
        (taddress.IPv4Address("TCP", "10.0.0.2", 80), IPv4Address("10.0.0.2")),
        (
            taddress.IPv6Address("TCP", "::ffff:10.0.0.3", 81),
            IPv4Address("10.0.0.3"),
        ),
        (taddress.IPv6Address("TCP", "fe80::1%lo", 82), IPv6Address("fe80::1")),
    ]
    s = Server()
    for host, named in hosts * 2:
        protocol, transport = s.open()
        protocol.dataReceived(NOAUTH + CONNECT)
        pending = s.connector.connections[-1]
        pending.transport = HalfCloseableStringTransport(hostAddress=host)
        pending.succeed()
        assert transport.value() == b"\x05\x00" + encodeReply5(0, host.port, named)


def test_replyHeadsAreBounded() -> None:
    """
    Replies naming more local addresses than the heads kept are still
    right, and the heads kept stop at their bound (a host whose addresses
    keep changing does not grow the server's memory).
    """
    replies = _socks5._SOCKS5Replies()
    for i in range(_socks5._MAX_HEADS + 10):
        address = IPv4Address("10.1.0.0") + i
        assert replies.reply(Outcome.GRANTED, str(address), 1080) == encodeReply5(
            0, 1080, address
        )
    assert len(replies._heads) == _socks5._MAX_HEADS


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_pipelinedBytesInAnySegmentingKeptInOrder(chunk: int) -> None:
    """Greeting, auth, request and data split at any byte arrive in order."""
    s = Server(credentialsChecker=users())
    protocol, transport = s.open()
    stream = PASSWORD + encodeAuthRequest(b"ann", b"p:@%") + CONNECT + b"data!"
    for i in range(0, len(stream), chunk):
        protocol.dataReceived(stream[i : i + chunk])
    assert transport.value() == b"\x05\x02\x01\x00"
    [pending] = s.connector.connections
    pending.succeed()
    assert pending.transport.value() == b"data!"
    [asked] = s.policy.requests
    assert asked.user == "ann"


def test_hostnameIsResolvedByTheServer() -> None:
    """ATYP 3: the name is judged, resolved, and each address judged."""
    s = Server()
    protocol, _transport = s.open()
    protocol.dataReceived(
        NOAUTH + encodeRequest5(Command5.CONNECT, 443, name="example.com")
    )
    [pending] = s.connector.connections
    assert (str(pending.address), pending.port) == ("192.0.2.20", 443)
    assert [r.hostname for r in s.policy.requests] == ["example.com", "example.com"]


def test_ipv6DestinationIsConnected() -> None:
    """ATYP 4: an IPv6 destination is judged and connected to."""
    s = Server()
    protocol, _transport = s.open()
    protocol.dataReceived(
        NOAUTH + encodeRequest5(Command5.CONNECT, 80, IPv6Address("2001:db8::1"))
    )
    [pending] = s.connector.connections
    assert pending.address == IPv6Address("2001:db8::1")


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (ConnectionRefusedError(), 5),
        # Loopback is always reachable: these two exist only in memory.
        (NoRouteError(osError=errno.ENETUNREACH), 3),
        (NoRouteError(osError=errno.EHOSTUNREACH), 4),
        (Exception("boom"), 1),
    ],
)
def test_connectFailureIsAWellFormedReply(failure: Exception, code: int) -> None:
    """A failed connect: a 10-byte reply per replyFor5, then FIN."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT)
    s.connector.connections[0].fail(failure)
    assert transport.value() == b"\x05\x00" + failure5(code)
    assert transport.writeClosed
    close(protocol)
    [record] = s.records
    assert (record.version, record.auth, record.reply) == (5, "none", code)


def test_deniedIsNotAllowed() -> None:
    """A policy denial is REP 02."""
    s = Server()
    s.policy.allowed = False
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT)
    assert transport.value() == b"\x05\x00" + failure5(2)
    assert s.connector.connections == []


def test_connectTimeoutIsTTLExpired() -> None:
    """A connect that takes too long is REP 06."""
    s = Server(limits=Limits(connectTimeout=5))
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT)
    s.clock.advance(5)
    assert transport.value() == b"\x05\x00" + failure5(6)


def test_udpAssociateWithoutUDPReactorIsNotSupported() -> None:
    """
    UDP ASSOCIATE on a reactor without C{listenUDP} is answered 07 (the
    relay itself is tested in test_udpsession and test_udprelay).
    """
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + encodeRequest5(Command5.UDP_ASSOCIATE, 0))
    assert transport.value() == b"\x05\x00" + failure5(7)


@pytest.mark.parametrize(
    ("request5", "code"),
    [
        (b"\x05\x09\x00\x01" + b"\0" * 6, 7),  # unknown command
        (b"\x05\x01\x00\x02", 8),  # unknown address type
        (b"\x05\x01\x01\x01", 1),  # RSV not 0
        (b"\x05\x01\x00\x03\x00", 1),  # empty name
    ],
)
def test_malformedRequestGetsItsReply(request5: bytes, code: int) -> None:
    """A malformed request is answered with its REP and closed."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + request5)
    assert transport.value() == b"\x05\x00" + failure5(code)
    assert transport.writeClosed
    assert s.connector.connections == []


def test_bindRepliesTwiceWithRealAddresses() -> None:
    """BIND: the listener's address, then the peer's, then the relay."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + encodeRequest5(Command5.BIND, 21, DEST))
    [listener] = s.connector.listeners
    first = encodeReply5(0, listener.port, IPv4Address(listener.interface))
    assert transport.value() == b"\x05\x00" + first
    listener.connectFrom(str(DEST), 2020)
    assert transport.value() == b"\x05\x00" + first + encodeReply5(0, 2020, DEST)
    assert protocol.state is SessionState.RELAYING


def test_notSOCKSIsClosedSilently() -> None:
    """A first byte that is neither 04 nor 05 closes, as not SOCKS."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(b"G")
    protocol.dataReceived(b"ET / HTTP/1.0\r\n\r\n")
    assert transport.value() == b""
    assert transport.writeClosed
    close(protocol)
    [record] = s.records
    assert record.reason == "not SOCKS: first byte 0x47"
    assert record.version is None


def test_socks4StillServedAndRecorded() -> None:
    """The first byte 04 takes the SOCKS4 front end: reply 90, version 4."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST)[:1])
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST)[1:])
    s.connector.connections[0].succeed()
    assert transport.value() == b"\x00\x5a" + b"\0" * 6
    close(protocol)
    [record] = s.records
    assert (record.version, record.auth) == (4, None)


def test_socks5DisabledGetsNoAcceptableMethod() -> None:
    """With SOCKS5 turned off, a SOCKS5 client gets C{05 FF} and a close."""
    s = Server(protocols=frozenset({4}))
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + CONNECT)
    assert transport.value() == b"\x05\xff"
    assert transport.writeClosed
    assert s.policy.requests == []


def test_socks4DisabledGets91() -> None:
    """With SOCKS4 turned off, a SOCKS4 client gets 91 and a close."""
    s = Server(protocols=frozenset({5}))
    protocol, transport = s.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST))
    assert transport.value() == b"\x00\x5b" + b"\0" * 6
    assert transport.writeClosed


def test_noProtocolsIsAnError() -> None:
    """A server that speaks no version is a mistake, said at once."""
    with pytest.raises(ValueError, match="protocols"):
        SOCKSv4ServerFactory(MemoryReactorClock(), protocols=frozenset())


def test_methodNotOfferedGetsNoAcceptableMethod() -> None:
    """Without users, a client offering only 02 gets C{05 FF}."""
    s = Server()
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD)
    assert transport.value() == b"\x05\xff"
    assert transport.writeClosed


def test_usersRequireUsernamePassword() -> None:
    """With users, a client offering only 00 gets C{05 FF}."""
    s = Server(credentialsChecker=users())
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH)
    assert transport.value() == b"\x05\xff"
    assert transport.writeClosed


def test_authenticatedUserReachesThePolicyAndRecord() -> None:
    """The checked name is the request's user, marked authenticated."""
    s = Server(credentialsChecker=users())
    protocol, transport = s.open()
    protocol.dataReceived(b"\x05\x02\x00\x02" + encodeAuthRequest(b"ann", b"p:@%"))
    assert transport.value() == b"\x05\x02\x01\x00"
    protocol.dataReceived(CONNECT)
    assert protocol.request is not None
    assert protocol.request.userSource is UserSource.AUTHENTICATED
    s.connector.connections[0].succeed()
    close(protocol)
    [record] = s.records
    assert (record.user, record.version, record.auth) == ("ann", 5, "password")


@pytest.mark.parametrize(("name", "password"), [(b"ann", b"wrong"), (b"bob", b"p:@%")])
def test_wrongPasswordOrUnknownUserGets0101(name: bytes, password: bytes) -> None:
    """A wrong password and an unknown user get the same C{01 01} and close."""
    s = Server(credentialsChecker=users())
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(name, password) + CONNECT)
    assert transport.value() == b"\x05\x02\x01\x01"
    assert transport.writeClosed
    assert s.policy.requests == []
    close(protocol)
    [record] = s.records
    assert "authentication failed" in record.reason
    # The password is never logged.
    assert "wrong" not in record.reason
    assert "p:@%" not in record.reason
    assert (record.version, record.auth, record.command) == (5, "password", None)


def test_overTheFailureLimitGetsNoAcceptableMethod() -> None:
    """Past N failures in the window, the client gets C{05 FF} unchecked."""
    clock = MemoryReactorClock()
    s = Server(
        credentialsChecker=users(),
        authFailures=AuthFailures(clock, AuthFailureLimit(2, 60.0)),
    )
    for _ in range(2):
        protocol, transport = s.open()
        protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"no"))
        assert transport.value() == b"\x05\x02\x01\x01"
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"p:@%"))
    assert transport.value() == b"\x05\xff"
    clock.advance(61)
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"p:@%"))
    assert transport.value() == b"\x05\x02\x01\x00"


class SlowChecker:
    """A credentials checker whose answers the test gives."""

    credentialInterfaces = ()

    def __init__(self) -> None:
        self.checks: list[Deferred[bytes]] = []

    def requestAvatarId(self, credentials: object) -> Deferred[bytes]:
        """Answer later."""
        d: Deferred[bytes] = Deferred()
        self.checks.append(d)
        return d


def test_bytesDuringTheCheckWaitForIt() -> None:
    """
    A request pipelined behind the credentials is read only once the
    check succeeds, and in order with what arrives meanwhile.
    """
    checker = SlowChecker()
    s = Server(credentialsChecker=checker)
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"pw") + CONNECT[:3])
    protocol.dataReceived(CONNECT[3:] + b"x")
    assert s.policy.requests == []
    checker.checks[0].callback(b"ann")
    assert transport.value() == b"\x05\x02\x01\x00"
    s.connector.connections[0].succeed()
    assert s.connector.connections[0].transport.value() == b"x"


def test_answerAfterTheCloseIsIgnored() -> None:
    """
    A client gone while its password is checked: the check is left to
    finish (a bcrypt in a thread cannot stop), and its answer, success or
    failure, changes nothing and counts no failure.
    """
    checker = SlowChecker()
    s = Server(credentialsChecker=checker)
    for answer in (b"ann", UnauthorizedLogin()):
        protocol, transport = s.open()
        protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"pw") + CONNECT)
        close(protocol)
        check = checker.checks[-1]
        assert not check.called
        if isinstance(answer, bytes):
            check.callback(answer)
        else:
            check.errback(answer)
        assert transport.value() == b"\x05\x02"
    assert s.policy.requests == []
    assert s.factory.authFailures.clients == 0


def test_brokenCheckerIsARefusal() -> None:
    """A checker failing with something else than UnauthorizedLogin refuses."""
    checker = SlowChecker()
    s = Server(credentialsChecker=checker)
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"pw"))
    checker.checks[0].errback(RuntimeError("ldap down"))
    assert transport.value() == b"\x05\x02\x01\x01"
    assert s.factory.authFailures.clients == 0
    checker2 = SlowChecker()
    s2 = Server(credentialsChecker=checker2)
    protocol2, _t2 = s2.open()
    protocol2.dataReceived(PASSWORD + encodeAuthRequest(b"ann", b"pw"))
    checker2.checks[0].errback(UnauthorizedLogin())
    assert s2.factory.authFailures.clients == 1


def test_socks4RefusedWithUsers() -> None:
    """With users, a SOCKS4 request (which cannot log in) gets 91."""
    s = Server(credentialsChecker=users())
    protocol, transport = s.open()
    protocol.dataReceived(encodeRequest(Command.CONNECT, 80, DEST, userid=b"ann"))
    assert transport.value() == b"\x00\x5b" + b"\0" * 6
    assert s.connector.connections == []
    close(protocol)
    [record] = s.records
    assert (record.version, record.command, record.reply) == (4, "connect", 91)


def test_negotiationDeadlineCoversGreetingAuthAndRequest() -> None:
    """One deadline for the whole negotiation: a slow login is closed."""
    checker = SlowChecker()
    s = Server(credentialsChecker=checker, limits=Limits(negotiateTimeout=10))
    protocol, transport = s.open()
    protocol.dataReceived(PASSWORD)
    s.clock.advance(6)
    protocol.dataReceived(encodeAuthRequest(b"ann", b"pw"))
    s.clock.advance(4)
    assert protocol.state is SessionState.CLOSED
    assert transport.value() == b"\x05\x02"


def test_ipv4MappedDestinationIsTheIPv4Address() -> None:
    """
    ATYP 4 with an IPv4-mapped address is judged and connected to as the
    IPv4 address it maps; mapped 0.0.0.0 (this host) is refused.
    """
    s = Server()
    protocol, _transport = s.open()
    mapped = IPv6Address("::ffff:192.0.2.10")
    protocol.dataReceived(NOAUTH + encodeRequest5(Command5.CONNECT, 80, mapped))
    [pending] = s.connector.connections
    assert pending.address == DEST
    assert [r.address for r in s.policy.requests] == [DEST]
    protocol, transport = s.open()
    zero = IPv6Address("::ffff:0.0.0.0")
    protocol.dataReceived(NOAUTH + encodeRequest5(Command5.CONNECT, 80, zero))
    assert transport.value() == b"\x05\x00" + failure5(1)
    assert len(s.connector.connections) == 1


def test_refusedSOCKS5SessionNeedsNoCycleCollector() -> None:
    """
    A SOCKS5 session refused at any stage (greeting, login, request) is
    freed by reference counting alone: its negotiation holds no reference
    back to the session.
    """

    def alive() -> int:
        """How many SOCKS5 negotiations are alive."""
        return sum(type(o).__name__ == "Negotiation5" for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = alive()
        s = Server(credentialsChecker=users())
        for stream in [
            NOAUTH,
            PASSWORD + encodeAuthRequest(b"ann", b"wrong"),
            PASSWORD + encodeAuthRequest(b"ann", b"p:@%") + b"\x05\x09",
        ]:
            protocol, _transport = s.open()
            protocol.dataReceived(stream)
            close(protocol)
        del protocol, _transport
        assert alive() == before
    finally:
        gc.enable()
