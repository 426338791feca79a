"""
PROXY-protocol listeners (C{--listen haproxy:...}): several instances behind
a real HAProxy (Debian's haproxy), where load spreads and rules see the real
client address; and the trusted senders of C{--proxy-protocol-from}, so that
a client reaching the listener directly cannot choose its own address.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address as TCP4Address
from twisted.internet.address import IPv6Address as TCP6Address
from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, capturedLogs

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
from twisted_socks.app._proxyprotocol import (
    DEFAULT_TRUSTED_PROXIES,
    TrustedProxiesFactory,
    parseTrustedProxies,
)

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6


def askFrom(source: str, port: int, destPort: int, header: bytes = b"") -> bytes:
    """A CONNECT sent from address C{source}, after C{header}; the reply."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(
            header + encodeRequest(Command.CONNECT, destPort, IPv4Address("127.0.0.1"))
        )
        return recvUpTo(sock, 8)


def proxyHeader(claimed: str, port: int) -> bytes:
    """A PROXY protocol v1 header saying the client is C{claimed}."""
    return f"PROXY TCP4 {claimed} 127.0.0.1 40000 {port}\r\n".encode("ascii")


def test_untrustedProxyHeaderSendersAreClosedUnserved(tmp_path: Path) -> None:
    """
    With C{--proxy-protocol-from 127.0.0.2/32}, a client connecting from
    127.0.0.1 with a PROXY header that claims 127.0.0.1 (which the built-in
    policy would serve) is closed without a reply, and the log names it;
    a client connecting from the trusted 127.0.0.2 is served as the address
    its header gives.
    """
    echo = EchoServer()
    port = closedPort()
    server = startServer(
        tmp_path,
        "--listen",
        f"haproxy:tcp:{port}:interface=127.0.0.1",
        "--proxy-protocol-from",
        "127.0.0.2/32",
    )
    try:
        try:
            untrusted = askFrom(
                "127.0.0.1", port, echo.port, proxyHeader("127.0.0.1", port)
            )
        except ConnectionResetError:
            # Closed with the header unread in its buffer: the kernel resets.
            untrusted = b""
        assert untrusted == b""
        waitUntil(lambda: "refused 127.0.0.1: not a trusted PROXY" in server.log())
        trusted = askFrom("127.0.0.2", port, echo.port, proxyHeader("127.0.0.9", port))
        assert trusted == GRANTED
        waitUntil(lambda: "reply=90" in server.log())
        sessions = [line for line in server.log().splitlines() if " session " in line]
        assert len(sessions) == 1
        assert "session 127.0.0.9:40000" in sessions[0]
    finally:
        stopServer(server)
        echo.shutdown()
        echo.server_close()


def test_workersBelieveOnlyTrustedSendersToo(tmp_path: Path) -> None:
    """
    Under C{--workers 2} each worker reads the PROXY headers itself, with
    the same trusted senders: untrusted connections are closed unserved,
    trusted ones are served as their headers say.
    """
    from tests.test_workers import launchWorkers

    echo = EchoServer()
    port = closedPort()
    server = launchWorkers(
        tmp_path,
        "--listen",
        f"haproxy:tcp:{port}:interface=127.0.0.1",
        "--proxy-protocol-from",
        "127.0.0.2",
    )
    try:
        for _ in range(4):
            try:
                reply = askFrom(
                    "127.0.0.1", port, echo.port, proxyHeader("127.0.0.1", port)
                )
            except ConnectionResetError:
                reply = b""
            assert reply == b""
        for _ in range(4):
            reply = askFrom(
                "127.0.0.2", port, echo.port, proxyHeader("127.0.0.9", port)
            )
            assert reply == GRANTED
        server.waitFor("session 127.0.0.9:40000", count=4)
        log = server.waitFor("not a trusted PROXY-protocol sender", count=4)
        assert log.count("not a trusted PROXY-protocol sender") == 4
        assert "session 127.0.0.1:" not in server.log()
    finally:
        server.stop()
        echo.shutdown()
        echo.server_close()


def test_badProxyProtocolFromIsAOneLineError(tmp_path: Path) -> None:
    """
    A C{--proxy-protocol-from} that is not an address or network stops
    start-up with one line that names it.
    """
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted_socks",
            "serve",
            "--proxy-protocol-from",
            "127.0.0.1/8,proxy.example",
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.decode().splitlines()
    assert "--proxy-protocol-from" in line
    assert "'127.0.0.1/8'" in line


class _Nothing(Protocol):
    """A protocol that does nothing."""


def test_trustedSourcesByAddressKind() -> None:
    """
    The default senders are this host: IPv4 loopback (also as an
    IPv4-mapped IPv6 peer of a dual-stack listener), C{::1}, and any UNIX
    socket peer; another address gets no protocol and a warning whose
    source is escaped.
    """
    inner = Factory.forProtocol(_Nothing)
    gate = TrustedProxiesFactory(inner, DEFAULT_TRUSTED_PROXIES)
    for peer in (
        TCP4Address("TCP", "127.0.0.1", 1),
        TCP4Address("TCP", "127.8.9.10", 1),
        TCP6Address("TCP", "::1", 1),
        TCP6Address("TCP", "::ffff:127.0.0.1", 1),
        UNIXAddress(None),
    ):
        assert isinstance(gate.buildProtocol(peer), _Nothing), peer
    with capturedLogs() as events:
        for peer in (
            TCP4Address("TCP", "10.0.0.1", 1),
            TCP6Address("TCP", "::ffff:10.0.0.1", 1),
            TCP6Address("TCP", "fe80::1%eth0", 1),
            TCP4Address("TCP", "10.0.0.1\x1b[2J", 1),
        ):
            assert gate.buildProtocol(peer) is None, peer
    assert [e["log_level"] for e in events] == [LogLevel.warn] * 4
    assert events[-1]["source"] == "10.0.0.1\\x1b[2J"


def test_parseTrustedProxies() -> None:
    """
    Addresses, networks and comma-separated lists parse, across repeated
    values; a network with host bits set is refused as a likely typo.
    """
    networks = parseTrustedProxies(["10.0.0.5, 192.168.0.0/16", "fd00::/64"])
    assert [str(n) for n in networks] == [
        "10.0.0.5/32",
        "192.168.0.0/16",
        "fd00::/64",
    ]
    with pytest.raises(ValueError, match=r"'10\.0\.0\.5/24'"):
        parseTrustedProxies(["10.0.0.5/24"])


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
