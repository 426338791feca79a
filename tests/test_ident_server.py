"""
Ident end to end: `twistd socks --ident ...` against identd servers on
loopback (a scripted one, and Debian's oidentd).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests._support import closedPort, recvUpTo, startServer, stopServer, waitUntil
from tests.test_rules_server import EchoServer
from twisted_socks import Command, encodeRequest

GRANTED = b"\x00\x5a" + b"\0" * 6
NO_IDENTD = b"\x00\x5c" + b"\0" * 6
MISMATCH = b"\x00\x5d" + b"\0" * 6


class ScriptedIdentd(threading.Thread):
    """
    An identd on loopback that answers every query with C{user}, or never
    answers (C{user=None}); it records the queries it got.
    """

    def __init__(self, user: str | None) -> None:
        super().__init__(daemon=True)
        self.user = user
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.queries: list[bytes] = []
        self.held: list[socket.socket] = []
        self.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.user is None:
                self.held.append(conn)  # accept, never answer
                continue
            with conn:
                conn.settimeout(5)
                query = conn.recv(1000)
                self.queries.append(query)
                ports = query.split(b"\r\n")[0].replace(b" ", b"")
                conn.sendall(
                    ports + b" : USERID : UNIX : " + self.user.encode() + b"\r\n"
                )

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """An echo destination."""
    server = EchoServer()
    yield server
    server.shutdown()
    server.server_close()


def ask(proxyPort: int, destPort: int, user: str) -> bytes:
    """One CONNECT with USERID C{user}; the 8-byte reply (or less at EOF)."""
    with socket.create_connection(("127.0.0.1", proxyPort), timeout=20) as sock:
        sock.sendall(
            encodeRequest(
                Command.CONNECT,
                destPort,
                IPv4Address("127.0.0.1"),
                userid=user.encode(),
            )
        )
        return recvUpTo(sock, 8)


def test_strictModeGrantsMatchRejectsMismatchAndMissingIdentd(
    tmp_path: Path, echo: EchoServer
) -> None:
    """
    Strict: the identd's user equal to the USERID gets 90, another gets 93;
    with no identd listening, 92. The query names the client's port first.
    """
    identd = ScriptedIdentd("alice")
    server = startServer(
        tmp_path, "--ident", "strict", "--ident-port", str(identd.port)
    )
    try:
        assert ask(server.port, echo.port, "alice") == GRANTED
        assert ask(server.port, echo.port, "bob") == MISMATCH
        query = identd.queries[0].decode()
        clientPort, serverPort = (int(p) for p in query.strip().split(","))
        assert serverPort == server.port
        assert 1024 <= clientPort <= 65535
        waitUntil(lambda: "ident=alice reply=93" in server.log())
        assert "ident=alice reply=90" in server.log()
    finally:
        stopServer(server)
        identd.close()
    second = tmp_path / "second"  # a log of its own
    second.mkdir()
    down = startServer(second, "--ident", "strict", "--ident-port", str(closedPort()))
    try:
        assert ask(down.port, echo.port, "alice") == NO_IDENTD
    finally:
        stopServer(down)


def test_lenientModeAllowsMissingIdentd(tmp_path: Path, echo: EchoServer) -> None:
    """Lenient: with no identd the request proceeds (90), and it is logged."""
    server = startServer(
        tmp_path, "--ident", "lenient", "--ident-port", str(closedPort())
    )
    try:
        assert ask(server.port, echo.port, "alice") == GRANTED
        waitUntil(lambda: "no ident answer" in server.log())
    finally:
        stopServer(server)


def test_hangingLookupDoesNotHoldUpOtherClients(
    tmp_path: Path, echo: EchoServer
) -> None:
    """
    While one client's ident lookup hangs (its rule says ?=I), 100 clients
    whose rule needs no ident are all served; the hung client gets 92 once
    its identd hangs up.
    """
    identd = ScriptedIdentd(None)
    rules = tmp_path / "rules.conf"
    rules.write_text("allow ?=I *=slow 127.0.0.0/8\nallow ?=n 127.0.0.0/8\n")
    server = startServer(
        tmp_path,
        "--rules",
        str(rules),
        "--ident-port",
        str(identd.port),
        # Far longer than 100 sessions take even on a loaded machine: the
        # lookup is still hanging when they are all served, and the test
        # ends it by hanging up, not by waiting for the timeout.
        "--ident-timeout",
        "60",
    )
    slowReply: list[bytes] = []
    try:
        slow = threading.Thread(
            target=lambda: slowReply.append(ask(server.port, echo.port, "slow"))
        )
        slow.start()
        deadline = time.monotonic() + 5
        while not identd.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert identd.held, "the slow client's lookup never reached the identd"
        replies = [ask(server.port, echo.port, "plain") for _ in range(100)]
        assert replies == [GRANTED] * 100
        assert slowReply == []  # still waiting for its identd
        for conn in identd.held:
            conn.close()
        slow.join(20)
        assert slowReply == [NO_IDENTD]
    finally:
        stopServer(server)
        identd.close()


@pytest.mark.interop
def test_oidentdInterop(tmp_path: Path, echo: EchoServer) -> None:
    """
    Debian's oidentd, on a loopback port, names the local user owning the
    client socket: that USERID gets 90, another 93.
    """
    oidentd = shutil.which("oidentd") or (
        "/usr/sbin/oidentd" if os.path.exists("/usr/sbin/oidentd") else None
    )
    if os.geteuid() != 0:
        pytest.skip("oidentd needs root to answer for other users' sockets")
    if oidentd is None:
        if os.environ.get("CI"):
            pytest.fail("oidentd is not installed (./dev test installs it)")
        pytest.skip("oidentd is not installed")
    port = closedPort()
    daemon = subprocess.Popen(
        [oidentd, "-i", "-S", "-q", "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server = startServer(tmp_path, "--ident", "strict", "--ident-port", str(port))
        me = "root"  # the euid checked above
        assert ask(server.port, echo.port, me) == GRANTED
        assert ask(server.port, echo.port, "alice") == MISMATCH
        waitUntil(lambda: f"ident={me} reply=90" in server.log())
    finally:
        if server is not None:
            stopServer(server)
        daemon.terminate()
        daemon.wait(10)
