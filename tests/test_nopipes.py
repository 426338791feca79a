"""
Out of descriptors, a tunnel keeps relaying: when the splice relay cannot
get a pipe (C{EMFILE}), the tunnel stays on, or goes back to, the copying
relay and loses nothing.

These run C{twistd socks} as a subprocess with a low RLIMIT_NOFILE, take
every descriptor it has left with idle client connections once a tunnel is
up, and then move 4 MiB each way through that tunnel.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests._support import GRANTED, recvExactly, stopServer, waitUntil
from tests.test_hardening import Twistd, launch, record
from twisted_socks import Command, encodeRequest
from twisted_socks.relay._splice import spliceAvailable

SIZE = 4 * 1024 * 1024
#: Low enough that a few dozen idle clients exhaust it.
NOFILE = 64

LINUX_ONLY = pytest.mark.skipif(not spliceAvailable(), reason="splice(2) is Linux-only")


class _Peer:
    """
    One end of the transfer: sends C{SIZE} random bytes on C{sock} while
    reading what comes back, then half-closes; digests of both directions.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        data = os.urandom(SIZE)
        self.data = data
        self.sentDigest = hashlib.sha256(data).hexdigest()
        self.received = hashlib.sha256()
        self.receivedBytes = 0
        self.error: BaseException | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer = threading.Thread(target=self._write, daemon=True)

    def start(self) -> None:
        """Start sending and reading."""
        self._reader.start()
        self._writer.start()

    def join(self, timeout: float) -> None:
        """Wait (bounded) until both directions are done."""
        deadline = time.monotonic() + timeout
        for thread in (self._writer, self._reader):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _write(self) -> None:
        try:
            self.sock.sendall(self.data)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = e

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 16):
                self.received.update(chunk)
                self.receivedBytes += len(chunk)
        except OSError as e:
            self.error = e


@pytest.fixture
def servers() -> Iterator[list[Twistd]]:
    """twistd servers to stop after the test."""
    started: list[Twistd] = []
    yield started
    for server in started:
        stopServer(server)


@pytest.mark.slow
@pytest.mark.parametrize(
    "relay",
    [
        pytest.param("splice", marks=LINUX_ONLY),
        pytest.param("auto", marks=LINUX_ONLY),
        pytest.param("copy"),
    ],
)
def test_transferSurvivesDescriptorExhaustion(
    tmp_path: Path,
    servers: list[Twistd],
    monkeypatch: pytest.MonkeyPatch,
    relay: str,
) -> None:
    """
    With every descriptor of the server taken (so no pipe can be made), a
    tunnel that was up before still carries 4 MiB each way intact (SHA-256)
    on every relay, and the log has no unhandled error or traceback.
    """
    # "auto" is the factory's default (splice=None), which the environment
    # can override: pin it, whatever the suite runs under.
    monkeypatch.setenv("TWISTED_SOCKS_RELAY", "auto")
    server = launch(tmp_path, "--relay", relay, nofile=NOFILE)
    servers.append(server)

    destination = socket.create_server(("127.0.0.1", 0))
    destination.settimeout(10)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    idle: list[socket.socket] = []
    try:
        client.sendall(
            encodeRequest(
                Command.CONNECT,
                destination.getsockname()[1],
                IPv4Address("127.0.0.1"),
            )
        )
        outbound, _ = destination.accept()
        outbound.settimeout(60)
        assert recvExactly(client, 8) == GRANTED
        client.settimeout(60)

        # Take every descriptor the server has left: it accepts idle
        # clients until accept() fails with EMFILE (Twisted then keeps one
        # spare descriptor for closing the excess at once).
        for _ in range(NOFILE):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        waitUntil(
            lambda: server.openFds() >= NOFILE - 1,
            what=f"server holding {NOFILE - 1} descriptors",
        )
        held = server.openFds()

        ours, theirs = _Peer(client), _Peer(outbound)
        ours.start()
        theirs.start()
        ours.join(60)
        theirs.join(60)
        upstream = theirs.receivedBytes
        downstream = ours.receivedBytes
    finally:
        for sock in idle:
            sock.close()
        client.close()
        destination.close()
    log = server.log()
    record(
        f"no-pipes-{relay}",
        nofile=NOFILE,
        serverFds=held,
        bytesUp=upstream,
        bytesDown=downstream,
        of=SIZE,
    )
    assert (upstream, downstream) == (SIZE, SIZE)
    assert theirs.received.hexdigest() == ours.sentDigest
    assert ours.received.hexdigest() == theirs.sentDigest
    if relay != "copy":
        # The pipe really could not be had: the tunnel went on copying.
        assert "no pipe for the in-kernel relay (Too many open files)" in log
    assert "Unhandled Error" not in log
    assert "Traceback" not in log
    assert server.process.poll() is None
