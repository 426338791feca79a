"""
UDP ASSOCIATE and the server's routes (C{--routes}, issue 19): each
datagram's destination takes its route like a CONNECT's (a C{deny} line
denies it, a C{sockd} line drops it, as there is no relay-to-relay UDP, a
C{direct} line or none sends it), and an association none of whose
datagrams could go direct is refused: 07 when a C{sockd} line takes them,
02 when only C{deny} lines do.  On a memory reactor with fake UDP ports,
and once on real loopback sockets with a routes file.
"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import IListeningPort
from twisted.logger import capturedLogs

from tests._support import eventually
from tests.test_client import TIMEOUT
from tests.test_socks5server import NOAUTH, close, failure5
from tests.test_udprelay import Echo, Proxy, Raw, rawAssociation, toEcho, udp
from tests.test_udpsession import ASSOCIATE, UDPServer
from twisted_socks.client._routes import loadRoutes, parseRoutes
from twisted_socks.outbound._routed import Router
from twisted_socks.outbound._udproute import (
    DatagramWay,
    associationRefusal,
    datagramWay,
)
from twisted_socks.policy import _check
from twisted_socks.wire._outcome import Outcome
from twisted_socks.wire._socks5udp import encodeDatagram

CLIENT = ("127.0.0.1", 5000)
DESTINATION = IPv4Address("192.0.2.1")


def routed(text: str) -> UDPServer:
    """A memory-reactor server whose routes are C{text}."""
    s = UDPServer()
    s.factory.router = Router(s.clock, parseRoutes(text, "routes", server=True))
    return s


def associated(s: UDPServer) -> tuple[Any, Any, Any]:
    """Open a session, ask for an association: protocol, transport, relay."""
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    [relay] = s.clock.udp
    return protocol, transport, relay


def udpCounts(s: UDPServer) -> tuple[int, int, int]:
    """The ended session's datagrams sent, denied and dropped."""
    [record] = s.records
    assert record.udp is not None
    return record.udp.datagramsUp, record.udp.denied, record.udp.dropped


def test_denyRouteDeniesTheDatagram() -> None:
    """
    A destination a C{deny} line matches gets nothing, though the rules
    allow it: its datagrams are counted as denied; others are sent.
    """
    s = routed("deny 192.0.2.1/32 eq 53\n")
    protocol, _, relay = associated(s)
    relay.protocol.datagramReceived(encodeDatagram(b"no", 53, DESTINATION), CLIENT)
    relay.protocol.datagramReceived(encodeDatagram(b"no", 53, DESTINATION), CLIENT)
    relay.protocol.datagramReceived(encodeDatagram(b"yes", 54, DESTINATION), CLIENT)
    [outbound] = s.clock.udp[1:]
    assert outbound.written == [(b"yes", ("192.0.2.1", 54))]
    close(protocol)
    assert udpCounts(s) == (1, 2, 0)


def test_sockdRouteDropsCountsAndLogsOnce() -> None:
    """
    A destination a C{sockd} line takes is not sent to (no relay-to-relay
    UDP): each datagram is counted as dropped, the drop is logged once for
    the destination, and a name on that line is never looked up here.
    """
    s = routed("sockd @=127.0.0.1:1081 192.0.2.0/24\nsockd @=127.0.0.1:1081 .up.test\n")
    protocol, _, relay = associated(s)
    with capturedLogs() as events:
        for _ in range(3):
            relay.protocol.datagramReceived(
                encodeDatagram(b"x", 53, DESTINATION), CLIENT
            )
        relay.protocol.datagramReceived(
            encodeDatagram(b"x", 53, name="ns.up.test"), CLIENT
        )
    assert s.clock.udp[1:] == []
    assert s.resolver.lookups == []
    logged = [e for e in events if "relay-to-relay" in e.get("log_format", "")]
    assert [(e["destination"], e["route"]) for e in logged] == [
        ("192.0.2.1:53", "routes:1"),
        ("ns.up.test:53", "routes:2"),
    ]
    close(protocol)
    assert udpCounts(s) == (0, 0, 4)


def test_directRouteAndNoMatchSend() -> None:
    """A C{direct} line sends the datagram, and so does no line at all."""
    s = routed("direct 192.0.2.1/32\nsockd @=127.0.0.1:1081 198.51.100.0/24\n")
    protocol, _, relay = associated(s)
    relay.protocol.datagramReceived(encodeDatagram(b"a", 53, DESTINATION), CLIENT)
    relay.protocol.datagramReceived(
        encodeDatagram(b"b", 53, IPv4Address("203.0.113.1")), CLIENT
    )
    [outbound] = s.clock.udp[1:]
    assert outbound.written == [(b"a", ("192.0.2.1", 53)), (b"b", ("203.0.113.1", 53))]
    close(protocol)
    assert udpCounts(s) == (2, 0, 0)


def test_rulesDenialComesBeforeTheRoute() -> None:
    """
    A destination the rules deny is denied (and not logged as chained)
    even when a C{sockd} line would take it: rules first, then routes.
    """
    s = routed("sockd @=127.0.0.1:1081 0/0 eq 9\n")
    protocol, _, relay = associated(s)
    with capturedLogs() as events:
        relay.protocol.datagramReceived(encodeDatagram(b"x", 9, DESTINATION), CLIENT)
    assert not [e for e in events if "relay-to-relay" in e.get("log_format", "")]
    close(protocol)
    assert udpCounts(s) == (0, 1, 0)


def test_wholeClientChainedRouteAnswers07() -> None:
    """
    When a C{sockd} line covering every destination and port comes first
    for this client, the association is refused with 07 and a close, no
    socket is opened, and the record names the route.
    """
    s = routed("sockd @=127.0.0.1:1081 from=127.0.0.0/8 0/0\n")
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value() == b"\x05\x00" + failure5(7)
    assert s.clock.udp == []
    close(protocol)
    [record] = s.records
    assert (record.reply, record.route) == (7, "routes:1")
    assert record.reason is not None and "relay-to-relay" in record.reason


def test_wholeClientDenyRouteAnswers02() -> None:
    """A C{deny} line covering everything for this client answers 02."""
    s = routed("deny 0.0.0.0/0\n")
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value() == b"\x05\x00" + failure5(2)
    close(protocol)
    [record] = s.records
    assert (record.reply, record.route) == (2, "routes:1")


@pytest.mark.parametrize(
    "text",
    [
        # Another client's line.
        "sockd @=127.0.0.1:1081 from=10.0.0.0/8 0/0\n",
        # Another user's line (this client has no user).
        "sockd @=127.0.0.1:1081 *=alice 0/0\n",
        # Not every port.
        "sockd @=127.0.0.1:1081 0/0 range 1 1023\n",
        # A direct line first.
        "direct 192.0.2.0/24\nsockd @=127.0.0.1:1081 0/0\n",
        # A name pattern covers names only.
        "sockd @=127.0.0.1:1081 .test\n",
    ],
)
def test_associationGrantedWhenSomeDatagramCouldGoDirect(text: str) -> None:
    """
    An association is granted when some destination of this client takes
    no chained line: another client's or user's line, a line on some ports
    or destinations only, or a C{direct} line before the chained one.
    """
    s = routed(text)
    protocol, transport = s.open()
    protocol.dataReceived(NOAUTH + ASSOCIATE)
    assert transport.value()[2:4] == b"\x05\x00"
    assert len(s.clock.udp) == 1


def test_associationRefusalReadsLinesDownToTheCoveringOne() -> None:
    """
    Lines before the covering one count: C{sockd} and C{deny} lines only
    refuse (07 if one chains, naming the first chained line); every port
    written as a range or C{ge 0} covers them all; C{neq} never does.
    """
    table = parseRoutes(
        "deny 10.0.0.0/8\nsockd @=127.0.0.1:1 192.0.2.0/24\ndeny 0/0 range 0 65535\n",
        "r",
        server=True,
    )
    client = ip_address("127.0.0.1")
    refusal = associationRefusal(table, "", client)
    assert refusal is not None
    assert (refusal[0], refusal[2].location) == (
        Outcome.COMMAND_NOT_SUPPORTED,
        "r:2",
    )
    table = parseRoutes("deny 0/0 ge 0\n", "r", server=True)
    refusal = associationRefusal(table, "", client)
    assert refusal is not None and refusal[0] is Outcome.DENIED
    table = parseRoutes("deny 0/0 neq 53\n", "r", server=True)
    assert associationRefusal(table, "", client) is None


def test_datagramWayOfEachAction() -> None:
    """No route and C{direct} send, C{deny} denies, C{sockd} chains."""
    table = parseRoutes(
        "direct 192.0.2.1/32\ndeny 192.0.2.2/32\nsockd @=127.0.0.1:1 0/0\n",
        "r",
        server=True,
    )
    ways = [datagramWay(table.match(f"192.0.2.{n}", 53)) for n in (1, 2, 3)]
    assert ways == [DatagramWay.DIRECT, DatagramWay.DENIED, DatagramWay.CHAINED]
    assert datagramWay(None) is DatagramWay.DIRECT


@pytest_twisted.ensureDeferred
async def test_routesFileOnRealSockets(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    On real loopback sockets, with a routes file: the echo a C{direct}
    line names answers; the one a C{sockd} line takes and the one a
    C{deny} line takes hear nothing; the record counts one of each.
    """
    direct, chained, denied = Echo(), Echo(), Echo()
    directPort = udp(ports, direct)
    chainedPort = udp(ports, chained)
    deniedPort = udp(ports, denied)
    routes = tmp_path / "routes"
    routes.write_text(
        f"sockd @=127.0.0.1:1 127.0.0.1/32 eq {chainedPort}\n"
        f"deny 127.0.0.1/32 eq {deniedPort}\n"
        f"direct 0/0\n"
    )
    proxy = Proxy(ports)
    proxy.factory.router = Router(
        proxy.factory.reactor, loadRoutes(str(routes), server=True)
    )
    tcp, relayPort = await rawAssociation(ports, proxy)
    client = Raw(ports, relayPort)
    client.send(toEcho(b"chained", chainedPort))
    client.send(toEcho(b"denied", deniedPort))
    client.send(toEcho(b"direct", directPort))
    await eventually(lambda: bool(client.inbox.received), TIMEOUT)
    assert [d for d, _ in direct.received] == [b"direct"]
    assert (chained.received, denied.received) == ([], [])
    tcp.close()
    await eventually(lambda: bool(proxy.records), TIMEOUT)
    [record] = proxy.records
    assert record.udp is not None
    assert (record.udp.datagramsUp, record.udp.denied, record.udp.dropped) == (1, 1, 1)


def test_checkShowsWhatRoutesDoToUDP(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    C{python -m twisted_socks check --routes FILE --udp} says whether the
    routes refuse the association (07, naming the line; exit 1) or grant
    it; with C{DEST:PORT}, whether the datagram is dropped as chained,
    denied (both exit 1) or sent direct (exit 0).
    """
    rules = tmp_path / "rules"
    rules.write_text("permit cmd=udp 0/0 0/0\n")
    routes = tmp_path / "routes"
    routes.write_text(
        "sockd @=127.0.0.1:1081 from=10.9.0.0/16 0/0\n"
        "sockd @=socks5h://gw:1080 .corp.test\n"
        "deny 192.0.2.0/24\n"
    )
    common = [str(rules), "--routes", str(routes), "--udp"]
    assert _check.main([*common, "--client", "10.9.1.1"]) == 1
    out = capsys.readouterr().out
    assert f"route: {routes}:1: sockd @=127.0.0.1:1081 from=10.9.0.0/16 0/0\n" in out
    assert "-> 07: every datagram would go through an upstream" in out
    assert _check.main(common) == 0
    assert "route: granted" in capsys.readouterr().out
    assert _check.main([*common, "ns.corp.test:53"]) == 1
    out = capsys.readouterr().out
    assert "-> dropped as chained (no relay-to-relay UDP)" in out
    assert _check.main([*common, "192.0.2.1:53"]) == 1
    assert f"route: {routes}:3: deny 192.0.2.0/24\n-> denied" in capsys.readouterr().out
    assert _check.main([*common, "198.51.100.1:53"]) == 0
    assert "route: no route matched: direct" in capsys.readouterr().out
