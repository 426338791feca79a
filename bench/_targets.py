"""
The servers under test and the destination process: how to start, find and
stop them.

A L{Target} is one column of the results: a name, what it speaks (SOCKS4,
SOCKS4A) and a C{launch} function that starts it as a subprocess on
127.0.0.1 and returns a L{ServerProcess}.  The pseudo-target C{direct} has no
process: the load generator connects straight to the destination, which is
the ceiling the harness itself can reach.  Adding a peer (Dante, pproxy) is
one more L{Target} in L{all_targets}.

Every process started here gets C{PR_SET_PDEATHSIG} (SIGTERM when the
harness dies, even by SIGKILL) and is stopped by L{ServerProcess.stop} /
L{Destination.stop}, which the harness calls from C{finally} blocks.
"""

from __future__ import annotations

import ctypes
import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import _procfs

__all__ = [
    "BENCH_DIR",
    "DIRECT",
    "Destination",
    "LaunchOptions",
    "ServerProcess",
    "Target",
    "all_targets",
    "free_port",
]

BENCH_DIR = Path(__file__).resolve().parent
_PYTHON = Path(sys.executable)
#: How long a server may take to start listening.
_START_TIMEOUT = 30.0
#: How long a server may take to exit after SIGTERM before it is killed.
_STOP_TIMEOUT = 10.0
#: Enough for the 10,000-tunnel test a later issue adds (20,000 sockets).
_MAX_CONNECTIONS = 20000


@dataclass(frozen=True)
class LaunchOptions:
    """
    How the harness wants a server started.

    @ivar log_path: where the server's log (stdout and stderr) goes.
    @ivar idle_tunnels: the server will hold idle tunnels; turn off any idle
        timeout.
    """

    log_path: Path
    idle_tunnels: bool = False


class ServerProcess:
    """A running server under test, listening on 127.0.0.1:C{port}."""

    def __init__(
        self, name: str, popen: subprocess.Popen[bytes], port: int, log_path: Path
    ) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.host = "127.0.0.1"
        self.port = port
        self.log_path = log_path

    def check_alive(self) -> None:
        """Raise L{RuntimeError} if the server has exited."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.name} server (pid {self.pid}) exited with status {code}; "
                f"log tail:\n{_tail(self.log_path)}"
            )

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far."""
        return _procfs.cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        """The server's RSS now, in KiB."""
        return _procfs.rss_kib(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; never raises."""
        _stop(self.popen)


@dataclass(frozen=True)
class Target:
    """
    One thing to measure.

    @ivar name: short name, used as the column heading.
    @ivar description: one line for the README/RESULTS.
    @ivar socks4a: whether it resolves SOCKS4A hostnames (its handshake test
        also runs in SOCKS4A mode).
    @ivar launch: starts the server; L{None} for C{direct} (no proxy).
    """

    name: str
    description: str
    socks4a: bool
    launch: Callable[[LaunchOptions], ServerProcess] | None

    @property
    def is_direct(self) -> bool:
        """Whether this is the no-proxy baseline."""
        return self.launch is None


# -- launching ----------------------------------------------------------------


def _set_pdeathsig() -> None:
    """In the child before exec: get SIGTERM if the harness dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(
    argv: list[str],
    log_path: Path,
    stdin: int = subprocess.DEVNULL,
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start C{argv} in C{log_path}'s directory, stderr (and stdout) to the log."""
    log_path = log_path.resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
            cwd=log_path.parent,
            # The harness has no threads when it starts processes.
            preexec_fn=_set_pdeathsig,
        )


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is not None:
        return
    try:
        popen.send_signal(signal.SIGTERM)
        popen.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(_STOP_TIMEOUT)
    except OSError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def _wait_for_port(
    name: str,
    popen: subprocess.Popen[bytes],
    log_path: Path,
    find_port: Callable[[], int | None],
) -> int:
    """Poll C{find_port} until it answers, the process dies or time runs out."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        port = find_port()
        if port is not None:
            return port
        if popen.poll() is not None:
            raise RuntimeError(
                f"{name} exited with status {popen.returncode} before listening; "
                f"log tail:\n{_tail(log_path)}"
            )
        time.sleep(0.05)
    _stop(popen)
    raise RuntimeError(
        f"{name} did not listen within {_START_TIMEOUT:.0f}s; "
        f"log tail:\n{_tail(log_path)}"
    )


def free_port() -> int:
    """
    A port on 127.0.0.1 the kernel has just handed out and released, for a
    server that needs its port in a configuration file (Dante, pproxy).
    Another process could take it before the server binds it; on a quiet
    loopback that does not happen in practice.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LISTENING = re.compile(r"SOCKS4/4A server listening on IPv4Address\(.*?port=(\d+)\)")


def _launch_ours(options: LaunchOptions) -> ServerProcess:
    """This project's server: C{twistd -n socks}, logging to a file."""
    argv = [
        str(_PYTHON.parent / "twistd"),
        "--nodaemon",
        "--pidfile=",
        "socks",
        "--port=0",
        "--interface=127.0.0.1",
        f"--max-connections={_MAX_CONNECTIONS}",
    ]
    if options.idle_tunnels:
        argv.append("--idle-timeout=0")
    # Without --logfile and with --nodaemon twistd logs to stdout, which is
    # the log file here (flushed per event, like the builtin runner's).
    popen = _spawn(argv, options.log_path)

    def find_port() -> int | None:
        match = _LISTENING.search(options.log_path.read_text(errors="replace"))
        return int(match.group(1)) if match else None

    port = _wait_for_port("ours", popen, options.log_path, find_port)
    return ServerProcess("ours", popen, port, options.log_path)


def _launch_builtin(options: LaunchOptions) -> ServerProcess:
    """Twisted's C{twisted.protocols.socks.SOCKSv4Factory} (see the runner)."""
    port_file = options.log_path.resolve().with_suffix(".port")
    port_file.unlink(missing_ok=True)
    argv = [
        str(_PYTHON),
        str(BENCH_DIR / "_builtin_server.py"),
        "--port-file",
        str(port_file),
    ]
    popen = _spawn(argv, options.log_path)

    def find_port() -> int | None:
        try:
            return int(port_file.read_text())
        except (OSError, ValueError):
            return None

    port = _wait_for_port("twisted-builtin", popen, options.log_path, find_port)
    return ServerProcess("twisted-builtin", popen, port, options.log_path)


DIRECT = Target(
    name="direct",
    description=(
        "no proxy: the load generator connects straight to the destination "
        "(the harness's own ceiling)"
    ),
    socks4a=False,
    launch=None,
)


def all_targets() -> list[Target]:
    """Every target, in column order; the first proxy is the reference."""
    return [
        Target(
            name="ours",
            description=(
                "this project: `twistd -n socks` (epoll reactor, default "
                "timeouts, --max-connections 20000; --idle-timeout 0 for the "
                "idle-tunnel test), session log to a file"
            ),
            socks4a=True,
            launch=_launch_ours,
        ),
        Target(
            name="twisted-builtin",
            description=(
                "Twisted's own `twisted.protocols.socks.SOCKSv4Factory(None)` "
                "(bench/_builtin_server.py: epoll reactor, its per-connection "
                "log.msg to a file)"
            ),
            socks4a=True,
            launch=_launch_builtin,
        ),
        DIRECT,
    ]


# -- the destination ----------------------------------------------------------


class Destination:
    """
    The destination servers (bench/_destination.py) in their own process.

    @ivar echo_port: 1-byte echo; holds connections until the peer closes.
    @ivar bulk_port: sink/source for the throughput test.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.popen = _spawn(
            [str(_PYTHON), str(BENCH_DIR / "_destination.py")],
            log_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = self.popen.pid
        try:
            info = self._read_announcement()
        except BaseException:
            self.stop()
            raise
        self.host = "127.0.0.1"
        self.echo_port = int(info["echo_port"])
        self.bulk_port = int(info["bulk_port"])

    def _read_announcement(self) -> dict[str, object]:
        stdout: IO[bytes] = self.popen.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([stdout], [], [], _START_TIMEOUT)
        line = stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(
                "the destination process did not announce its ports; "
                f"log tail:\n{_tail(self.log_path)}"
            )
        return json.loads(line)  # type: ignore[no-any-return]

    def cpu_seconds(self) -> float:
        """CPU seconds the destination process has used so far."""
        return _procfs.cpu_seconds(self.pid)

    def check_alive(self) -> None:
        """Raise L{RuntimeError} if the destination process has exited."""
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"the destination process exited with status {self.popen.returncode}"
                f"; log tail:\n{_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """Close its stdin (its signal to exit), then SIGTERM/SIGKILL."""
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
            self.popen.wait(2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop(self.popen)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
