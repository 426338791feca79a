"""
Running the server for real: source address, graceful SIGTERM, JSON logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from tests._support import startServer, stopServer, waitUntil
from tests.test_rules_server import EchoServer, request

GRANTED = b"\x00\x5a" + b"\0" * 6


def test_outboundAddressIsTheSource(tmp_path: Path) -> None:
    """--outbound-address 127.0.0.2: the destination sees 127.0.0.2."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    server = startServer(tmp_path, "--outbound-address", "127.0.0.2")
    try:
        reply, sock = request(server.port, listener.getsockname()[1])
        with sock:
            assert reply == GRANTED
            conn, peer = listener.accept()
            conn.close()
        assert peer[0] == "127.0.0.2"
    finally:
        stopServer(server)
        listener.close()


def test_sigtermDrainsThenClosesAndExitsZero(tmp_path: Path) -> None:
    """
    SIGTERM with two tunnels open: the listener refuses at once; a tunnel
    that finishes inside the grace period completes byte-exact; the idle one
    is closed at the deadline; the exit code is 0.
    """
    payload = os.urandom(1 << 20)
    finisher = socket.create_server(("127.0.0.1", 0))
    finisher.settimeout(10)
    echo = EchoServer()
    server = startServer(tmp_path, "--shutdown-grace", "2")
    try:
        idleReply, idle = request(server.port, echo.port)
        busyReply, busy = request(server.port, finisher.getsockname()[1])
        assert (idleReply, busyReply) == (GRANTED, GRANTED)
        conn, _ = finisher.accept()
        sent = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)

        def refusedNow() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        waitUntil(refusedNow, timeout=1)
        # The busy tunnel's destination finishes its answer after SIGTERM.
        threading.Thread(target=lambda: (conn.sendall(payload), conn.close())).start()
        received = b""
        busy.settimeout(10)
        while chunk := busy.recv(1 << 16):
            received += chunk
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        idle.settimeout(10)
        try:
            assert idle.recv(1) == b""
        except ConnectionResetError:
            pass  # closed by abort: a reset is a close too
        closedAfter = time.monotonic() - sent
        assert 1.5 < closedAfter < 6
        assert server.process.wait(10) == 0
        busy.close()
        idle.close()
    finally:
        if server.process.poll() is None:
            stopServer(server)
        finisher.close()
        echo.shutdown()
        echo.server_close()


def test_jsonLogsOneObjectPerLine(tmp_path: Path) -> None:
    """--log-format json: every line is a JSON object; sessions carry fields."""
    echo = EchoServer()
    server = startServer(tmp_path, "--log-format", "json")
    try:
        reply, sock = request(server.port, echo.port)
        with sock:
            assert reply == GRANTED
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        waitUntil(lambda: "twisted_socks.session" in server.log())
    finally:
        stopServer(server)
        echo.shutdown()
        echo.server_close()
    events = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"time", "level", "namespace", "text"} <= set(e) for e in events)
    [session] = [e for e in events if e["namespace"] == "twisted_socks.session"]
    assert session["reply"] == 90
    assert (session["bytesUp"], session["bytesDown"]) == (4, 4)
    assert session["destination"] == f"127.0.0.1:{echo.port}"
