"""
What the tests of real SOCKS5 clients share (L{tests.test_socks5clients},
L{tests.test_socks5libraries}, L{tests.test_socks5serverinterop}): our
server as C{twistd -n socks} logging JSON lines, a pair of them without
and with C{--users}, its session records, a password file, and a loopback
HTTP server that counts every byte it sends.

The records are read from the JSON log rather than the text line because
only they carry the SOCKS version and the authentication method.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from tests._support import Server, startServer, stopServer
from tests.test_interop import TIMEOUT, _clientEnv

#: The user with a password; the password holds what a URL must
#: percent-encode (C{:}, C{@}) and what a shell would mangle unquoted.
USER = "ann"
PASSWORD = "s3cr:t@x!"
#: A wrong password, looked for in the log to prove it is never written.
WRONG_PASSWORD = "n0t-her-pa55"

#: The page every loopback HTTP server here sends: HTML (Chromium renders
#: it), with a token that cannot come from anywhere else, and enough bytes
#: (64 KiB of hex) that a relay which dropped or reordered a segment shows.
TOKEN = os.urandom(16).hex()
BODY = (
    b"<!doctype html><html><head><title>socks5</title></head><body>"
    b"<p id=token>"
    + TOKEN.encode()
    + b"</p><pre>"
    + os.urandom(32 * 1024).hex().encode()
    + b"</pre></body></html>\n"
)


def writeUsers(path: Path) -> Path:
    """A C{--users} file holding L{USER} with L{PASSWORD} (bcrypt, cost 4)."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4))
    path.write_bytes(USER.encode() + b":" + hashed + b"\n")
    path.chmod(0o600)
    return path


def startJSONServer(tmp: Path, *args: str) -> Server:
    """C{twistd -n socks --port 0 --log-format json ARGS}, listening."""
    tmp.mkdir(parents=True, exist_ok=True)
    return startServer(tmp, "--log-format", "json", *args)


@dataclass
class Proxies:
    """Our two servers: without users, and with C{--users}."""

    open: Server
    users: Server


def twoProxies(tmp: Path, users: Path, *args: str) -> Iterator[Proxies]:
    """
    The body of a module's C{proxies} fixture: C{twistd -n socks --port 0
    ARGS} without users (under C{tmp/open}) and with C{--users USERS}
    (under C{tmp/auth}), both stopped when the fixture is torn down (the
    first also when the second fails to start).
    """
    (tmp / "open").mkdir(parents=True, exist_ok=True)
    (tmp / "auth").mkdir(parents=True, exist_ok=True)
    plain = startServer(tmp / "open", *args)
    try:
        authenticating = startServer(tmp / "auth", *args, "--users", str(users))
    except BaseException:
        stopServer(plain)
        raise
    try:
        yield Proxies(plain, authenticating)
    finally:
        stopServer(plain)
        stopServer(authenticating)


def records(server: Server) -> list[dict[str, Any]]:
    """Every session record the server has logged so far, in order."""
    found = []
    for line in server.log().splitlines():
        # A line being written as we read is incomplete JSON: skip it, the
        # next read has it whole.
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("namespace") == "twisted_socks.session":
            found.append(event)
    return found


def waitForRecords(
    server: Server,
    condition: Callable[[list[dict[str, Any]]], bool],
    since: int = 0,
    timeout: float = 10,
) -> list[dict[str, Any]]:
    """
    The records logged after the first C{since}, once C{condition} holds
    for them (bounded: a record is written when its session ends, which
    can follow the client's exit by a moment).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = records(server)[since:]
        if condition(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"records never matched; got {found!r}")
        time.sleep(0.05)


def sessionsTo(server: Server, port: int, since: int = 0) -> list[dict[str, Any]]:
    """The records (at least one, waited for) of sessions to port C{port}."""

    def to(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in found if (r["destination"] or "").endswith(f":{port}")]

    return to(waitForRecords(server, lambda found: bool(to(found)), since))


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """
    Run a client program to completion (bounded), without the machine's
    proxy variables, plus C{env}.
    """
    return subprocess.run(
        args,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env={**_clientEnv(), **(env or {})},
        check=False,
    )


class _CountingFile:
    """Passes writes on to C{out}, adding their sizes to C{server.sent}."""

    def __init__(self, out: Any, server: CountingHTTPServer) -> None:
        self._out = out
        self._server = server

    def write(self, data: bytes) -> int:
        written: int = self._out.write(data)
        self._server.count(len(data))
        return written

    @property
    def closed(self) -> bool:
        # socketserver's finish() asks before it flushes.
        return bool(self._out.closed)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    """C{GET /} gets L{BODY}; anything else (a favicon) a 404."""

    # HTTP/1.0: one request per connection, so that every byte a client
    # fetched belongs to a session that has ended (and been logged) by the
    # time the client exits.
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.wfile = _CountingFile(self.wfile, self.server)  # type: ignore[assignment,arg-type]

    def do_GET(self) -> None:
        """Send L{BODY} for C{/}, 404 otherwise."""
        if self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=ascii")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class CountingHTTPServer(http.server.ThreadingHTTPServer):
    """
    An HTTP server on 127.0.0.1 that counts the bytes it sends (headers and
    all), so a test can match them against our server's C{bytesDown}.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self.sent = 0
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def count(self, n: int) -> None:
        """C{n} more bytes were sent."""
        with self._lock:
            self.sent += n

    def close(self) -> None:
        """Stop serving."""
        self.shutdown()
        self.server_close()
