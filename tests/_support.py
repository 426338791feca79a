"""
Helpers shared by the test modules: blocking socket reads, bounded waits,
in-process loopback servers, and C{twistd socks} as a subprocess.

Fixtures live in L{tests.conftest}; this module holds plain functions and
classes that test modules import.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from twisted_socks import Command, encodeRequest

T = TypeVar("T")
GRANTED = b"\x00\x5a" + b"\0" * 6
#: Where twistd says the SOCKS server listens.
LISTENING = re.compile(
    rb"listening on IPv4Address\(type='TCP', host='[^']+', port=(\d+)\)"
)
#: Where twistd says its status page listens.
STATUS = re.compile(rb"status page on http://127\.0\.0\.1:(\d+)/")


# -- blocking sockets -----------------------------------------------------------------


def recvExactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly C{n} bytes or fail."""
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError(f"EOF with {n} bytes still expected")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recvAll(sock: socket.socket) -> bytes:
    """Read until EOF."""
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def recvUpTo(sock: socket.socket, n: int) -> bytes:
    """Read C{n} bytes, or fewer if the peer closes first."""
    data = b""
    while len(data) < n and (more := sock.recv(n - len(data))):
        data += more
    return data


def drain(sock: socket.socket) -> bytes:
    """Read C{sock} until EOF; the SHA-256 digest of everything that arrived."""
    received = hashlib.sha256()
    while chunk := sock.recv(1 << 16):
        received.update(chunk)
    return received.digest()


def closedPort() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- bounded waits --------------------------------------------------------------------


def inThread(f: Callable[..., T], *args: Any) -> Deferred[T]:
    """Run blocking client code in a thread while the reactor serves."""
    return threads.deferToThread(f, *args)


async def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    """
    Wait (bounded) for C{condition} to hold, letting the reactor run: the
    other side acts asynchronously.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, 0.01)


def waitUntil(
    condition: Callable[[], object], timeout: float = 10, what: str = "condition"
) -> float:
    """
    Poll C{condition} until true, blocking (no reactor runs here); return
    the seconds it took.

    @param what: names the condition in the failure message.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


# -- in-process servers ---------------------------------------------------------------


class Echo(Protocol):
    """Echoes what it receives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class EchoDestination(threading.Thread):
    """A destination that echoes every connection until the test ends."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting."""
        self.listener.close()


def listen(ports: list[IListeningPort], factory: Any) -> int:
    """
    Listen on a kernel-chosen loopback port, closed after the test (C{ports}
    is the fixture of that name); return the port number.
    """
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    ports.append(port)
    return port.getHost().port  # type: ignore[attr-defined,no-any-return]


# -- twistd socks as a subprocess -----------------------------------------------------


def twistd(python: Path | str = sys.executable) -> str:
    """The twistd script beside the given interpreter."""
    return str(Path(python).with_name("twistd"))


def twistdCommand(
    logPath: Path, *args: str, python: Path | str = sys.executable
) -> list[str]:
    """The command line of C{twistd -n socks ARGS}, logging to C{logPath}."""
    return [
        twistd(python),
        "--nodaemon",
        "--pidfile=",
        f"--logfile={logPath}",
        "socks",
        *args,
    ]


def runTwistd(tmp: Path, *args: str) -> tuple[int, bytes]:
    """
    Run C{twistd -n socks ARGS} in C{tmp} to completion (bounded); its exit
    status and everything it printed.
    """
    result = subprocess.run(
        [twistd(), "-n", "--pidfile=", "socks", *args],
        cwd=tmp,
        capture_output=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


@dataclass
class Server:
    """A running `twistd -n socks` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    logPath: Path

    def log(self) -> str:
        """Everything the server logged so far."""
        return self.logPath.read_text(errors="replace")

    def rssKiB(self) -> int:
        """The server's resident memory, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match is None:
            raise AssertionError("no VmRSS in /proc status")
        return int(match.group(1))


def spawnTwistd(
    tmp: Path,
    *args: str,
    python: str = sys.executable,
    wantStatus: bool = False,
    preexecFn: Callable[[], None] | None = None,
) -> tuple[subprocess.Popen[bytes], Path, int, int]:
    """
    Start C{twistd -n socks --port 0 ARGS} with its log in C{tmp}, and wait
    until it listens.

    @param wantStatus: wait for its status page to listen, too.
    @param preexecFn: run in the child before exec.
    @return: the process, its log path, its port and its status page's port
        (0 unless C{wantStatus}).
    """
    logPath = tmp / "twistd.log"
    process = subprocess.Popen(
        twistdCommand(logPath, "--port", "0", *args, python=python),
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=preexecFn,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if logPath.exists():
            text = logPath.read_bytes()
            listening = LISTENING.search(text)
            status = STATUS.search(text) if wantStatus else None
            if listening and (status or not wantStatus):
                statusPort = int(status.group(1)) if status else 0
                return process, logPath, int(listening.group(1)), statusPort
        if process.poll() is not None:
            raise AssertionError(f"twistd exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("twistd did not start listening within 20 s")


def startServer(tmp: Path, *args: str, python: str = sys.executable) -> Server:
    """Start `twistd -n socks --port 0 ARGS` and wait until it listens."""
    process, logPath, port, _ = spawnTwistd(tmp, *args, python=python)
    return Server(process, port, logPath)


def stopServer(server: Server) -> None:
    """SIGTERM, then kill if it lingers."""
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)


class Source(threading.Thread):
    """A destination that sends C{size} random bytes as fast as it can."""

    def __init__(self, size: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.size = size
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(60)
                block = os.urandom(1 << 20)
                sent = 0
                while sent < self.size:
                    chunk = block[: self.size - sent]
                    conn.sendall(chunk)
                    self.digest.update(chunk)
                    sent += len(chunk)
        except BaseException as e:
            self.error = e
        finally:
            self.listener.close()


def socksConnect(port: int, destPort: int) -> socket.socket:
    """
    A client tunnel to 127.0.0.1:destPort through the proxy on C{port}; fails
    unless the proxy grants it.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(encodeRequest(Command.CONNECT, destPort, IPv4Address("127.0.0.1")))
    reply = b""
    while len(reply) < 8:
        chunk = sock.recv(8 - len(reply))
        if not chunk:
            raise AssertionError(f"EOF after {reply!r}")
        reply += chunk
    assert reply == GRANTED
    return sock
