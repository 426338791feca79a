"""
Server-side chaining through real upstream SOCKS servers on loopback: our
server (in process, with C{--routes} in force) in front of Dante's
C{danted} (SOCKS5 and SOCKS4), microsocks with a username and password,
and C{ssh -D}.  CONNECT byte for byte, a name sent on unresolved, BIND
through Dante, and Dante's refusal passed through.

The upstreams are the fixtures of the client's interop tests (Debian
packages that C{./dev} installs: on CI a missing one fails).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted

from tests._support import (
    EchoDestination,
    closedPort,
    inThread,
    runTwistd,
    startServer,
    stopServer,
    waitUntil,
)
from tests.test_chaining import (
    PAYLOAD,
    Chain,
    _bind4,
    _ended,
    _roundTrip,
    _socks4,
    _socks5,
    chain,
)
from tests.test_socks5interop import PASSWORD, USER, dante5, microsocks
from tests.test_socks5ssh import sshDynamic

pytestmark = pytest.mark.interop

__all__ = ["chain", "dante5", "microsocks", "sshDynamic"]


@pytest.mark.parametrize("scheme", ["socks5h", "socks5", "socks4", "socks4a"])
@pytest_twisted.ensureDeferred
async def test_connectThroughDante(
    chain: Chain, echo: EchoDestination, dante5: int, scheme: str
) -> None:
    """
    Through Dante in each of its protocols, a SOCKS5 client's CONNECT and
    a SOCKS4 client's carry every byte value unchanged, and the session
    records the route and the upstream.
    """
    chain.routes(f"sockd @={scheme}://127.0.0.1:{dante5} 0/0\n")
    for connect in (_socks5, _socks4):
        s, code = await inThread(connect, chain.frontPort, "127.0.0.1", echo.port)
        assert code in (b"\x00", b"\x5a")
        assert await inThread(_roundTrip, s) == PAYLOAD
    await _ended(chain.records, 2)
    assert {(r.route, r.upstream) for r in chain.records} == {
        ("routes:1", f"{scheme}://127.0.0.1:{dante5}")
    }


@pytest_twisted.ensureDeferred
async def test_nameResolvedByDanteOnly(
    chain: Chain, echo: EchoDestination, dante5: int
) -> None:
    """
    Through a C{socks5h} Dante, a name the front server cannot resolve
    goes upstream as a name (Dante resolves C{localhost}); the front
    server's resolver is never asked.
    """
    chain.frontResolver.answers.clear()
    chain.routes(f"sockd @=socks5h://127.0.0.1:{dante5} localhost\n")
    s, code = await inThread(_socks5, chain.frontPort, "localhost", echo.port)
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD
    assert chain.frontResolver.lookups == []


@pytest_twisted.ensureDeferred
async def test_danteRefusalPassedThrough(chain: Chain, dante5: int) -> None:
    """
    Dante's verdict on a refused destination is the SOCKS5 client's reply
    (05, connection refused), with no failover to the next upstream.
    """
    router = chain.routes(
        f"sockd @=socks5://127.0.0.1:{dante5},socks5://127.0.0.1:{closedPort()} 0/0\n"
    )
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", closedPort())
    s.close()
    assert code == b"\x05"
    dante, other = router.table.routes[0].servers
    assert router.state(dante).failures == router.state(other).failures == 0


@pytest_twisted.ensureDeferred
async def test_bindThroughDante(chain: Chain, dante5: int) -> None:
    """A SOCKS4 client's BIND through Dante (SOCKS5): both replies, bytes both ways."""
    chain.routes(f"sockd @=socks5://127.0.0.1:{dante5} 0/0\n")
    first, second = await inThread(_bind4, chain.frontPort)
    assert first[1] == second[1] == 90


@pytest_twisted.ensureDeferred
async def test_microsocksWithThePasswordOfTheRouteLine(
    chain: Chain, echo: EchoDestination, microsocks: int
) -> None:
    """
    microsocks, which wants a password, gets the route line's (percent-
    decoded); the client, which logs in to nobody, is carried byte for byte.
    """
    url = f"socks5://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{microsocks}"
    chain.routes(f"sockd @={url} 0/0\n")
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD
    await _ended(chain.records, 1)
    assert chain.records[0].upstream == f"socks5://{USER}:***@127.0.0.1:{microsocks}"


@pytest_twisted.ensureDeferred
async def test_failoverToSshDynamic(
    chain: Chain, echo: EchoDestination, sshDynamic: int
) -> None:
    """
    A dead first upstream fails over to C{ssh -D}, which carries the
    stream; the dead one is marked and the next request goes straight to ssh.
    """
    dead = closedPort()
    router = chain.routes(
        f"sockd @=socks5h://127.0.0.1:{dead},socks5h://127.0.0.1:{sshDynamic} 0/0\n"
    )
    for _ in range(2):
        s, code = await inThread(_socks5, chain.frontPort, "localhost", echo.port)
        assert code == b"\x00"
        assert await inThread(_roundTrip, s) == PAYLOAD
    first, ssh = router.table.routes[0].servers
    assert router.state(first).failures == 1
    assert router.state(ssh).sessions == 2


@pytest_twisted.ensureDeferred
async def test_sshRefusalFailsOverWithoutABadMark(
    chain: Chain, echo: EchoDestination, sshDynamic: int
) -> None:
    """
    C{ssh -D} closes without a reply for a destination it cannot reach
    (L{ClosedBeforeReply5}): the next upstream is tried (one of ours, whose
    05 reaches the client), and ssh is not marked bad even with
    C{route.maxfail: 1}: the next request goes through it.
    """
    ours = chain.upstream()
    router = chain.routes(
        "route.maxfail: 1\n"
        f"sockd @=socks5h://127.0.0.1:{sshDynamic},socks5h://127.0.0.1:{ours} 0/0\n"
    )
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", closedPort())
    s.close()
    assert code == b"\x05"
    ssh, other = router.table.routes[0].servers
    state = router.state(ssh)
    assert (state.failures, state.failovers, state.badUntil) == (0, 1, None)
    s, code = await inThread(_socks5, chain.frontPort, "127.0.0.1", echo.port)
    assert code == b"\x00"
    assert await inThread(_roundTrip, s) == PAYLOAD
    assert (router.state(ssh).sessions, router.state(other).sessions) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_sshRefusalAloneIsAGeneralFailure(chain: Chain, sshDynamic: int) -> None:
    """
    With C{ssh -D} the only upstream, its close after the request is
    answered as a failure (SOCKS5 01, SOCKS4 91): the front server cannot
    tell a refusal from a crash, so it claims nothing about the
    destination; and ssh is still not marked.
    """
    router = chain.routes(f"sockd @=socks5h://127.0.0.1:{sshDynamic} 0/0\n")
    for connect, refused in ((_socks5, b"\x01"), (_socks4, b"\x5b")):
        s, code = await inThread(connect, chain.frontPort, "127.0.0.1", closedPort())
        s.close()
        assert code == refused
    [ssh] = router.table.routes[0].servers
    state = router.state(ssh)
    assert (state.failures, state.failuresInARow, state.badUntil) == (0, 0, None)


def test_routesInARunningServer(tmp_path: Path) -> None:
    """
    C{twistd socks --routes}: a CONNECT goes through an upstream (another
    C{twistd socks}) and the session line names route and upstream; SIGHUP
    with an invalid file keeps the routes, with a valid one replaces them.
    """
    destination = EchoDestination()
    destination.start()
    (tmp_path / "up").mkdir()
    (tmp_path / "front").mkdir()
    upstream = startServer(tmp_path / "up")
    routes = tmp_path / "routes"
    routes.write_text(f"sockd @=socks5h://127.0.0.1:{upstream.port} 0/0\n")
    front = startServer(tmp_path / "front", "--routes", str(routes))
    try:
        s, code = _socks5(front.port, "127.0.0.1", destination.port)
        assert code == b"\x00"
        assert _roundTrip(s) == PAYLOAD
        line = f"route={routes}:1 upstream=socks5h://127.0.0.1:{upstream.port} "
        waitUntil(lambda: line in front.log())
        routes.write_text("sockd @=socks5h://127.0.0.1:1 no-such-field=1 0/0\n")
        os.kill(front.process.pid, signal.SIGHUP)
        waitUntil(lambda: "routes not reloaded" in front.log())
        assert f"{routes}:1:" in front.log()
        s, code = _socks5(front.port, "127.0.0.1", destination.port)
        assert code == b"\x00"
        assert _roundTrip(s) == PAYLOAD
        routes.write_text("deny 0/0\n")
        os.kill(front.process.pid, signal.SIGHUP)
        waitUntil(lambda: "routes reloaded" in front.log())
        s, code = _socks5(front.port, "127.0.0.1", destination.port)
        s.close()
        assert code == b"\x02"
    finally:
        stopServer(front)
        stopServer(upstream)
        destination.close()


def test_loopStopsStartUp(tmp_path: Path) -> None:
    """
    A routes file whose upstream is the server's own listener stops
    C{twistd socks} before it listens, naming file and line.
    """
    port = closedPort()
    routes = tmp_path / "routes"
    routes.write_text(f"direct .example.com\nsockd @=127.0.0.1:{port} 0/0\n")
    status, output = runTwistd(
        tmp_path,
        "--interface",
        "127.0.0.1",
        "--port",
        str(port),
        "--routes",
        str(routes),
    )
    assert status != 0
    assert f"{routes}:2: upstream 127.0.0.1:{port} is this server's own listener" in (
        output.decode()
    )
