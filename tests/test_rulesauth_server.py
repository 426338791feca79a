"""
C{auth=} rules in a running C{twistd socks}, over real loopback sockets:
SOCKS4 with C{--users} admitted only by C{auth=none}, SOCKS5 logins and
unauthenticated SOCKS5 against C{auth=} rules, UDP ASSOCIATE against
C{cmd=udp} rules (issue 17).  In memory: an
embedder's own policy with users is still kept from SOCKS4 requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import bcrypt
import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

from tests._support import Server as Twistd
from tests._support import startServer, stopServer
from tests.test_rules_server import EchoServer
from tests.test_socks5server import Server
from tests.test_socks5serverinterop import LOOPBACK, credentials, exchange, request5
from twisted_socks import Command, encodeRequest
from twisted_socks.policy._rules import parseRules
from twisted_socks.wire._request import UserSource

GRANTED4 = b"\x00\x5a" + b"\0" * 6
REJECTED4 = b"\x00\x5b" + b"\0" * 6
ANN, BOB = b"ann-pw", b"bob-pw"


@dataclass
class Servers:
    """The servers of this module and the two destinations."""

    #: --users, rules admitting SOCKS4 (auth=none) to port A only, and
    #: ann (only) to UDP.
    gateway: Twistd
    #: --users, rules without auth=none.
    strict: Twistd
    #: no --users, rules with auth=password to A and auth=none to B.
    open: Twistd
    a: EchoServer
    b: EchoServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two echo destinations and three servers, started once."""
    tmp = tmp_path_factory.mktemp("rulesauth")
    a, b = EchoServer(), EchoServer()
    users = tmp / "users"
    users.write_bytes(
        b"ann:" + bcrypt.hashpw(ANN, bcrypt.gensalt(4)) + b"\n"
        b"bob:" + bcrypt.hashpw(BOB, bcrypt.gensalt(4)) + b"\n"
    )
    users.chmod(0o600)
    files = {
        "gateway": f"permit auth=none 127.0.0.0/8 0/0 eq {a.port}\n"
        "permit *=ann 127.0.0.0/8 0/0\n"
        "permit cmd=udp *=ann 127.0.0.0/8 0/0\n"
        "deny 0/0\n",
        "strict": "permit 127.0.0.0/8 0/0\n",
        "open": f"permit auth=password 127.0.0.0/8 0/0 eq {a.port}\n"
        f"permit auth=none 127.0.0.0/8 0/0 eq {b.port}\n",
    }
    started: dict[str, Twistd] = {}
    try:
        for name, text in files.items():
            (tmp / name).mkdir()
            rules = tmp / f"{name}.rules"
            rules.write_text(text)
            extra = ("--users", str(users)) if name != "open" else ()
            started[name] = startServer(tmp / name, "--rules", str(rules), *extra)
        yield Servers(a=a, b=b, **started)
    finally:
        for server in started.values():
            stopServer(server)
        for echo in (a, b):
            echo.shutdown()
            echo.server_close()


def socks4(proxy: Twistd, port: int, userid: bytes = b"ann") -> bytes:
    """The reply to a SOCKS4 CONNECT to 127.0.0.1:C{port}."""
    request = encodeRequest(
        Command.CONNECT, port, IPv4Address("127.0.0.1"), userid=userid
    )
    return exchange(proxy.port, [request], 8)


def socks5(proxy: Twistd, port: int, login: tuple[bytes, bytes] | None) -> bytes:
    """REP of a SOCKS5 CONNECT to 127.0.0.1:C{port}, logged in or not."""
    if login is None:
        greeting, expected = b"\x05\x01\x00" + request5(1, LOOPBACK, port), 2
    else:
        greeting = b"\x05\x01\x02" + credentials(*login) + request5(1, LOOPBACK, port)
        expected = 4
    received = exchange(proxy.port, [greeting], expected + 10)
    assert len(received) == expected + 10, received
    return received[expected + 1 : expected + 2]


def associate5(proxy: Twistd, login: tuple[bytes, bytes] | None) -> bytes:
    """REP of a SOCKS5 UDP ASSOCIATE (zeros: port not known), logged in or not."""
    method, auth, expected = b"\x00", b"", 2
    if login is not None:
        method, auth, expected = b"\x02", credentials(*login), 4
    greeting = b"\x05\x01" + method + auth + request5(3, b"\0" * 4, 0)
    received = exchange(proxy.port, [greeting], expected + 10)
    assert len(received) == expected + 10, received
    return received[expected + 1 : expected + 2]


def test_udpAssociationNeedsACmdUdpRule(servers: Servers) -> None:
    """
    A UDP association is granted only where a C{cmd=udp} rule matches the
    client: ann has one (00); bob, whose only match is C{deny 0/0}, gets
    02; on servers whose rules never name C{cmd=udp}, even rules that
    permit everything else, the association gets 02.
    """
    assert associate5(servers.gateway, (b"ann", ANN)) == b"\x00"
    assert associate5(servers.gateway, (b"bob", BOB)) == b"\x02"
    assert associate5(servers.strict, (b"ann", ANN)) == b"\x02"
    assert associate5(servers.open, None) == b"\x02"


def test_socks4WithUsersAdmittedByAuthNone(servers: Servers) -> None:
    """
    With C{--users}, C{permit auth=none ... eq A} lets a SOCKS4 client
    reach A (90) and nothing else (91).
    """
    assert socks4(servers.gateway, servers.a.port) == GRANTED4
    assert socks4(servers.gateway, servers.b.port) == REJECTED4


def test_socks4WithUsersWithoutAuthNoneGets91(servers: Servers) -> None:
    """
    With C{--users} and rules that do not say C{auth=none}, SOCKS4 gets 91,
    even claiming a user's name, while that user's login is served.
    """
    assert socks4(servers.strict, servers.a.port) == REJECTED4
    assert socks5(servers.strict, servers.a.port, (b"ann", ANN)) == b"\x00"


def test_socks5LoginsAgainstAuthRules(servers: Servers) -> None:
    """
    A login is not matched by C{auth=none}: bob (no rule of his own) gets
    02 even to A; ann reaches B through her C{*=ann} rule; a SOCKS4 claim
    of ann's name is not ann.
    """
    assert socks5(servers.gateway, servers.a.port, (b"bob", BOB)) == b"\x02"
    assert socks5(servers.gateway, servers.b.port, (b"ann", ANN)) == b"\x00"
    assert socks4(servers.gateway, servers.b.port, b"ann") == REJECTED4


def test_socks5WithoutAuthenticationAgainstAuthRules(servers: Servers) -> None:
    """
    Without C{--users}: SOCKS5 without authentication matches C{auth=none}
    (B: 00) and never C{auth=password} (A: 02); SOCKS4 likewise.
    """
    assert socks5(servers.open, servers.b.port, None) == b"\x00"
    assert socks5(servers.open, servers.a.port, None) == b"\x02"
    assert socks4(servers.open, servers.b.port) == GRANTED4
    assert socks4(servers.open, servers.a.port) == REJECTED4


def test_embeddersPolicyWithUsersNeverSeesSOCKS4() -> None:
    """
    An embedder's own policy (which knows nothing of C{auth=}) with users:
    SOCKS4 gets 91 before the policy is asked, as before.
    """
    s = Server(credentialsChecker=InMemoryUsernamePasswordDatabaseDontUse(ann=b"x"))
    protocol, transport = s.open()
    protocol.dataReceived(
        encodeRequest(Command.CONNECT, 80, IPv4Address("192.0.2.10"), userid=b"ann")
    )
    assert transport.value() == REJECTED4
    assert s.policy.requests == []


def test_rulesWithUsersJudgeSOCKS4InTheServer() -> None:
    """
    Rules built for a server with users are asked about SOCKS4 requests,
    with the claimed user; C{auth=none} lets the request go on.
    """
    s = Server(credentialsChecker=InMemoryUsernamePasswordDatabaseDontUse(ann=b"x"))
    s.factory.policy = parseRules(
        "permit auth=none 127.0.0.0/8 0/0 eq 80\n", "r.conf", withUsers=True
    )
    protocol, transport = s.open()
    protocol.dataReceived(
        encodeRequest(Command.CONNECT, 80, IPv4Address("192.0.2.10"), userid=b"ann")
    )
    assert transport.value() == b""
    [pending] = s.connector.connections
    pending.succeed()
    assert transport.value() == GRANTED4
    assert protocol.request is not None
    assert protocol.request.userSource is UserSource.CLAIMED
