"""
The lean launcher (`python -m twisted_socks serve`, `twisted-socks`) in real
processes on loopback, and the lazy package it relies on.

Like the twistd tests these start the server as a subprocess: only a real
process shows what it imports and maps, how it exits, and what it prints.
Every wait is bounded.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

import twisted_socks
from tests._support import (
    EchoDestination,
    Source,
    drain,
    recvUpTo,
    socksConnect,
    startServer,
    stopServer,
)
from twisted_socks import Command, encodeRequest
from twisted_socks.app._serve import (
    _LONG_OPTIONS,
    _SHORT_OPTIONS,
    _bufferedStdout,
    _scanOptions,
    needsTLS,
)
from twisted_socks.app._tap import Options

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(
    r"listening on IPv4Address\(type='TCP', host='[^']+', port=(\d+)\)"
)
REFUSED = b"\x00\x5b"


def environment() -> dict[str, str]:
    """The environment for a server process: this checkout first on the path."""
    paths = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + (os.pathsep + paths if paths else ""),
    }


def runPython(
    tmp: Path, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """
    Run this interpreter with C{args} in C{tmp} and the L{environment} of a
    server process, to completion (bounded); its output captured as text.
    """
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        check=check,
    )


@dataclass
class Launched:
    """A running `python -m twisted_socks serve` subprocess."""

    process: subprocess.Popen[bytes]
    logPath: Path
    errPath: Path
    port: int

    def log(self) -> str:
        """Everything it wrote to standard output (its log) so far."""
        return self.logPath.read_text(errors="replace")

    def waitFor(self, pattern: str, count: int = 1, timeout: float = 20) -> str:
        """Wait (bounded) until the log has C{count} lines matching C{pattern}."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if len(re.findall(pattern, log)) >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {pattern!r} in the log:\n{log}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait (kill if it lingers); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError("the server did not stop on SIGTERM") from None


def launch(
    tmp: Path, *args: str, name: str = "server", env: dict[str, str] | None = None
) -> Launched:
    """
    Start the launcher with `--port 0 ARGS` (C{env}: extra environment
    variables); wait until it listens.
    """
    logPath = tmp / f"{name}.log"
    errPath = tmp / f"{name}.err"
    with open(logPath, "wb") as out, open(errPath, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "twisted_socks", "serve", "--port", "0", *args],
            cwd=tmp,
            stdout=out,
            stderr=err,
            env={**environment(), **(env or {})},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(logPath.read_text(errors="replace"))
        if match:
            return Launched(process, logPath, errPath, int(match.group(1)))
        if process.poll() is not None:
            raise AssertionError(
                f"the launcher exited {process.returncode}: {errPath.read_text()}"
            )
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise AssertionError("the launcher did not listen within 30 s")


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    """The launcher with its defaults."""
    server = launch(tmp_path)
    yield server
    server.stop()


def smapsRollup(pid: int) -> dict[str, int]:
    """A process's memory totals in KiB, from /proc/PID/smaps_rollup."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}


def request(port: int) -> bytes:
    """A SOCKS4 CONNECT request for 127.0.0.1:port."""
    return encodeRequest(Command.CONNECT, port, IPv4Address("127.0.0.1"))


def reply(proxyPort: int, destPort: int) -> bytes:
    """The reply code bytes a CONNECT to 127.0.0.1:destPort gets."""
    with socket.create_connection(("127.0.0.1", proxyPort), timeout=10) as sock:
        sock.sendall(request(destPort))
        return recvUpTo(sock, 8)[:2]


def echoThrough(proxyPort: int, destPort: int, payload: bytes) -> None:
    """One tunnel: CONNECT, send C{payload}, get it back byte for byte."""
    with socksConnect(proxyPort, destPort) as sock:
        sock.sendall(payload)
        assert recvUpTo(sock, len(payload)) == payload, "the tunnel lost bytes"


# -- the launcher in a real process -------------------------------------------


def test_launcherRelaysATunnelByteExact(launched: Launched) -> None:
    """
    The launcher serves a CONNECT tunnel: a megabyte of random bytes arrives
    intact, and the session's record is logged on standard output as under
    twistd.
    """
    source = Source(1 << 20)
    source.start()
    with socksConnect(launched.port, source.port) as sock:
        received = drain(sock)
    source.join(10)
    assert source.error is None
    assert received == source.digest.digest()
    log = launched.waitFor(r"session .* reply=90 ")
    [record] = [line for line in log.splitlines() if "session " in line]
    assert "[twisted_socks.session#info]" in record
    assert f"connect 127.0.0.1:{source.port}" in record
    assert f"down={1 << 20}" in record
    assert "reactor EPollReactor" in log


def test_unbufferedPythonStillLogsEverySessionByExit(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    With PYTHONUNBUFFERED set the launcher still buffers its log (see the
    next test) and loses no line: every session is in the log once it has
    exited on SIGTERM.
    """
    server = launch(tmp_path, env={"PYTHONUNBUFFERED": "1"})
    try:
        for _ in range(20):
            echoThrough(server.port, echo.port, b"x")
    finally:
        assert server.stop() == 0
    log = server.log()
    assert log.count("[twisted_socks.session#info]") == 20
    assert log.rstrip().endswith("twisted-socks stopped")


def test_logOutputIsBlockBufferedEvenWhenStdoutIsNot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A line-buffered standard output (PYTHONUNBUFFERED, -u, a terminal) is
    replaced for the log by a block-buffered writer on the same descriptor:
    a line reaches it only when flushed (the observer flushes within 0.2 s).
    """
    read, write = os.pipe()
    lineBuffered = open(write, "w", buffering=1, closefd=True)
    try:
        monkeypatch.setattr(sys, "stdout", lineBuffered)
        out = _bufferedStdout()
        assert out is not lineBuffered and out.fileno() == write
        out.write("one line\n")
        os.set_blocking(read, False)
        with pytest.raises(BlockingIOError):
            os.read(read, 100)
        out.flush()
        assert os.read(read, 100) == b"one line\n"
        # An already block-buffered output is used as it is.
        monkeypatch.setattr(sys, "stdout", out)
        assert _bufferedStdout() is out
    finally:
        lineBuffered.close()
        os.close(read)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be a port number 0..65535, not '70000'"),
        (["--idle-timeout", "soon"], "--idle-timeout must be a number of seconds"),
        (["--max-connections", "0"], "--max-connections must be a whole number"),
        (["--bogus"], "option --bogus not recognized"),
        (["--listen", "nonsense:1080"], "bad --listen description 'nonsense:1080'"),
        (["--rules", "missing.conf"], "missing.conf: cannot read"),
        (["--workers", "0"], "--workers must be a whole number 1..256"),
        (
            ["--status", "tcp:0"],
            "--status tcp:0 is not on loopback or a UNIX socket: give "
            "--status-auth FILE",
        ),
        (["--status-insecure"], "--status-insecure needs --status"),
        (
            ["--listen", "systemd:domain=INET:index=0"],
            "no inherited socket (LISTEN_FDS) has that index",
        ),
        (
            ["--status", "9180", "--status-auth", "missing.token"],
            "--status-auth missing.token: cannot read",
        ),
    ],
)
def test_invalidOptionIsOneLineExitStatus2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """An invalid option is one line on standard error, exit status 2."""
    result = runPython(tmp_path, "-m", "twisted_socks", "serve", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("python -m twisted_socks serve: ")
    assert message in line


def test_helpNamesTheLauncher(tmp_path: Path) -> None:
    """`serve --help` lists the server's options under the launcher's name."""
    result = runPython(tmp_path, "-m", "twisted_socks", "serve", "--help", check=True)
    assert result.stdout.startswith("Usage: python -m twisted_socks serve [options]")
    assert "--workers=" in result.stdout
    assert "--negotiate-timeout=" in result.stdout


def test_sigtermLetsTheSessionFinishAndExits0(
    launched: Launched, echo: EchoDestination
) -> None:
    """
    SIGTERM stops listening, lets an established tunnel finish, and the
    process exits 0, as twistd socks does.
    """
    with socksConnect(launched.port, echo.port) as sock:
        sock.sendall(b"before")
        assert sock.recv(6) == b"before"
        launched.process.send_signal(signal.SIGTERM)
        launched.waitFor("draining sessions")
        # Still relaying while it drains.
        sock.sendall(b"during")
        assert sock.recv(6) == b"during"
    assert launched.process.wait(20) == 0
    log = launched.log()
    assert "twisted-socks stopped" in log
    assert "Traceback" not in log + launched.errPath.read_text()


def test_sighupReloadsTheRules(tmp_path: Path, echo: EchoDestination) -> None:
    """SIGHUP reloads the rules file, as under twistd."""
    rules = tmp_path / "rules.conf"
    rules.write_text("allow 127.0.0.0/8 0/0\n")
    server = launch(tmp_path, "--rules", str(rules))
    try:
        assert reply(server.port, echo.port) == b"\x00\x5a"
        rules.write_text("deny 0/0\n")
        server.process.send_signal(signal.SIGHUP)
        server.waitFor("rules reloaded from")
        assert reply(server.port, echo.port) == REFUSED
    finally:
        assert server.stop() == 0


def test_sighupWithoutRulesIsHarmless(
    launched: Launched, echo: EchoDestination
) -> None:
    """
    Without --rules, SIGHUP (systemd's reload) is logged and ignored: it
    must not kill the server with the signal's default action.
    """
    launched.process.send_signal(signal.SIGHUP)
    launched.waitFor("there is no --rules file to reload")
    echoThrough(launched.port, echo.port, b"alive")
    assert launched.process.poll() is None


def test_jsonLogFormat(tmp_path: Path, echo: EchoDestination) -> None:
    """With --log-format json every line on standard output is a JSON object."""
    import json

    server = launch(tmp_path, "--log-format", "json")
    try:
        echoThrough(server.port, echo.port, b"json")
        server.waitFor('"namespace": "twisted_socks.session"')
    finally:
        assert server.stop() == 0
    lines = server.log().splitlines()
    records = [json.loads(line) for line in lines]
    [session] = [r for r in records if r["namespace"] == "twisted_socks.session"]
    assert session["reply"] == 90
    assert session["bytesUp"] == 4


def test_launcherNeverLoadsTheTLSStack(
    launched: Launched, echo: EchoDestination
) -> None:
    """
    Without an option that needs TLS the launcher's process maps neither
    cryptography's Rust extension nor libssl, not even after serving.
    """
    echoThrough(launched.port, echo.port, b"x" * 1000)
    maps = Path(f"/proc/{launched.process.pid}/maps").read_text()
    for library in ("_rust.abi3", "libssl.so", "/OpenSSL/", "_ssl.cpython"):
        assert library not in maps, library
    assert "TLS blocked (no option needs it)" in launched.log()


def test_serverWithoutRoutesLoadsNoClientCode() -> None:
    """
    The server's modules (composition root, factory, session, pipeline,
    UDP) load none of the client's: the upstream machinery of C{--routes}
    (client endpoints, failover, the routes grammar) is imported only when
    routes are configured, which keeps the launcher's idle memory within
    its budget (an eager import pushed it past 35 MiB).
    """
    script = (
        "import sys\n"
        "import twisted_socks.app._compose, twisted_socks.server._factory\n"
        "import twisted_socks.server._session, twisted_socks.server._pipeline\n"
        "import twisted_socks.server._associate, twisted_socks.server._udp\n"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('twisted_socks.client', 'twisted_socks.outbound._routed'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.slow
def test_launcherIdleMemoryIsFarBelowTwistd(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    After 20 warm-up tunnels the launcher's idle server is under 35 MiB
    resident (issue 8's budget for the whole server is 40 MiB during a
    1 GiB transfer) and at least 10 MiB below `twistd -n socks`.
    """

    def idleRSS(port: int, pid: int) -> int:
        for _ in range(20):
            echoThrough(port, echo.port, b"y" * 10000)
        time.sleep(1)
        return smapsRollup(pid)["Rss"]

    launched = launch(tmp_path)
    try:
        launcherKiB = idleRSS(launched.port, launched.process.pid)
    finally:
        launched.stop()
    twistdDir = tmp_path / "twistd"
    twistdDir.mkdir()
    twistd = startServer(twistdDir)
    try:
        twistdKiB = idleRSS(twistd.port, twistd.process.pid)
    finally:
        stopServer(twistd)
    assert launcherKiB < 35 * 1024, f"launcher {launcherKiB} KiB"
    assert twistdKiB - launcherKiB > 10 * 1024, (launcherKiB, twistdKiB)


# -- deciding about TLS -------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptions", "needed"),
    [
        ([], False),
        (["tcp:1080"], False),
        (["tcp6:1080:interface=\\:\\:1", "unix:/run/socks.sock"], False),
        (["systemd:domain=INET:index=0"], False),
        (["haproxy:tcp:1080"], False),
        (["haproxy:haproxy:unix:/s"], False),
        (["TCP:1080"], False),
        (["ssl:443:privateKey=k.pem"], True),
        (["tcp:1080", "tls:443"], True),
        (["haproxy:ssl:443"], True),
        (["onion:80"], True),
        (["le:/certs:tcp:443"], True),
    ],
)
def test_onlyPlainListenersLetTheLauncherBlockTLS(
    descriptions: list[str], needed: bool
) -> None:
    """TLS stays available unless every endpoint is a plain socket type."""
    assert needsTLS(descriptions) is needed


@pytest.mark.parametrize(
    ("argv", "scanned"),
    [
        ([], ([], False)),
        (["--listen", "tcp:1", "--listen=unix:/s"], (["tcp:1", "unix:/s"], False)),
        (["--lis", "ssl:443"], (["ssl:443"], False)),
        (["-p", "1080", "--status", "tcp:9180"], (["tcp:9180"], True)),
        (["--status=ssl:9180", "--rules", "--listen"], (["ssl:9180"], True)),
        (["--status", "9180"], (["tcp:9180:interface=127.0.0.1"], True)),
        (["--stat=ssl:9180"], None),  # ambiguous: --status or --status-auth
        (["--status", "tcp:1", "--status", "ssl:2"], (["ssl:2"], True)),
        (["--bogus"], None),
        (["--s", "tcp:1"], None),  # ambiguous: --status or --shutdown-grace
    ],
)
def test_scanReadsListenersAsTheParserWill(
    argv: list[str], scanned: tuple[list[str], bool] | None
) -> None:
    """
    The scan that runs before Twisted is imported reads --listen and
    --status as usage.Options will: abbreviations, --opt=value, and a value
    that looks like an option.
    """
    assert _scanOptions(argv) == scanned


def test_scanKnowsEveryOption() -> None:
    """The scan's option table is the real parser's, option for option."""
    options = Options()
    assert sorted(_LONG_OPTIONS) == sorted(options.longOpt)
    assert _SHORT_OPTIONS == options.shortOpt


# -- the lazy package ---------------------------------------------------------

CHECK_IMPORTS = """
import json, sys

HEAVY = ("OpenSSL", "twisted.web", "prometheus_client",
         "twisted.internet.reactor", "twisted.internet.endpoints",
         "twisted_socks.client._socks4endpoints", "twisted_socks.app._status", "twisted_socks.app._metrics")
stages = {}

def stage(name):
    stages[name] = {
        "twisted": sorted(m for m in sys.modules if m.split(".")[0] == "twisted"),
        "heavy": sorted(m for m in HEAVY if m in sys.modules),
    }

import twisted_socks
stage("package")
twisted_socks.Command
stage("codec")
import twisted.plugins.twisted_socks4a
stage("plugin")
twisted_socks.SOCKSv4ServerFactory
stage("server")
print(json.dumps(stages))
"""


def test_importingThePackageImportsNothingHeavy(tmp_path: Path) -> None:
    """
    `import twisted_socks` imports no Twisted at all; using a name imports
    its module only (the codec: still no Twisted); the twistd plugin module
    (which twistd imports in every process) imports no TLS, web, metrics,
    client or endpoint code; even the server factory needs no web page or
    metrics library.
    """
    import json

    result = runPython(tmp_path, "-c", CHECK_IMPORTS, check=True)
    stages = json.loads(result.stdout)
    assert stages["package"] == {"twisted": [], "heavy": []}
    assert stages["codec"] == {"twisted": [], "heavy": []}
    assert stages["plugin"]["heavy"] == []
    assert not {"twisted.web", "prometheus_client", "twisted_socks.app._status"} & set(
        stages["server"]["heavy"]
    )


def test_lazyNamesMatchTheTypeCheckedImports() -> None:
    """
    Every name of __all__ is imported for the type checker and pydoctor
    (the TYPE_CHECKING block) from the module the lazy table names, and is
    listed by dir().
    """
    tree = ast.parse(Path(twisted_socks.__file__).read_text())
    [block] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    imported = {
        alias.name: "." * node.level + (node.module or "")
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == twisted_socks._ORIGINS
    assert sorted(imported) == sorted(twisted_socks.__all__)
    assert set(twisted_socks.__all__) <= set(dir(twisted_socks))
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        twisted_socks.Nonexistent  # type: ignore[attr-defined] # noqa: B018


@pytest.mark.parametrize(
    "command",
    [
        ["twisted-socks", "--version"],
        ["-m", "twisted_socks", "--version"],
        ["-m", "twisted_socks", "serve", "--version"],
        ["twistd", "socks", "--version"],
    ],
)
def test_versionIsOurs(tmp_path: Path, command: list[str]) -> None:
    """
    C{--version} prints this project's version, from the installed
    distribution's metadata (then Twisted's and Python's), and exits 0,
    from the console script, C{python -m twisted_socks}, its C{serve}
    command and C{twistd socks} alike.
    """
    expected = importlib.metadata.version("twisted-socks")
    if command[0] == "-m":
        argv = [sys.executable, *command]
    else:
        argv = [str(Path(sys.executable).with_name(command[0])), *command[1:]]
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"twisted-socks {expected} (Twisted "), (
        result.stdout
    )
    assert result.stdout.count("\n") == 1
