"""
Real SOCKS5 clients against our server, run as C{twistd -n socks --port 0}
in a subprocess: curl (C{--socks5}, C{--socks5-hostname}, C{socks5h://}
with credentials), ncat (C{--proxy-type socks5 --proxy-auth}), and raw
sockets for each reply code and for a greeting, credentials and request
sent in one segment or a byte at a time.

Each tunnel is checked in the server's session log too (its destination
port is unique), so a client that bypassed the proxy would fail.
"""

from __future__ import annotations

import http.server
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import bcrypt
import pytest

from tests._socks5peers import Proxies, twoProxies
from tests._support import Server, closedPort
from tests.test_interop import _assertSucceeded, _run, _tool
from tests.test_socks5codec import MALFORMED

pytestmark = pytest.mark.interop

BODY = b"through the SOCKS5 proxy\n" * 1000
#: ann's password holds what a URL must percent-encode.
ANN_PASSWORD = "p:@%w"
BOB_PASSWORD = "b@b%pw"
_SESSION = re.compile(
    r"session (?P<client>\S+) (?P<command>\S+) (?P<destination>\S+) "
    r"resolved=\S+ user=(?P<user>\S*) ident=\S* reply=(?P<reply>\S+) "
)


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    """Start both servers once for the module."""
    tmp = tmp_path_factory.mktemp("socks5")
    users = tmp / "users"
    users.write_bytes(
        b"ann:" + bcrypt.hashpw(ANN_PASSWORD.encode(), bcrypt.gensalt(4)) + b"\n"
        b"bob:" + bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(4)) + b"\n"
    )
    users.chmod(0o600)
    yield from twoProxies(tmp, users)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with L{BODY}."""

    def do_GET(self) -> None:
        """Send the body."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def web() -> Iterator[int]:
    """An HTTP server on 127.0.0.1; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def sessionTo(server: Server, port: int) -> re.Match[str]:
    """The log record of the session to C{port} (waited for, bounded)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for match in _SESSION.finditer(server.log()):
            if match["destination"].endswith(f":{port}"):
                return match
        time.sleep(0.05)
    raise AssertionError(f"no session to port {port} in the log")


def curl(*args: str) -> list[str]:
    """curl, quiet, bounded, with C{args}."""
    return [_tool("curl"), "--silent", "--show-error", "--max-time", "15", *args]


@pytest.mark.parametrize(
    ("option", "host"),
    [("--socks5", "127.0.0.1"), ("--socks5-hostname", "localhost")],
)
def test_curlFetchesThroughSOCKS5(
    proxies: Proxies, web: int, option: str, host: str
) -> None:
    """curl fetches a page through our server, resolving or letting it resolve."""
    result = _run(
        curl(option, f"127.0.0.1:{proxies.open.port}", f"http://{host}:{web}/")
    )
    _assertSucceeded(result)
    assert result.stdout == BODY
    session = sessionTo(proxies.open, web)
    assert (session["command"], session["reply"]) == ("connect", "0")
    assert session["destination"] == f"{host}:{web}"


def test_curlLogsInWithAPercentEncodedPassword(proxies: Proxies, web: int) -> None:
    """
    C{socks5h://ann:PASSWORD@...}, the password holding C{:}, C{@} and
    C{%} percent-encoded: curl logs in, and the session is ann's.
    """
    url = f"socks5h://ann:p%3A%40%25w@127.0.0.1:{proxies.users.port}"
    result = _run(curl("-x", url, f"http://127.0.0.1:{web}/"))
    _assertSucceeded(result)
    assert result.stdout == BODY
    session = sessionTo(proxies.users, web)
    assert (session["user"], session["reply"]) == ("ann", "0")


def test_curlProxyUserLogsIn(proxies: Proxies, web: int) -> None:
    """C{--proxy-user bob:PASSWORD} logs in too."""
    result = _run(
        curl(
            "--socks5-hostname",
            f"127.0.0.1:{proxies.users.port}",
            "--proxy-user",
            f"bob:{BOB_PASSWORD}",
            f"http://127.0.0.1:{web}/",
        )
    )
    _assertSucceeded(result)
    assert sessionTo(proxies.users, web)["user"] == "bob"


def test_curlWrongPasswordFailsWithItsAuthError(proxies: Proxies, web: int) -> None:
    """A wrong password: curl fails with its SOCKS5 authentication error."""
    url = f"socks5h://ann:wrong@127.0.0.1:{proxies.users.port}"
    result = _run(curl("-x", url, f"http://127.0.0.1:{web}/"))
    assert result.returncode == 97, result.stderr
    assert b"rejected by the SOCKS5 server" in result.stderr, result.stderr
    assert b"wrong" not in proxies.users.log().encode()


def test_ncatLogsInWithProxyAuth(proxies: Proxies, web: int) -> None:
    """ncat C{--proxy-type socks5 --proxy-auth} logs in and relays."""
    result = _run(
        [
            _tool("ncat"),
            "--proxy",
            f"127.0.0.1:{proxies.users.port}",
            "--proxy-type",
            "socks5",
            "--proxy-auth",
            f"bob:{BOB_PASSWORD}",
            "127.0.0.1",
            str(web),
        ],
        b"GET / HTTP/1.0\r\n\r\n",
    )
    _assertSucceeded(result)
    assert result.stdout.endswith(BODY)
    assert sessionTo(proxies.users, web)["user"] == "bob"


# Raw sockets.


def request5(command: int, address: bytes, port: int, atyp: int = 1) -> bytes:
    """A SOCKS5 request for C{address} (packed, or a length and a name)."""
    return bytes([5, command, 0, atyp]) + address + struct.pack("!H", port)


def credentials(name: bytes, password: bytes) -> bytes:
    """An RFC 1929 sub-negotiation request."""
    return bytes([1, len(name)]) + name + bytes([len(password)]) + password


def exchange(port: int, chunks: list[bytes], expect: int) -> bytes:
    """Send C{chunks} (one send each), then read C{expect} bytes or to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            sock.sendall(chunk)
        received = b""
        while len(received) < expect:
            data = sock.recv(expect - len(received))
            if not data:
                break
            received += data
        return received


LOOPBACK = socket.inet_aton("127.0.0.1")


def failure(code: int) -> bytes:
    """The 10-byte reply with REP C{code}."""
    return bytes([5, code, 0, 1]) + b"\0" * 6


@pytest.mark.parametrize(
    ("name", "makeRequest", "code"),
    [
        ("refused", lambda p: request5(1, LOOPBACK, closedPort()), 5),
        ("own address", lambda p: request5(1, LOOPBACK, p), 2),
        ("name fails", lambda p: request5(1, b"\x0cnope.invalid", 80, atyp=3), 4),
        ("unknown atyp", lambda p: b"\x05\x01\x00\x09", 8),
        ("unknown command", lambda p: request5(9, LOOPBACK, 80), 7),
        ("reserved not 0", lambda p: b"\x05\x01\x01\x01", 1),
    ],
)
def test_eachReplyCodeOnTheWire(
    proxies: Proxies, name: str, makeRequest: Callable[[int], bytes], code: int
) -> None:
    """Each failure is a well-formed 10-byte reply with its code, then EOF."""
    port = proxies.open.port
    received = exchange(port, [b"\x05\x01\x00" + makeRequest(port)], 13)
    assert received == b"\x05\x00" + failure(code)


@pytest.mark.parametrize("segments", ["one", "bytewise"])
def test_greetingAuthRequestAndDataPipelined(
    proxies: Proxies, web: int, segments: str
) -> None:
    """
    Greeting, credentials, request and the HTTP request sent in one
    segment, or a byte per segment: all answered in order, page fetched.
    """
    stream = (
        b"\x05\x01\x02"
        + credentials(b"bob", BOB_PASSWORD.encode())
        + request5(1, LOOPBACK, web)
        + b"GET / HTTP/1.0\r\n\r\n"
    )
    chunks = [stream] if segments == "one" else [bytes([b]) for b in stream]
    received = exchange(proxies.users.port, chunks, 1 << 20)
    assert received[:4] == b"\x05\x02\x01\x00"
    assert received[4:8] == b"\x05\x00\x00\x01"
    assert received[14:].endswith(BODY)


def test_onlyNoAuthenticationOfferedWithUsersGetsFF(proxies: Proxies) -> None:
    """With --users, a client offering only 00 gets C{05 FF} and EOF."""
    assert exchange(proxies.users.port, [b"\x05\x01\x00"], 3) == b"\x05\xff"


def test_socks4WithUsersGets91(proxies: Proxies) -> None:
    """With --users, a SOCKS4 request gets 91: it cannot authenticate."""
    sock4 = b"\x04\x01\x00\x50" + LOOPBACK + b"ann\0"
    assert exchange(proxies.users.port, [sock4], 9) == b"\x00\x5b" + b"\0" * 6


def test_unknownUserGets0101(proxies: Proxies) -> None:
    """An unknown user gets C{01 01} and EOF, as a wrong password does."""
    received = exchange(
        proxies.users.port,
        [b"\x05\x01\x02" + credentials(b"eve", b"pw") + request5(1, LOOPBACK, 80)],
        5,
    )
    assert received == b"\x05\x02\x01\x01"


def readToEOF(port: int, data: bytes) -> tuple[bytes, float]:
    """Send C{data}, read until the server closes; what came, and how long."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - start


#: The SOCKS5 codec's malformed rows this server dispatches to SOCKS5 (a
#: greeting that does not start with 05 is SOCKS4's or not SOCKS).
LIVE_MALFORMED = [
    row for row in MALFORMED if row[0] != "greeting" or row[2].startswith(b"\x05")
]


@pytest.mark.parametrize(
    ("kind", "name", "raw", "reply"),
    [(kind, name, raw, reply) for kind, name, raw, _, reply in LIVE_MALFORMED],
    ids=[f"{kind}: {name}" for kind, name, *_ in LIVE_MALFORMED],
)
def test_everyMalformedSOCKS5InputIsAnsweredAndClosed(
    proxies: Proxies, kind: str, name: str, raw: bytes, reply: bytes | None
) -> None:
    """
    Each malformed greeting, login or request (the SOCKS5 codec's table),
    after the messages that lead to it, gets exactly its answer and a close
    within 2 s; the server serves the next client.
    """
    if kind == "auth":
        port, lead = proxies.users.port, b"\x05\x01\x02"
        answer = b"\x05\x02"
    elif kind == "request":
        port, lead, answer = proxies.open.port, b"\x05\x01\x00", b"\x05\x00"
    else:
        port, lead, answer = proxies.open.port, b"", b""
    received, elapsed = readToEOF(port, lead + raw)
    assert received == answer + (reply or b"")
    assert elapsed < 2
    assert exchange(proxies.open.port, [b"\x05\x01\x00"], 2) == b"\x05\x00"
