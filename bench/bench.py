"""
Benchmark this SOCKS4/4A server against Twisted's built-in one and a direct
connection, in one run, on loopback.

Measures, for each target (see C{_targets.all_targets}: ours, run by its
lean launcher, and two variants of it, C{ours-copy} with C{--relay copy} and
C{ours-w2} with C{--workers 2}, each measured only where it differs; Dante,
Twisted's built-in server, pproxy, and a direct connection):

  - single-stream throughput, MiB/s each direction, and the server's CPU
    seconds per GiB moved and peak RSS, under TCP CUBIC and, when the
    machine's default congestion control differs, under that too
    (C{_netcc});
  - slow reader: the server's peak memory while a 1 GiB download is read by
    a client limited to a rate (fresh servers);
  - handshake rate: sessions/s with N concurrent clients (connect, SOCKS4 or
    SOCKS4A request, 1-byte echo, close), p50/p99 latency, server CPU per
    session;
  - memory per idle tunnel: server RSS delta over M working tunnels (a fresh
    server per run);
  - a py-spy profile of our server during the handshake and throughput
    loads (not timed);
  - SOCKS5 (C{_section5}, issue 17): ours, Dante and microsocks, without
    auth and with username/password: CONNECT sessions/s and CPU per
    session, single-stream throughput, UDP datagrams through an
    association;
  - one chained hop (C{_sectionchain}, issue 19, only with C{--only
    chain}): ours direct against ours through a second server of ours
    (SOCKS5 and SOCKS4A upstream lines), Dante direct against Dante
    through Dante: SOCKS5 CONNECT sessions/s, front-server CPU per session,
    single-stream throughput, the ratios chained / direct;
  - with the memory section, the idle RSS of ours under the launcher and
    under C{twistd -n socks}, once each (for the notes).

Every figure is measured C{--repeats} times (interleaved over the targets)
and reported as median and spread.  CPU and memory of a server are those of
its whole process tree (Dante forks).  Servers, the destination and this
load generator are separate processes.  Prints a table, writes raw results
to C{bench/out/} and, with C{--write-results}, C{bench/RESULTS.md}.  See
C{bench/README.md}.

Usage: C{./dev bench [--quick] [--write-results] [...]}, or
C{.venv/bin/python bench/bench.py ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _loadgen
import _loadgen5
import _netcc
import _procfs
import _profile
import _report
import _report5
import _reportchain
import _section5
import _sectionchain
from _targets import (
    BENCH_DIR,
    Destination,
    LaunchOptions,
    ServerProcess,
    Target,
    all_targets,
    baseline_target,
    launch_twistd,
)

OUT_DIR = BENCH_DIR / "out"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
SECTIONS = (
    "throughput",
    "slowread",
    "handshake",
    "memory",
    "profile",
    "socks5",
    "chain",
)
#: What runs without C{--only}: C{chain} (five servers' worth of session and
#: throughput runs, about 2 more minutes) is asked for by name.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "chain")
#: The results of the SOCKS4 sections, which the main table and targets show.
MAIN_RESULTS = ("throughput", "throughput_machine_cc", "slowread", "handshake", "idle")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; C{--quick} only changes defaults not given."""
    names = [target.name for target in all_targets()]
    parser = argparse.ArgumentParser(
        prog="bench/bench.py",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 128 MiB, 2 s handshake runs, 1,000 tunnels, 1 repeat "
        "(unless given)",
    )
    parser.add_argument("--size-mib", type=int, help="MiB per throughput run (1024)")
    parser.add_argument("--duration", type=float, help="seconds per handshake run (5)")
    parser.add_argument("--repeats", type=int, help="runs per measurement (3)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="handshake clients (50)"
    )
    parser.add_argument(
        "--tunnels",
        type=int,
        help="idle tunnels (10000; fewer where a server's open-file limit "
        "cannot hold them, which the results say)",
    )
    parser.add_argument(
        "--slow-rate",
        type=float,
        default=256.0,
        help="MiB/s the slow reader reads at (256)",
    )
    parser.add_argument(
        "--slow-size-mib", type=int, help="MiB of the slow-reader download (1024)"
    )
    parser.add_argument(
        "--memory-repeats",
        type=int,
        help="runs of the idle-tunnel test (--repeats); each starts fresh servers",
    )
    parser.add_argument(
        "--profile-rate", type=int, default=200, help="py-spy samples per second (200)"
    )
    parser.add_argument(
        "--transfer-timeout",
        type=float,
        default=120.0,
        help="seconds one throughput run may take before it fails (120)",
    )
    parser.add_argument(
        "--machine-cc-only",
        action="store_true",
        help="run the throughput section only under the machine's default TCP "
        f"congestion control, not also under {_netcc.REFERENCE} (see bench/_netcc.py)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(names),
        help=f"comma-separated subset of {', '.join(names)}",
    )
    parser.add_argument(
        "--socks5-peers",
        default=",".join(_section5.PEER_NAMES),
        help="the socks5 section's peers, comma-separated subset of "
        f"{', '.join(_section5.PEER_NAMES)}",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)} (all but chain)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also measure ours-base: the server of source tree TREE (e.g. a "
        "git worktree of the commit before a change), for an A/B in one run",
    )
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"regenerate {RESULTS_MD.relative_to(BENCH_DIR.parent)} from this run",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="measure nothing: print (and with --write-results, write) the "
        "report of an earlier run's JSON file",
    )
    args = parser.parse_args(argv)
    if args.size_mib is None:
        args.size_mib = 128 if args.quick else 1024
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.tunnels is None:
        args.tunnels = 1000 if args.quick else 10000
    if args.slow_size_mib is None:
        args.slow_size_mib = args.size_mib
    if args.memory_repeats is None:
        args.memory_repeats = args.repeats
    names_checked = (
        "size_mib",
        "slow_size_mib",
        "repeats",
        "memory_repeats",
        "concurrency",
        "tunnels",
        "profile_rate",
    )
    if args.slow_rate <= 0:
        parser.error("--slow-rate must be positive")
    for name in names_checked:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600]")
    wanted = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown or not wanted:
        parser.error(f"--targets: unknown {unknown}; choose from {names}")
    args.target_list = [t for t in all_targets() if t.name in wanted]
    if args.baseline is not None:
        if not (args.baseline / "twisted_socks" / "__init__.py").is_file():
            parser.error(f"--baseline: {args.baseline} is not a twisted-socks tree")
        args.target_list.insert(1, baseline_target(args.baseline))
    args.socks5_peer_list = [
        name.strip() for name in args.socks5_peers.split(",") if name.strip()
    ]
    if not args.socks5_peer_list or set(args.socks5_peer_list) - set(
        _section5.PEER_NAMES
    ):
        parser.error(f"--socks5-peers: choose from {', '.join(_section5.PEER_NAMES)}")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if not args.sections or set(args.sections) - set(SECTIONS):
        parser.error(f"--only: choose from {', '.join(SECTIONS)}")
    return args


# -- environment ------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's (and its children's) open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def machine_info() -> dict[str, Any]:
    """What the results file says about the machine and software."""
    import twisted

    try:
        import twisted_socks

        version = twisted_socks.__version__
    except Exception as e:  # the server under test may be mid-edit
        version = f"unknown ({type(e).__name__} on import)"

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) // 1024
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_total,
        "kernel": platform.release(),
        "loadavg": loadavg,
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "twisted_socks": version,
        "git": git_description(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "fd_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "peers": peer_versions(),
    }


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({type(e).__name__})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else f"unknown (status {done.returncode})"


def peer_versions() -> dict[str, str]:
    """The versions of Dante, pproxy and py-spy, as they report them."""
    import _targets

    bin_dir = Path(sys.executable).parent
    return {
        "dante": _first_line([str(_targets.DANTED), "-v"]),
        "pproxy": _first_line([str(bin_dir / "pproxy"), "--version"]),
        "py-spy": _first_line([str(bin_dir / "py-spy"), "--version"]),
    }


#: The paths whose state decides what server is measured.
SERVER_PATHS = ("twisted_socks", "twisted", "setup.py", "pyproject.toml")


def git_description() -> str:
    """The checkout's commit, and whether the server's files differ from it."""
    root = BENCH_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", *SERVER_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    files = sorted(line[3:] for line in changed if line.strip())
    if not files:
        return f"commit {commit}"
    return f"commit {commit} plus uncommitted changes to {', '.join(files)}"


def background_cpu(seconds: float = 2.0) -> float:
    """The machine's CPU use (% of one core) over C{seconds}, before we start."""
    before = _procfs.MachineCPU.now()
    time.sleep(seconds)
    return _procfs.MachineCPU.now().percent_since(before)[0]


def progress(message: str) -> None:
    """One line of progress on stderr (the table goes to stdout)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# -- the sections -----------------------------------------------------------------


class Run:
    """One benchmark run: its parameters, processes and raw results."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.stack = stack
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = OUT_DIR / f"run-{stamp}"
        self.json_path = OUT_DIR / f"results-{stamp}.json"
        self.targets: list[Target] = args.target_list
        self.results: dict[str, Any] = {
            "meta": {},
            "params": {
                "size_mib": args.size_mib,
                "duration": args.duration,
                "repeats": args.repeats,
                "concurrency": args.concurrency,
                "tunnels": args.tunnels,
                "memory_repeats": args.memory_repeats,
                "slow_rate_mib_s": args.slow_rate,
                "slow_size_mib": args.slow_size_mib,
                "profile_rate": args.profile_rate,
                "quick": args.quick,
            },
            "targets": [
                {
                    "name": t.name,
                    "description": t.description,
                    "socks4a": t.socks4a,
                    "sections": sorted(t.sections) if t.sections else list(SECTIONS),
                }
                for t in self.targets
            ],
            "throughput": {},
            "slowread": {},
            "handshake": {},
            "idle": {},
            "profile": {},
            "launchers": {},
            "socks5": {},
            "chain": {},
            "failures": [],
        }
        self.destination: Destination | None = None
        #: The servers of the throughput and handshake sections, by name.
        self.servers: dict[str, ServerProcess | None] = {}

    def targets_in(self, section: str) -> list[Target]:
        """The selected targets that take part in C{section}."""
        return [t for t in self.targets if t.measured_in(section)]

    def fail(self, target: str, what: str, error: BaseException | str) -> None:
        """Record a failure of one measurement; the run goes on."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.results["failures"].append({"target": target, "what": what, "error": text})
        progress(f"  FAILED {target} {what}: {text}")

    def launch(
        self, target: Target, idle_tunnels: bool = False, label: str = ""
    ) -> ServerProcess | None:
        """
        Start C{target}'s server (stopped when the run ends at the latest);
        L{None} on failure.  C{label} tells its log apart from other
        servers of the same target.
        """
        assert target.launch is not None
        suffix = f"-{label}" if label else ""
        log_path = self.run_dir / f"{target.name}{suffix}.log"
        try:
            server = target.launch(LaunchOptions(log_path, idle_tunnels=idle_tunnels))
        except (OSError, RuntimeError) as e:
            self.fail(target.name, "start", e)
            return None
        self.stack.callback(server.stop)
        progress(
            f"  {target.name}: pid {server.pid}, port {server.port}, log {log_path}"
        )
        return server

    def start(self) -> None:
        """The destination and, for throughput/handshake, every server."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.destination = Destination(self.run_dir / "destination.log")
        self.stack.callback(self.destination.stop)
        progress(
            f"destination: pid {self.destination.pid}, echo port "
            f"{self.destination.echo_port}, bulk port {self.destination.bulk_port}"
        )
        shared = {"throughput", "handshake"} & set(self.args.sections)
        for target in self.targets:
            if not target.is_direct and any(map(target.measured_in, shared)):
                self.servers[target.name] = self.launch(target)

    def server_for(self, target: Target) -> tuple[bool, ServerProcess | None]:
        """(usable, server): C{direct} is usable with no server."""
        if target.is_direct:
            return True, None
        server = self.servers.get(target.name)
        if server is None:
            return False, None
        try:
            server.check_alive()
        except RuntimeError as e:
            self.fail(target.name, "server", e)
            self.servers[target.name] = None
            return False, None
        return True, server

    def warm_up(self) -> None:
        """A few sessions and a small transfer per target, not measured."""
        assert self.destination is not None
        sections = set(self.args.sections)
        for target in self.targets:
            usable, server = self.server_for(target)
            if not usable:
                continue
            try:
                if "throughput" in sections and target.measured_in("throughput"):
                    _loadgen.transfer(server, self.destination, "upload", 8 << 20, 30)
                    _loadgen.transfer(server, self.destination, "download", 8 << 20, 30)
                if "handshake" in sections and target.measured_in("handshake"):
                    for socks4a in {False, target.socks4a}:
                        _loadgen.handshake_run(
                            server, self.destination, socks4a, 10, 0.3
                        )
            except (OSError, _loadgen.TunnelError) as e:
                self.fail(target.name, "warm-up", e)

    def congestion_passes(self) -> list[tuple[str, str | None]]:
        """
        The throughput section's passes, recorded in the results' meta:
        (results key, the congestion control it runs under, L{None} if
        unknown).  Under L{_netcc.REFERENCE} into C{throughput}, then, if
        the machine's default differs, under that into
        C{throughput_machine_cc}; only under the machine's default if the
        setting cannot be changed.
        """
        machine = _netcc.current()
        reference = _netcc.REFERENCE
        info: dict[str, Any] = {"machine": machine, "reference": reference}
        self.results["meta"]["congestion_control"] = info
        passes: list[tuple[str, str | None]] = [("throughput", machine)]
        if machine not in (None, reference) and not self.args.machine_cc_only:
            try:
                with _netcc.switched(reference):
                    pass
            except OSError as e:
                info["error"] = f"{type(e).__name__}: {e}"
                progress(
                    f"note: cannot switch TCP congestion control to {reference} "
                    f"({info['error']}); throughput only under {machine}"
                )
            else:
                passes = [("throughput", reference), ("throughput_machine_cc", machine)]
        info.update(passes)
        return passes

    def throughput(self) -> None:
        """
        Upload and download, each target in turn, repeated (interleaved),
        once per congestion-control pass (L{congestion_passes}).
        """
        passes = self.congestion_passes()
        for repeat in range(1, self.args.repeats + 1):
            for key, congestion in passes:
                # Switching to the machine's own default changes nothing.
                with (
                    _netcc.switched(congestion)
                    if congestion is not None
                    else contextlib.nullcontext()
                ):
                    self._throughput_runs(
                        self.results.setdefault(key, {}), repeat, f" [{congestion}]"
                    )

    def _throughput_runs(self, table: dict[str, Any], repeat: int, label: str) -> None:
        """One upload and one download per target into C{table}."""
        assert self.destination is not None
        size = self.args.size_mib << 20
        for direction in ("upload", "download"):
            for target in self.targets_in("throughput"):
                record = table.setdefault(target.name, {}).setdefault(
                    direction, {"runs": [], "failures": []}
                )
                usable, server = self.server_for(target)
                if not usable:
                    continue
                what = f"throughput {direction} run {repeat}{label}"
                try:
                    result = _loadgen.transfer(
                        server,
                        self.destination,
                        direction,
                        size,
                        self.args.transfer_timeout,
                    )
                except (OSError, _loadgen.TunnelError) as e:
                    record["failures"].append(str(e))
                    self.fail(target.name, what, e)
                    continue
                result["repeat"] = repeat
                record["runs"].append(result)
                cpu = result.get("server_cpu_s_per_gib")
                progress(
                    f"  {what} {target.name}: {result['mib_s']:,.0f} MiB/s"
                    + (f", server {cpu:.2f} CPU s/GiB" if cpu is not None else "")
                )

    def handshake(self) -> None:
        """SOCKS4 (and SOCKS4A) sessions for each target, repeated (interleaved)."""
        assert self.destination is not None
        table = self.results["handshake"]
        for repeat in range(1, self.args.repeats + 1):
            for target in self.targets_in("handshake"):
                modes = ["socks4"] + (["socks4a"] if target.socks4a else [])
                for mode in modes:
                    record = table.setdefault(target.name, {}).setdefault(
                        mode, {"runs": [], "failures": []}
                    )
                    usable, server = self.server_for(target)
                    if not usable:
                        continue
                    what = f"handshake {mode} run {repeat}"
                    try:
                        result = _loadgen.handshake_run(
                            server,
                            self.destination,
                            mode == "socks4a",
                            self.args.concurrency,
                            self.args.duration,
                        )
                    except OSError as e:
                        record["failures"].append(str(e))
                        self.fail(target.name, what, e)
                        continue
                    result["repeat"] = repeat
                    record["runs"].append(result)
                    progress(
                        f"  {what} {target.name}: {result['sessions_s']:,.0f}/s, "
                        f"p50 {_ms(result['p50_ms'])}, p99 {_ms(result['p99_ms'])}, "
                        f"errors {result['error_count']}"
                    )
                    if result["sessions"] == 0:
                        record["failures"].append("no session succeeded")
                        self.fail(target.name, what, "no session succeeded")

    def stop_servers(self) -> None:
        """Stop the servers of the throughput and handshake sections."""
        for name, server in list(self.servers.items()):
            if server is not None:
                server.stop()
            self.servers[name] = None

    def slowread(self) -> None:
        """
        A download read at C{--slow-rate} through fresh servers (one per
        target, warmed up with a small transfer), repeated (interleaved).
        """
        assert self.destination is not None
        size = self.args.slow_size_mib << 20
        table = self.results["slowread"]
        servers: dict[str, ServerProcess] = {}
        try:
            for target in self.targets_in("slowread"):
                if target.is_direct:
                    continue
                record = table.setdefault(target.name, {"runs": [], "failures": []})
                server = self.launch(target, label="slowread")
                if server is None:
                    record["failures"].append("did not start")
                    continue
                try:
                    _loadgen.transfer(server, self.destination, "download", 8 << 20, 30)
                except (OSError, _loadgen.TunnelError) as e:
                    record["failures"].append(str(e))
                    self.fail(target.name, "slow reader warm-up", e)
                    continue
                servers[target.name] = server
            for repeat in range(1, self.args.repeats + 1):
                for name, server in servers.items():
                    record = table[name]
                    what = f"slow reader run {repeat}"
                    try:
                        server.check_alive()
                        result = _loadgen.slow_download(
                            server,
                            self.destination,
                            size,
                            self.args.slow_rate,
                            self.args.transfer_timeout,
                        )
                    except (OSError, RuntimeError, _loadgen.TunnelError) as e:
                        record["failures"].append(str(e))
                        self.fail(name, what, e)
                        continue
                    result["repeat"] = repeat
                    record["runs"].append(result)
                    progress(
                        f"  {what} {name}: {result['mib_s']:,.0f} MiB/s, server peak "
                        f"RSS {result['server_peak_rss_kib'] / 1024:,.1f} MiB (PSS "
                        f"{result['server_sampled_peak_pss_kib'] / 1024:,.1f} MiB)"
                    )
        finally:
            for server in servers.values():
                server.stop()

    def launchers(self) -> None:
        """
        The idle memory of ours run two ways, by the lean launcher (the
        C{ours} column) and by C{twistd -n socks}: a fresh server each, 20
        warm-up tunnels, then its RSS and PSS; one reading each, for the
        notes (twistd's plugin scan loads the TLS stack, the launcher not).
        """
        assert self.destination is not None
        ours = next((t for t in self.targets if t.name == "ours"), None)
        if ours is None:
            return
        twistd = Target(
            name="ours-twistd",
            description="ours under `twistd -n socks`",
            socks4a=True,
            launch=launch_twistd,
        )
        runners = [
            ("launcher", "the lean launcher", ours),
            ("twistd", "twistd", twistd),
        ]
        for name, shown, target in runners:
            server = self.launch(target, label="rss")
            if server is None:
                continue
            try:
                result = _loadgen.warm_memory(server, self.destination)
            except (OSError, RuntimeError, _loadgen.TunnelError) as e:
                self.fail("ours", f"idle RSS under {shown}", e)
            else:
                self.results["launchers"][name] = result
                progress(
                    f"  ours under {shown}: {result['rss_kib'] / 1024:.1f} MiB "
                    f"RSS, {result['pss_kib'] / 1024:.1f} MiB PSS after "
                    f"{result['warmup']} tunnels"
                )
            finally:
                server.stop()

    def memory(self) -> None:
        """
        Idle tunnels through a fresh server per target and run, one server
        at a time, repeated (interleaved).
        """
        assert self.destination is not None
        requested = self.args.tunnels
        table = self.results["idle"]
        for repeat in range(1, self.args.memory_repeats + 1):
            for target in self.targets_in("memory"):
                if target.is_direct:
                    continue
                record = table.setdefault(
                    target.name, {"runs": [], "failures": [], "requested": requested}
                )
                server = self.launch(target, idle_tunnels=True, label=f"idle{repeat}")
                if server is None:
                    record["failures"].append("did not start")
                    continue
                what = f"idle tunnels run {repeat}"
                try:
                    capacity = server.tunnel_capacity()
                    count = requested if capacity is None else min(requested, capacity)
                    if count < requested:
                        progress(
                            f"  {target.name}: its open-file limit "
                            f"({_procfs.fd_limit(server.pid)}) holds {count:,} of "
                            f"{requested:,} tunnels; measuring {count:,}"
                        )
                    result = _loadgen.idle_tunnels(server, self.destination, count)
                except (OSError, RuntimeError, _loadgen.TunnelError) as e:
                    record["failures"].append(str(e))
                    self.fail(target.name, f"{what} ({requested:,} requested)", e)
                else:
                    result["repeat"] = repeat
                    result["requested"] = requested
                    result["fd_limit"] = _procfs.fd_limit(server.pid)
                    record["runs"].append(result)
                    progress(
                        f"  {what} {target.name}: {result['echoed']:,} tunnels "
                        f"(opened in {result['open_seconds']:.1f} s), "
                        f"{result['kib_per_tunnel']:.2f} KiB/tunnel RSS, "
                        f"{result['pss_kib_per_tunnel']:.2f} PSS, "
                        f"{result['processes']} processes"
                    )
                finally:
                    server.stop()

    def profile(self) -> None:
        """py-spy on a fresh server of ours under each load (nothing timed)."""
        assert self.destination is not None
        ours = next((t for t in self.targets if t.name == "ours"), None)
        if ours is None:
            progress("  profile: skipped (ours is not among --targets)")
            return
        missing = _profile.missing()
        if missing:
            self.fail("ours", "profile", missing)
            return
        server = self.launch(ours, label="profile")
        if server is None:
            return
        destination = self.destination
        duration = self.args.duration
        size = self.args.size_mib << 20
        timeout = self.args.transfer_timeout
        concurrency = self.args.concurrency

        def handshakes(socks4a: bool) -> None:
            _loadgen.handshake_run(server, destination, socks4a, concurrency, duration)

        def throughput() -> None:
            _loadgen.transfer(server, destination, "upload", size, timeout)
            _loadgen.transfer(server, destination, "download", size, timeout)

        loads = {
            "socks4": (
                f"SOCKS4 handshakes: {concurrency} clients for {duration:g} s",
                lambda: handshakes(False),
            ),
            "socks4a": (
                f"SOCKS4A handshakes: {concurrency} clients for {duration:g} s",
                lambda: handshakes(True),
            ),
            "socks5": (
                f"SOCKS5 no-auth CONNECT sessions: {concurrency} clients for "
                f"{duration:g} s",
                lambda: _loadgen5.handshake_run5(
                    server, destination, None, None, concurrency, duration
                ),
            ),
            "throughput": (
                f"throughput: {self.args.size_mib:,} MiB upload, then download",
                throughput,
            ),
        }
        try:
            # Warm-up, not recorded.
            _loadgen.transfer(server, destination, "download", 8 << 20, 30)
            _loadgen.handshake_run(server, destination, True, 10, 0.3)
            for name, (description, load) in loads.items():
                output = self.run_dir / f"profile-{name}.txt"
                try:
                    profile = _profile.record(
                        server.pid, output, self.args.profile_rate, load
                    )
                except (OSError, RuntimeError, _loadgen.TunnelError) as e:
                    self.fail("ours", f"profile {name}", e)
                    continue
                profile["load"] = description
                profile["raw_file"] = str(output.relative_to(BENCH_DIR.parent))
                self.results["profile"][name] = profile
                progress(
                    f"  profile {name}: {profile['samples']:,} samples "
                    f"({profile['busy_pct']:.0f}% busy), {output}"
                )
        except (OSError, _loadgen.TunnelError) as e:
            self.fail("ours", "profile warm-up", e)
        finally:
            server.stop()


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected section; every process is stopped on the way out."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        run = Run(args, stack)
        run.results["meta"] = machine_info()
        progress(f"twisted-socks benchmark, logs in {run.run_dir}")
        background = background_cpu()
        run.results["meta"]["background_cpu_pct"] = background
        if background > 20:
            progress(
                f"warning: the machine is already busy ({background:.0f}% of a "
                "core before the run); expect disturbed figures"
            )
        # The socks5 section has peers of its own (--socks5-peers): the
        # targets matter only to the other sections.
        main_sections = [s for s in args.sections if s not in ("socks5", "chain")]
        for target in run.targets if main_sections else []:
            if not any(map(target.measured_in, main_sections)):
                progress(
                    f"note: {target.name} is measured only in "
                    f"{', '.join(sorted(target.sections or ()))}: nothing to do "
                    "for it in the selected sections"
                )
        run.start()
        if "memory" in args.sections:
            progress("idle RSS of ours: lean launcher and twistd")
            run.launchers()
        if {"throughput", "handshake"} & set(args.sections):
            progress("warming up")
            run.warm_up()
        if "throughput" in args.sections:
            progress(f"throughput: {args.size_mib} MiB x {args.repeats}")
            run.throughput()
        if "handshake" in args.sections:
            progress(
                f"handshakes: {args.concurrency} clients, {args.duration:g} s "
                f"x {args.repeats}"
            )
            run.handshake()
        # The servers of those sections are not needed any more.
        run.stop_servers()
        if "slowread" in args.sections:
            progress(
                f"slow reader: {args.slow_size_mib} MiB read at {args.slow_rate:g} "
                f"MiB/s x {args.repeats}, fresh servers"
            )
            run.slowread()
        if "memory" in args.sections:
            progress(f"idle tunnels: {args.tunnels:,} x {args.memory_repeats}")
            run.memory()
        if "profile" in args.sections:
            progress(f"profile of ours (py-spy, {args.profile_rate} samples/s)")
            run.profile()
        if "socks5" in args.sections:
            progress(
                f"socks5: {', '.join(args.socks5_peer_list)}; {args.concurrency} "
                f"clients, {args.duration:g} s, {args.size_mib} MiB x {args.repeats}"
            )
            _section5.run_socks5(run, args.socks5_peer_list)
        if "chain" in args.sections:
            progress(
                f"chain: ours and Dante direct and through one upstream; "
                f"{args.concurrency} clients, {args.duration:g} s, "
                f"{args.size_mib} MiB x {args.repeats}"
            )
            _sectionchain.run_chain(run)
    meta = run.results["meta"]
    meta["wall_seconds"] = time.monotonic() - started
    meta["command"] = "bench/bench.py " + " ".join(sys.argv[1:])
    meta["json_name"] = run.json_path.name
    run.json_path.parent.mkdir(parents=True, exist_ok=True)
    run.json_path.write_text(json.dumps(run.results, indent=2) + "\n")
    progress(f"raw results: {run.json_path}")
    return run.results


def all_failure_lines(results: dict[str, Any]) -> list[str]:
    """Every failure and session error, the SOCKS5 section's included."""
    return (
        _report.failure_lines(results)
        + _report5.failure_lines5(results)
        + _reportchain.failure_lines_chain(results)
    )


def report(results: dict[str, Any], write_results: bool) -> None:
    """Print the table (and notes); optionally write RESULTS.md."""
    names = [target["name"] for target in results["targets"]]
    # A run of the socks5 section alone has nothing for the main table.
    if any(results.get(key) for key in MAIN_RESULTS):
        print(_report.text_table(results, names))
        disturbance = _report.disturbance_line(results)
        if disturbance:
            print(f"\n{disturbance}")
        print("\nissue #8 targets:")
        print("\n".join(f"  {line}" for line in _report.goal_lines(results)))
    socks5 = _report5.text_section5(results)
    if socks5:
        print(f"\n{socks5}")
    chain = _reportchain.text_chain(results)
    if chain:
        print(f"\n{chain}")
    notes = all_failure_lines(results)
    if notes:
        print("\nfailures and errors:")
        print("\n".join(f"  {line}" for line in notes))
    print(f"\ntook {results['meta']['wall_seconds']:.0f} s")
    if write_results:
        extra = [_report5.markdown_section5(results)]
        extra.append(_reportchain.markdown_chain(results))
        RESULTS_MD.write_text(
            _report.markdown_results(results)
            + "".join(f"\n{part}" for part in extra if part)
        )
        print(f"wrote {RESULTS_MD}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit status is 1 after any failure or session error."""
    args = parse_args(argv)
    if args.report_only is not None:
        results = json.loads(args.report_only.read_text())
        report(results, args.write_results)
        return 0
    if sys.version_info < (3, 11):
        sys.exit("bench.py needs Python 3.11 or later (asyncio.timeout)")
    if not Path("/proc/self/stat").exists():
        sys.exit("bench.py reads /proc: Linux only")
    raise_fd_limit()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        results = measure(args)
    except KeyboardInterrupt:
        progress("interrupted; every process started was stopped")
        return 130
    report(results, args.write_results)
    return 1 if all_failure_lines(results) else 0


if __name__ == "__main__":
    sys.exit(main())
