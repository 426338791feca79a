"""
The C{socks5} section of the benchmark (issue 17): SOCKS5 workloads for
ours, Dante and microsocks in one run.

Each peer runs two servers for the whole section (L{_targets5}): one
without authentication and one requiring RFC 1929 username/password.  The
workloads, repeated and interleaved (run 1 of every workload and peer, then
run 2, ...):

  - C{connect}: C{--concurrency} clients, back to back for C{--duration}
    seconds: SOCKS5 no-auth CONNECT by address (ATYP 1) to the echo server,
    a 1-byte echo, the far side's close (as the SOCKS4 handshake test);
  - C{connect-auth}: the same with a username/password login, through the
    peer's authenticated server;
  - C{connect-name}: the same as C{connect} by name (ATYP 3, C{localhost},
    resolved by the proxy);
  - C{upload}, C{download}: one stream of C{--size-mib} through a SOCKS5
    tunnel, under TCP CUBIC as the SOCKS4 throughput test (when the
    setting can be changed), ours and Dante;
  - C{udp}: one association, then C{--duration} seconds of 512-byte
    datagrams to a loopback UDP echo through the relay, 16 in flight.  A
    server that refuses the association (microsocks; ours did before its
    UDP relay) is reported as "not supported (07 ...)", not as a failure.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Protocol

import _loadgen
import _loadgen5
import _netcc
from _loadgen5 import NotSupported
from _targets import Destination, ServerProcess, Target
from _targets5 import BENCH_USER, Peer5, SystemUser, socks5_peers

__all__ = ["PEER_NAMES", "WORKLOADS", "run_socks5"]

#: The workloads, in the order they run (and are reported).
WORKLOADS = ("connect", "connect-auth", "connect-name", "upload", "download", "udp")
#: Every peer's name, for the command line.
PEER_NAMES = tuple(peer.name for peer in socks5_peers(None))


class _Run(Protocol):
    """What this section needs of C{bench.Run}."""

    args: Any
    stack: contextlib.ExitStack
    results: dict[str, Any]
    destination: Destination | None

    def launch(
        self, target: Target, idle_tunnels: bool = False, label: str = ""
    ) -> ServerProcess | None: ...

    def fail(self, target: str, what: str, error: BaseException | str) -> None: ...


def _progress(message: str) -> None:
    """One line of progress on stderr, as C{bench.progress}."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class _Section:
    """One run of the section: its servers and the results table."""

    def __init__(self, run: _Run, peers: list[Peer5]) -> None:
        self.run = run
        self.peers = peers
        assert run.destination is not None
        self.destination: Destination = run.destination
        self.table: dict[str, dict[str, Any]] = {}
        #: (peer, authenticated) -> the server, or None if it did not start.
        self.servers: dict[tuple[str, bool], ServerProcess | None] = {}

    def record(self, peer: str, workload: str) -> dict[str, Any]:
        """The results of C{workload} for C{peer} (created empty)."""
        return self.table.setdefault(peer, {}).setdefault(
            workload, {"runs": [], "failures": [], "skipped": None}
        )

    def start(self) -> None:
        """Every peer's two servers, each under a name of its own."""
        for peer in self.peers:
            for auth, launch in ((False, peer.launch), (True, peer.launchAuth)):
                name = f"{peer.name}-auth" if auth else peer.name
                if launch is None:
                    self.servers[(peer.name, auth)] = None
                    reason = peer.noAuthReason or "not available"
                    self.record(peer.name, "connect-auth")["skipped"] = reason
                    _progress(f"  {name}: not measured: {reason}")
                    continue
                target = Target(name, peer.description, False, launch)
                self.servers[(peer.name, auth)] = self.run.launch(
                    target, label="socks5"
                )

    def server(self, peer: Peer5, auth: bool) -> ServerProcess | None:
        """The peer's server if it is running; records it if it died."""
        server = self.servers.get((peer.name, auth))
        if server is None:
            return None
        try:
            server.check_alive()
        except RuntimeError as e:
            self.run.fail(peer.name, "socks5 server", e)
            self.servers[(peer.name, auth)] = None
            return None
        return server

    def warmUp(self) -> None:
        """A few sessions of each kind and a small transfer; not recorded."""
        for peer in self.peers:
            try:
                plain = self.server(peer, False)
                if plain is not None:
                    _loadgen5.handshake_run5(
                        plain, self.destination, None, None, 10, 0.3
                    )
                    _loadgen5.handshake_run5(
                        plain, self.destination, None, "localhost", 10, 0.3
                    )
                    if peer.throughput:
                        _loadgen5.transfer5(
                            plain, self.destination, "download", 8 << 20, 30
                        )
                authenticated = self.server(peer, True)
                if authenticated is not None:
                    # One login alone first: ours checks it with bcrypt once
                    # and caches it; 10 first logins at once would be 10
                    # bcrypt checks (it does not merge concurrent misses).
                    _loadgen5.open_tunnel5(
                        authenticated,
                        self.destination.host,
                        self.destination.echo_port,
                        BENCH_USER,
                    ).close()
                    _loadgen5.handshake_run5(
                        authenticated, self.destination, BENCH_USER, None, 10, 0.3
                    )
            except (OSError, _loadgen.TunnelError) as e:
                self.run.fail(peer.name, "socks5 warm-up", e)

    def sessions(self, repeat: int) -> None:
        """One run of each session workload for every peer."""
        args = self.run.args
        kinds = (
            ("connect", False, None),
            ("connect-auth", True, None),
            ("connect-name", False, _loadgen.SOCKS4A_HOSTNAME),
        )
        # A peer's workloads back to back: the auth-cost ratio compares
        # two of them, and runs next to each other share the machine's mood.
        for peer in self.peers:
            for workload, auth, hostname in kinds:
                record = self.record(peer.name, workload)
                server = self.server(peer, auth)
                if server is None:
                    continue
                what = f"socks5 {workload} run {repeat}"
                try:
                    result = _loadgen5.handshake_run5(
                        server,
                        self.destination,
                        BENCH_USER if auth else None,
                        hostname,
                        args.concurrency,
                        args.duration,
                    )
                except OSError as e:
                    record["failures"].append(str(e))
                    self.run.fail(peer.name, what, e)
                    continue
                result["repeat"] = repeat
                record["runs"].append(result)
                cpu = result.get("server_cpu_us_per_session")
                _progress(
                    f"  {what} {peer.name}: {result['sessions_s']:,.0f}/s, "
                    f"{'n/a' if cpu is None else f'{cpu:,.0f}'} CPU us/session, "
                    f"errors {result['error_count']}"
                )
                if result["sessions"] == 0:
                    record["failures"].append("no session succeeded")
                    self.run.fail(peer.name, what, "no session succeeded")

    def throughput(self, repeat: int, congestion: str | None) -> None:
        """One upload and one download per throughput peer."""
        size = self.run.args.size_mib << 20
        for direction in ("upload", "download"):
            for peer in self.peers:
                if not peer.throughput:
                    continue
                record = self.record(peer.name, direction)
                server = self.server(peer, False)
                if server is None:
                    continue
                what = f"socks5 {direction} run {repeat} [{congestion}]"
                try:
                    result = _loadgen5.transfer5(
                        server,
                        self.destination,
                        direction,
                        size,
                        self.run.args.transfer_timeout,
                    )
                except (OSError, _loadgen.TunnelError) as e:
                    record["failures"].append(str(e))
                    self.run.fail(peer.name, what, e)
                    continue
                result["repeat"] = repeat
                result["congestion_control"] = congestion
                record["runs"].append(result)
                _progress(
                    f"  {what} {peer.name}: {result['mib_s']:,.0f} MiB/s, server "
                    f"{result['server_cpu_s_per_gib']:.2f} CPU s/GiB"
                )

    def udp(self, repeat: int) -> None:
        """One UDP run per peer; a refused association is reported, once."""
        for peer in self.peers:
            record = self.record(peer.name, "udp")
            server = self.server(peer, False)
            if server is None or record["skipped"]:
                continue
            what = f"socks5 udp run {repeat}"
            try:
                result = _loadgen5.udp_run(
                    server, self.destination, self.run.args.duration
                )
            except NotSupported as e:
                record["skipped"] = f"not supported ({e})"
                _progress(f"  {what} {peer.name}: UDP ASSOCIATE not supported ({e})")
                continue
            except (OSError, _loadgen.TunnelError) as e:
                record["failures"].append(str(e))
                self.run.fail(peer.name, what, e)
                continue
            result["repeat"] = repeat
            record["runs"].append(result)
            cpu = result["server_cpu_us_per_round_trip"]
            _progress(
                f"  {what} {peer.name}: {result['round_trips_s']:,.0f} round "
                f"trips/s, {'n/a' if cpu is None else f'{cpu:,.1f}'} CPU "
                f"us/round trip, {result['lost']} lost"
            )

    def stop(self) -> None:
        """Stop every server of the section."""
        for key, server in self.servers.items():
            if server is not None:
                server.stop()
            self.servers[key] = None


def _congestion() -> tuple[contextlib.AbstractContextManager[Any], str | None]:
    """
    CUBIC for the throughput runs, as the SOCKS4 test (see C{_netcc}), when
    the setting can be changed; else the machine's default.
    """
    machine = _netcc.current()
    reference = _netcc.REFERENCE
    if machine == reference:
        return contextlib.nullcontext(), machine
    try:
        with _netcc.switched(reference):
            pass
    except OSError:
        return contextlib.nullcontext(), machine
    return _netcc.switched(reference), reference


def run_socks5(run: _Run, names: list[str]) -> None:
    """
    The whole section for the peers C{names}, into C{run.results["socks5"]}.
    Dante's authenticated server needs a throwaway system account, made here
    (as root only) and removed when the section ends.
    """
    user = SystemUser(BENCH_USER)
    if "dante" in names:
        user.create()
        run.stack.callback(user.remove)
    peers = [peer for peer in socks5_peers(user) if peer.name in names]
    section = _Section(run, peers)
    results = run.results["socks5"]
    results["peers"] = [{"name": p.name, "description": p.description} for p in peers]
    results["table"] = section.table
    results["system_user"] = {"created": user.created, "reason": user.reason}
    try:
        section.start()
        section.warmUp()
        for repeat in range(1, run.args.repeats + 1):
            section.sessions(repeat)
            manager, congestion = _congestion()
            results["congestion_control"] = congestion
            with manager:
                section.throughput(repeat, congestion)
            section.udp(repeat)
    finally:
        section.stop()
        user.remove()
