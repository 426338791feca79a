"""
The server as administrators run it: `twistd socks` in a real process.

These tests start twistd as a subprocess, so they also prove what a unit test
cannot: the plugin is found, `socks` is ours, start-up errors are one line,
and the relay's memory stays bounded with a slow reader.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support import (
    LISTENING,
    Server,
    Source,
    drain,
    runTwistd,
    socksConnect,
    startServer,
    stopServer,
    twistd,
    twistdCommand,
    waitUntil,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """Our server, started by twistd with its defaults."""
    running = startServer(tmp_path)
    yield running
    stopServer(running)


def test_socksIsOurs(tmp_path: Path) -> None:
    """`twistd socks --help` shows this project's options, not Twisted's."""
    result = subprocess.run(
        [twistd(), "socks", "--help"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"--negotiate-timeout" in result.stdout
    assert b"--max-connections" in result.stdout
    listing = subprocess.run(
        [twistd(), "--help"], cwd=tmp_path, capture_output=True, timeout=60, check=True
    )
    socksLines = [
        line
        for line in listing.stdout.splitlines()
        if line.strip().startswith(b"socks ")
    ]
    assert len(socksLines) == 1
    assert b"twisted-socks" in socksLines[0]


def test_portInUseIsOneLineNotATraceback(server: Server, tmp_path: Path) -> None:
    """A taken port ends start-up with one clear line and a failure status."""
    logPath = tmp_path / "second.log"
    result = subprocess.run(
        twistdCommand(logPath, "--port", str(server.port)),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    everything = result.stderr + logPath.read_bytes()
    assert b"Traceback" not in everything
    lines = [line for line in everything.splitlines() if b"cannot listen" in line]
    assert len(lines) == 1
    assert f"tcp:{server.port}:interface=127.0.0.1".encode() in lines[0]
    assert b"Address already in use" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], b"--port must be a port number 0..65535"),
        (["--idle-timeout", "soon"], b"--idle-timeout must be a number of seconds"),
        (["--max-connections", "0"], b"--max-connections must be a whole number"),
        (["--listen", "nonsense:1080"], b"bad --listen description 'nonsense:1080'"),
    ],
)
def test_invalidOptionIsOneClearLine(
    tmp_path: Path, args: list[str], message: bytes
) -> None:
    """An invalid option is named in one line; no traceback, non-zero exit."""
    returncode, output = runTwistd(tmp_path, *args)
    assert returncode != 0
    assert b"Traceback" not in output
    assert message in output.splitlines()[-1]


def test_servesAndLogsOneRecordPerSession(server: Server) -> None:
    """The default server relays for a loopback client and logs the session."""
    source = Source(1 << 20)
    source.start()
    with socksConnect(server.port, source.port) as sock:
        received = drain(sock)
    source.join(10)
    assert source.error is None
    assert received == source.digest.digest()
    waitUntil(lambda: "reply=90" in server.log(), timeout=5, what="session record")
    records = [line for line in server.log().splitlines() if "session " in line]
    assert len(records) == 1
    # Ident is off by default: no lookup was even tried.
    assert "ident" not in server.log().replace("ident=None", "")
    assert f"connect 127.0.0.1:{source.port}" in records[0]
    assert f"down={1 << 20}" in records[0]


@pytest.mark.slow
def test_slowReaderKeepsServerMemoryBounded(server: Server) -> None:
    """
    A destination that writes 256 MiB as fast as it can to a client that
    stalls: backpressure holds the server's memory to a few MiB (without it
    the whole stream would pile up in the server), and every byte still
    arrives once the client reads.
    """
    size = 256 << 20
    source = Source(size)
    source.start()
    baseline = server.rssKiB()
    peak = baseline
    with socksConnect(server.port, source.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        # Stall: the source fills every buffer on the path, then blocks.
        for _ in range(20):
            time.sleep(0.1)
            peak = max(peak, server.rssKiB())
        received = hashlib.sha256()
        total = 0
        reads = 0
        while chunk := sock.recv(1 << 16):
            received.update(chunk)
            total += len(chunk)
            reads += 1
            if reads % 64 == 0:
                # A slow reader: pauses while the writer keeps pushing.
                if reads % 1024 == 0:
                    time.sleep(0.05)
                peak = max(peak, server.rssKiB())
    source.join(30)
    assert source.error is None
    assert total == size
    assert received.digest() == source.digest.digest()
    growthMiB = (peak - baseline) / 1024
    assert growthMiB < 16, f"server grew by {growthMiB:.1f} MiB"


@pytest.mark.slow
def test_freshVirtualenvInstallRunsOurServer(tmp_path: Path) -> None:
    """
    A regular (non-editable) install into a new virtualenv ships the plugin:
    `twistd socks --help` shows our options and `twistd -n socks` serves;
    it also installs the `twisted-socks` command, with the same options.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(ROOT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing on sys.path
    elsewhere.mkdir()
    result = subprocess.run(
        [twistd(python), "socks", "--help"],
        cwd=elsewhere,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert b"--negotiate-timeout" in result.stdout
    launcher = subprocess.run(
        [str(venv / "bin" / "twisted-socks"), "--help"],
        cwd=elsewhere,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert launcher.stdout.startswith(b"Usage: twisted-socks [options]")
    assert b"--negotiate-timeout" in launcher.stdout
    running = startServer(elsewhere, python=str(python))
    try:
        source = Source(4096)
        source.start()
        with socksConnect(running.port, source.port) as sock:
            received = drain(sock)
        source.join(10)
        assert received == source.digest.digest()
        assert "twisted_socks" in running.log()
    finally:
        stopServer(running)


def test_standardOutputLogHasTheSessionLineAndTwistdsOwn(tmp_path: Path) -> None:
    """
    C{twistd -n socks} without C{--logfile} writes its text log to standard
    output in twistd's line format: the session record, and twistd's own
    lines, the last of them written after the reactor has stopped.
    """
    outPath = tmp_path / "stdout.log"
    with outPath.open("wb") as out:
        process = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", "socks", "--port", "0"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        waitUntil(
            lambda: LISTENING.search(outPath.read_bytes()) is not None,
            timeout=20,
            what="listening line",
        )
        match = LISTENING.search(outPath.read_bytes())
        assert match is not None
        source = Source(1000)
        source.start()
        with socksConnect(int(match.group(1)), source.port) as sock:
            drain(sock)
        source.join(10)
        waitUntil(
            lambda: "reply=90" in outPath.read_text(), timeout=5, what="session line"
        )
    finally:
        process.terminate()
        process.wait(10)
    lines = outPath.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
    sessions = [line for line in lines if "[twisted_socks.session#info]" in line]
    assert len(sessions) == 1
    assert re.fullmatch(
        stamp + r" \[twisted_socks\.session#info\] session 127\.0\.0\.1:\d+ "
        rf"connect 127\.0\.0\.1:{source.port} .* reply=90 up=0 down=1000 .*",
        sessions[0],
    )
    assert re.fullmatch(
        stamp + r" \[.*UnixAppLogger#info\] twistd .* starting up\.", lines[0]
    )
    assert re.fullmatch(
        stamp + r" \[.*UnixAppLogger#info\] Server Shut Down\.", lines[-1]
    )
