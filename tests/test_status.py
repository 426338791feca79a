"""
The status endpoint: C{/sessions} (JSON), C{/metrics} (Prometheus), C{/}
(HTML, also in a real headless Chromium) and the C{sessions} command.

The SOCKS server and the status site run in-process on the test reactor,
both on loopback; clients, HTTP requests and the browser are blocking code
in threads, as real programs would be.  Every socket operation has a timeout.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address as TCPAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from tests._support import closedPort, eventually, inThread, recvAll, recvExactly
from tests.test_loopback import socksConnect, startEcho
from twisted_socks import (
    Command,
    IdentErrorReply,
    IdentMode,
    IdentTimeout,
    SOCKSv4ServerFactory,
    TCPConnector,
    encodeRequest,
)
from twisted_socks.app._metrics import (
    ServerMetrics,
    identOutcome,
    rejectionReason,
    stateLabel,
)
from twisted_socks.app._sessionscli import (
    FetchError,
    formatTable,
    humanBytes,
    humanSeconds,
    main,
    sessionsURL,
)
from twisted_socks.app._status import makeStatusService, makeStatusSite
from twisted_socks.interfaces import IOutboundConnector
from twisted_socks.server._factory import SessionState
from twisted_socks.testing import FakeHostnameResolver, FakeIdentResolver

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6
LOCALHOST = IPv4Address("127.0.0.1")
#: Outbound connections to this port never complete (see StallingConnector).
STALL_PORT = 9
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


# -- fixtures and helpers ---------------------------------------------------


@implementer(IOutboundConnector)
class StallingConnector:
    """
    Real TCP connections, except to L{STALL_PORT}: those stay pending (a
    destination that never answers the SYN) until the session gives up.
    """

    def __init__(self) -> None:
        self._real = TCPConnector(reactor)  # type: ignore[arg-type]

    def connect(
        self, address: Any, port: int, factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """Connect for real, or never."""
        if port == STALL_PORT:
            return Deferred(lambda d: d.errback(ConnectionError("abandoned")))
        return self._real.connect(address, port, factory)

    def listen(self, interface: str, factory: IProtocolFactory) -> Any:
        """Listen for real (BIND)."""
        return self._real.listen(interface, factory)


@dataclass
class Server:
    """An in-process SOCKS server with its status site, both on loopback."""

    proxy: int
    status: int
    factory: SOCKSv4ServerFactory
    metrics: ServerMetrics

    @property
    def url(self) -> str:
        """The status site's base URL."""
        return f"http://127.0.0.1:{self.status}"


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets to close after the test, whatever happened."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def startServer(ports: list[IListeningPort], **kwargs: Any) -> Server:
    """
    Start a SOCKS server (metrics created first, then watching the factory,
    as the twistd plugin does) and its status site, each on its own port.
    """
    metrics = ServerMetrics()
    factory = SOCKSv4ServerFactory(reactor, metrics=metrics, **kwargs)
    metrics.watch(factory)
    proxy = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    status = reactor.listenTCP(  # type: ignore[attr-defined]
        0, makeStatusSite(factory, metrics), interface="127.0.0.1"
    )
    ports.extend([proxy, status])
    return Server(proxy.getHost().port, status.getHost().port, factory, metrics)


def httpGet(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """GET C{url} (blocking): status, headers, body; errors are answers too."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


async def getJSON(server: Server) -> dict[str, Any]:
    """The C{/sessions} answer."""
    status, headers, body = await inThread(httpGet, server.url + "/sessions")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    answer: dict[str, Any] = json.loads(body)
    return answer


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Server) -> Samples:
    """The C{/metrics} answer, parsed: (sample name, labels) to value."""
    status, headers, body = await inThread(httpGet, server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (a missing sample fails the test)."""
    return samples[(name, frozenset(labels.items()))]


def ended(samples: Samples, command: str, reply: str, version: str = "4") -> float:
    """C{socks_sessions_total} of one version, command and reply."""
    return value(
        samples, "socks_sessions_total", version=version, command=command, reply=reply
    )


def rejected(samples: Samples, reason: str) -> float:
    """C{socks_rejections_total} of SOCKS4 sessions for one reason."""
    return value(samples, "socks_rejections_total", version="4", reason=reason)


def active(samples: Samples) -> dict[str, float]:
    """C{socks_sessions_active} per state."""
    return {
        state: value(samples, "socks_sessions_active", state=state)
        for state in (stateLabel(s) for s in SessionState)
    }


def statesOf(factory: SOCKSv4ServerFactory) -> list[str]:
    """The states of the live sessions, sorted."""
    return sorted(info.state for info in factory.sessions())


def bindRequest(proxy: int) -> tuple[socket.socket, tuple[str, int]]:
    """Send BIND (peer 127.0.0.1); return the socket and the listener."""
    sock = socksConnect(proxy, encodeRequest(Command.BIND, 21, LOCALHOST), timeout=10)
    reply = recvExactly(sock, 8)
    assert reply[:2] == b"\x00\x5a", reply
    return sock, (str(IPv4Address(reply[4:8])), int.from_bytes(reply[2:4], "big"))


def abort(sock: socket.socket) -> None:
    """Close C{sock} with a reset (as when a client process is killed)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def requireBrowser() -> None:
    """
    Skip without Chromium, ChromeDriver or Selenium, except in CI (C{CI}
    set), where the test command installs them and their absence is a
    failure.
    """
    missing = [
        name
        for name, present in (
            (CHROMIUM, os.access(CHROMIUM, os.X_OK)),
            (CHROMEDRIVER, os.access(CHROMEDRIVER, os.X_OK)),
            ("selenium", importlib.util.find_spec("selenium") is not None),
        )
        if not present
    ]
    if missing:
        message = f"headless browser test needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# -- pure parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("denied: no rule matched", "denied"),
        ("max-connections reached", "max_connections"),
        ("max-connections-per-client reached", "max_connections_per_client"),
        ("connection rate per client exceeded", "client_rate"),
        ("bad request: UnsupportedVersion: version 5", "bad_request"),
        ("not SOCKS: first byte 0x47", "not_socks"),
        ("connect failed: Connection was refused", "connect_failed"),
        ("name lookup failed: no address", "name_lookup_failed"),
        ("negotiate timeout", "negotiate_timeout"),
        ("connect timeout", "connect_timeout"),
        ("bind timeout", "bind_timeout"),
        ("no ident answer: IdentTimeout", "no_ident"),
        ("ident user differs from USERID", "ident_mismatch"),
        ("max-binds-per-client reached", "max_binds"),
        ("max-udp-per-client reached", "max_udp"),
        ("access policy error", "policy_error"),
        ("BIND peer 127.0.0.2 is not the requested 127.0.0.1", "bind_wrong_peer"),
        ("something new", "other"),
        ("client closed", None),
        ("client closed before completing its request", None),
        ("client closed while waiting for the BIND peer", None),
        ("client closed the UDP association's connection", None),
        ("idle timeout (UDP association)", None),
        ("destination closed", None),
        ("both sides closed", None),
        ("idle timeout", None),
    ],
)
def test_rejectionReasonsMapToFewCategories(reason: str, category: str | None) -> None:
    """Each end reason counts under a fixed category; normal ends are no rejection."""
    assert rejectionReason(reason) == category


def test_identOutcomesAreBounded() -> None:
    """Known outcomes get short labels; any other exception name is C{other}."""
    assert [
        identOutcome(o)
        for o in (
            "match",
            "mismatch",
            "IdentUnreachable",
            "IdentTimeout",
            "IdentErrorReply",
            "IdentProtocolError",
            "ConnectionLost",
        )
    ] == [
        "match",
        "mismatch",
        "unreachable",
        "timeout",
        "error_reply",
        "protocol_error",
        "other",
    ]


def test_metricsUseAPrivateRegistry() -> None:
    """
    Two servers' metrics coexist, and nothing lands in prometheus_client's
    global registry (which would clash across servers and tests).
    """
    first, second = ServerMetrics(), ServerMetrics()
    first.dnsLookup(ok=True)
    assert first.registry is not second.registry
    assert (
        first.registry.get_sample_value("socks_dns_lookups_total", {"result": "ok"})
        == 1
    )
    assert (
        second.registry.get_sample_value("socks_dns_lookups_total", {"result": "ok"})
        == 0
    )
    assert not [m for m in REGISTRY.collect() if m.name.startswith("socks_")]


def test_humanFormats() -> None:
    """Bytes and durations are short and readable."""
    assert [humanBytes(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 TiB",
    ]
    assert [humanSeconds(s) for s in (0, 0.44, 42.4, 185, 7300, 90000)] == [
        "0.0 s",
        "0.4 s",
        "42 s",
        "3 min 5 s",
        "2 h 1 min",
        "1 d 1 h",
    ]


def test_sessionsURLAcceptsBaseOrFullURL() -> None:
    """The command takes the base URL, the /sessions URL or host:port."""
    expected = "http://127.0.0.1:9180/sessions"
    for given in (
        "http://127.0.0.1:9180",
        "http://127.0.0.1:9180/",
        "http://127.0.0.1:9180/sessions",
        "127.0.0.1:9180",
    ):
        assert sessionsURL(given) == expected
    with pytest.raises(FetchError):
        sessionsURL("file:///etc/passwd")


def test_tableNeutralisesTerminalControls() -> None:
    """
    Whatever a server sends, the table holds no control characters; long
    cells are cut.
    """
    table = formatTable(
        [{"id": 1, "user": "a\x1b[2Jb", "destination": "x" * 100, "state": "relaying"}]
    )
    assert "\x1b" not in table
    assert "a\\x1b[2Jb" in table
    assert "x" * 37 + "..." in table
    assert "x" * 38 not in table


def test_sessionsCommandNeedsNoTwisted() -> None:
    """
    The C{sessions} command is a plain HTTP client: it runs wherever Python
    does, without Twisted or prometheus_client.
    """
    from tests.test_layout import PACKAGE, importedModules

    imported = importedModules(PACKAGE / "app/_sessionscli.py")
    assert not {
        m for m in imported if m.split(".")[0] in ("twisted", "prometheus_client")
    }


# -- the server on loopback ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sessionsAndMetricsInEveryStateThenExactTotals(
    ports: list[IListeningPort], sockets: list[socket.socket]
) -> None:
    """
    Sessions negotiating, resolving, connecting, waiting for a BIND peer and
    relaying each show in C{/sessions} and in C{socks_sessions_active}; a
    refused lookup is counted.  After every session ends, nothing is active
    and the byte totals equal exactly what the clients sent and received.
    """
    resolver = FakeHostnameResolver({"echo.test": ["127.0.0.1"], "nx.test": []})
    server = startServer(ports, nameResolver=resolver, connector=StallingConnector())
    echo = startEcho(ports)
    firstPayload = os.urandom(30_000)
    sent = received = 0

    def openSessions() -> dict[str, Any]:
        opened: dict[str, Any] = {}
        # Refused: a name with no address (counted, then gone).
        with socksConnect(
            server.proxy, encodeRequest(Command.CONNECT, 80, hostname="nx.test")
        ) as refused:
            assert recvExactly(refused, 8) == REJECTED
        # Negotiating: half a request.
        opened["negotiating"] = socket.create_connection(
            ("127.0.0.1", server.proxy), timeout=10
        )
        sockets.append(opened["negotiating"])
        opened["negotiating"].sendall(b"\x04\x01\x00")
        # Resolving: a name the resolver never answers.
        opened["resolving"] = socksConnect(
            server.proxy,
            encodeRequest(Command.CONNECT, 80, hostname="never.test", userid=b"rita"),
        )
        sockets.append(opened["resolving"])
        # Connecting: a destination that never accepts.
        opened["connecting"] = socksConnect(
            server.proxy,
            encodeRequest(Command.CONNECT, STALL_PORT, LOCALHOST, userid=b"carl"),
        )
        sockets.append(opened["connecting"])
        # Waiting for the BIND peer.
        opened["bind"], opened["listener"] = bindRequest(server.proxy)
        sockets.append(opened["bind"])
        # Relaying: SOCKS4A to the echo server, known bytes both ways.
        relay = socksConnect(
            server.proxy,
            encodeRequest(Command.CONNECT, echo, hostname="echo.test", userid=b"alice"),
        )
        sockets.append(relay)
        opened["relaying"] = relay
        assert recvExactly(relay, 8) == GRANTED
        relay.sendall(firstPayload)
        assert recvExactly(relay, len(firstPayload)) == firstPayload
        return opened

    opened = await inThread(openSessions)
    sent += len(firstPayload)
    received += len(firstPayload)
    everyState = sorted(
        ["negotiating", "resolving", "connecting", "waiting for BIND peer", "relaying"]
    )
    await eventually(lambda: statesOf(server.factory) == everyState)

    answer = await getJSON(server)
    byState = {s["state"]: s for s in answer["sessions"]}
    assert sorted(byState) == everyState
    assert [s["id"] for s in answer["sessions"]] == sorted(
        s["id"] for s in answer["sessions"]
    )
    relaying = byState["relaying"]
    assert relaying["user"] == "alice"
    assert relaying["command"] == "connect"
    assert relaying["destination"] == f"echo.test:{echo}"
    assert relaying["resolved"] == f"127.0.0.1:{echo}"
    assert (relaying["bytesUp"], relaying["bytesDown"]) == (len(firstPayload),) * 2
    assert byState["resolving"]["destination"] == "never.test:80"
    assert byState["resolving"]["resolved"] is None
    assert byState["connecting"]["destination"] == f"127.0.0.1:{STALL_PORT}"
    assert byState["connecting"]["user"] == "carl"
    assert byState["waiting for BIND peer"]["command"] == "bind"
    assert byState["negotiating"]["command"] is None
    negotiatingPort = opened["negotiating"].getsockname()[1]
    assert byState["negotiating"]["client"] == f"127.0.0.1:{negotiatingPort}"
    counters = answer["counters"]
    assert counters["active"] == 5
    assert counters["sessionsStarted"] == 6
    assert counters["sessionsEnded"] == 1
    assert counters["rejected"] == 1
    assert (counters["dnsLookups"], counters["dnsFailures"]) == (2, 1)
    assert (counters["bytesUp"], counters["bytesDown"]) == (sent, received)

    samples = await scrape(server)
    assert active(samples) == {
        "negotiating": 1,
        "resolving": 1,
        "connecting": 1,
        "waiting": 1,
        "associated": 0,
        "relaying": 1,
        "closed": 0,
    }
    assert value(samples, "socks_bytes_relayed_total", direction="up") == sent
    assert value(samples, "socks_bytes_relayed_total", direction="down") == received
    assert value(samples, "socks_dns_lookups_total", result="ok") == 1
    assert value(samples, "socks_dns_lookups_total", result="failed") == 1
    assert rejected(samples, "name_lookup_failed") == 1
    assert rejected(samples, "denied") == 0
    assert ended(samples, "connect", "91") == 1
    assert value(samples, "socks_sessions_started_total") == 6
    assert value(samples, "socks_handshake_seconds_count") == 1

    # Now move more bytes, let the BIND peer in, and end everything.
    secondPayload = os.urandom(70_000)
    fromPeer = os.urandom(50_000)
    fromBindClient = b"from the client"

    def finish() -> tuple[int, int]:
        up = down = 0
        relay = opened["relaying"]
        relay.sendall(secondPayload)
        assert recvExactly(relay, len(secondPayload)) == secondPayload
        up += len(secondPayload)
        down += len(secondPayload)
        relay.close()
        bind = opened["bind"]
        with socket.create_connection(opened["listener"], timeout=10) as peer:
            assert recvExactly(bind, 8)[:2] == b"\x00\x5a"
            peer.sendall(fromPeer)
            assert recvExactly(bind, len(fromPeer)) == fromPeer
            down += len(fromPeer)
            bind.sendall(fromBindClient)
            bind.shutdown(socket.SHUT_WR)
            up += len(fromBindClient)
            assert recvAll(peer) == fromBindClient
        assert recvAll(bind) == b""
        opened["negotiating"].close()
        # A FIN is held until the outbound connection is up (the client may
        # have sent its data and FIN with the request); a reset is not.
        abort(opened["resolving"])
        abort(opened["connecting"])
        return up, down

    up, down = await inThread(finish)
    sent += up
    received += down
    await eventually(lambda: not server.factory.activeSessions)

    samples = await scrape(server)
    assert set(active(samples).values()) == {0}
    assert value(samples, "socks_bytes_relayed_total", direction="up") == sent
    assert value(samples, "socks_bytes_relayed_total", direction="down") == received
    assert ended(samples, "connect", "90") == 1
    assert ended(samples, "bind", "90") == 1
    assert ended(samples, "connect", "91") == 1
    assert ended(samples, "connect", "none") == 2
    assert ended(samples, "none", "none") == 1
    assert value(samples, "socks_handshake_seconds_count") == 2
    assert (
        sum(v for (name, _), v in samples.items() if name == "socks_rejections_total")
        == 1
    )
    answer = await getJSON(server)
    assert answer["sessions"] == []
    counters = answer["counters"]
    assert counters["active"] == 0
    assert (counters["sessionsEnded"], counters["granted"]) == (6, 2)
    assert (counters["bytesUp"], counters["bytesDown"]) == (sent, received)


@pytest_twisted.ensureDeferred
async def test_identOutcomesAndRefusalsAreCounted(
    ports: list[IListeningPort], sockets: list[socket.socket]
) -> None:
    """
    Strict ident: a matching user relays (and shows its ident user), a
    different user gets 93, a timeout and an ERROR reply get 92; each
    outcome and refusal is counted under its label.
    """
    ident = FakeIdentResolver()
    server = startServer(ports, identResolver=ident, identMode=IdentMode.STRICT)
    echo = startEcho(ports)

    def clients() -> list[bytes]:
        replies = []
        for user, answer in (
            (b"alice", "alice"),
            (b"bob", "mallory"),
            (b"carol", IdentTimeout("slow")),
            (b"dave", IdentErrorReply("NO-USER")),
        ):
            sock = socket.create_connection(("127.0.0.1", server.proxy), timeout=10)
            sockets.append(sock)
            ident.answers[sock.getsockname()] = answer
            sock.sendall(encodeRequest(Command.CONNECT, echo, LOCALHOST, userid=user))
            replies.append(recvExactly(sock, 8)[:2])
        return replies

    assert await inThread(clients) == [
        b"\x00\x5a",
        b"\x00\x5d",
        b"\x00\x5c",
        b"\x00\x5c",
    ]
    await eventually(lambda: statesOf(server.factory) == ["relaying"])
    answer = await getJSON(server)
    [session] = answer["sessions"]
    assert (session["user"], session["identUser"]) == ("alice", "alice")
    assert answer["counters"]["identMatches"] == 1
    assert answer["counters"]["identLookups"] == 4
    samples = await scrape(server)
    outcomes = {
        outcome: value(samples, "socks_ident_lookups_total", outcome=outcome)
        for outcome in ("match", "mismatch", "timeout", "error_reply", "unreachable")
    }
    assert outcomes == {
        "match": 1,
        "mismatch": 1,
        "timeout": 1,
        "error_reply": 1,
        "unreachable": 0,
    }
    assert rejected(samples, "ident_mismatch") == 1
    assert rejected(samples, "no_ident") == 2
    assert ended(samples, "connect", "93") == 1
    assert ended(samples, "connect", "92") == 2


@pytest_twisted.ensureDeferred
async def test_pageEscapesClientTextAndLocksItselfDown(
    ports: list[IListeningPort], sockets: list[socket.socket]
) -> None:
    """
    A USERID full of markup (the codec keeps host names to DNS characters)
    appears in the page as text, never as markup; the page forbids everything but its own style and
    script, and nothing is cached.
    """
    server = startServer(ports, nameResolver=FakeHostnameResolver())
    userid = b'<img src=x onerror="alert(1)"><b>&amp;'
    hostname = "never.test"

    def client() -> None:
        sockets.append(
            socksConnect(
                server.proxy,
                encodeRequest(Command.CONNECT, 80, hostname=hostname, userid=userid),
            )
        )

    await inThread(client)
    await eventually(lambda: statesOf(server.factory) == ["resolving"])
    status, headers, body = await inThread(httpGet, server.url + "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode("utf-8")
    assert "<img" not in page and "<b>" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&lt;b&gt;&amp;amp;" in page
    assert "never.test:80" in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest_twisted.ensureDeferred
async def test_foreignHostNamesAreRefused(ports: list[IListeningPort]) -> None:
    """
    A request naming another host (a DNS-rebinding page in a browser) gets
    403; IP addresses and localhost are served.
    """
    server = startServer(ports)
    results = {}
    for host in (
        "evil.example",
        "evil.example:80",
        "127.0.0.1",
        f"localhost:{server.status}",
        "[::1]:80",
    ):
        status, _, body = await inThread(
            httpGet, server.url + "/sessions", {"Host": host}
        )
        results[host] = status
        if status == 403:
            assert b"session" not in body
    assert results == {
        "evil.example": 403,
        "evil.example:80": 403,
        "127.0.0.1": 200,
        f"localhost:{server.status}": 200,
        "[::1]:80": 200,
    }


@pytest_twisted.ensureDeferred
async def test_metricsSpeakOpenMetricsWhenAsked(ports: list[IListeningPort]) -> None:
    """A scraper asking for OpenMetrics gets it; otherwise the 0.0.4 text format."""
    server = startServer(ports)
    status, headers, body = await inThread(
        httpGet,
        server.url + "/metrics",
        {"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    samples = await scrape(server)
    assert value(samples, "socks_sessions_started_total") == 0


@pytest_twisted.ensureDeferred
async def test_sessionsCommandPrintsTheTable(
    ports: list[IListeningPort], sockets: list[socket.socket]
) -> None:
    """
    C{python -m twisted_socks sessions URL} prints one aligned row per
    session and a line of counters, and exits 0.
    """
    server = startServer(ports)
    echo = startEcho(ports)

    def client() -> None:
        relay = socksConnect(
            server.proxy,
            encodeRequest(Command.CONNECT, echo, LOCALHOST, userid=b"alice"),
        )
        sockets.append(relay)
        assert recvExactly(relay, 8) == GRANTED
        relay.sendall(b"x" * 2048)
        recvExactly(relay, 2048)
        sockets.append(
            socket.create_connection(("127.0.0.1", server.proxy), timeout=10)
        )

    await inThread(client)
    await eventually(lambda: statesOf(server.factory) == ["negotiating", "relaying"])
    out, err = io.StringIO(), io.StringIO()
    assert await inThread(main, [server.url], out, err) == 0
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    header = lines[0].split()
    assert header == [
        "ID",
        "CLIENT",
        "USER",
        "PROTO",
        "CMD",
        "DESTINATION",
        "RESOLVED",
        "STATE",
        "AGE",
        "UP",
        "DOWN",
        "IDLE",
        "RULE",
    ]
    relayRow = next(line for line in lines if "relaying" in line)
    assert "alice" in relayRow and f"127.0.0.1:{echo}" in relayRow
    assert relayRow.count("2.0 KiB") == 2
    assert any("negotiating" in line for line in lines[1:3])
    # Columns line up: every cell of a column starts where its heading does.
    assert relayRow.index("relaying") == lines[0].index("STATE")
    assert lines[-1].startswith("2 active (1 negotiating, 1 relaying)")
    out = io.StringIO()
    assert await inThread(main, [server.url + "/sessions", "--json"], out, err) == 0
    assert len(json.loads(out.getvalue())["sessions"]) == 2


@pytest_twisted.ensureDeferred
async def test_sessionsCommandUnreachableExits1(ports: list[IListeningPort]) -> None:
    """
    Nothing listening, a page that is not a status endpoint, or a URL that
    is not http: one line on stderr, nothing on stdout, exit status 1.
    """
    server = startServer(ports)
    port = closedPort()
    for url, expected in (
        (f"http://127.0.0.1:{port}", f"cannot read http://127.0.0.1:{port}/sessions: "),
        (server.url + "/elsewhere", "HTTP 404"),
        ("ftp://127.0.0.1/", "not an http"),
    ):
        out, err = io.StringIO(), io.StringIO()
        assert await inThread(main, [url, "--timeout", "5"], out, err) == 1
        assert out.getvalue() == ""
        message = err.getvalue()
        assert message.count("\n") == 1 and message.startswith(
            "twisted_socks sessions: "
        )
        assert expected in message


@pytest_twisted.ensureDeferred
async def test_statusServiceListensWhereToldAndSaysWhere(
    ports: list[IListeningPort],
) -> None:
    """
    L{makeStatusService} serves the site on its endpoint description and
    logs the page's URL; a non-loopback address draws a warning.
    """
    server = startServer(ports)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service = makeStatusService(
            reactor, "tcp:0:interface=127.0.0.1", server.factory, server.metrics
        )
        service.privilegedStartService()
        service.startService()
        try:
            port = await service._waitingForPort
            url = f"http://127.0.0.1:{port.getHost().port}"
            status, _, body = await inThread(httpGet, url + "/sessions")
            assert status == 200 and json.loads(body)["sessions"] == []
            # What it would say on a public address (not listened on here).
            exposed = TCPAddress("TCP", "192.0.2.1", 9180)
            service._listening(
                type("FakePort", (), {"getHost": lambda self: exposed})()
            )
        finally:
            await service.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    texts = [
        formatEvent(e)
        for e in events
        if e.get("log_namespace") == "twisted_socks.status"
    ]
    assert texts[0] == f"status page on {url}/ (tcp:0:interface=127.0.0.1)"
    assert (
        texts[1] == "status page on http://192.0.2.1:9180/ (tcp:0:interface=127.0.0.1)"
    )
    assert "not on loopback and has no authentication" in texts[2]


# -- a real browser -----------------------------------------------------------


def startBrowser(profile: Path, log: Path) -> Any:
    """
    Headless Chromium driven by Debian's ChromeDriver; nothing is
    downloaded (no Selenium Manager) and Chromium makes no background
    connections (the machine's network is closed).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1500,700",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest_twisted.ensureDeferred
async def test_browserShowsBothTunnelsAndRefreshes(
    ports: list[IListeningPort],
    sockets: list[socket.socket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Headless Chromium loads the page while two tunnels are open and finds a
    row for each (a screenshot is saved); when one tunnel closes, the page
    drops its row by itself, and its script broke no security policy.
    """
    requireBrowser()
    monkeypatch.setenv("SE_OFFLINE", "true")
    from selenium.common.exceptions import NoSuchElementException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = startServer(ports)
    echo = startEcho(ports)

    def tunnels() -> list[socket.socket]:
        opened = []
        for user in (b"alice", b"bob"):
            sock = socksConnect(
                server.proxy,
                encodeRequest(Command.CONNECT, echo, LOCALHOST, userid=user),
            )
            sockets.append(sock)
            assert recvExactly(sock, 8) == GRANTED
            sock.sendall(user * 1000)
            recvExactly(sock, len(user) * 1000)
            opened.append(sock)
        return opened

    alice, bob = await inThread(tunnels)
    await eventually(lambda: statesOf(server.factory) == ["relaying", "relaying"])
    ids = {info.user: info.id for info in server.factory.sessions()}
    screenshot = tmp_path / "status.png"
    driver = await inThread(
        startBrowser, tmp_path / "profile", tmp_path / "chromedriver.log"
    )
    try:

        def load() -> dict[str, str]:
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 15)
            rows = {
                user: wait.until(
                    lambda d, i=i: d.find_element(By.ID, f"session-{i}")
                ).text
                for user, i in ids.items()
            }
            table = driver.find_element(By.ID, "sessions")
            assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2
            assert driver.save_screenshot(str(screenshot))
            return rows

        rows = await inThread(load)
        for user, text in rows.items():
            assert user in text and "relaying" in text
            assert f"127.0.0.1:{echo}" in text
        assert "4.9 KiB" in rows["alice"] and "2.9 KiB" in rows["bob"]

        await inThread(bob.close)
        await eventually(lambda: statesOf(server.factory) == ["relaying"])

        def refreshed() -> list[dict[str, Any]]:
            def bobGone(d: Any) -> bool:
                try:
                    d.find_element(By.ID, f"session-{ids['bob']}")
                except NoSuchElementException:
                    return True
                return False

            WebDriverWait(driver, 15).until(bobGone)
            driver.find_element(By.ID, f"session-{ids['alice']}")
            driver.save_screenshot(str(tmp_path / "status-refreshed.png"))
            return list(driver.get_log("browser"))

        log = await inThread(refreshed)
        assert not [e for e in log if e["level"] == "SEVERE"], log
    finally:
        await inThread(driver.quit)
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert screenshot.stat().st_size > 5000
    alice.close()
