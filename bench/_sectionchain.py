"""
The C{chain} section of the benchmark (issue 19): what one chained hop
costs, against the same workload sent direct, in one run.

Each peer runs an upstream server and one or more front servers that send
every CONNECT through that upstream; the client's workload is the same for
every path, SOCKS5 without authentication, CONNECT by address (ATYP 1):

  - C{ours}: the lean launcher, the upstream, measured direct;
  - C{ours>ours socks5h}, C{ours>ours socks4a}: a second server of ours
    with C{--routes FILE}, the file's one line C{sockd
    @=socks5h://127.0.0.1:UPSTREAM 0/0} (or C{socks4a://}), in front of
    that same upstream;
  - C{dante}: C{danted -N 1}, the upstream, measured direct;
  - C{dante>dante socks5}: a second Dante with a C{route {}} block (via
    the upstream Dante, C{proxyprotocol: socks_v5}) in front of it.

The workloads, repeated and interleaved over the paths (run 1 of every
path, then run 2, ...):

  - C{connect}: C{--concurrency} clients back to back for C{--duration}
    seconds, the C{socks5} section's C{connect} session (greeting, CONNECT
    to the echo server, 1-byte echo, the far side's close); sessions/s,
    latency, and the CPU per session of the front server (the server the
    client talks to) and of the upstream;
  - C{upload}, C{download}: one stream of C{--size-mib} through the path,
    under TCP CUBIC as the other throughput tests (when the setting can be
    changed); MiB/s and CPU s/GiB of the front and of the upstream.

The report (L{_reportchain}) gives each chained path's ratio to its peer's
direct path, the figures of one run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _loadgen
import _loadgen5
import _section5
import _targets
from _targets import Destination, LaunchOptions, ServerProcess, Target

__all__ = ["PATHS", "ChainPath", "run_chain"]


@dataclass(frozen=True)
class ChainPath:
    """
    One column of the chain table.

    @ivar name: the column heading.
    @ivar peer: the server software (C{ours}, C{dante}); a chained path's
        ratios are taken against the direct path of the same peer.
    @ivar scheme: the front's upstream line's scheme, or C{""} for the
        direct path (the client talks to the upstream itself).
    @ivar description: one line for the results.
    """

    name: str
    peer: str
    scheme: str
    description: str

    @property
    def direct(self) -> bool:
        """Whether the client talks to the upstream itself."""
        return not self.scheme


PATHS = (
    ChainPath("ours", "ours", "", "ours (lean launcher), the upstream itself: no hop"),
    ChainPath(
        "ours>ours socks5h",
        "ours",
        "socks5h",
        "a second ours with `--routes` (`sockd @=socks5h://127.0.0.1:UP 0/0`) "
        "in front of the first",
    ),
    ChainPath(
        "ours>ours socks4a",
        "ours",
        "socks4a",
        "a second ours with `--routes` (`sockd @=socks4a://127.0.0.1:UP 0/0`) "
        "in front of the first",
    ),
    ChainPath("dante", "dante", "", "Dante 1.4.2 (`danted -N 1`), the upstream itself"),
    ChainPath(
        "dante>dante socks5",
        "dante",
        "socks5",
        "a second Dante with `route { ... via: 127.0.0.1 port = UP; "
        "proxyprotocol: socks_v5 }` in front of the first",
    ),
)

#: Dante's server chaining: every destination through the upstream Dante,
#: by SOCKS5 without authentication (appended to C{_targets}' configuration).
_DANTE_ROUTE = """\
route {{
    from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = {port}
    proxyprotocol: socks_v5
    command: connect
    protocol: tcp
    method: none
}}
"""

Launch = Callable[[LaunchOptions], ServerProcess]


def _oursFront(name: str, scheme: str, upstream: int) -> Launch:
    """Ours with C{--routes}: one catch-all line through the upstream."""

    def launch(options: LaunchOptions) -> ServerProcess:
        routes = options.log_path.resolve().with_suffix(".routes")
        routes.parent.mkdir(parents=True, exist_ok=True)
        routes.write_text(f"sockd @={scheme}://127.0.0.1:{upstream} 0/0\n")
        return _targets._lean_launcher(name, [f"--routes={routes}"])(options)

    return launch


def _dante(name: str, upstream: int | None) -> Launch:
    """
    C{danted -N 1} for CONNECT, as C{_targets}' Dante; with C{upstream}, a
    C{route} through the Dante on that port.
    """

    def launch(options: LaunchOptions) -> ServerProcess:
        if not _targets.DANTED.exists():
            raise RuntimeError(
                f"{_targets.DANTED} is missing: apt-get install dante-server"
            )
        base = options.log_path.resolve().with_suffix("")
        conf = base.with_suffix(".conf")
        port = _targets.free_port()
        users = (
            "user.privileged: root\nuser.unprivileged: nobody"
            if os.geteuid() == 0
            else ""
        )
        text = _targets._DANTED_CONF.format(
            log=base.with_suffix(".danted.log"),
            port=port,
            external=_targets._dante_external(),
            users=users,
        )
        if upstream is not None:
            text += _DANTE_ROUTE.format(port=upstream)
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
        argv = [str(_targets.DANTED), "-f", str(conf), "-N", "1"]
        argv += ["-p", str(base.with_suffix(".pid"))]
        popen = _targets._spawn(argv, options.log_path)
        port = _targets._wait_for_port(
            name, popen, options.log_path, _targets._wait_for_connect(port)
        )
        return ServerProcess(name, popen, port, options.log_path)

    return launch


def _progress(message: str) -> None:
    """One line of progress on stderr, as C{bench.progress}."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _label(name: str) -> str:
    """A path's name as a log file's (no spaces or C{>})."""
    return name.replace(">", "-via-").replace(" ", "-")


class _Section:
    """One run of the section: its servers (front, upstream) and the table."""

    def __init__(self, run: _section5._Run, paths: list[ChainPath]) -> None:
        self.run = run
        self.paths = paths
        assert run.destination is not None
        self.destination: Destination = run.destination
        self.table: dict[str, dict[str, dict[str, Any]]] = {}
        #: path name -> (front, upstream); the upstream is None when direct.
        self.servers: dict[str, tuple[ServerProcess, ServerProcess | None]] = {}

    def record(self, path: str, workload: str) -> dict[str, Any]:
        """The results of C{workload} on C{path} (created empty)."""
        return self.table.setdefault(path, {}).setdefault(
            workload, {"runs": [], "failures": []}
        )

    def _launch(self, name: str, launch: Launch) -> ServerProcess | None:
        # Named for its log file (bench/out/run-*/NAME-chain.log): no spaces.
        target = Target(_label(name), name, False, launch)
        return self.run.launch(target, label="chain")

    def start(self) -> None:
        """Each peer's upstream, then its fronts pointing at it."""
        upstreams: dict[str, ServerProcess | None] = {}
        for path in self.paths:
            if path.direct:
                launch = (
                    _targets._lean_launcher("ours", [])
                    if path.peer == "ours"
                    else _dante("dante", None)
                )
                upstreams[path.peer] = self._launch(path.name, launch)
        for path in self.paths:
            upstream = upstreams.get(path.peer)
            if path.direct:
                if upstream is not None:
                    self.servers[path.name] = (upstream, None)
                continue
            if upstream is None:
                self.run.fail(path.name, "chain start", "its upstream did not start")
                continue
            if path.peer == "ours":
                launch = _oursFront(_label(path.name), path.scheme, upstream.port)
            else:
                launch = _dante(_label(path.name), upstream.port)
            front = self._launch(path.name, launch)
            if front is not None:
                self.servers[path.name] = (front, upstream)

    def pair(
        self, path: ChainPath
    ) -> tuple[ServerProcess, ServerProcess | None] | None:
        """The path's servers if both are running; records one that died."""
        servers = self.servers.get(path.name)
        if servers is None:
            return None
        for server in servers:
            if server is None:
                continue
            try:
                server.check_alive()
            except RuntimeError as e:
                self.run.fail(path.name, "chain server", e)
                del self.servers[path.name]
                return None
        return servers

    def warmUp(self) -> None:
        """A few sessions and a small transfer per path; not recorded."""
        for path in self.paths:
            servers = self.pair(path)
            if servers is None:
                continue
            try:
                _loadgen5.handshake_run5(
                    servers[0], self.destination, None, None, 10, 0.3
                )
                _loadgen5.transfer5(
                    servers[0], self.destination, "download", 8 << 20, 30
                )
            except (OSError, _loadgen.TunnelError) as e:
                self.run.fail(path.name, "chain warm-up", e)

    def _measure(
        self,
        path: ChainPath,
        workload: str,
        what: str,
        work: Callable[[ServerProcess], dict[str, Any]],
    ) -> dict[str, Any] | None:
        """
        C{work} against the path's front, with the upstream's CPU over it;
        the result, or L{None} after recording a failure.
        """
        record = self.record(path.name, workload)
        servers = self.pair(path)
        if servers is None:
            return None
        front, upstream = servers
        before = upstream.cpu_seconds() if upstream is not None else 0.0
        try:
            result = work(front)
        except (OSError, _loadgen.TunnelError) as e:
            record["failures"].append(str(e))
            self.run.fail(path.name, what, e)
            return None
        # Direct, the front is the upstream: no second server to count.
        if upstream is not None:
            result["upstream_cpu_s"] = upstream.cpu_seconds() - before
        record["runs"].append(result)
        return result

    def sessions(self, repeat: int) -> None:
        """One C{connect} run per path."""
        args = self.run.args
        for path in self.paths:
            what = f"chain connect run {repeat}"
            result = self._measure(
                path,
                "connect",
                what,
                lambda front: _loadgen5.handshake_run5(
                    front, self.destination, None, None, args.concurrency, args.duration
                ),
            )
            if result is None:
                continue
            result["repeat"] = repeat
            sessions = result["sessions"]
            front_us = result.get("server_cpu_us_per_session")
            if sessions and front_us is not None:
                upstream_us = 1e6 * result.get("upstream_cpu_s", 0.0) / sessions
                if "upstream_cpu_s" in result:
                    result["upstream_cpu_us_per_session"] = upstream_us
                result["total_cpu_us_per_session"] = front_us + upstream_us
            _progress(
                f"  {what} {path.name}: {result['sessions_s']:,.0f}/s, front "
                f"{'n/a' if front_us is None else f'{front_us:,.0f}'} CPU "
                f"us/session, errors {result['error_count']}"
            )
            if sessions == 0:
                self.record(path.name, "connect")["failures"].append(
                    "no session succeeded"
                )
                self.run.fail(path.name, what, "no session succeeded")

    def throughput(self, repeat: int, congestion: str | None) -> None:
        """One upload and one download per path."""
        size = self.run.args.size_mib << 20
        timeout = self.run.args.transfer_timeout
        for direction in ("upload", "download"):

            def move(
                front: ServerProcess, direction: str = direction
            ) -> dict[str, Any]:
                return _loadgen5.transfer5(
                    front, self.destination, direction, size, timeout
                )

            for path in self.paths:
                what = f"chain {direction} run {repeat} [{congestion}]"
                result = self._measure(path, direction, what, move)
                if result is None:
                    continue
                result["repeat"] = repeat
                result["congestion_control"] = congestion
                upstream = result.get("upstream_cpu_s", 0.0) / (size / 2**30)
                if "upstream_cpu_s" in result:
                    result["upstream_cpu_s_per_gib"] = upstream
                result["total_cpu_s_per_gib"] = (
                    result["server_cpu_s_per_gib"] + upstream
                )
                _progress(
                    f"  {what} {path.name}: {result['mib_s']:,.0f} MiB/s, front "
                    f"{result['server_cpu_s_per_gib']:.2f} CPU s/GiB"
                )

    def stop(self) -> None:
        """Stop every server of the section (each once)."""
        stopped: set[int] = set()
        for servers in self.servers.values():
            for server in servers:
                if server is not None and server.pid not in stopped:
                    stopped.add(server.pid)
                    server.stop()
        self.servers.clear()


def run_chain(run: _section5._Run) -> None:
    """The whole section, into C{run.results["chain"]}."""
    paths = list(PATHS)
    section = _Section(run, paths)
    results = run.results.setdefault("chain", {})
    results["paths"] = [
        {
            "name": p.name,
            "peer": p.peer,
            "scheme": p.scheme,
            "description": p.description,
        }
        for p in paths
    ]
    results["table"] = section.table
    try:
        section.start()
        section.warmUp()
        for repeat in range(1, run.args.repeats + 1):
            section.sessions(repeat)
            manager, congestion = _section5._congestion()
            results["congestion_control"] = congestion
            with manager:
                section.throughput(repeat, congestion)
    finally:
        section.stop()
