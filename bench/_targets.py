"""
The servers under test and the destination process: how to start, find and
stop them.

A L{Target} is one column of the results: a name, what it speaks (SOCKS4,
SOCKS4A) and a C{launch} function that starts it as a subprocess on
127.0.0.1 and returns a L{ServerProcess}.  The pseudo-target C{direct} has no
process: the load generator connects straight to the destination, which is
the ceiling the harness itself can reach.  Ours runs under the lean launcher
(C{python -m twisted_socks serve}), also as three variants measured only where
they differ: C{ours-copy} (C{--relay copy}), C{ours-w2} (C{--workers 2},
a tree of processes) and C{ours-twistd} (under C{twistd -n socks}).  Peers:
Dante (C{danted}, a tree of processes) and pproxy.  CPU and memory of a
server are always summed over its process tree.

Every process started here gets C{PR_SET_PDEATHSIG} (SIGTERM when the
harness dies, even by SIGKILL) and is stopped by L{ServerProcess.stop} /
L{Destination.stop}, which the harness calls from C{finally} blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
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
    "launch_twistd",
]

BENCH_DIR = Path(__file__).resolve().parent
_PYTHON = Path(sys.executable)
#: How long a server may take to start listening.
_START_TIMEOUT = 30.0
#: How long a server may take to exit after SIGTERM before it is killed.
_STOP_TIMEOUT = 10.0
#: Enough for the 10,000-tunnel test (20,000 sockets).
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
        """CPU seconds the server's whole process tree has used so far."""
        return _procfs.tree_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        """The RSS of the server's whole process tree now, in KiB."""
        return _procfs.tree_rss_kib(self.pid)

    def pss_kib(self) -> int:
        """The PSS of the server's whole process tree now, in KiB."""
        return _procfs.tree_pss_kib(self.pid)

    def processes(self) -> int:
        """How many processes the server is now."""
        return len(_procfs.tree(self.pid))

    def reset_peak_rss(self) -> bool:
        """Reset the peak RSS of every process of the tree; whether it worked."""
        return _procfs.tree_reset_peak_rss(self.pid)

    def peak_rss_kib(self) -> int:
        """
        The peak RSS since the last reset: exact for one process, the sum of
        each process's peak for a tree.
        """
        return _procfs.tree_peak_rss_kib(self.pid)

    def tunnel_capacity(self, fds_per_tunnel: int = 2, margin: int = 16) -> int | None:
        """
        How many more tunnels the server's open-file limit allows, for a
        one-process server (its descriptors: limit minus those open, less a
        C{margin}); L{None} for a server of several processes, whose
        descriptors are spread over its children.
        """
        if self.processes() > 1:
            return None
        headroom = _procfs.fd_limit(self.pid) - _procfs.open_fds(self.pid) - margin
        return max(0, headroom // fds_per_tunnel)

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL if it does not exit in time; then the same for
        any of its descendants still there (they normally follow their
        parent out by themselves); never raises.
        """
        descendants: list[tuple[int, str]] = []
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                for pid in _procfs.tree(self.pid)[1:]:
                    start = _start_time(pid)
                    if start is not None:
                        descendants.append((pid, start))
        _stop(self.popen)
        deadline = time.monotonic() + _STOP_TIMEOUT
        for signum in (signal.SIGTERM, signal.SIGKILL):
            # Only the very processes seen above (pid and start time), so a
            # reused pid is never signalled.
            while descendants and time.monotonic() < deadline:
                descendants = [(p, t) for p, t in descendants if _start_time(p) == t]
                time.sleep(0.05)
            for pid, _ in descendants:
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + 2


def _start_time(pid: int) -> str | None:
    """The start time of C{pid} (field 22 of its stat); L{None} if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] == "Z":
        return None
    return fields[19]


#: Starts a server under test.
Launcher = Callable[[LaunchOptions], ServerProcess]


@dataclass(frozen=True)
class Target:
    """
    One thing to measure.

    @ivar name: short name, used as the column heading.
    @ivar description: one line for the README/RESULTS.
    @ivar socks4a: whether it resolves SOCKS4A hostnames (its handshake test
        also runs in SOCKS4A mode).
    @ivar launch: starts the server; L{None} for C{direct} (no proxy).
    @ivar sections: the benchmark sections (C{bench.SECTIONS} names) it
        takes part in; L{None} for all.  Variants of ours are measured only
        where they differ from it, to keep the run short.
    """

    name: str
    description: str
    socks4a: bool
    launch: Launcher | None
    sections: frozenset[str] | None = None

    @property
    def is_direct(self) -> bool:
        """Whether this is the no-proxy baseline."""
        return self.launch is None

    def measured_in(self, section: str) -> bool:
        """Whether it takes part in C{section}."""
        return self.sections is None or section in self.sections


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
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start C{argv} in C{log_path}'s directory, stderr (and stdout) to the log,
    with C{env} (the harness's environment when L{None}).
    """
    log_path = log_path.resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
            cwd=log_path.parent,
            env=env,
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
#: A worker's own listening line under C{--workers N}; the supervisor's line
#: (L{_LISTENING}, untagged) comes first, before any worker has adopted the
#: socket.
_WORKER_LISTENING = re.compile(r"worker=\d+\] SOCKS4/4A server listening on ")


def _ours_argv(options: LaunchOptions) -> list[str]:
    """The options every server of ours is given, whatever runs it."""
    argv = [
        "--port=0",
        "--interface=127.0.0.1",
        f"--max-connections={_MAX_CONNECTIONS}",
    ]
    if options.idle_tunnels:
        argv.append("--idle-timeout=0")
    return argv


def _start_ours(
    name: str,
    argv: list[str],
    options: LaunchOptions,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """
    Start C{argv} (a server of ours, logging to standard output: the log
    file) and wait until it listens; with C{workers}, until every worker
    does too, so no measurement starts while connections queue for a worker
    still importing.
    """
    popen = _spawn(argv, options.log_path, env=env)

    def find_port() -> int | None:
        text = options.log_path.read_text(errors="replace")
        match = _LISTENING.search(text)
        if match is None:
            return None
        if workers > 1 and len(_WORKER_LISTENING.findall(text)) < workers:
            return None
        return int(match.group(1))

    port = _wait_for_port(name, popen, options.log_path, find_port)
    return ServerProcess(name, popen, port, options.log_path)


def _lean_launcher(
    name: str, extra: list[str], workers: int = 1, tree: Path | None = None
) -> Launcher:
    """
    A C{launch} function for this project's server run by its lean launcher,
    C{python -m twisted_socks serve}, with C{extra} options; with C{tree},
    the server of that source tree instead of this checkout's (put first on
    the path, ahead of the virtualenv's editable install).
    """
    env = None
    if tree is not None:
        env = {**os.environ, "PYTHONPATH": str(tree.resolve())}

    def launch(options: LaunchOptions) -> ServerProcess:
        argv = [str(_PYTHON), "-m", "twisted_socks", "serve", *_ours_argv(options)]
        argv += extra
        if workers > 1:
            argv.append(f"--workers={workers}")
        # The launcher logs to standard output, the log file here, one
        # flushed line per event (like twistd -n and the builtin runner).
        return _start_ours(name, argv, options, workers, env)

    return launch


def baseline_target(tree: Path) -> Target:
    """
    C{ours-base}: this project's server as another source tree has it (a
    worktree of an earlier commit), run exactly as C{ours}, for an A/B of a
    change in one run (C{--baseline TREE}).
    """
    ref = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return Target(
        name="ours-base",
        description=(
            f"ours as of commit {ref or '?'} (the source tree {tree}), run by "
            "the same launcher with the same options: the before of an A/B; "
            "throughput, handshake and idle-memory tests"
        ),
        socks4a=True,
        launch=_lean_launcher("ours-base", [], tree=tree),
        sections=frozenset({"throughput", "handshake", "memory"}),
    )


def launch_twistd(options: LaunchOptions) -> ServerProcess:
    """
    This project's server under C{twistd -n socks}, the other way to run
    it: measured once per run for its idle memory next to the launcher's
    (twistd's plugin scan imports every plugin module and, through Twisted's
    endpoints, the TLS stack).
    """
    argv = [str(_PYTHON.parent / "twistd"), "--nodaemon", "--pidfile=", "socks"]
    # Without --logfile and with --nodaemon twistd logs to stdout.
    return _start_ours("ours-twistd", argv + _ours_argv(options), options)


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


def _wait_for_connect(port: int) -> Callable[[], int | None]:
    """A C{find_port} for a server on a known port: it accepts a connection."""

    def find_port() -> int | None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return None
        return port

    return find_port


#: The Dante configuration: loopback only, no authentication, CONNECT only,
#: one log line per session (at its end) to a file, no I/O timeout.
_DANTED_CONF = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: {external}
socksmethod: none
clientmethod: none
{users}
timeout.io: 0
client pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: error disconnect
}}
"""

DANTED = Path("/usr/sbin/danted")

#: Dante binds every outbound socket to its external address before it
#: connects (C{bind} to port 0), and such a port must be free of every
#: socket on that address, TIME_WAIT ones included; at thousands of sessions
#: per second on loopback the ephemeral range (28,232 ports) runs out and
#: Dante answers 91 ("bindexternaladdr(): could not bind tcp port 0").  So
#: each Dante the harness starts gets a loopback address of its own,
#: 127.0.0.2, .3, ...: the TIME_WAITs of other servers (which connect
#: without binding and may reuse them) and of earlier Dantes do not count
#: against it, only its own.
_dante_externals = itertools.count()


def _dante_external() -> str:
    return f"127.0.0.{2 + next(_dante_externals) % 250}"


def _launch_dante(options: LaunchOptions) -> ServerProcess:
    """
    Dante's C{danted -N 1} in the foreground on a free port.  It forks
    children (negotiate, request, I/O; an I/O child serves 32 sessions), so
    its CPU and memory are those of the whole process tree.
    """
    if not DANTED.exists():
        raise RuntimeError(f"{DANTED} is missing: apt-get install dante-server")
    base = options.log_path.resolve().with_suffix("")
    conf = base.with_suffix(".conf")
    port = free_port()
    # As root danted must be told whom to run as; as anyone else it cannot
    # switch users and must not be told to.
    users = (
        "user.privileged: root\nuser.unprivileged: nobody" if os.geteuid() == 0 else ""
    )
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        _DANTED_CONF.format(
            log=base.with_suffix(".danted.log"),
            port=port,
            external=_dante_external(),
            users=users,
        )
    )
    pid_file = base.with_suffix(".pid")
    argv = [str(DANTED), "-f", str(conf), "-N", "1", "-p", str(pid_file)]
    popen = _spawn(argv, options.log_path)
    port = _wait_for_port("dante", popen, options.log_path, _wait_for_connect(port))
    return ServerProcess("dante", popen, port, options.log_path)


_PPROXY_WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "
    "from pproxy.server import main; sys.exit(main())"
)


def _launch_pproxy(options: LaunchOptions) -> ServerProcess:
    """pproxy (asyncio) as a SOCKS4 server only, on a free port, no verbose output."""
    binary = _PYTHON.parent / "pproxy"
    if not binary.exists():
        raise RuntimeError(
            f"{binary} is missing: .venv/bin/pip install pproxy==2.7.9 "
            "(or pip install -e '.[bench]')"
        )
    port = free_port()
    # pproxy switches to uvloop whenever it can import it, and uvloop (the
    # harness's extra) breaks its start-up; run it on asyncio's own loop,
    # as it runs where uvloop is not installed.
    argv = [
        str(_PYTHON),
        "-c",
        _PPROXY_WITHOUT_UVLOOP,
        "-l",
        f"socks4://127.0.0.1:{port}",
    ]
    popen = _spawn(argv, options.log_path)
    port = _wait_for_port("pproxy", popen, options.log_path, _wait_for_connect(port))
    return ServerProcess("pproxy", popen, port, options.log_path)


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
                "this project, run by its lean launcher `python -m "
                "twisted_socks serve` (the console script `twisted-socks`: "
                "the options of `twistd -n socks` without twistd, whose "
                "plugin scan loads the TLS stack): one process, epoll "
                "reactor, `--relay auto` (in the kernel with splice(2) from "
                "a tunnel's first bulk read), default timeouts, the default "
                "30 s SOCKS4A name cache (`--name-cache-ttl`: the SOCKS4A "
                "load asks for one name, so after the first request it is "
                "answered from memory; Twisted's built-in server resolves "
                "every request), --max-connections 20000 (--idle-timeout 0 "
                "for the idle-tunnel test), session log to a file"
            ),
            socks4a=True,
            launch=_lean_launcher("ours", []),
        ),
        Target(
            name="ours-copy",
            description=(
                "ours with `--relay copy`: the portable relay, every byte "
                "read into Python and written out again (what runs where "
                "splice(2) does not exist); throughput and slow reader only"
            ),
            socks4a=True,
            launch=_lean_launcher("ours-copy", ["--relay=copy"]),
            sections=frozenset({"throughput", "slowread"}),
        ),
        Target(
            name="ours-w2",
            description=(
                "ours with `--workers 2`: a supervisor (binds, copies the "
                "workers' log lines into its log, accepts nothing) and 2 "
                "worker processes accepting on the shared listening socket, "
                "10,000 of --max-connections each; CPU is the whole process "
                "tree's; handshake tests only"
            ),
            socks4a=True,
            launch=_lean_launcher("ours-w2", [], workers=2),
            sections=frozenset({"handshake"}),
        ),
        Target(
            name="ours-twistd",
            description=(
                "ours under `twistd -n --pidfile= socks` (the command users "
                "type) with the same options: twistd's plugin scan, reactor "
                "and log set-up instead of the launcher's; handshake tests "
                "only"
            ),
            socks4a=True,
            launch=launch_twistd,
            sections=frozenset({"handshake"}),
        ),
        Target(
            name="dante",
            description=(
                "Dante 1.4.2 (`danted -N 1`, Debian's dante-server; C, forks "
                "negotiate/request/I-O children, 32 sessions per I/O child): "
                "loopback config written by the harness, `socksmethod: none`, "
                "CONNECT only, one log line per session to a file, outbound "
                "from an address of its own (127.0.0.2, .3, ...; see the "
                "README); CPU and memory are its whole process tree; no SOCKS4A"
            ),
            socks4a=False,
            launch=_launch_dante,
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
        Target(
            name="pproxy",
            description=(
                "pproxy 2.7.9 (`pproxy -l socks4://127.0.0.1:PORT`; asyncio "
                "streams, default event loop, no uvloop): SOCKS4 CONNECT "
                "only, no per-session log; no SOCKS4A"
            ),
            socks4a=False,
            launch=_launch_pproxy,
        ),
        DIRECT,
    ]


# -- the destination ----------------------------------------------------------


class Destination:
    """
    The destination servers (bench/_destination.py) in their own process.

    @ivar echo_port: 1-byte echo; holds connections until the peer closes.
    @ivar bulk_port: sink/source for the throughput test.
    @ivar udp_echo_port: UDP echo on 127.0.0.1, for the SOCKS5 UDP test.
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
        self.udp_echo_port = int(info["udp_echo_port"])

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
