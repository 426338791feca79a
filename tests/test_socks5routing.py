"""
The client routing file with scheme'd server lists
(C{sockd @=socks5h://alice:pw@up1:1080,socks4a://up2 ...}): parsing, the
password kept out of every text, and real routes through microsocks (SOCKS5
with a password) and our server (SOCKS4A), failover included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock

from tests._support import closedPort, eventually, listen
from tests.test_client import TIMEOUT
from tests.test_routing import (
    CountingFactory,
    close,
    echoThrough,
    startProxy,
    writeConf,
)
from tests.test_socks5interop import PASSWORD, USER, microsocks
from twisted_socks import (
    ProxiesUnreachable,
    ProxyServer,
    RoutingEndpoint,
    RulesError,
    SOCKS4ClientEndpoint,
    SOCKS5ClientEndpoint,
    loadRoutes,
    parseRoutes,
)
from twisted_socks.client._routing import _ProxyHop

# The imported fixtures are used by name, which linters cannot see: listing
# them here marks them as used.
__all__ = ["microsocks"]

SECRET = "Zz-never-shown-9"


def test_schemedServerListParses() -> None:
    """
    An C{@=} list mixes URLs (scheme, percent-decoded credentials, default
    port) and bare servers, which keep meaning SOCKS4A.
    """
    table = parseRoutes(
        f"sockd @=socks5h://alice:{SECRET}%40x@up1:1081,socks4a://up2,up3:1082"
        " balance 0/0\n"
    )
    [route] = table.routes
    assert route.servers == (
        ProxyServer("up1", 1081, "socks5h", b"alice", f"{SECRET}@x".encode()),
        ProxyServer("up2", 1080, "socks4a"),
        ProxyServer("up3", 1082),
    )
    assert route.balance


def test_thePasswordIsInNoText() -> None:
    """
    The route's text, the server's C{str} and C{repr}, and the route's
    C{repr} never hold the password.
    """
    [route] = parseRoutes(
        f"sockd @=socks5h://alice:{SECRET}@up1,socks5://[::1]:9050 0/0\n"
    ).routes
    server = route.servers[0]
    for text in (route.text, str(server), repr(server), repr(route)):
        assert SECRET not in text
    assert str(server) == "socks5h://alice:***@up1:1080"
    assert "socks5h://alice:***@up1" in route.text
    assert str(route.servers[1]) == "socks5://[::1]:9050"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"sockd @=http://a:{SECRET}@up1 0/0", "unknown scheme 'http'"),
        (f"sockd @=socks5h://a:{SECRET}@up1:99999 0/0", "not a number 1..65535"),
        (f"sockd @=socks5h://a:{SECRET}@bad_host! 0/0", "expected a host name"),
        (f"sockd @=socks4a://a:{SECRET}@up1 0/0", "no password"),
        (f"sockd @=socks5h://a:{SECRET}@up1/x 0/0", "no path"),
    ],
)
def test_badServerURLsNameTheProblemNotThePassword(line: str, message: str) -> None:
    """A bad server URL is a L{RulesError} with the line, never the password."""
    with pytest.raises(RulesError) as caught:
        parseRoutes(line + "\n", "socks.conf")
    assert message in str(caught.value)
    assert "socks.conf:1" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_defaultServerMayBeAURL() -> None:
    """The default server (C{defaultServer=}) may be a URL too, and is checked."""
    table = parseRoutes("sockd 0/0\n", defaultServer="socks5h://a:b@up9")
    assert table.routes[0].servers[0].scheme == "socks5h"
    with pytest.raises(ValueError) as caught:
        parseRoutes("sockd 0/0\n", defaultServer=f"socks5h://a:{SECRET}@up9:0")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("server", "kind", "remote", "credentials"),
    [
        ("socks5h://alice:pw@up1", SOCKS5ClientEndpoint, True, (b"alice", b"pw")),
        ("socks5://up1", SOCKS5ClientEndpoint, False, None),
        ("socks4://bob@up1", SOCKS4ClientEndpoint, False, b"bob"),
        ("socks4a://up1", SOCKS4ClientEndpoint, True, b"ann"),
        ("up1", SOCKS4ClientEndpoint, True, b"ann"),
    ],
)
def test_eachServerGetsItsProtocol(
    server: str, kind: type, remote: bool, credentials: object
) -> None:
    """
    A route's server is reached with the endpoint its scheme names, its
    URL's credentials (SOCKS4: the URL's user, else the endpoint's), and
    its resolution; a bare server stays SOCKS4A with the endpoint's user.
    """
    table = parseRoutes(f"sockd @={server} 0/0\n")
    memory = MemoryReactorClock()
    endpoint = RoutingEndpoint(memory, table, "example.com", 80, user="ann")
    [route] = table.routes
    hop = _ProxyHop(endpoint._serverEndpoint(route.servers[0]))
    through = endpoint._throughServer(route.servers[0], hop)
    assert type(through) is kind
    assert through._remoteResolve is remote  # type: ignore[attr-defined]
    if kind is SOCKS5ClientEndpoint:
        assert through._credentials == credentials  # type: ignore[attr-defined]
    else:
        assert through._userid == credentials  # type: ignore[attr-defined]


# Real routes.


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_directAndSOCKS5WithAuthentication(
    microsocks: int, ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    One file: 127.0.0.1 goes direct, C{localhost} through microsocks as
    C{socks5h://} with its username and password (percent-encoded), both
    through a C{socks:} endpoint string.
    """
    echoFactory = CountingFactory()
    echo = listen(ports, echoFactory)
    encoded = PASSWORD.replace(":", "%3A").replace("@", "%40").replace(" ", "%20")
    conf = writeConf(
        tmp_path,
        f"direct 127.0.0.1 255.255.255.255 eq {echo}\n"
        f"sockd @=socks5h://{USER}:{encoded}@127.0.0.1:{microsocks} localhost\n",
    )
    direct = clientFromString(reactor, f"socks:conf={conf}:host=127.0.0.1:port={echo}")
    client = await echoThrough(direct, b"direct")
    assert client.transport.getPeer().port == echo  # type: ignore[union-attr]
    await close(client)
    proxied = clientFromString(reactor, f"socks:conf={conf}:host=localhost:port={echo}")
    client = await echoThrough(proxied, b"through SOCKS5")
    assert client.transport.getPeer().port == microsocks  # type: ignore[union-attr]
    await close(client)
    assert echoFactory.connections == 2


@pytest_twisted.ensureDeferred
async def test_failoverFromADeadSOCKS5ServerToALiveSOCKS4AOne(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    C{@=socks5h://...dead,socks4a://live}: the SOCKS5 server refuses the
    connection, the SOCKS4A one (our server) carries the session.
    """
    proxy, _, records = startProxy(ports)
    echo = listen(ports, CountingFactory())
    dead = closedPort()
    conf = writeConf(
        tmp_path,
        f"sockd @=socks5h://a:{SECRET}@127.0.0.1:{dead},socks4a://127.0.0.1:{proxy}"
        " 0/0\n",
    )
    endpoint = RoutingEndpoint(reactor, loadRoutes(conf), "localhost", echo)
    client = await echoThrough(endpoint, b"failover" * 100)
    assert client.transport.getPeer().port == proxy  # type: ignore[union-attr]
    await close(client)
    await eventually(lambda: bool(records), TIMEOUT)
    assert records[0].destination == f"localhost:{echo}"


@pytest_twisted.ensureDeferred
async def test_allDeadNamesTheServersWithoutThePassword(tmp_path: Path) -> None:
    """L{ProxiesUnreachable} lists the URL servers tried, passwords hidden."""
    first, second = closedPort(), closedPort()
    conf = writeConf(
        tmp_path,
        f"sockd @=socks5h://a:{SECRET}@127.0.0.1:{first},127.0.0.1:{second} 0/0\n",
    )
    endpoint = RoutingEndpoint(reactor, loadRoutes(conf), "127.0.0.1", 9)
    with pytest.raises(ProxiesUnreachable) as caught:
        await echoThrough(endpoint, b"x")
    message = str(caught.value)
    assert f"socks5h://a:***@127.0.0.1:{first}: Connection was refused" in message
    assert SECRET not in message
