"""
Tests of client routing: the C{socks.conf} parser (L{twisted_socks.client._routes})
and L{RoutingEndpoint} (L{twisted_socks.client._routing}).

Three layers, as elsewhere in the project:

  - the sans-IO parser and matcher: every field, every error message, the
    default server, first match, no match, names against addresses;
  - the endpoint over a L{MemoryReactorClock}: the order servers are tried
    in, failover on refusal and timeout, no failover once a server
    answered, cancellation at each stage with nothing left on the clock;
  - real loopback sockets against our own server: direct, proxied and
    denied destinations, failover from a dead server to a live one,
    balance, and a SOCKS refusal that is not failed over.
"""

from __future__ import annotations

import ast
from ipaddress import IPv4Address as IPv4
from pathlib import Path
from random import Random
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    NoProtocol,
)
from twisted.internet.interfaces import IListeningPort, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests._support import Echo, closedPort, eventually, listen
from tests.test_client import (
    GRANTED,
    TIMEOUT,
    Collector,
    Recording,
    RecordingFactory,
    results,
    withTimeout,
)
from tests.test_layout import PACKAGE, TWISTED_FREE, importedModules
from twisted_socks import (
    Command,
    ReplyCode,
    RequestRejected,
    SOCKSv4ServerFactory,
    encodeReply,
    encodeRequest,
)
from twisted_socks.client._routes import (
    ProxyServer,
    Route,
    RouteAction,
    RouteTable,
    loadRoutes,
    parseRoutes,
    parseServer,
)
from twisted_socks.client._routing import (
    ProxiesUnreachable,
    RouteDenied,
    RoutingEndpoint,
)
from twisted_socks.client._strports import parseRoutingEndpoint
from twisted_socks.policy._rules import (
    AddressPattern,
    HostPattern,
    PortPattern,
    RulesError,
)
from twisted_socks.testing import (
    FakeHostnameResolver,
    HalfCloseableStringTransport,
    RecordingPolicy,
)
from twisted_socks.wire._clienterrors import HandshakeTimeout

ROOT = Path(__file__).resolve().parent.parent
ALL = (1 << 32) - 1
DIRECT, DENY, SOCKD = RouteAction.DIRECT, RouteAction.DENY, RouteAction.SOCKD


# The parser.


def v4(text: str, value: str, mask: str) -> AddressPattern:
    """An IPv4 address pattern as the parser builds it."""
    return AddressPattern(4, int(IPv4(value)), int(IPv4(mask)), text)


def route(
    text: str,
    action: RouteAction,
    destination: AddressPattern | HostPattern,
    port: PortPattern | None = None,
    servers: tuple[ProxyServer, ...] = (),
    balance: bool = False,
    users: frozenset[str] | None = None,
) -> Route:
    """The route C{text} parses to, on line 1 of C{s.conf}."""
    return Route(
        "s.conf:1", text.strip(), action, servers, balance, users, destination, port
    )


DEFAULT = ProxyServer("default.example", 1090)

#: Lines, and the route each parses to (with L{DEFAULT} as default server).
LINES = [
    route(
        "deny 10.0.0.0 255.0.0.0",
        DENY,
        v4("10.0.0.0 255.0.0.0", "10.0.0.0", "255.0.0.0"),
    ),
    route(
        "direct 192.168.0.0/16",
        DIRECT,
        v4("192.168.0.0/16", "192.168.0.0", "255.255.0.0"),
    ),
    route(
        "direct 140.113.*.*", DIRECT, v4("140.113.*.*", "140.113.0.0", "255.255.0.0")
    ),
    route(
        "direct 10.0.0.5 255.0.0.255",
        DIRECT,
        v4("10.0.0.5 255.0.0.255", "10.0.0.5", "255.0.0.255"),
    ),
    route(
        "direct *=alice,bob .Example.COM eq 443",
        DIRECT,
        HostPattern("example.com", True),
        PortPattern(443, 443),
        users=frozenset({"alice", "bob"}),
    ),
    route(
        "direct www.example.com neq 25",
        DIRECT,
        HostPattern("www.example.com", False),
        PortPattern(25, 25, True),
    ),
    route(
        "deny fd00::/8 lt 1024",
        DENY,
        AddressPattern(6, 0xFD << 120, 0xFF << 120, "fd00::/8"),
        PortPattern(0, 1023),
    ),
    route(
        "deny ::1 gt 1023",
        DENY,
        AddressPattern(6, 1, (1 << 128) - 1, "::1"),
        PortPattern(1024, 65535),
    ),
    route(
        "\tdirect\t127.0.0.1 255.255.255.255\tle 1023",
        DIRECT,
        v4("127.0.0.1 255.255.255.255", "127.0.0.1", "255.255.255.255"),
        PortPattern(0, 1023),
    ),
    route("direct 0/0 # the rest, directly", DIRECT, AddressPattern(4, 0, 0, "0/0")),
    route(
        "sockd @=proxy.example 0.0.0.0 0.0.0.0",
        SOCKD,
        v4("0.0.0.0 0.0.0.0", "0.0.0.0", "0.0.0.0"),
        servers=(ProxyServer("proxy.example", 1080),),
    ),
    route(
        "sockd @=10.0.0.1:1081,[2001:db8::1]:9050,socks.example,[::1] balance 0/0 range 8000 8999",
        SOCKD,
        AddressPattern(4, 0, 0, "0/0"),
        PortPattern(8000, 8999),
        servers=(
            ProxyServer("10.0.0.1", 1081),
            ProxyServer("2001:db8::1", 9050),
            ProxyServer("socks.example", 1080),
            ProxyServer("::1", 1080),
        ),
        balance=True,
    ),
    route(
        "SOCKD balance *=carol @=p1:1 .corp.example ge 1024",
        SOCKD,
        HostPattern("corp.example", True),
        PortPattern(1024, 65535),
        servers=(ProxyServer("p1", 1),),
        balance=True,
        users=frozenset({"carol"}),
    ),
    route(
        "sockd 10.1.0.0 255.255.0.0 eq http",
        SOCKD,
        v4("10.1.0.0 255.255.0.0", "10.1.0.0", "255.255.0.0"),
        PortPattern(80, 80),
        servers=(DEFAULT,),
    ),
    route(
        "sockd balance *=dave localhost",
        SOCKD,
        HostPattern("localhost", False),
        servers=(DEFAULT,),
        balance=True,
        users=frozenset({"dave"}),
    ),
    route(
        "direct *=josé,müller 0/0",
        DIRECT,
        AddressPattern(4, 0, 0, "0/0"),
        users=frozenset({"josé", "müller"}),
    ),
]


@pytest.mark.parametrize("expected", LINES, ids=[r.text for r in LINES])
def test_everyFieldParses(expected: Route) -> None:
    """Each line parses to the route with every field as written."""
    table = parseRoutes(expected.text, "s.conf", DEFAULT)
    assert table == RouteTable("s.conf", (expected,))


def test_commentsBlankLinesAndLocations() -> None:
    """Comments and blank lines are skipped; locations keep the file's numbering."""
    table = parseRoutes(
        "# header\n\n   \ndirect 0/0  # a comment\r\n#deny 0/0\ndeny 0/0\n",
        "/etc/socks.conf",
    )
    assert [(r.location, r.action) for r in table.routes] == [
        ("/etc/socks.conf:4", DIRECT),
        ("/etc/socks.conf:6", DENY),
    ]
    assert parseRoutes("", "e.conf") == RouteTable("e.conf", ())


E = "expected a host name, an IPv4 address or [IPv6 address], optionally :port 1-65535"
#: Files (no default server), and the exact error each raises.
ERRORS = [
    ("grant 0/0", "s.conf:1: unknown action 'grant' (expected deny, direct or sockd)"),
    ("allow 0/0", "s.conf:1: unknown action 'allow' (expected deny, direct or sockd)"),
    (
        "# ok\n\ndirect 10.0.0.0 255.0.300.0",
        "s.conf:3: bad mask '255.0.300.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "direct 10.0.0.0 eq 80",
        "s.conf:1: missing mask after '10.0.0.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "direct 10.0.0.300 255.0.0.0",
        "s.conf:1: bad destination address '10.0.0.300' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "direct 10.0.0.0/33",
        "s.conf:1: bad destination address '10.0.0.0/33' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "direct 10.*.*",
        "s.conf:1: bad destination address '10.*.*' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "direct www..example.com",
        "s.conf:1: bad destination host name 'www..example.com' (expected a name such as www.example.com or .example.com)",
    ),
    (
        "direct",
        "s.conf:1: missing destination (expected an address and mask, address/prefix, a wildcard such as 10.*.*.*, or a host name such as .example.com)",
    ),
    (
        "direct *=alice eq 80",
        "s.conf:1: missing destination (expected an address and mask, address/prefix, a wildcard such as 10.*.*.*, or a host name such as .example.com)",
    ),
    (
        "direct 0/0 eq htp",
        "s.conf:1: bad port 'htp' (unknown service; expected a number 0-65535 or a service name)",
    ),
    (
        "direct 0/0 eq 65536",
        "s.conf:1: bad port '65536' (expected a number 0-65535 or a service name)",
    ),
    (
        "direct 0/0 eq",
        "s.conf:1: missing port after 'eq' (expected a number 0-65535 or a service name)",
    ),
    ("direct 0/0 range 9 1", "s.conf:1: bad range 9 1 (expected LOW <= HIGH)"),
    ("direct 0/0 eq ²", "s.conf:1: non-ASCII '²' (destinations and ports are ASCII)"),
    (
        "direct 1².*.*.*",
        "s.conf:1: non-ASCII '1².*.*.*' (destinations and ports are ASCII)",
    ),
    (
        "direct *=josé bücher.example",
        "s.conf:1: non-ASCII 'bücher.example' (destinations and ports are ASCII)",
    ),
    (
        "direct 0/0 is 80",
        "s.conf:1: unexpected 'is' (expected a port condition: eq, neq, lt, le, gt, ge or range)",
    ),
    (
        "direct 0/0 eq 80 extra",
        "s.conf:1: unexpected 'extra' (expected the end of the route)",
    ),
    ("direct x=1 0/0", "s.conf:1: unknown field 'x=1' (expected @= or *=)"),
    ("direct *= 0/0", "s.conf:1: empty user name in '*='"),
    ("direct *=a *=b 0/0", "s.conf:1: '*=' given twice"),
    (
        "direct @=p 0/0",
        "s.conf:1: '@=' on a direct line (it applies to sockd lines only)",
    ),
    (
        "deny balance 0/0",
        "s.conf:1: 'balance' on a deny line (it applies to sockd lines only)",
    ),
    ("sockd balance @=p balance 0/0", "s.conf:1: 'balance' given twice"),
    ("sockd @=p @=q 0/0", "s.conf:1: '@=' given twice"),
    (
        "direct 0/0\nsockd 0/0",
        "s.conf:2: sockd line without @= and no default server (give @=server[:port], or a default server to the loader)",
    ),
    ("sockd @= 0/0", f"s.conf:1: empty server list in '@=' ({E})"),
    ("sockd @=a,,b 0/0", "s.conf:1: empty server in '@=a,,b'"),
    ("sockd @=p, 0/0", "s.conf:1: empty server in '@=p,'"),
    (
        "sockd @=::1 0/0",
        "s.conf:1: bad server '::1' in '@=::1' (an IPv6 address goes in brackets, as [::1]:1080)",
    ),
    ("sockd @=p:0 0/0", f"s.conf:1: bad server 'p:0' in '@=p:0' ({E})"),
    ("sockd @=p:65536 0/0", f"s.conf:1: bad server 'p:65536' in '@=p:65536' ({E})"),
    ("sockd @=p: 0/0", f"s.conf:1: bad server 'p:' in '@=p:' ({E})"),
    ("sockd @=p:socks 0/0", f"s.conf:1: bad server 'p:socks' in '@=p:socks' ({E})"),
    (
        "sockd @=[1.2.3.4] 0/0",
        f"s.conf:1: bad server '[1.2.3.4]' in '@=[1.2.3.4]' ({E})",
    ),
    ("sockd @=[::1]x 0/0", f"s.conf:1: bad server '[::1]x' in '@=[::1]x' ({E})"),
    ("sockd @=[::1 0/0", f"s.conf:1: bad server '[::1' in '@=[::1' ({E})"),
    ("sockd @=127.1 0/0", f"s.conf:1: bad server '127.1' in '@=127.1' ({E})"),
    (
        "sockd @=bad_host! 0/0",
        f"s.conf:1: bad server 'bad_host!' in '@=bad_host!' ({E})",
    ),
    ("sockd @=a..b 0/0", f"s.conf:1: bad server 'a..b' in '@=a..b' ({E})"),
    ("direct 0/0\n" + "#" * 1024, "s.conf:2: line is 1024 characters (at most 1023)"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errorNamesFileLineAndField(text: str, message: str) -> None:
    """An invalid file raises one L{RulesError} with the exact message."""
    with pytest.raises(RulesError) as caught:
        parseRoutes(text, "s.conf")
    assert str(caught.value) == message


def test_longestLineIsAccepted() -> None:
    """A line of exactly 1023 characters is fine."""
    line = "direct 0/0 #" + "x" * (1023 - len("direct 0/0 #"))
    assert len(parseRoutes(line).routes) == 1


def test_sockdWithoutServersUsesTheDefault() -> None:
    """
    A C{sockd} line without C{@=} goes through the default server (given as
    a value or as text, as C{SOCKS_SERVER} was); an C{@=} list replaces it.
    """
    text = "sockd 10.0.0.0/8\nsockd @=other 0/0"
    for default in (ProxyServer("10.9.9.9", 1080), "10.9.9.9", "10.9.9.9:1080"):
        table = parseRoutes(text, "s.conf", default)
        assert [r.servers for r in table.routes] == [
            (ProxyServer("10.9.9.9", 1080),),
            (ProxyServer("other", 1080),),
        ]
    # Only the lines that need it need it.
    assert parseRoutes("sockd @=p 0/0\ndirect 0/0").routes[0].servers == (
        ProxyServer("p"),
    )


def test_badDefaultServerIsTheCallersError() -> None:
    """A bad default server is a L{ValueError} (local misuse), not the file's fault."""
    with pytest.raises(ValueError, match=r"^bad default server '::1' \(an IPv6"):
        parseRoutes("direct 0/0", "s.conf", "::1")


SERVERS = [
    ("proxy", ProxyServer("proxy", 1080)),
    ("Proxy.Example.:1081", ProxyServer("Proxy.Example.", 1081)),
    ("192.0.2.1", ProxyServer("192.0.2.1", 1080)),
    ("192.0.2.1:65535", ProxyServer("192.0.2.1", 65535)),
    ("[2001:DB8::1]", ProxyServer("2001:db8::1", 1080)),
    ("[::1]:9050", ProxyServer("::1", 9050)),
]


@pytest.mark.parametrize(("text", "server"), SERVERS)
def test_serverForms(text: str, server: ProxyServer) -> None:
    """Servers are names, IPv4 or bracketed IPv6, with an optional port."""
    assert parseServer(text) == server


def test_serverText() -> None:
    """A server prints as it would be written, IPv6 in brackets."""
    assert [str(parseServer(t)) for t in ("p", "1.2.3.4:5", "[::1]:6")] == [
        "p:1080",
        "1.2.3.4:5",
        "[::1]:6",
    ]


def test_userFilesAreReadRelativeToTheFile(tmp_path: Path) -> None:
    """C{*=./file} names a file of users next to the routing file."""
    (tmp_path / "staff").write_text("alice\n# not a user\n\nbob\n")
    conf = tmp_path / "socks.conf"
    conf.write_text("direct *=./staff,carol 0/0\n")
    [only] = loadRoutes(str(conf)).routes
    assert only.users == frozenset({"alice", "bob", "carol"})


def test_unreadableFileIsAnError(tmp_path: Path) -> None:
    """A missing file is a L{RulesError} naming it (line 0: the whole file)."""
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(RulesError) as caught:
        loadRoutes(missing)
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"


def test_exampleFileIsValid() -> None:
    """The shipped example parses, with a default server for its plain sockd lines."""
    table = loadRoutes(str(ROOT / "examples" / "socks.conf"), "127.0.0.1:1080")
    assert len(table.routes) >= 5
    assert {r.action for r in table.routes} == set(RouteAction)


#: Words of the grammar, for generated lines that get past the first field.
WORDS = st.sampled_from(
    "deny direct sockd balance @=p @=[::1]:1 *=u 0/0 10.0.0.0 255.0.0.0 "
    "1.*.*.* ::1/64 .example.com eq neq lt range 80 http ² \u0661 # \t".split()
)


@given(
    st.text(max_size=300)
    | st.lists(WORDS | st.text(max_size=6), max_size=8).map(" ".join)
)
def test_anyTextParsesOrFailsCleanly(text: str) -> None:
    """No input crashes the parser: a table, or a L{RulesError}."""
    try:
        parseRoutes(text, "s.conf", DEFAULT, readUserFile=lambda path: [])
    except RulesError:
        pass


def test_parserImportsNothingFromTwisted() -> None:
    """The routing grammar is pure: no Twisted, and only pure siblings."""
    imported = importedModules(PACKAGE / "client/_routes.py")
    assert not {m for m in imported if m.split(".")[0] in ("twisted", "zope")}
    path = PACKAGE / "client/_routes.py"
    siblings = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert siblings
    for node in siblings:
        # Resolved from the module's own package: ".._x" is one level up.
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        target = base.joinpath(*(node.module or "").split(".")).with_suffix(".py")
        assert target.relative_to(PACKAGE).as_posix() in TWISTED_FREE, node.module


# Matching.

MATCH_TABLE = """\
deny *=mallory 0/0
direct 127.0.0.0 255.0.0.0
deny 10.0.0.0/8 eq 25
sockd @=p1 10.0.0.0/8
direct localhost
direct .corp.example
sockd @=p2 *=alice 2001:db8::/32
deny 192.0.2.0/24
sockd @=p3 0.0.0.0 0.0.0.0 range 80 443
"""

#: (host, port, user, the matching line or None)
MATCHES: list[tuple[str, int, str, int | None]] = [
    ("10.1.2.3", 80, "mallory", 1),  # first match wins, users first
    ("127.0.0.1", 80, "", 2),
    ("127.1", 80, "", 2),  # what the C library makes of it
    ("2130706433", 80, "", 2),
    ("0x7f.1", 80, "", 2),
    ("::ffff:127.0.0.1", 80, "", 2),  # IPv4-mapped: matched as IPv4
    ("10.9.9.9", 25, "", 3),
    ("10.9.9.9", 26, "", 4),
    ("localhost", 5, "", 5),
    ("LOCALHOST.", 5, "", 5),
    ("www.corp.example", 5, "", 6),
    ("corp.example", 5, "", 6),
    ("notcorp.example", 5, "", None),
    ("2001:db8::7", 5, "alice", 7),
    ("[2001:db8::7]", 5, "alice", 7),
    ("2001:db8::7", 5, "bob", None),  # *=alice only
    ("192.0.2.9", 80, "", 8),
    ("192.0.2.9", 8080, "", 8),
    ("198.51.100.1", 80, "", 9),
    ("198.51.100.1", 8080, "", None),  # no match: deny
    # A name never matches an address route, only the catch-all: no lookup
    # is made to route it.
    ("ten.example", 25, "", None),  # not line 3
    ("ten.example", 80, "", 9),
    # An address never matches a name route.
    ("10.0.0.1", 5, "", 4),
]


@pytest.mark.parametrize(("host", "port", "user", "line"), MATCHES)
def test_matchTable(host: str, port: int, user: str, line: int | None) -> None:
    """The first route matching the destination text, port and user decides."""
    table = parseRoutes(MATCH_TABLE, "m.conf")
    matched = table.match(host, port, user)
    assert (matched.location if matched else None) == (
        f"m.conf:{line}" if line else None
    )
    for candidate in table.routes:
        if matched is not None and candidate.location == matched.location:
            assert candidate.matches(host, port, user)
            break


def test_emptyTableMatchesNothing() -> None:
    """With no routes, nothing matches, which the endpoint treats as deny."""
    assert parseRoutes("").match("127.0.0.1", 80) is None


# The endpoint over a memory reactor.


class Harness:
    """A memory reactor with a fake resolver, and routing files for it."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeHostnameResolver(answers)
        self.reactor.installNameResolver(self.resolver)

    def endpoint(
        self, conf: str, host: str, port: int = 80, **kwargs: Any
    ) -> RoutingEndpoint:
        """An endpoint routed by C{conf}."""
        table = parseRoutes(conf, "h.conf", kwargs.pop("defaultServer", None))
        return RoutingEndpoint(self.reactor, table, host, port, **kwargs)

    def attempted(self) -> list[tuple[str, int]]:
        """Every TCP connection attempted, in order."""
        return [(host, port) for host, port, _, _, _ in self.reactor.tcpClients]

    def refuse(self, index: int = -1) -> None:
        """Refuse connection attempt C{index}, as a closed port does."""
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def accept(self, index: int = -1) -> tuple[IProtocol, HalfCloseableStringTransport]:
        """Complete connection attempt C{index}: its protocol and transport."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = HalfCloseableStringTransport(
            peerAddress=IPv4Address("TCP", host, port)
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def assertClockIsClear(self) -> None:
        """Nothing is left scheduled."""
        assert self.reactor.getDelayedCalls() == []


FAILOVER = "sockd @=10.0.0.1,10.0.0.2:1081,10.0.0.3 0/0\n"


def test_endpointProvidesItsInterface() -> None:
    """L{RoutingEndpoint} is an L{IStreamClientEndpoint}."""
    assert verifyObject(
        IStreamClientEndpoint, Harness().endpoint("direct 0/0", "example.com")
    )


def test_denyContactsNothing() -> None:
    """A C{deny} route fails at once with L{RouteDenied} naming the line."""
    harness = Harness()
    endpoint = harness.endpoint("direct 10.0.0.0/8\ndeny .ads.example", "x.ads.example")
    [failure] = results(endpoint.connect(RecordingFactory()))
    assert failure.check(RouteDenied)
    assert failure.value.location == "h.conf:2"
    assert failure.value.route.action is DENY
    assert str(failure.value) == "x.ads.example:80 denied by h.conf:2"
    assert harness.attempted() == [] and harness.resolver.lookups == []
    harness.assertClockIsClear()


def test_noMatchDenies() -> None:
    """A destination no route matches is denied, at C{file:end}."""
    harness = Harness()
    endpoint = harness.endpoint("direct 10.0.0.0/8", "2001:db8::1", 443)
    [failure] = results(endpoint.connect(RecordingFactory()))
    assert failure.check(RouteDenied)
    assert failure.value.route is None and failure.value.location == "h.conf:end"
    assert str(failure.value) == (
        "[2001:db8::1]:443 matches no route in h.conf (no match denies)"
    )
    assert harness.attempted() == []


def test_directConnectsToTheDestination() -> None:
    """C{direct} resolves and connects to the destination itself."""
    harness = Harness({"www.example.com": ["192.0.2.80"]})
    endpoint = harness.endpoint("direct .example.com", "www.example.com", 8080)
    outcome = results(endpoint.connect(RecordingFactory()))
    assert [lookup.name for lookup in harness.resolver.lookups] == ["www.example.com"]
    assert harness.attempted() == [("192.0.2.80", 8080)]
    protocol, _ = harness.accept()
    assert outcome == [protocol._wrappedProtocol]  # type: ignore[attr-defined]
    harness.assertClockIsClear()


def test_sockdSendsTheRequestThroughTheFirstServer() -> None:
    """
    C{sockd} connects to the first server and sends a SOCKS4A request for
    the name (never resolved locally) with the user as USERID.
    """
    harness = Harness()
    factory = RecordingFactory()
    endpoint = harness.endpoint(FAILOVER, "www.example.com", 443, user="alice")
    outcome = results(endpoint.connect(factory))
    assert harness.attempted() == [("10.0.0.1", 1080)]
    wrapper, transport = harness.accept()
    assert transport.value() == encodeRequest(
        Command.CONNECT, 443, hostname="www.example.com", userid=b"alice"
    )
    wrapper.dataReceived(GRANTED + b"hi")
    [app] = outcome
    assert app.received == b"hi"
    assert harness.resolver.lookups == []
    harness.assertClockIsClear()


def test_refusedServerFailsOverToTheNext() -> None:
    """A server refusing the TCP connection is skipped for the next, in order."""
    harness = Harness()
    outcome = results(
        harness.endpoint(FAILOVER, "10.5.5.5").connect(RecordingFactory())
    )
    harness.refuse()
    assert harness.attempted() == [("10.0.0.1", 1080), ("10.0.0.2", 1081)]
    wrapper, transport = harness.accept()
    assert transport.value() == encodeRequest(
        Command.CONNECT, 80, address=IPv4("10.5.5.5")
    )
    wrapper.dataReceived(GRANTED)
    assert isinstance(outcome[0], Recording)
    assert len(harness.attempted()) == 2
    harness.assertClockIsClear()


def test_silentServerTimesOutAndFailsOver() -> None:
    """
    A server that never answers the SYN is given up after C{timeout}
    seconds; the next server gets a full C{timeout} of its own.
    """
    harness = Harness()
    outcome = results(
        harness.endpoint(FAILOVER, "10.5.5.5", timeout=5).connect(RecordingFactory())
    )
    harness.reactor.advance(5)
    assert harness.reactor.connectors[0].stoppedConnecting
    assert harness.attempted() == [("10.0.0.1", 1080), ("10.0.0.2", 1081)]
    harness.reactor.advance(4.9)
    wrapper, _ = harness.accept()
    wrapper.dataReceived(GRANTED)
    assert isinstance(outcome[0], Recording)
    harness.assertClockIsClear()


def test_allServersUnreachableListsWhatWasTried() -> None:
    """When no server can be reached, the error lists each with its error."""
    harness = Harness()
    outcome = results(
        harness.endpoint(FAILOVER, "10.5.5.5", timeout=5).connect(RecordingFactory())
    )
    harness.refuse()
    harness.reactor.advance(5)
    harness.refuse()
    [failure] = outcome
    assert failure.check(ProxiesUnreachable)
    servers = [server for server, _ in failure.value.attempts]
    assert servers == [
        ProxyServer("10.0.0.1"),
        ProxyServer("10.0.0.2", 1081),
        ProxyServer("10.0.0.3"),
    ]
    kinds = [type(error) for _, error in failure.value.attempts]
    assert kinds == [ConnectionRefusedError, HandshakeTimeout, ConnectionRefusedError]
    message = str(failure.value)
    assert message.startswith(
        "no SOCKS server reachable for 10.5.5.5:80 (route h.conf:1): 10.0.0.1:1080: "
    )
    assert "; 10.0.0.2:1081: no reply from the SOCKS server" in message
    assert "; 10.0.0.3:1080: Connection was refused" in message
    harness.assertClockIsClear()


@pytest.mark.parametrize(
    "answer", [encodeReply(ReplyCode.REJECTED), b"HTTP/1.0 400 Bad\r\n\r\n", None]
)
def test_serverThatAnsweredIsNotFailedOver(answer: bytes | None) -> None:
    """
    Once a server accepted the TCP connection it decides: a refusal, a
    garbage reply or a reset fails the attempt; the next server is not tried.
    """
    harness = Harness()
    outcome = results(
        harness.endpoint(FAILOVER, "10.5.5.5").connect(RecordingFactory())
    )
    wrapper, _ = harness.accept()
    if answer is None:
        wrapper.connectionLost(Failure(ConnectionDone()))
    else:
        wrapper.dataReceived(answer)
    [failure] = outcome
    assert not failure.check(ProxiesUnreachable)
    if answer == encodeReply(ReplyCode.REJECTED):
        assert failure.check(RequestRejected)
    assert harness.attempted() == [("10.0.0.1", 1080)]
    harness.assertClockIsClear()


def test_silenceAfterConnectingIsNotFailedOver() -> None:
    """A server that accepted but never replies times out, without failover."""
    harness = Harness()
    outcome = results(
        harness.endpoint(FAILOVER, "10.5.5.5", timeout=3).connect(RecordingFactory())
    )
    _, transport = harness.accept()
    harness.reactor.advance(3)
    [failure] = outcome
    assert failure.check(HandshakeTimeout)
    assert transport.aborted
    assert len(harness.attempted()) == 1
    harness.assertClockIsClear()


def test_failureBeforeAnyServerIsNotFailedOver() -> None:
    """
    With local resolution (SOCKS4), a name without an IPv4 address fails
    before any server is contacted; trying others would change nothing.
    """
    harness = Harness({"v6only.example": ["2001:db8::1"]})
    endpoint = harness.endpoint(FAILOVER, "v6only.example", remoteResolve=False)
    [failure] = results(endpoint.connect(RecordingFactory()))
    assert failure.check(DNSLookupError)
    assert harness.attempted() == []


def test_decliningFactoryIsNotFailedOver() -> None:
    """A factory that builds no protocol fails the attempt with L{NoProtocol}."""
    harness = Harness()

    class Declining(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    outcome = results(harness.endpoint(FAILOVER, "10.5.5.5").connect(Declining()))
    host, port, factory, _, _ = harness.reactor.tcpClients[-1]
    assert factory.buildProtocol(IPv4Address("TCP", host, port)) is None
    [failure] = outcome
    assert failure.check(NoProtocol)
    assert len(harness.attempted()) == 1


def test_serverByNameIsResolvedAndSkippedIfUnknown() -> None:
    """
    A server given by name is looked up; a name that does not resolve is
    an unreachable server, and the next one is tried.
    """
    harness = Harness({"gone.example": [], "socks.example": ["10.0.0.9"]})
    endpoint = harness.endpoint(
        "sockd @=gone.example,socks.example:1090 0/0", "www.example.com"
    )
    outcome = results(endpoint.connect(RecordingFactory()))
    assert [lookup.name for lookup in harness.resolver.lookups] == [
        "gone.example",
        "socks.example",
    ]
    assert harness.attempted() == [("10.0.0.9", 1090)]
    wrapper, _ = harness.accept()
    wrapper.dataReceived(GRANTED)
    assert isinstance(outcome[0], Recording)
    harness.assertClockIsClear()


def test_balanceTriesServersInTheInjectedRandomOrder() -> None:
    """
    C{balance} shuffles the servers with the injected L{Random}, afresh for
    each connection; without it the order is the file's.
    """
    harness = Harness()
    endpoint = harness.endpoint(
        "sockd @=10.0.0.1,10.0.0.2,10.0.0.3 balance 0/0", "10.5.5.5", random=Random(4)
    )
    expected: list[str] = []
    shuffler = Random(4)
    for _ in range(2):
        order = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        shuffler.shuffle(order)
        expected += order
        outcome = results(endpoint.connect(RecordingFactory()))
        for _ in range(3):
            harness.refuse()
        assert outcome[0].check(ProxiesUnreachable)
    assert [host for host, _ in harness.attempted()] == expected
    # Random(4) puts the last server first the first time.
    assert expected[:3] == ["10.0.0.3", "10.0.0.2", "10.0.0.1"]


def test_cancelWhileConnectingToAServer() -> None:
    """
    Cancelling while a server's SYN is unanswered (after a failover) stops
    that attempt, tries no further server and leaves nothing on the clock.
    """
    harness = Harness()
    d = harness.endpoint(FAILOVER, "10.5.5.5").connect(RecordingFactory())
    harness.refuse()
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert harness.reactor.connectors[1].stoppedConnecting
    assert len(harness.attempted()) == 2
    harness.assertClockIsClear()


def test_cancelWhileLookingUpAServerName() -> None:
    """
    Cancelling while a server's name is being looked up is a cancellation,
    not a lookup failure: no other server is tried.
    """
    harness = Harness()
    d = harness.endpoint("sockd @=slow.example,10.0.0.2 0/0", "10.5.5.5").connect(
        RecordingFactory()
    )
    assert [lookup.name for lookup in harness.resolver.lookups] == ["slow.example"]
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    harness.resolver.lookups[0].complete(["10.0.0.1"])  # late: ignored
    assert harness.attempted() == []
    harness.assertClockIsClear()


def test_cancelDuringTheHandshake() -> None:
    """Cancelling after the request went out aborts the connection to the server."""
    harness = Harness()
    factory = RecordingFactory()
    d = harness.endpoint(FAILOVER, "10.5.5.5").connect(factory)
    wrapper, transport = harness.accept()
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    assert transport.aborted
    wrapper.dataReceived(GRANTED)
    assert factory.built[0][1].events == []
    assert len(harness.attempted()) == 1
    harness.assertClockIsClear()


def test_cancelADirectConnection() -> None:
    """Cancelling a direct connection during its lookup leaves nothing behind."""
    harness = Harness()
    d = harness.endpoint("direct 0/0", "slow.example").connect(RecordingFactory())
    d.cancel()
    [failure] = results(d)
    assert failure.check(CancelledError)
    harness.resolver.lookups[0].complete(["192.0.2.1"])  # late: ignored
    assert harness.attempted() == []
    harness.assertClockIsClear()


def test_cancelAfterSuccessDoesNothing() -> None:
    """Once connected, cancelling is a no-op."""
    harness = Harness()
    d = harness.endpoint(FAILOVER, "10.5.5.5").connect(RecordingFactory())
    wrapper, transport = harness.accept()
    wrapper.dataReceived(GRANTED)
    d.cancel()
    assert isinstance(results(d)[0], Recording)
    assert not transport.aborted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": ""}, "empty destination host"),
        ({"port": 0}, "port out of range 1-65535: 0"),
        ({"port": 65536}, "port out of range 1-65535: 65536"),
        ({"timeout": 0}, "timeout must be positive: 0"),
        ({"timeout": float("nan")}, "timeout must be positive: nan"),
        ({"user": "a\0b"}, "user must hold no NUL and be at most 255 bytes"),
        ({"user": "u" * 256}, "user must hold no NUL and be at most 255 bytes"),
    ],
)
def test_misuseIsRefusedAtConstruction(kwargs: dict[str, Any], message: str) -> None:
    """Bad arguments are a L{ValueError} from the constructor."""
    arguments: dict[str, Any] = {"host": "example.com", "port": 80, **kwargs}
    with pytest.raises(ValueError) as caught:
        RoutingEndpoint(MemoryReactorClock(), RouteTable("t", ()), **arguments)
    assert str(caught.value) == message


# The endpoint-string function.


def test_endpointStringFields(tmp_path: Path) -> None:
    """Every field of the string reaches the endpoint; the file is read at once."""
    conf = tmp_path / "socks.conf"
    conf.write_text("sockd *=alice 0/0\ndirect 0/0\n")
    endpoint = parseRoutingEndpoint(
        MemoryReactorClock(),
        conf=str(conf),
        host="example.com",
        port="8080",
        user="alice",
        timeout="2.5",
        socks4="true",
        defaultServer="10.0.0.7:1090",
    )
    assert endpoint._port == 8080 and endpoint._timeout == 2.5
    assert endpoint._remoteResolve is False
    matched = endpoint.route()
    assert matched is not None and matched.servers == (ProxyServer("10.0.0.7", 1090),)
    default = parseRoutingEndpoint(
        MemoryReactorClock(), str(conf), "example.com", "80", defaultServer="p"
    )
    assert default._remoteResolve is True and default._timeout == 30.0
    assert default._user == ""
    anyone = default.route()
    assert anyone is not None and anyone.action is DIRECT


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": "http"}, "port: 'http' (expected a number 1-65535)"),
        ({"port": "0"}, "port: '0' (expected a number 1-65535)"),
        ({"port": "70000"}, "port: '70000' (expected a number 1-65535)"),
        ({"host": ""}, "host: empty (expected a host name or an IP address)"),
        ({"conf": ""}, "conf: empty (expected the path of a routing file)"),
        ({"timeout": "soon"}, "timeout: 'soon' (expected a positive number)"),
        ({"timeout": "-1"}, "timeout: '-1' (expected a positive number)"),
        ({"timeout": "inf"}, "timeout: 'inf' (expected a positive number)"),
        ({"socks4": "maybe"}, "socks4: 'maybe' (expected true or false)"),
        ({"user": "x" * 300}, "user: user must hold no NUL and be at most 255 bytes"),
        (
            {"defaultServer": "::1"},
            "defaultServer: bad default server '::1' (an IPv6 address goes in brackets, as [::1]:1080)",
        ),
        (
            {"conf": "{missing}"},
            "conf: {missing}: cannot read: No such file or directory",
        ),
        (
            {"conf": "{bad}"},
            "conf: {bad}:2: unknown action 'proxy' (expected deny, direct or sockd)",
        ),
        (
            {"conf": "{plain}"},
            "conf: {plain}:1: sockd line without @= and no default server (give @=server[:port], or a default server to the loader)",
        ),
        (
            {"hsot": "x"},
            "unknown option 'hsot' (expected conf, host, port, user, timeout, socks4 or defaultServer)",
        ),
    ],
)
def test_endpointStringErrorsNameTheField(
    tmp_path: Path, fields: dict[str, str], message: str
) -> None:
    """Bad input is a L{ValueError} whose message starts with the field."""
    files = {
        "good": tmp_path / "good.conf",
        "bad": tmp_path / "bad.conf",
        "plain": tmp_path / "plain.conf",
        "missing": tmp_path / "missing.conf",
    }
    files["good"].write_text("direct 0/0\n")
    files["bad"].write_text("direct 10.0.0.0/8\nproxy 0/0\n")
    files["plain"].write_text("sockd 0/0\n")
    names = {key: str(path) for key, path in files.items()}
    arguments = {"conf": names["good"], "host": "example.com", "port": "80"}
    arguments.update({key: value.format(**names) for key, value in fields.items()})
    with pytest.raises(ValueError) as caught:
        parseRoutingEndpoint(MemoryReactorClock(), **arguments)
    assert str(caught.value) == message.format(**names)


# Real sockets on loopback, against our own server.


class CountingFactory(Factory):
    """Builds echo protocols and counts the connections it accepted."""

    protocol = Echo
    noisy = False

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:
        """Count, then build an echo protocol."""
        self.connections += 1
        return super().buildProtocol(addr)


def startProxy(
    ports: list[IListeningPort], **kwargs: Any
) -> tuple[int, SOCKSv4ServerFactory, list[Any]]:
    """Our SOCKS server in-process: its port, factory and session records."""
    records: list[Any] = []
    factory = SOCKSv4ServerFactory(reactor, sessionObserver=records.append, **kwargs)
    return listen(ports, factory), factory, records


def writeConf(tmp_path: Path, text: str) -> str:
    """Write a routing file; return its path."""
    path = tmp_path / "socks.conf"
    path.write_text(text)
    return str(path)


def untouched(factory: SOCKSv4ServerFactory) -> bool:
    """Whether a proxy has never had a session."""
    return not factory.activeSessions and factory.sessionsEnded == 0


async def echoThrough(endpoint: RoutingEndpoint, payload: bytes) -> Collector:
    """Send C{payload} to the echo server by C{endpoint}; wait for the echo."""
    client = Collector(payload)
    await withTimeout(connectProtocol(endpoint, client))
    await eventually(lambda: client.received == payload, TIMEOUT)
    return client


async def close(client: Collector) -> None:
    """Close C{client}'s connection and wait until it is gone."""
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)


@pytest_twisted.ensureDeferred
async def test_fileChoosesDirectProxyAndDeny(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    One routing file: 127.0.0.1 goes direct (the echo server is the peer,
    the proxy has no session), C{localhost} goes through the proxy (the
    proxy records the session and is the peer), and C{.blocked.example} is
    denied (L{RouteDenied}, no connection anywhere).
    """
    proxy, proxyFactory, records = startProxy(ports)
    echoFactory = CountingFactory()
    echo = listen(ports, echoFactory)
    conf = writeConf(
        tmp_path,
        f"deny .blocked.example\n"
        f"direct 127.0.0.1 255.255.255.255 eq {echo}\n"
        f"sockd @=127.0.0.1:{proxy} localhost eq {echo}\n",
    )
    table = loadRoutes(conf)

    direct = RoutingEndpoint(reactor, table, "127.0.0.1", echo)
    client = await echoThrough(direct, b"direct")
    assert client.transport.getPeer().port == echo  # type: ignore[union-attr]
    await close(client)
    assert echoFactory.connections == 1
    assert untouched(proxyFactory) and records == []

    proxied = RoutingEndpoint(reactor, table, "localhost", echo, user="ann")
    client = await echoThrough(proxied, b"proxied")
    assert client.transport.getPeer().port == proxy  # type: ignore[union-attr]
    await close(client)
    await eventually(lambda: bool(records), TIMEOUT)
    assert (records[0].destination, records[0].user) == (f"localhost:{echo}", "ann")
    assert echoFactory.connections == 2

    denied = RoutingEndpoint(reactor, table, "www.blocked.example", echo)
    with pytest.raises(RouteDenied) as caught:
        await withTimeout(connectProtocol(denied, Collector()))
    assert caught.value.location == f"{conf}:1"
    assert echoFactory.connections == 2
    assert proxyFactory.sessionsEnded == 1 and not proxyFactory.activeSessions


@pytest_twisted.ensureDeferred
async def test_failoverFromADeadServerToALiveOne(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    C{@=dead,live}: the first server refuses the connection, the second
    carries the session.
    """
    proxy, _, records = startProxy(ports)
    echo = listen(ports, CountingFactory())
    dead = closedPort()
    conf = writeConf(tmp_path, f"sockd @=127.0.0.1:{dead},127.0.0.1:{proxy} 0/0\n")
    endpoint = RoutingEndpoint(reactor, loadRoutes(conf), "127.0.0.1", echo)
    client = await echoThrough(endpoint, b"failover" * 1000)
    assert client.transport.getPeer().port == proxy  # type: ignore[union-attr]
    await close(client)
    await eventually(lambda: bool(records), TIMEOUT)
    assert records[0].destination == f"127.0.0.1:{echo}"


@pytest_twisted.ensureDeferred
async def test_allServersDeadIsOneClearError(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """With every server refusing, the error names each one and why."""
    first, second = closedPort(), closedPort()
    conf = writeConf(tmp_path, f"sockd @=127.0.0.1:{first},127.0.0.1:{second} 0/0\n")
    endpoint = RoutingEndpoint(reactor, loadRoutes(conf), "127.0.0.1", 9)
    with pytest.raises(ProxiesUnreachable) as caught:
        await withTimeout(connectProtocol(endpoint, Collector()))
    message = str(caught.value)
    assert f"127.0.0.1:{first}: Connection was refused" in message
    assert f"127.0.0.1:{second}: Connection was refused" in message


@pytest_twisted.ensureDeferred
async def test_balanceSpreadsByTheInjectedRandom(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    C{balance} with two live servers: the seeded L{Random} decides which
    one carries each connection (seed 0 keeps the file's order, seed 1
    swaps it), so both get used.
    """
    proxyA, _, recordsA = startProxy(ports)
    proxyB, _, recordsB = startProxy(ports)
    echo = listen(ports, CountingFactory())
    conf = writeConf(
        tmp_path, f"sockd @=127.0.0.1:{proxyA},127.0.0.1:{proxyB} balance 0/0\n"
    )
    table = loadRoutes(conf)
    for seed, expected in ((0, proxyA), (1, proxyB)):
        order = [proxyA, proxyB]
        Random(seed).shuffle(order)
        assert order[0] == expected
        endpoint = RoutingEndpoint(
            reactor, table, "127.0.0.1", echo, random=Random(seed)
        )
        client = await echoThrough(endpoint, b"balanced")
        assert client.transport.getPeer().port == expected  # type: ignore[union-attr]
        await close(client)
    await eventually(lambda: len(recordsA) == 1 and len(recordsB) == 1, TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_socksRefusalIsNotFailedOver(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    The first server is up but its policy refuses: that is its answer,
    L{RequestRejected}, and the second server is never contacted.
    """
    policy = RecordingPolicy(allowed=False)
    refusing, _, _ = startProxy(ports, policy=policy)
    live, liveFactory, _ = startProxy(ports)
    echo = listen(ports, CountingFactory())
    conf = writeConf(tmp_path, f"sockd @=127.0.0.1:{refusing},127.0.0.1:{live} 0/0\n")
    endpoint = RoutingEndpoint(reactor, loadRoutes(conf), "127.0.0.1", echo)
    with pytest.raises(RequestRejected):
        await withTimeout(connectProtocol(endpoint, Collector()))
    assert len(policy.requests) == 1
    assert untouched(liveFactory)
