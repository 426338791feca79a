"""
The session core on its own, through a front end that is not SOCKS4 (issue
16): a toy line protocol (C{"CONNECT host port user"}, answered with the
outcome's words) drives L{ServerSession}, so everything checked here holds
for any protocol version that hands the core a L{SessionRequest}.
"""

from __future__ import annotations

import ast
import gc
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock

from twisted_socks import (
    AccessRequest,
    Decision,
    IdentMode,
    Limits,
    SOCKSv4ServerFactory,
)
from twisted_socks.server._session import ServerSession
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
    RecordingPolicy,
)
from twisted_socks.wire._outcome import Outcome
from twisted_socks.wire._request import Command, SessionRequest, UserSource

CLIENT = taddress.IPv4Address("TCP", "127.0.0.1", 40000)
PACKAGE = Path(__file__).parent.parent / "twisted_socks"


class LineReplies:
    """A front end's replies as text lines: C{"<outcome> <host> <port>"}."""

    def reply(
        self, outcome: Outcome, boundAddress: str | None, boundPort: int
    ) -> bytes:
        """The outcome's words, and the bound address if any."""
        return f"{outcome.value} {boundAddress or '-'} {boundPort}\n".encode()

    def replyCode(self, outcome: Outcome) -> int:
        """The outcome's place in the enum, as the toy's reply code."""
        return list(Outcome).index(outcome)

    def canAnnounce(self, address: IPv4Address | IPv6Address) -> bool:
        """Text can name any address."""
        return True


class LineSession(ServerSession):
    """A toy front end: one line, C{"CONNECT host port user"}, then bytes."""

    __slots__ = ("_line",)

    def __init__(self, factory: SOCKSv4ServerFactory) -> None:
        super().__init__(factory, LineReplies())
        self._line = b""

    def _negotiate(self, data: bytes) -> None:
        """Read the request line; the rest of the bytes are its trailing."""
        self._line += data
        if b"\n" not in self._line:
            return
        line, trailing = self._line.split(b"\n", 1)
        verb, host, port, user = line.decode().split()
        try:
            address, hostname = ip_address(host), None
        except ValueError:
            address, hostname = None, host
        self.requestReceived(
            SessionRequest(
                version=0,
                command=Command[verb],
                port=int(port),
                address=address,
                hostname=hostname,
                user=user,
                userSource=UserSource.CLAIMED,
                trailing=trailing,
            )
        )


class Core:
    """A factory wired to fakes, and toy sessions on it."""

    def __init__(
        self,
        policy: object = None,
        answers: dict[str, list[str]] | None = None,
        identResolver: object = None,
        identMode: IdentMode = IdentMode.OFF,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.connector = FakeConnector()
        self.resolver = FakeHostnameResolver(answers)
        self.records: list[object] = []
        self.factory = SOCKSv4ServerFactory(
            self.clock,
            policy=policy,  # type: ignore[arg-type]
            connector=self.connector,
            nameResolver=self.resolver,
            limits=Limits(),
            sessionObserver=self.records.append,
            identResolver=identResolver,  # type: ignore[arg-type]
            identMode=identMode,
            splice=False,
        )

    def open(self, line: bytes) -> tuple[LineSession, HalfCloseableStringTransport]:
        """Accept a toy client and feed it C{line}."""
        session = LineSession(self.factory)
        transport = HalfCloseableStringTransport(peerAddress=CLIENT)
        session.makeConnection(transport)
        session.dataReceived(line)
        return session, transport


def test_grantedConnectRelaysTrailingBytes() -> None:
    """
    A CONNECT the policy allows is connected to exactly the address asked,
    granted in the front end's words, and the bytes sent after the request
    reach the destination first.
    """
    core = Core()
    session, transport = core.open(b"CONNECT 192.0.2.10 80 alice\nGET /")
    [pending] = core.connector.connections
    assert (pending.address, pending.port) == (IPv4Address("192.0.2.10"), 80)
    assert transport.value() == b""
    pending.succeed()
    assert transport.value() == b"granted - 0\n"
    assert pending.transport.value() == b"GET /"
    assert session.outcome is Outcome.GRANTED


class DenyOne:
    """A policy that denies one address and records what it was asked."""

    def __init__(self, denied: IPv4Address) -> None:
        self.denied = denied
        self.asked: list[object] = []

    def decide(self, request: AccessRequest) -> Decision:
        """Allow all but C{denied}."""
        self.asked.append(request.address)
        return Decision(request.address != self.denied, "test")


def test_nameIsResolvedAndEachAddressJudged() -> None:
    """
    A name target is judged, looked up, and each address judged on its
    own; only an approved one is connected to.
    """
    policy = DenyOne(IPv4Address("192.0.2.1"))
    core = Core(policy, answers={"example.test": ["192.0.2.1", "192.0.2.2"]})
    core.open(b"CONNECT example.test 443 bob\n")
    assert policy.asked == [None, IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")]
    [pending] = core.connector.connections
    assert pending.address == IPv4Address("192.0.2.2")


def test_denialIsSaidInTheFrontEndsWords() -> None:
    """A denied request is answered "denied by rule"; nothing is connected."""
    core = Core(RecordingPolicy(False))
    session, transport = core.open(b"CONNECT 192.0.2.10 80 alice\n")
    assert transport.value() == b"denied by rule - 0\n"
    assert core.connector.connections == []
    assert session.outcome is Outcome.DENIED


class IdentSays:
    """An ident resolver that names one user."""

    def __init__(self, user: str) -> None:
        self.user = user

    def lookup(self, client: object, server: object) -> Deferred[str]:
        """Answer at once."""
        d: Deferred[str] = Deferred()
        d.callback(self.user)
        return d


def test_identMismatch() -> None:
    """A strict ident check that names another user ends in IDENT_MISMATCH."""
    core = Core(identResolver=IdentSays("mallory"), identMode=IdentMode.STRICT)
    session, transport = core.open(b"CONNECT 192.0.2.10 80 alice\n")
    assert transport.value() == b"wrong ident user - 0\n"
    assert session.identUser == "mallory"
    assert core.connector.connections == []


def test_connectRefusedIsRefused() -> None:
    """A destination that refuses the connection: the outcome says so."""
    core = Core()
    session, transport = core.open(b"CONNECT 192.0.2.10 80 alice\n")
    core.connector.connections[0].fail(ConnectionRefusedError())
    assert transport.value() == b"refused - 0\n"
    assert session.outcome is Outcome.REFUSED


def test_connectTimeoutIsTimedOut() -> None:
    """A connect that outlasts the connect deadline ends TIMED_OUT."""
    core = Core()
    _, transport = core.open(b"CONNECT 192.0.2.10 80 alice\n")
    core.clock.advance(Limits().connectTimeout)
    assert transport.value() == b"timed out - 0\n"
    assert core.connector.connections[0].cancelled


def test_udpAssociateWithoutUDPReactorIsNotSupported() -> None:
    """
    UDP ASSOCIATE on a reactor without C{listenUDP} is answered "command not
    supported", with no lookup.
    """
    core = Core()
    _, transport = core.open(b"UDP_ASSOCIATE example.test 53 alice\n")
    assert transport.value() == b"command not supported - 0\n"
    assert core.resolver.lookups == []


def test_closeWhileConnectingCancelsTheConnect() -> None:
    """
    The client leaving while the connect is in flight cancels it: the one
    thing the sequence waited for, and the sequence with it.
    """
    core = Core()
    session, _ = core.open(b"CONNECT 192.0.2.10 80 alice\n")
    [pending] = core.connector.connections
    session.abort("test")
    assert pending.cancelled
    assert core.clock.getDelayedCalls() == []


def test_negotiationIsGarbageAfterTheHandOver() -> None:
    """
    Once the relay runs, nothing of the request's sequence stays alive: no
    pipeline object refers to the session, and nothing is in flight.
    """
    core = Core()
    session, _ = core.open(b"CONNECT 192.0.2.10 80 alice\nearly")
    core.connector.connections[0].succeed()
    gc.collect()
    pipelines = [
        o
        for o in gc.get_objects()
        if type(o).__name__ == "Pipeline" and getattr(o, "_session", None) is session
    ]
    assert pipelines == []
    assert session._inFlight is None
    assert session.request is not None and session.request.trailing == b""


def test_refusedSessionNeedsNoCycleCollector() -> None:
    """
    A request that fails (a refused connect, a name that does not resolve)
    leaves no pipeline behind once the session closes, without the cycle
    collector: failures thrown into the sequence do not tie its frames to
    the session.
    """

    def pipelines() -> int:
        """How many pipeline objects are alive."""
        return sum(type(o).__name__ == "Pipeline" for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = pipelines()
        core = Core(answers={"nowhere.test": []})
        session, _ = core.open(b"CONNECT 192.0.2.10 80 alice\n")
        core.connector.connections[0].fail(ConnectionRefusedError())
        session.connectionLost(None)  # type: ignore[arg-type]
        session, _ = core.open(b"CONNECT nowhere.test 80 alice\n")
        session.connectionLost(None)  # type: ignore[arg-type]
        assert pipelines() == before
    finally:
        gc.enable()


def test_directRequestWithoutAnyFrontEndParsing() -> None:
    """
    The core takes a L{SessionRequest} as it is, from any front end: here
    one made by hand, for a BIND, answered with the listener's address.
    """
    core = Core()
    session = LineSession(core.factory)
    transport = HalfCloseableStringTransport(
        peerAddress=CLIENT, hostAddress=taddress.IPv4Address("TCP", "127.0.0.1", 1080)
    )
    session.makeConnection(transport)
    session.requestReceived(
        SessionRequest(
            version=0,
            command=Command.BIND,
            port=21,
            address=IPv4Address("192.0.2.10"),
            hostname=None,
            user="",
            userSource=UserSource.NONE,
        )
    )
    [listener] = core.connector.listeners
    assert transport.value() == f"granted 127.0.0.1 {listener.port}\n".encode()


def test_coreNamesNoSOCKS4Reply() -> None:
    """
    The version-neutral modules name none of SOCKS4's reply machinery:
    a second version plugs in its own front end, not a mapping from 90-93.
    """
    forbidden = {"ReplyCode", "encodeReply", "replyFor", "RequestParser", "isSOCKS4A"}
    for name in (
        "server/_bind.py",
        "server/_connection.py",
        "server/_identcheck.py",
        "server/_session.py",
        "server/_pipeline.py",
        "server/_sequence.py",
        "wire/_request.py",
        "server/_records.py",
        "server/_peer.py",
    ):
        tree = ast.parse((PACKAGE / name).read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {
            a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        assert names & forbidden == set(), name
        assert "_codec" not in (PACKAGE / name).read_text(), name
