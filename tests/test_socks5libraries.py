"""
Python SOCKS5 client libraries against our server, run as C{twistd -n
socks --port 0 --log-format json} in a subprocess: PySocks (the library
behind C{requests[socks]}), python-socks on asyncio (behind aiohttp-socks),
and httpx through socksio; and the one reply code the raw-socket table of
L{tests.test_socks5serverinterop} could not reach without a peer that
never answers: 06, a connect that timed out.

Each fetch is checked against what the loopback HTTP server sent, and
against our server's record: version 5, the method, the user, and whether
the client sent the name (remote DNS) or an address it had resolved.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import socks
from python_socks.async_.asyncio import Proxy as AsyncioProxy

from tests._socks5peers import (
    BODY,
    PASSWORD,
    USER,
    WRONG_PASSWORD,
    CountingHTTPServer,
    Proxies,
    records,
    sessionsTo,
    startJSONServer,
    twoProxies,
    waitForRecords,
    writeUsers,
)
from tests._support import recvAll, stopServer

pytestmark = pytest.mark.interop

#: A request for the page; HTTP/1.0, so the server closes after answering.
GET = b"GET / HTTP/1.0\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    """Start both servers (JSON log) once for the module."""
    tmp = tmp_path_factory.mktemp("socks5libraries")
    yield from twoProxies(tmp, writeUsers(tmp / "users"), "--log-format", "json")


def proxyURL(port: int, password: str = PASSWORD) -> str:
    """C{socks5://ann:PASSWORD@127.0.0.1:PORT}, the credentials percent-encoded."""
    return (
        f"socks5://{quote(USER, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}"
    )


def assertWholeResponse(response: bytes, web: CountingHTTPServer) -> None:
    """C{response} is everything C{web} sent: its headers, then L{BODY}."""
    assert response.startswith(b"HTTP/1.0 200 ")
    assert response.endswith(b"\r\n\r\n" + BODY)
    assert len(response) == web.sent


# PySocks


@pytest.mark.parametrize("authenticated", [False, True], ids=["none", "password"])
@pytest.mark.parametrize("rdns", [False, True], ids=["local-dns", "remote-dns"])
def test_pysocksConnects(
    proxies: Proxies, web: CountingHTTPServer, authenticated: bool, rdns: bool
) -> None:
    """
    A PySocks C{socksocket} reaches C{localhost} through our server, with
    or without a username and password: with C{rdns=True} it sends the
    name and our server resolves it, with C{rdns=False} it sends the
    address it resolved itself. The response is byte-exact either way.
    """
    server = proxies.users if authenticated else proxies.open
    sock = socks.socksocket()
    sock.settimeout(10)
    sock.set_proxy(
        socks.SOCKS5,
        "127.0.0.1",
        server.port,
        rdns=rdns,
        username=USER if authenticated else None,
        password=PASSWORD if authenticated else None,
    )
    with sock:
        sock.connect(("localhost", web.port))
        sock.sendall(GET)
        assertWholeResponse(recvAll(sock), web)
    [session] = sessionsTo(server, web.port)
    host = "localhost" if rdns else "127.0.0.1"
    assert session["destination"] == f"{host}:{web.port}"
    assert session["resolved"] == f"127.0.0.1:{web.port}"
    expected = (5, "password", USER) if authenticated else (5, "none", "")
    assert (session["version"], session["auth"], session["user"]) == expected
    assert session["bytesDown"] == web.sent


def test_pysocksWrongPasswordIsAnAuthError(proxies: Proxies) -> None:
    """
    A wrong password: PySocks fails with its authentication error (it read
    our C{01 01}; C{connect} wraps it in a C{GeneralProxyError}), and the
    password is not in the log.
    """
    sock = socks.socksocket()
    sock.settimeout(10)
    sock.set_proxy(
        socks.SOCKS5,
        "127.0.0.1",
        proxies.users.port,
        username=USER,
        password=WRONG_PASSWORD,
    )
    since = len(records(proxies.users))
    with sock, pytest.raises(socks.GeneralProxyError) as raised:
        sock.connect(("127.0.0.1", 9))
    assert isinstance(raised.value.socket_err, socks.SOCKS5AuthError)
    [failed] = waitForRecords(proxies.users, bool, since)
    assert failed["reason"] == f"authentication failed for user {USER}"
    assert WRONG_PASSWORD not in proxies.users.log()


# python-socks on asyncio


async def fetchWithPythonSocks(url: str, host: str, port: int) -> bytes:
    """Tunnel to C{host:port} through the proxy at C{url}; send L{GET}."""
    proxy = AsyncioProxy.from_url(url)
    sock = await proxy.connect(dest_host=host, dest_port=port, timeout=10)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(GET)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_pythonSocksLogsInOnAsyncio(proxies: Proxies, web: CountingHTTPServer) -> None:
    """
    python-socks' asyncio C{Proxy.from_url}, with the password
    percent-encoded in the URL, logs in and tunnels to C{localhost}: its
    C{socks5://} sends the name (remote DNS is its default), and the
    response is byte-exact.
    """
    server = proxies.users
    response = asyncio.run(
        fetchWithPythonSocks(proxyURL(server.port), "localhost", web.port)
    )
    assertWholeResponse(response, web)
    [session] = sessionsTo(server, web.port)
    assert session["destination"] == f"localhost:{web.port}"
    assert (session["version"], session["auth"], session["user"]) == (
        5,
        "password",
        USER,
    )


# httpx through socksio


def test_httpxFetchesThroughSOCKS5(proxies: Proxies, web: CountingHTTPServer) -> None:
    """
    httpx with C{proxy="socks5://ann:PASSWORD@..."} (socksio underneath)
    logs in and fetches the page; the body is byte-exact and the record is
    ann's, the bytes down all the HTTP server sent.
    """
    server = proxies.users
    with httpx.Client(
        proxy=proxyURL(server.port), trust_env=False, timeout=10
    ) as client:
        response = client.get(f"http://127.0.0.1:{web.port}/")
    assert (response.status_code, response.content) == (200, BODY)
    [session] = sessionsTo(server, web.port)
    assert session["destination"] == f"127.0.0.1:{web.port}"
    assert (session["version"], session["auth"], session["user"]) == (
        5,
        "password",
        USER,
    )
    assert session["bytesDown"] == web.sent


def test_httpxWrongPasswordFails(proxies: Proxies, web: CountingHTTPServer) -> None:
    """httpx with a wrong password gets a proxy error and nothing from the page."""
    url = proxyURL(proxies.users.port, WRONG_PASSWORD)
    with (
        httpx.Client(proxy=url, trust_env=False, timeout=10) as client,
        pytest.raises(httpx.ProxyError),
    ):
        client.get(f"http://127.0.0.1:{web.port}/")
    assert web.sent == 0


# Reply 06 on the wire


def test_connectTimeoutIsReply06OnTheWire(tmp_path: Path, blackhole: int) -> None:
    """
    A destination whose SYNs go unanswered (a listener with a full accept
    queue) and C{--connect-timeout 1}: the client gets REP 06, "TTL
    expired", what every peer sends for a connect that timed out, in a
    well-formed 10-byte reply, then EOF; the record says "timed out".
    """
    server = startJSONServer(tmp_path, "--connect-timeout", "1")
    try:
        request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"\x05\x01\x00" + request + struct.pack("!H", blackhole))
            received = recvAll(sock)
        [session] = sessionsTo(server, blackhole)
    finally:
        stopServer(server)
    assert received == b"\x05\x00" + b"\x05\x06\x00\x01" + b"\0" * 6
    assert (session["reply"], session["outcome"]) == (6, "timed out")
