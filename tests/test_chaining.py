"""
Server-side chaining (C{--routes}): the routes file's server forms, the
upstreams' state, and requests through a second instance of ours on
loopback (SOCKS5 with a password, SOCKS4A), byte for byte: a name only
the upstream can resolve, failover from a dead upstream and its mark,
verdicts passed through in the client's version, C{balance}, C{deny}, and
a loop refused at load.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import replace
from ipaddress import IPv4Address
from random import Random
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from tests._support import (
    EchoDestination,
    closedPort,
    inThread,
    listen,
    recvExactly,
)
from twisted_socks.app._routesconfig import RoutesReloader, checkRoutes, listenersOf
from twisted_socks.app._tap import Options
from twisted_socks.client._routes import RouteTable, parseRoutes
from twisted_socks.outbound._routed import Router
from twisted_socks.outbound._upstreams import outcomeOfVerdict
from twisted_socks.policy._fields import RulesError
from twisted_socks.server._factory import SOCKSv4ServerFactory
from twisted_socks.server._records import SessionRecord, summaryLine
from twisted_socks.testing import FakeHostnameResolver
from twisted_socks.wire._outcome import Outcome
from twisted_socks.wire._socks4reply import NoIdentdRejection, RequestRejected
from twisted_socks.wire._socks5client import (
    ConnectionRefused5,
    GeneralSOCKSFailure,
    NotAllowedByRuleset,
)

# -- the file ------------------------------------------------------------------


def test_fromMatchesTheClientAddress() -> None:
    """
    C{from=} takes CIDR or address/mask and matches the client's address;
    a route without it matches every client.
    """
    table = parseRoutes(
        "sockd @=socks5://10.9.9.9:1080 from=10.0.0.0/255.0.0.0 .corp.test\n"
        "deny from=192.0.2.0/24 0/0\n",
        "routes",
        server=True,
    )
    inside, outside = IPv4Address("10.1.2.3"), IPv4Address("192.0.2.7")
    assert table.match("a.corp.test", 80, "", inside) is table.routes[0]
    assert table.match("a.corp.test", 80, "", outside) is table.routes[1]
    assert table.match("a.corp.test", 80, "", IPv4Address("127.0.0.1")) is None


def test_settingsLinesAnywhere() -> None:
    """C{route.maxfail} and C{route.badexpire} lines set the table's values."""
    table = parseRoutes(
        "route.maxfail: 3\nsockd @=127.0.0.1:1 0/0\nroute.badexpire: 60\n",
        "routes",
        server=True,
    )
    assert (table.maxFail, table.badExpire, len(table.routes)) == (3, 60.0, 1)
    assert parseRoutes("", "r", server=True).maxFail == 1
    assert parseRoutes("", "r", server=True).badExpire == 300.0


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("direct 0/0\nsockd @=h:1 from=10.0.0.0/33 0/0\n", 2, "bad client address"),
        ("route.maxfail: 0\n", 1, "at least 1"),
        ("route.badexpire: soon\n", 1, "expected a number"),
        ("route.retries: 3\n", 1, "unknown setting"),
    ],
)
def test_badServerLinesNameFileAndLine(text: str, line: int, words: str) -> None:
    """Each bad server form is refused with the file, the line and why."""
    with pytest.raises(RulesError) as caught:
        parseRoutes(text, "conf/routes", server=True)
    assert str(caught.value).startswith(f"conf/routes:{line}:")
    assert words in str(caught.value)


def test_serverFormsAreRefusedInAClientFile() -> None:
    """A client's routing file has no client address and no upstream state."""
    with pytest.raises(RulesError, match=r"unknown field 'from=10\.0\.0\.0/8'"):
        parseRoutes("direct from=10.0.0.0/8 0/0\n", "socks.conf")
    with pytest.raises(RulesError, match="server's --routes file only"):
        parseRoutes("route.maxfail: 2\n", "socks.conf")


def test_loopRefusedAtLoad(tmp_path: Any) -> None:
    """
    An upstream that is one of the server's own listeners (by address, or
    C{localhost}) stops the load, naming file and line; another port loads.
    """
    routes = tmp_path / "routes"
    routes.write_text("direct .example.com\nsockd @=socks5h://localhost:1080 0/0\n")
    listening = listenersOf(["tcp:1080:interface=127.0.0.1"])
    with pytest.raises(RulesError) as caught:
        checkRoutes(str(routes), listening)
    assert str(caught.value).startswith(f"{routes}:2:")
    assert "own listener" in str(caught.value)
    routes.write_text("sockd @=127.0.0.1:1081 0/0\n")
    assert len(checkRoutes(str(routes), listening).routes) == 1
    wildcard = listenersOf(["haproxy:tcp:port=1081"])
    with pytest.raises(RulesError, match="own listener"):
        checkRoutes(str(routes), wildcard)


def test_loopRefusedByTheOptions(tmp_path: Any) -> None:
    """
    C{--routes} naming one of the server's own C{--listen} addresses stops
    start-up with the file and line; the config holds the path otherwise.
    """
    routes = tmp_path / "routes"
    routes.write_text("sockd @=127.0.0.1:1081 0/0\n")
    options = Options()
    with pytest.raises(UsageError, match=r"routes:1: upstream 127\.0\.0\.1:1081 is"):
        options.parseOptions(["--port", "1081", "--routes", str(routes)])
    options = Options()
    options.parseOptions(["--port", "1082", "--routes", str(routes)])
    assert options.config.routes == str(routes)


def test_badReloadKeepsTheRoutes(tmp_path: Any) -> None:
    """
    A reload of an invalid file leaves the routes in force; a valid one
    replaces them and keeps the upstreams' state.
    """
    routes = tmp_path / "routes"
    routes.write_text("sockd @=127.0.0.1:1081 0/0\n")
    factory = SOCKSv4ServerFactory(Clock(), nameResolver=FakeHostnameResolver())
    reloader = RoutesReloader(Clock(), factory, str(routes), 5.0)
    router = reloader.load()
    [server] = router.table.routes[0].servers
    router.failed(server)
    routes.write_text("sockd @=127.0.0.1:1081 nonsense here\n")
    assert not reloader.reload()
    assert factory.router is router and len(router.table.routes) == 1
    routes.write_text("sockd @=127.0.0.1:1081 .a.test\ndeny 0/0\n")
    assert reloader.reload()
    assert factory.router is router and len(router.table.routes) == 2
    assert router.state(server).failures == 1


# -- the upstreams' state -------------------------------------------------------


def _router(text: str, clock: Clock, random: Random | None = None) -> Router:
    """A router of the server routes C{text}, marks by C{clock}."""
    return Router(
        clock, parseRoutes(text, "routes", server=True), random=random, clock=clock
    )


def test_badUpstreamSkippedUntilItExpires() -> None:
    """
    After C{maxfail} failures in a row an upstream is left out of the order
    for C{badexpire} seconds; a success in between resets the count.
    """
    clock = Clock()
    router = _router(
        "route.maxfail: 2\nroute.badexpire: 30\nsockd @=127.0.0.1:1,127.0.0.1:2 0/0\n",
        clock,
    )
    route = router.table.routes[0]
    first, second = route.servers
    router.failed(first)
    router.succeeded(first)
    router.failed(first)
    assert router.order(route) == [first, second]
    router.failed(first)
    assert router.order(route) == [second]
    assert router.state(first).badUntil == 30.0
    clock.advance(30)
    assert router.order(route) == [first, second]


def test_allBadAreTriedAnyway() -> None:
    """When every upstream of a line is marked bad, all are tried."""
    router = _router("sockd @=127.0.0.1:1,127.0.0.1:2 0/0\n", Clock())
    route = router.table.routes[0]
    for server in route.servers:
        router.failed(server)
    assert router.order(route) == list(route.servers)


def test_balanceSpreads() -> None:
    """A C{balance} line's order is drawn afresh: every upstream comes first."""
    router = _router(
        "sockd @=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3 balance 0/0\n",
        Clock(),
        Random(7),
    )
    route = router.table.routes[0]
    firsts = {router.order(route)[0] for _ in range(60)}
    assert firsts == set(route.servers)


@pytest.mark.parametrize(
    "error, outcome",
    [
        (NotAllowedByRuleset(), Outcome.DENIED),
        (ConnectionRefused5(), Outcome.REFUSED),
        (GeneralSOCKSFailure(), Outcome.FAILURE),
        (RequestRejected(), Outcome.FAILURE),
        (NoIdentdRejection(), Outcome.DENIED),
        (ValueError("not a verdict"), None),
    ],
)
def test_verdictsConverted(error: Exception, outcome: Outcome | None) -> None:
    """
    An upstream's refusal becomes the outcome the client's front end says
    in its own version (SOCKS4 92/93 are policy refusals, 91 a failure).
    """
    assert outcomeOfVerdict(error) is outcome


def test_namesGoUpstreamOnlyWhenEveryUpstreamResolves() -> None:
    """
    A name is sent on only through lines whose upstreams all resolve
    remotely (bare, C{socks4a}, C{socks5h}).
    """
    table = parseRoutes(
        "sockd @=h:1,socks4a://h:2,socks5h://h:3 .a.test\n"
        "sockd @=socks5h://h:1,socks5://h:2 .b.test\n"
        "sockd @=socks4://h:1 .c.test\n",
        "routes",
        server=True,
    )
    remote = [Router.resolvesRemotely(route) for route in table.routes]
    assert remote == [True, False, False]


# -- through a second instance of ours --------------------------------------------

BOB_PASSWORD = b"b:@%pw"


class Chain:
    """A front server with routes, and upstream servers of ours."""

    def __init__(self, ports: list[IListeningPort]) -> None:
        self.ports = ports
        self.records: list[SessionRecord] = []
        self.upstreamRecords: list[SessionRecord] = []
        self.frontResolver = FakeHostnameResolver({"localhost": ["127.0.0.1"]})
        self.upstreamResolver = FakeHostnameResolver(
            {"only.upstream.test": ["127.0.0.1"]}
        )
        self.clock = Clock()
        self.front = SOCKSv4ServerFactory(
            reactor,  # type: ignore[arg-type]
            nameResolver=self.frontResolver,
            sessionObserver=self.records.append,
        )
        self.frontPort = listen(ports, self.front)

    def upstream(self, **kwargs: Any) -> int:
        """Start an upstream of ours; its port."""
        factory = SOCKSv4ServerFactory(
            reactor,  # type: ignore[arg-type]
            nameResolver=self.upstreamResolver,
            sessionObserver=self.upstreamRecords.append,
            **kwargs,
        )
        return listen(self.ports, factory)

    def routes(self, text: str, random: Random | None = None) -> Router:
        """Put C{text} in force on the front server."""
        table: RouteTable = parseRoutes(text, "routes", server=True)
        self.front.router = Router(
            reactor, table, timeout=5.0, random=random, clock=self.clock
        )
        return self.front.router


@pytest.fixture
def chain(ports: list[IListeningPort]) -> Chain:
    """A front server and its upstreams, closed after the test."""
    return Chain(ports)


def _socks5(port: int, host: str, destPort: int) -> tuple[socket.socket, bytes]:
    """A SOCKS5 CONNECT (no auth) by name or IPv4 literal; the socket, REP."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert recvExactly(s, 2) == b"\x05\x00"
    try:
        address = b"\x01" + IPv4Address(host).packed
    except ValueError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + address + struct.pack("!H", destPort))
    reply = recvExactly(s, 10)
    return s, reply[1:2]


def _socks4(port: int, host: str, destPort: int) -> tuple[socket.socket, bytes]:
    """A SOCKS4 (or 4A, for a name) CONNECT; the socket and CD."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        packed, name = IPv4Address(host).packed, b""
    except ValueError:
        packed, name = b"\x00\x00\x00\x01", host.encode() + b"\x00"
    s.sendall(b"\x04\x01" + struct.pack("!H", destPort) + packed + b"me\x00" + name)
    reply = recvExactly(s, 8)
    return s, reply[1:2]


def _roundTrip(s: socket.socket) -> bytes:
    """Send every byte value through the tunnel; what came back."""
    payload = bytes(range(256)) * 64
    with s:
        s.sendall(payload)
        return recvExactly(s, len(payload))


PAYLOAD = bytes(range(256)) * 64


@pytest_twisted.ensureDeferred
async def test_connectThroughAPasswordUpstream(
    chain: Chain, echo: EchoDestination
) -> None:
    """
    A SOCKS5 client's CONNECT goes through a SOCKS5 upstream that needs a
    password, with the route line's credentials: bytes arrive unchanged,
    and the upstream saw bob, never the client.
    """
    up = chain.upstream(
        credentialsChecker=InMemoryUsernamePasswordDatabaseDontUse(bob=BOB_PASSWORD)
    )
    chain.routes(f"sockd @=socks5://bob:b%3A%40%25pw@127.0.0.1:{up} 0/0\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD
    await _ended(chain.upstreamRecords, 1)
    assert chain.upstreamRecords[0].user == "bob"
    await _ended(chain.records, 1)
    [record] = chain.records
    assert (record.route, record.upstream) == (
        "routes:1",
        f"socks5://bob:***@127.0.0.1:{up}",
    )
    line = summaryLine(record)
    assert f"route=routes:1 upstream=socks5://bob:***@127.0.0.1:{up} " in line
    assert "b:@%pw" not in line and "pw" not in repr(record)


@pytest_twisted.ensureDeferred
async def test_nameOnlyTheUpstreamResolves(chain: Chain, echo: EchoDestination) -> None:
    """
    Through a SOCKS4A upstream the name goes on unresolved: the front
    server never looks it up, the upstream does, and the tunnel works for
    a SOCKS4A client as for a SOCKS5 one.
    """
    up = chain.upstream()
    chain.routes(f"sockd @=127.0.0.1:{up} .upstream.test\n")
    for connect in (_socks4, _socks5):
        s, code = await inThread(
            connect, chain.frontPort, "only.upstream.test", echo.port
        )
        assert code in (b"\x5a", b"\x00")
        assert await inThread(_roundTrip, s) == PAYLOAD
    assert chain.frontResolver.lookups == []
    assert [r.name for r in chain.upstreamResolver.lookups] == [
        "only.upstream.test"
    ] * 2


@pytest_twisted.ensureDeferred
async def test_failoverSkipsTheDeadUpstreamForBadexpire(
    chain: Chain, echo: EchoDestination
) -> None:
    """
    A dead first upstream is given up for the live second one; it is then
    skipped (one failure, Dante's default) until C{badexpire} has passed
    on the injected clock, when it is tried again.
    """
    dead, live = closedPort(), chain.upstream()
    router = chain.routes(
        f"route.badexpire: 60\nsockd @=127.0.0.1:{dead},127.0.0.1:{live} 0/0\n"
    )
    first, second = router.table.routes[0].servers
    for expectedFailures in (1, 1, 2):
        s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
        assert code == b"\x00"
        assert await inThread(_roundTrip, s) == PAYLOAD
        assert router.state(first).failures == expectedFailures
        chain.clock.advance(30)
    assert router.state(second).sessions == 3
    assert router.state(first).failovers == 2


@pytest_twisted.ensureDeferred
async def test_upstreamVerdictPassedThrough(chain: Chain) -> None:
    """
    A SOCKS5 upstream's verdict on the destination (connection refused,
    05) is the reply, in the client's version (SOCKS5 05, SOCKS4 91), and
    is not a failure of the upstream: no failover, no mark.
    """
    up, other = chain.upstream(), chain.upstream()
    router = chain.routes(
        f"sockd @=socks5://127.0.0.1:{up},socks5://127.0.0.1:{other} 0/0\n"
    )
    refused = closedPort()
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", refused)
    s.close()
    assert code == b"\x05"
    s, code = await inThread(_socks4, chain.frontPort, "127.0.0.1", refused)
    s.close()
    assert code == b"\x5b"
    first = router.table.routes[0].servers[0]
    assert router.state(first).failures == 0
    assert router.state(router.table.routes[0].servers[1]).failures == 0
    await _ended(chain.upstreamRecords, 2)
    assert len(chain.upstreamRecords) == 2  # the second upstream never asked
    await _ended(chain.records, 2)
    assert {r.reply for r in chain.records} == {5, 91}


@pytest_twisted.ensureDeferred
async def test_socks4VerdictToASocks5Client(chain: Chain) -> None:
    """A SOCKS4A upstream's 91 reaches a SOCKS5 client as 01."""
    chain.routes(f"sockd @=127.0.0.1:{chain.upstream()} 0/0\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", closedPort())
    s.close()
    assert code == b"\x01"


@pytest_twisted.ensureDeferred
async def test_everyUpstreamDeadGivesTheLastConnectError(chain: Chain) -> None:
    """
    When no upstream can be reached the client gets the mapped connect
    error of the last one (SOCKS5 05 for a refused connection).
    """
    chain.routes(f"sockd @=127.0.0.1:{closedPort()},127.0.0.1:{closedPort()} 0/0\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", 9)
    s.close()
    assert code == b"\x05"


@pytest_twisted.ensureDeferred
async def test_denyRouteAndNoMatch(chain: Chain, echo: EchoDestination) -> None:
    """
    A C{deny} route answers as a rule denial (SOCKS5 02); a destination
    no route matches goes direct.
    """
    chain.routes(f"deny 127.0.0.1 255.255.255.255 eq {echo.port}\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    s.close()
    assert code == b"\x02"
    chain.routes("deny .nowhere.test\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD


async def _ended(records: list[SessionRecord], count: int) -> None:
    """Wait until C{count} sessions have their records."""
    from tests._support import eventually

    await eventually(lambda: len(records) >= count)


def test_upstreamsOnMetrics() -> None:
    """
    C{/metrics} has each upstream's sessions, failures, failovers and
    state (up, or the Unix time its mark expires), without its password.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from twisted_socks.app._upstreammetrics import UpstreamCollector

    clock = Clock()
    clock.advance(1000)
    factory = SOCKSv4ServerFactory(clock, nameResolver=FakeHostnameResolver())
    registry = CollectorRegistry()
    registry.register(UpstreamCollector(factory, clock))
    assert b"socks_upstream_up{" not in generate_latest(registry)
    router = factory.router = _router(
        "sockd @=socks5://ann:secret@127.0.0.1:1,127.0.0.1:2 0/0\n", clock
    )
    first, second = router.table.routes[0].servers
    router.failed(first)
    router.state(first).failovers += 1
    router.state(second).sessions += 1
    text = generate_latest(registry).decode()
    assert "secret" not in text
    assert 'socks_upstream_up{upstream="socks5://ann:***@127.0.0.1:1"} 0.0' in text
    assert 'socks_upstream_up{upstream="127.0.0.1:2"} 1.0' in text
    assert (
        'socks_upstream_bad_until_seconds{upstream="socks5://ann:***@127.0.0.1:1"}'
        " 1300.0" in text
    )
    assert (
        'socks_upstream_failures_total{upstream="socks5://ann:***@127.0.0.1:1"} 1.0'
        in text
    )
    assert 'socks_upstream_sessions_total{upstream="127.0.0.1:2"} 1.0' in text


def test_checkShowsTheRoute(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{python -m twisted_socks check --routes} prints the route a request
    would take: through which upstreams and whether the name goes on, a
    denial, or direct when nothing matches.
    """
    from twisted_socks.policy._check import main

    rules = tmp_path / "rules"
    rules.write_text("permit 0/0 0/0\n")
    routes = tmp_path / "routes"
    routes.write_text(
        "deny .bad.test\n"
        "sockd @=socks5h://u:secret@10.0.0.2:1080,10.0.0.3 balance .corp.test\n"
    )
    common = [str(rules), "--routes", str(routes), "--connect"]
    assert main([*common, "www.corp.test:443"]) == 0
    out = capsys.readouterr().out
    assert f"route: {routes}:2:" in out and "secret" not in out
    assert (
        "-> through socks5h://u:***@10.0.0.2:1080, 10.0.0.3:1080 (in random order;"
        " the name goes upstream unresolved)" in out
    )
    assert main([*common, "a.bad.test:80"]) == 1
    assert f"route: {routes}:1: deny .bad.test\n-> deny" in capsys.readouterr().out
    main([*common, "192.0.2.1:80"])
    assert "route: no route matched: direct" in capsys.readouterr().out
    routes.write_text("sockd @=h:1 from=nonsense 0/0\n")
    assert main([*common, "192.0.2.1:80"]) == 2
    assert f"{routes}:1: bad client address" in capsys.readouterr().err


def _bind4(port: int) -> tuple[bytes, bytes]:
    """
    A SOCKS4 BIND through the front server, the peer connecting where the
    first reply says, bytes both ways; the two replies.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    with s:
        s.sendall(b"\x04\x02\x00\x15" + IPv4Address("127.0.0.1").packed + b"me\x00")
        first = recvExactly(s, 8)
        assert first[1] == 90, first
        where = (socket.inet_ntoa(first[4:8]), struct.unpack("!H", first[2:4])[0])
        with socket.create_connection(where, timeout=10) as peer:
            second = recvExactly(s, 8)
            assert struct.unpack("!H", second[2:4])[0] == peer.getsockname()[1]
            peer.sendall(b"from the peer")
            assert recvExactly(s, 13) == b"from the peer"
            s.sendall(b"to the peer")
            assert recvExactly(peer, 11) == b"to the peer"
        return first, second


@pytest.mark.parametrize("scheme", ["", "socks5://"])
@pytest_twisted.ensureDeferred
async def test_bindThroughAnUpstream(chain: Chain, scheme: str) -> None:
    """
    BIND through a SOCKS4A or SOCKS5 upstream: the upstream's two replies
    reach the SOCKS4 client one for one (where the upstream listens, then
    the peer), and the tunnel carries bytes both ways.
    """
    up = chain.upstream()
    chain.routes(f"sockd @={scheme}127.0.0.1:{up} 0/0\n")
    first, second = await inThread(_bind4, chain.frontPort)
    assert first[4:8] == second[4:8] == IPv4Address("127.0.0.1").packed
    await _ended(chain.upstreamRecords, 1)
    assert chain.upstreamRecords[0].command == "bind"


@pytest_twisted.ensureDeferred
async def test_silentUpstreamTimesOutToTheNext(
    chain: Chain, echo: EchoDestination, blackhole: int
) -> None:
    """
    An upstream that never answers the TCP handshake is given up after the
    per-upstream timeout, and the next one carries the request; the
    session's own connect period starts again for it.
    """
    live = chain.upstream()
    table = parseRoutes(
        f"sockd @=127.0.0.1:{blackhole},127.0.0.1:{live} 0/0\n", "routes", server=True
    )
    chain.front.limits = replace(chain.front.limits, connectTimeout=0.5)
    chain.front.router = router = Router(reactor, table, timeout=0.5, clock=chain.clock)
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD
    silent = router.table.routes[0].servers[0]
    assert router.state(silent).failures == router.state(silent).failovers == 1


def test_statusPageListsTheUpstreams() -> None:
    """
    The status page lists each upstream with its state (up, or when its
    bad mark expires) and the sessions it carried, never its password; a
    server without routes shows no such table.
    """
    from twisted_socks.app._metrics import ServerMetrics
    from twisted_socks.app._statuspage import renderPage
    from twisted_socks.app._upstreammetrics import upstreamRows as _upstreamRows

    clock = Clock()
    clock.advance(1000)
    router = _router("sockd @=socks5://ann:secret@127.0.0.1:1,127.0.0.1:2 0/0\n", clock)
    first, second = router.table.routes[0].servers
    router.failed(first)
    router.state(second).sessions = 3
    rows = _upstreamRows(router, clock.seconds())
    assert rows == [
        ("socks5://ann:***@127.0.0.1:1", "bad until 00:21:40 UTC", 0),
        ("127.0.0.1:2", "up", 3),
    ]
    summary = ServerMetrics().summary([])
    page = renderPage([], summary, clock.seconds(), upstreams=rows)
    assert '<table id="upstreams">' in page and "secret" not in page
    assert "socks5://ann:***@127.0.0.1:1" in page
    assert _upstreamRows(None, 0.0) == []
    assert 'id="upstreams"' not in renderPage([], summary, 0.0)


@pytest_twisted.ensureDeferred
async def test_liveTableShowsRouteAndUpstream(
    chain: Chain, echo: EchoDestination
) -> None:
    """
    A live routed session shows its route and upstream in C{/sessions}'
    snapshot and on the status page's session table.
    """
    from twisted_socks.app._metrics import ServerMetrics
    from twisted_socks.app._statuspage import renderPage

    up = chain.upstream()
    chain.routes(f"sockd @=socks5h://127.0.0.1:{up} 0/0\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    try:
        assert code == b"\x00"
        [info] = chain.front.sessions()
        assert (info.route, info.upstream) == ("routes:1", f"socks5h://127.0.0.1:{up}")
        page = renderPage([info], ServerMetrics().summary([info]), info.started)
        assert (
            f'<span class="route">route routes:1 via socks5h://127.0.0.1:{up}</span>'
            in page
        )
    finally:
        s.close()


def _socks5Login(
    port: int, user: bytes, password: bytes, destPort: int
) -> tuple[socket.socket, bytes]:
    """A SOCKS5 CONNECT to 127.0.0.1 after an RFC 1929 login; socket, REP."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x05\x01\x02")
    assert recvExactly(s, 2) == b"\x05\x02"
    s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    assert recvExactly(s, 2) == b"\x01\x00"
    s.sendall(b"\x05\x01\x00\x01" + IPv4Address("127.0.0.1").packed)
    s.sendall(struct.pack("!H", destPort))
    return s, recvExactly(s, 10)[1:2]


@pytest_twisted.ensureDeferred
async def test_theClientsLoginIsNeverForwarded(
    ports: list[IListeningPort], echo: EchoDestination
) -> None:
    """
    A client that logged in to the front server with a password is carried
    through an upstream as the route line says (here: no credentials), and
    its own name and password never reach the upstream.
    """
    chain = Chain(ports)
    chain.front.credentialsChecker = InMemoryUsernamePasswordDatabaseDontUse(
        ann=b"ann's secret"
    )
    up = chain.upstream()
    chain.routes(f"sockd @=socks5://127.0.0.1:{up} 0/0\n")
    s, code = await inThread(
        _socks5Login, chain.frontPort, b"ann", b"ann's secret", echo.port
    )
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD
    await _ended(chain.upstreamRecords, 1)
    [upstream] = chain.upstreamRecords
    assert (upstream.user, upstream.auth) == ("", "none")
    await _ended(chain.records, 1)
    assert (chain.records[0].user, chain.records[0].auth) == ("ann", "password")


@pytest_twisted.ensureDeferred
async def test_balanceSpreadsRealSessions(chain: Chain, echo: EchoDestination) -> None:
    """
    A C{balance} line spreads real sessions over its upstreams (a seeded
    order): each of the two carries some, and every tunnel is exact.
    """
    first, second = chain.upstream(), chain.upstream()
    router = chain.routes(
        f"sockd @=127.0.0.1:{first},socks5h://127.0.0.1:{second} balance 0/0\n",
        random=Random(3),
    )
    for _ in range(12):
        s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
        assert code == b"\x00"
        assert await inThread(_roundTrip, s) == PAYLOAD
    carried = [
        router.state(server).sessions for server in router.table.routes[0].servers
    ]
    assert sum(carried) == 12 and min(carried) > 0
    await _ended(chain.records, 12)
    assert {r.upstream for r in chain.records} == {
        f"127.0.0.1:{first}",
        f"socks5h://127.0.0.1:{second}",
    }
