"""
What C{twistd socks} writes to its log, read from the log file of a real
server: text from the client's side arrives escaped, and each line says
what happened in the session's own format.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from tests._support import (
    Server,
    closedPort,
    recvExactly,
    recvUpTo,
    startServer,
    stopServer,
    waitUntil,
)
from tests.test_rules_server import EchoServer
from twisted_socks import Command, encodeRequest
from twisted_socks.app._jsonlog import JSONLinesObserver

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6
NO_IDENTD = b"\x00\x5c" + b"\0" * 6
LOCALHOST = IPv4Address("127.0.0.1")

#: What a hostile identd on the client's host answers after the ports: an
#: ERROR whose token is terminal escapes, BEL, BS and DEL.
HOSTILE_ERROR = b" : ERROR : \x1b[31m\x07\x08\x7fX-EVIL\x1b[0m\x1b]0;owned\x07"
#: The bytes that must never reach a log file.
CONTROL = [bytes([b]) for b in range(0x20) if b not in (0x09, 0x0A)] + [b"\x7f"]


class HostileIdentd(threading.Thread):
    """An identd on loopback answering every query with L{HOSTILE_ERROR}."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.start()

    def run(self) -> None:
        """Answer each query, one connection at a time."""
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                query = conn.recv(1000)
                ports = query.split(b"\r\n")[0].replace(b" ", b"")
                conn.sendall(ports + HOSTILE_ERROR + b"\r\n")

    def close(self) -> None:
        """Stop listening."""
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """An echo destination."""
    server = EchoServer()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """twistd servers to stop after the test."""
    started: list[Server] = []
    yield started
    for server in started:
        stopServer(server)


def sessionLines(server: Server) -> list[str]:
    """The text log's session records."""
    return [
        line
        for line in server.log().splitlines()
        if "[twisted_socks.session#info] session " in line
    ]


@pytest.mark.parametrize(
    ("mode", "reply"),
    [("lenient", GRANTED), ("strict", NO_IDENTD)],
    ids=["lenient", "strict"],
)
@pytest.mark.parametrize("logFormat", ["text", "json"])
def test_identErrorTextNeverReachesTheLogRaw(
    tmp_path: Path,
    servers: list[Server],
    echo: EchoServer,
    mode: str,
    reply: bytes,
    logFormat: str,
) -> None:
    """
    An identd's ERROR text (the identd runs on the client's host) carrying
    ESC, BEL, BS and DEL reaches the log escaped, in the lenient mode's
    "no ident answer" line and in the strict mode's session record, text
    or JSON (where the decoded strings hold no control character either).
    """
    identd = HostileIdentd()
    try:
        server = startServer(
            tmp_path,
            "--ident",
            mode,
            "--ident-port",
            str(identd.port),
            "--log-format",
            logFormat,
        )
        servers.append(server)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(encodeRequest(Command.CONNECT, echo.port, LOCALHOST))
            assert recvUpTo(s, 8) == reply
        waitUntil(lambda: "X-EVIL" in server.log() and "session" in server.log())
    finally:
        identd.close()
    raw = server.logPath.read_bytes()
    for byte in CONTROL:
        assert byte not in raw, byte
    escaped = "\\x1b[31m\\x07\\x08\\x7fX-EVIL\\x1b[0m"
    if logFormat == "json":
        events = [json.loads(line) for line in raw.decode("ascii").splitlines()]
        texts = [str(value) for e in events for value in e.values()]
        assert all(text.isprintable() for text in texts)
        assert any(escaped in text for text in texts)
    else:
        assert escaped in raw.decode("ascii")
    if mode == "lenient":
        assert "no ident answer" in server.log()


def test_bindWritesOnlyTheSessionRecord(tmp_path: Path, servers: list[Server]) -> None:
    """
    A BIND (listen, the peer connects, both close) adds exactly one line to
    the log, its session record: none of Twisted's untagged lines about
    the listener starting or closing.
    """
    server = startServer(tmp_path)
    servers.append(server)
    before = server.log().splitlines()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(encodeRequest(Command.BIND, 21, LOCALHOST))
        first = recvExactly(s, 8)
        assert first[:2] == GRANTED[:2]
        listenerPort = int.from_bytes(first[2:4], "big")
        with socket.create_connection(("127.0.0.1", listenerPort), timeout=10):
            assert recvExactly(s, 8)[:2] == GRANTED[:2]
    waitUntil(lambda: len(sessionLines(server)) == 1, what="the session record")
    added = server.log().splitlines()[len(before) :]
    assert added == sessionLines(server), added
    assert " bind 127.0.0.1:21 resolved=127.0.0.1:" in added[0]


def test_connectionWithoutARequestSaysSo(tmp_path: Path, servers: list[Server]) -> None:
    """
    A connection that closes before sending a request gets a session line
    that says there was no request (not C{None None}); the JSON record
    keeps its null command and destination.
    """
    server = startServer(tmp_path)
    servers.append(server)
    socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    waitUntil(lambda: len(sessionLines(server)) == 1, what="the session record")
    [line] = sessionLines(server)
    assert "None None" not in line
    assert " no-request - resolved=None " in line
    assert line.endswith("reason=client closed before completing its request")


def test_ipv6DestinationIsBracketed(tmp_path: Path, servers: list[Server]) -> None:
    """
    A SOCKS4A request for C{::1} shows its destination as C{[::1]:PORT} in
    the session line, so that the port is not read as part of the address.
    """
    server = startServer(tmp_path)
    servers.append(server)
    port = closedPort()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(encodeRequest(Command.CONNECT, port, hostname="::1"))
        assert recvUpTo(s, 8) == REJECTED
    waitUntil(lambda: len(sessionLines(server)) == 1, what="the session record")
    [line] = sessionLines(server)
    assert f" connect [::1]:{port} resolved=None " in line


def test_jsonStringsHoldNoControlCharacter() -> None:
    """
    In the JSON log, the decoded C{text} and C{failure} strings hold no
    control character even when an event's field or an exception message
    does (JSON's own escaping would hand them back to the reader raw).
    """
    try:
        raise ValueError("bad name \x1b[31mred\x07")
    except ValueError:
        failure = Failure()
    out = io.StringIO()
    JSONLinesObserver(out)(
        {
            "log_format": "lookup of {name} failed",
            "name": "\x1b]0;title\x07",
            "log_failure": failure,
            "log_namespace": "twisted_socks.server",
            "log_level": LogLevel.warn,
            "log_time": 1_800_000_000.0,
        }
    )
    event = json.loads(out.getvalue())
    assert event["text"] == "lookup of \\x1b]0;title\\x07 failed"
    assert "ValueError: bad name \\x1b[31mred\\x07" in event["failure"]
    assert all(line.isprintable() for line in event["failure"].split("\n"))
