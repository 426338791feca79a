"""
Several instances behind a real HAProxy (Debian's haproxy) speaking the
PROXY protocol: load spreads, and rules see the real client address.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests._support import (
    Server,
    closedPort,
    recvUpTo,
    startServer,
    stopServer,
    waitUntil,
)
from tests.test_rules_server import EchoServer
from twisted_socks import Command, encodeRequest

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6


def askFrom(source: str, port: int, destPort: int) -> bytes:
    """A CONNECT sent from address C{source}; the reply."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(encodeRequest(Command.CONNECT, destPort, IPv4Address("127.0.0.1")))
        return recvUpTo(sock, 8)


@pytest.mark.interop
def test_haproxySpreadsLoadAndRulesSeeRealClients(tmp_path: Path) -> None:
    """
    HAProxy (send-proxy, round robin) in front of two instances listening
    with `--listen haproxy:tcp:...`: sessions land on both, and a rule that
    admits only client 127.0.0.2 admits a client that reached HAProxy from
    127.0.0.2 and rejects one from 127.0.0.1.
    """
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if haproxy is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (./dev test installs it)")
        pytest.skip("haproxy is not installed")
    echo = EchoServer()
    rules = tmp_path / "rules.conf"
    rules.write_text("allow 127.0.0.2 255.255.255.255\ndeny 0/0\n")
    backends: list[Server] = []
    front = closedPort()
    daemon = None
    try:
        for name in ("one", "two"):
            folder = tmp_path / name
            folder.mkdir()
            port = closedPort()
            backends.append(
                startServer(
                    folder,
                    "--listen",
                    f"haproxy:tcp:{port}:interface=127.0.0.1",
                    "--rules",
                    str(rules),
                )
            )
        config = tmp_path / "haproxy.cfg"
        servers = "\n".join(
            f"    server s{i} 127.0.0.1:{b.port} send-proxy"
            for i, b in enumerate(backends)
        )
        config.write_text(
            "global\n    maxconn 100\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n"
            "    timeout client 30s\n    timeout server 30s\n"
            f"frontend socks\n    bind 127.0.0.1:{front}\n    default_backend pool\n"
            f"backend pool\n    balance roundrobin\n{servers}\n"
        )
        daemon = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise
                time.sleep(0.05)
        replies = [askFrom("127.0.0.2", front, echo.port) for _ in range(6)]
        assert replies == [GRANTED] * 6
        assert askFrom("127.0.0.1", front, echo.port) == REJECTED
        for backend in backends:
            waitUntil(lambda b=backend: "reply=90" in b.log())
            assert "session 127.0.0.2:" in backend.log()

        def everything() -> str:
            return "".join(b.log() for b in backends)

        waitUntil(lambda: "reply=91" in everything())
        # (The readiness probe above also reached a backend, from 127.0.0.1,
        # without a request: only the record with a request counts here.)
        [record] = [
            line
            for line in everything().splitlines()
            if "session 127.0.0.1:" in line and " connect " in line
        ]
        assert "reply=91" in record
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        for backend in backends:
            stopServer(backend)
        echo.shutdown()
        echo.server_close()
