"""
Real SOCKS5 client programs against our server, run as C{twistd -n socks
--port 0 --log-format json} in a subprocess: proxychains4 with and without
a username and password, headless Chromium, and Dante's C{socksify}
carrying an FTP client's active-mode transfer over a SOCKS5 BIND.

Each test checks the bytes that arrived against what the loopback server
sent, and our server's session record (version 5, the method, the user),
so a client that bypassed the proxy would fail.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.protocols.ftp import FTPFactory, FTPRealm

from tests._socks5peers import (
    BODY,
    PASSWORD,
    TOKEN,
    USER,
    WRONG_PASSWORD,
    CountingHTTPServer,
    Proxies,
    records,
    run,
    sessionsTo,
    startJSONServer,
    twoProxies,
    waitForRecords,
    writeUsers,
)
from tests._support import inThread, stopServer
from tests.test_interop import _assertSucceeded, _tool

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    """Start both servers (JSON log) once for the module."""
    tmp = tmp_path_factory.mktemp("socks5clients")
    yield from twoProxies(tmp, writeUsers(tmp / "users"), "--log-format", "json")


# proxychains4


def proxychains(tmp: Path, port: int, credentials: str = "") -> list[str]:
    """
    The proxychains4 command line for one C{socks5} proxy, with
    C{credentials} (C{"user password"}) on its line if given.
    """
    config = tmp / "proxychains.conf"
    config.write_text(
        "strict_chain\n"
        "quiet_mode\n"
        "tcp_read_time_out 15000\n"
        "tcp_connect_time_out 8000\n"
        "[ProxyList]\n"
        f"socks5 127.0.0.1 {port} {credentials}\n"
    )
    return [_tool("proxychains4"), "-q", "-f", str(config)]


def curl(url: str) -> list[str]:
    """curl fetching C{url}, unaware of any proxy (proxychains is)."""
    return [_tool("curl"), "-q", "--silent", "--show-error", "--fail", url]


def test_proxychainsLogsInWithUsernameAndPassword(
    proxies: Proxies, web: CountingHTTPServer, tmp_path: Path
) -> None:
    """
    A C{socks5 127.0.0.1 PORT ann PASSWORD} line: proxychains4 logs in
    with RFC 1929 and curl's page arrives byte-exact; the record is ann's,
    over SOCKS5 with the password method.
    """
    server = proxies.users
    result = run(
        proxychains(tmp_path, server.port, f"{USER} {PASSWORD}")
        + curl(f"http://127.0.0.1:{web.port}/")
    )
    _assertSucceeded(result)
    assert result.stdout == BODY
    [session] = sessionsTo(server, web.port)
    assert (session["version"], session["auth"], session["user"]) == (
        5,
        "password",
        USER,
    )
    assert (session["reply"], session["bytesDown"]) == (0, web.sent)


def test_proxychainsWrongPasswordFails(
    proxies: Proxies, web: CountingHTTPServer, tmp_path: Path
) -> None:
    """
    A wrong password: the login is refused, curl fetches nothing, and the
    log names the failure but never the password.
    """
    server = proxies.users
    since = len(records(server))
    result = run(
        proxychains(tmp_path, server.port, f"{USER} {WRONG_PASSWORD}")
        + curl(f"http://127.0.0.1:{web.port}/")
    )
    assert result.returncode != 0
    assert result.stdout == b""
    assert web.sent == 0
    [failed] = waitForRecords(server, bool, since)
    assert (failed["version"], failed["auth"], failed["command"]) == (
        5,
        "password",
        None,
    )
    assert failed["reason"] == f"authentication failed for user {USER}"
    assert WRONG_PASSWORD not in server.log()


def test_proxychainsWithoutAuthentication(
    proxies: Proxies, web: CountingHTTPServer, tmp_path: Path
) -> None:
    """
    A C{socks5} line without credentials against a server without users:
    method 00, the page byte-exact, the record says SOCKS5 and C{none}.
    """
    server = proxies.open
    result = run(
        proxychains(tmp_path, server.port) + curl(f"http://127.0.0.1:{web.port}/")
    )
    _assertSucceeded(result)
    assert result.stdout == BODY
    [session] = sessionsTo(server, web.port)
    assert (session["version"], session["auth"], session["user"]) == (5, "none", "")
    assert session["bytesDown"] == web.sent


# Chromium

#: Flags that keep headless Chromium to the one page: no sandbox (the tests
#: run as root, where Chromium refuses to start with it), no GPU, and none of
#: its own background requests (updates, sign-in, sync), which would go
#: through the proxy too.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-pings",
)

#: Chromium still names a few of Google's hosts (all under .com) while it
#: starts, whatever its flags; the rules refuse them by name, so our server
#: never looks them up, and allow every other destination.
CHROMIUM_RULES = "deny 0/0 .com\nallow 0/0 0/0\n"


def test_chromiumFetchesAPageThroughSOCKS5(
    web: CountingHTTPServer, tmp_path: Path
) -> None:
    """
    Headless Chromium with C{--proxy-server=socks5://} renders a page from
    a loopback HTTP server through our server: the page's token is in the
    DOM, every byte the HTTP server sent (the page, and a 404 if Chromium
    asks for a favicon) went through SOCKS5 sessions, and none was authenticated
    (Chromium has no SOCKS5 authentication).

    C{<-loopback>} in the bypass list takes back Chromium's implicit
    bypass of loopback destinations, without which it would fetch the page
    directly.
    """
    rules = tmp_path / "rules"
    rules.write_text(CHROMIUM_RULES)
    server = startJSONServer(tmp_path / "proxy", "--rules", str(rules))
    try:
        result = run(
            [
                _tool("chromium"),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--proxy-server=socks5://127.0.0.1:{server.port}",
                "--proxy-bypass-list=<-loopback>",
                "--dump-dom",
                f"http://127.0.0.1:{web.port}/",
            ],
            timeout=60,
        )
        _assertSucceeded(result)
        assert f'<p id="token">{TOKEN}</p>'.encode() in result.stdout
        page = f"127.0.0.1:{web.port}"

        def allRelayed(found: list[dict[str, Any]]) -> bool:
            down = sum(r["bytesDown"] for r in found if r["destination"] == page)
            return bool(down == web.sent)

        sessions = waitForRecords(server, allRelayed)
    finally:
        stopServer(server)
    mine = [r for r in sessions if r["destination"] == page]
    assert {(r["version"], r["auth"], r["reply"]) for r in mine} == {(5, "none", 0)}
    # Everything else Chromium asked for was refused by name, unresolved.
    others = [r for r in sessions if r not in mine]
    assert all((r["reply"], r["resolved"]) == (2, None) for r in others), others


# Dante's socksify: FTP active mode over SOCKS5 BIND


def socksConf(tmp: Path, port: int, method: str) -> Path:
    """A Dante client configuration: every destination through C{port}."""
    conf = tmp / "socks.conf"
    conf.write_text(
        "logoutput: stderr\n"
        "route {\n"
        f"  from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = {port}\n"
        "  proxyprotocol: socks_v5\n"
        f"  method: {method}\n"
        "}\n"
    )
    return conf


def socksifyEnv(conf: Path, password: str | None = None) -> dict[str, str]:
    """
    socksify's environment. C{SOCKS_AUTOADD_LANROUTES=no} stops Dante's
    client from adding direct routes for the networks of the host's own
    interfaces (127.0.0.0/8 among them), which would send a loopback FTP
    control connection around our server.
    """
    env = {"SOCKS_CONF": str(conf), "SOCKS_AUTOADD_LANROUTES": "no"}
    if password is not None:
        env |= {"SOCKS_USERNAME": USER, "SOCKS_PASSWORD": password}
    return env


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["none", "username"])
async def test_socksifyFTPActiveModeGoesThroughSOCKS5Bind(
    proxies: Proxies, tmp_path: Path, method: str
) -> None:
    """
    socksify runs curl's active-mode FTP download (C{--ftp-port -}) from
    Twisted's FTP server on loopback: the control connection is a SOCKS5
    CONNECT, curl's listening socket becomes a SOCKS5 BIND on our server,
    and the FTP server's data connection comes through it; the file
    arrives byte-exact. With C{method: username} both sessions are ann's.
    """
    server = proxies.users if method == "username" else proxies.open
    root = tmp_path / "ftp"
    root.mkdir()
    content = os.urandom(256 * 1024)
    (root / "file.bin").write_bytes(content)
    portal = Portal(FTPRealm(anonymousRoot=str(root)), [AllowAnonymousAccess()])
    ftpFactory = FTPFactory(portal)
    ftpFactory.noisy = False
    ftpPort = reactor.listenTCP(0, ftpFactory, interface="127.0.0.1")  # type: ignore[attr-defined]
    ftpAddress = f"127.0.0.1:{ftpPort.getHost().port}"
    since = len(records(server))
    try:
        conf = socksConf(tmp_path, server.port, method)
        result = await inThread(
            run,
            [
                _tool("socksify"),
                _tool("curl"),
                "-q",
                "--silent",
                "--show-error",
                "--ftp-port",
                "-",
                f"ftp://{ftpAddress}/file.bin",
            ],
            socksifyEnv(conf, PASSWORD if method == "username" else None),
        )
        _assertSucceeded(result)
        assert (
            hashlib.sha256(result.stdout).digest() == hashlib.sha256(content).digest()
        )
        found = await inThread(
            waitForRecords,
            server,
            lambda rs: {r["command"] for r in rs} >= {"connect", "bind"},
            since,
        )
    finally:
        await ftpPort.stopListening()
    [control] = [r for r in found if r["command"] == "connect"]
    [bind] = [r for r in found if r["command"] == "bind"]
    assert control["destination"] == ftpAddress
    assert (bind["reply"], bind["bytesDown"]) == (0, len(content))
    expected = (5, "password", USER) if method == "username" else (5, "none", "")
    for record in (control, bind):
        assert (record["version"], record["auth"], record["user"]) == expected


@pytest_twisted.ensureDeferred
async def test_socksifyWrongPasswordFails(proxies: Proxies, tmp_path: Path) -> None:
    """
    socksify with a wrong C{SOCKS_PASSWORD}: the login is refused, curl
    fails to connect, and the password is not in our server's log.
    """
    server = proxies.users
    since = len(records(server))
    conf = socksConf(tmp_path, server.port, "username")
    result = await inThread(
        run,
        [_tool("socksify"), _tool("curl"), "-q", "--silent", "ftp://127.0.0.1:21/"],
        socksifyEnv(conf, WRONG_PASSWORD),
    )
    assert result.returncode != 0
    [failed] = await inThread(waitForRecords, server, bool, since)
    assert failed["reason"] == f"authentication failed for user {USER}"
    assert WRONG_PASSWORD not in server.log()
