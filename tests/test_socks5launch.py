"""
SOCKS5 clients of a launched server, in real processes on loopback: behind
a C{haproxy:} listener, under C{--workers 2} with C{--users} (and a SIGHUP
that reloads them in every worker), and through a SIGTERM drain.  Every
wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import threading
from pathlib import Path

import bcrypt

from tests._support import (
    EchoDestination,
    closedPort,
    recvUpTo,
    startServer,
    stopServer,
    waitUntil,
)
from tests.test_haproxy import proxyHeader
from tests.test_serve import launch
from tests.test_workers import launchWorkers, sessionsBy

NOAUTH = b"\x05\x01\x00"
PASSWORD = b"\x05\x01\x02"
ANN = b"ann-p4ss"
BOB = b"b0b-pass"


def usersFile(tmp: Path, **users: bytes) -> Path:
    """A private password file holding C{users} (bcrypt, cheapest cost)."""
    path = tmp / "users"
    path.write_bytes(
        b"".join(
            name.encode() + b":" + bcrypt.hashpw(password, bcrypt.gensalt(4)) + b"\n"
            for name, password in users.items()
        )
    )
    path.chmod(0o600)
    return path


def connect5(
    sock: socket.socket,
    destPort: int,
    login: tuple[bytes, bytes] | None = None,
    before: bytes = b"",
) -> bytes:
    """
    A SOCKS5 CONNECT to 127.0.0.1:destPort on C{sock} (after C{before}, and
    logging in as C{login}), every message in one segment; the reply's
    first two bytes after the method (and login) answers, which must be
    accepting.
    """
    greeting = PASSWORD if login else NOAUTH
    message = before + greeting
    if login is not None:
        name, password = login
        message += bytes([1, len(name)]) + name + bytes([len(password)]) + password
    message += b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
    message += struct.pack("!H", destPort)
    sock.sendall(message)
    method = recvUpTo(sock, 2)
    assert method == greeting[:1] + greeting[2:], method
    if login is not None:
        status = recvUpTo(sock, 2)
        if status != b"\x01\x00":
            return status
    reply = recvUpTo(sock, 10)
    return reply[:2]


def echoed(sock: socket.socket, payload: bytes) -> bool:
    """Whether C{payload} comes back through the tunnel byte for byte."""
    sock.sendall(payload)
    return recvUpTo(sock, len(payload)) == payload


def test_haproxyListenerServesSOCKS5AsTheHeadersClient(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    A C{haproxy:} listener reads the PROXY header, then a SOCKS5 greeting
    and CONNECT in the same segment: the tunnel works, and the record
    names the header's client and SOCKS5.
    """
    port = closedPort()
    server = startServer(
        tmp_path,
        "--listen",
        f"haproxy:tcp:{port}:interface=127.0.0.1",
        "--proxy-protocol-from",
        "127.0.0.2",
    )
    try:
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        with sock:
            header = proxyHeader("127.0.0.9", port)
            assert connect5(sock, echo.port, before=header) == b"\x05\x00"
            assert echoed(sock, os.urandom(5000))
        waitUntil(lambda: " proto=socks5 " in server.log(), what="session line")
        [line] = [x for x in server.log().splitlines() if " session " in x]
        assert "session 127.0.0.9:40000 connect 127.0.0.1:" in line
        assert " reply=0 " in line and " auth=none " in line
    finally:
        stopServer(server)


def test_twoWorkersServeSOCKS5LoginsAndSIGHUPReloadsTheirUsers(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    Under C{--workers 2 --users FILE}, 20 concurrent SOCKS5 logins are all
    served, by both workers, and logged with the user and no password; a
    user added to the file logs in after SIGHUP, whichever worker serves
    it, and the password never reaches the log.
    """
    users = usersFile(tmp_path, ann=ANN)
    server = launchWorkers(tmp_path, "--users", str(users))
    try:
        errors: list[BaseException] = []

        def tunnel(number: int) -> None:
            try:
                with socket.create_connection(("127.0.0.1", server.port), 10) as s:
                    assert connect5(s, echo.port, (b"ann", ANN)) == b"\x05\x00"
                    assert echoed(s, os.urandom(1000 + number))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=tunnel, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        log = server.waitFor(r"session .* user=ann .* proto=socks5 auth=password ", 20)
        counts = sessionsBy(log)
        assert counts.get(1, 0) > 0 and counts.get(2, 0) > 0, counts

        with socket.create_connection(("127.0.0.1", server.port), 10) as s:
            assert connect5(s, echo.port, (b"bob", BOB)) == b"\x01\x01"
        usersFile(tmp_path, ann=ANN, bob=BOB)
        server.process.send_signal(signal.SIGHUP)
        # Every worker reloads (each logs it): then bob logs in anywhere.
        server.waitFor(r"worker=\d+\].*users reloaded from .*: 2 users", 2)
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", server.port), 10) as s:
                assert connect5(s, echo.port, (b"bob", BOB)) == b"\x05\x00"
                assert echoed(s, b"bob was here")
        server.waitFor(r"session .* user=bob .* proto=socks5 auth=password ", 6)
        text = server.log() + server.errPath.read_text()
        for secret in (ANN, BOB):
            assert secret.decode() not in text
    finally:
        assert server.stop() == 0


def test_sigtermDrainsALiveSOCKS5Tunnel(tmp_path: Path, echo: EchoDestination) -> None:
    """
    SIGTERM with a SOCKS5 tunnel open: the server stops listening (a new
    client is refused at connect) but the tunnel keeps relaying until the
    client closes it; then the process exits 0 and the record names SOCKS5.
    """
    server = launch(tmp_path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert connect5(sock, echo.port) == b"\x05\x00"
        assert echoed(sock, b"before")
        server.process.send_signal(signal.SIGTERM)
        server.waitFor("draining sessions")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
            newClientRefused = False
        except ConnectionRefusedError:
            newClientRefused = True
        assert newClientRefused
        assert echoed(sock, os.urandom(100_000))
    assert server.process.wait(20) == 0
    log = server.log()
    [line] = [x for x in log.splitlines() if re.search(r"\] session ", x)]
    assert " proto=socks5 " in line and " reply=0 " in line
    assert "Traceback" not in log + server.errPath.read_text()


def test_perClientLimitAnswersASOCKS5ClientInSOCKS5(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    With C{--max-connections-per-client 1}, a second SOCKS5 client from the
    same address is told C{05 FF} and then EOF (a FIN, not a reset), while
    the first one's tunnel works; the session line names the limit and
    SOCKS5.
    """
    server = launch(tmp_path, "--max-connections-per-client", "1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), 10) as first:
            assert connect5(first, echo.port) == b"\x05\x00"
            with socket.create_connection(("127.0.0.1", server.port), 10) as extra:
                extra.sendall(NOAUTH)
                assert recvUpTo(extra, 3) == b"\x05\xff"
            assert echoed(first, b"still here")
        log = server.waitFor(r"reason=max-connections-per-client reached")
        [line] = [x for x in log.splitlines() if "max-connections-per-client" in x]
        assert " proto=socks5 " in line and " reply=None " in line
    finally:
        assert server.stop() == 0
