"""
The load generator: the client side of every measurement.

It runs in the harness process, never in a server's.  Throughput uses one
blocking socket and 1 MiB buffers (the slow reader: 256 KiB reads paced to a
rate, with a thread sampling the server's memory); the handshake test uses
asyncio protocols (no streams) with one task per concurrent client; the
idle-tunnel test uses blocking sockets, opened a batch at a time.  Every
wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import math
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _procfs
from _targets import Destination, ServerProcess

__all__ = [
    "TunnelError",
    "handshake_run",
    "idle_tunnels",
    "measure_sessions",
    "slow_download",
    "socks4_request",
    "transfer",
    "warm_memory",
]

CHUNK = 1 << 20
#: Per blocking socket operation.
IO_TIMEOUT = 30.0
#: The user ID the harness sends.
USER = b"bench"
#: The SOCKS4A test's hostname, resolved by the proxy.
SOCKS4A_HOSTNAME = "localhost"
GRANTED = 90


class TunnelError(Exception):
    """A SOCKS request was not granted, or the reply was malformed or late."""


def socks4_request(host: str, port: int, hostname: str | None = None) -> bytes:
    """
    A SOCKS4 CONNECT request for C{host:port}, or with C{hostname} a SOCKS4A
    request for C{hostname:port} (C{host} is then ignored).
    """
    if hostname is not None:
        address = bytes([0, 0, 0, 1])
        tail = hostname.encode("ascii") + b"\0"
    else:
        address = ipaddress.IPv4Address(host).packed
        tail = b""
    return b"\x04\x01" + port.to_bytes(2, "big") + address + USER + b"\0" + tail


def run_loop(coroutine: Any) -> Any:
    """
    Run C{coroutine} on uvloop's event loop when it is installed (the bench
    extra), else on asyncio's: the load generator and the destination are
    the harness, and the less CPU they take of the 2 cores, the more the
    servers' own cost decides the rates.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise TunnelError(f"EOF after {len(data)} of {size} bytes")
        data += more
    return data


def _check_reply(reply: bytes) -> None:
    if reply[0] != 0 or reply[1] != GRANTED:
        raise TunnelError(f"reply {reply.hex()} (code {reply[1]}, not {GRANTED})")


def _await_reply(sock: socket.socket) -> None:
    """Read the 8-byte SOCKS reply (bounded by the socket's timeout); it must be 90."""
    try:
        reply = _recv_exactly(sock, 8)
    except TimeoutError:
        raise TunnelError(f"no reply within {IO_TIMEOUT:.0f}s") from None
    _check_reply(reply)


def open_tunnel(
    server: ServerProcess | None, host: str, port: int, hostname: str | None = None
) -> socket.socket:
    """
    A blocking socket connected to C{host:port}, through C{server} (SOCKS4,
    or SOCKS4A with C{hostname}) or directly when it is L{None}.
    """
    if server is None:
        return socket.create_connection((host, port), timeout=IO_TIMEOUT)
    sock = socket.create_connection((server.host, server.port), timeout=IO_TIMEOUT)
    try:
        sock.sendall(socks4_request(host, port, hostname))
        _await_reply(sock)
    except BaseException:
        sock.close()
        raise
    return sock


#: Opens a tunnel: (server or L{None} for direct, host, port) to a socket.
Opener = Callable[[ServerProcess | None, str, int], socket.socket]


# -- throughput ---------------------------------------------------------------


def transfer(
    server: ServerProcess | None,
    destination: Destination,
    direction: str,
    size: int,
    timeout: float,
    opener: Opener = open_tunnel,
) -> dict[str, Any]:
    """
    Move C{size} bytes through one tunnel, C{"upload"} (client to destination)
    or C{"download"}, and time it from the command to the last byte (upload:
    to the destination's acknowledgement of the count).  C{opener} opens the
    tunnel (SOCKS4 by default; C{_loadgen5} passes a SOCKS5 one).

    @return: seconds, MiB/s and the CPU seconds of the server, destination
        and client; the server's CPU s/GiB and peak RSS.
    @raise TunnelError: on a short transfer, a refused tunnel or timeout.
    """
    if direction not in ("upload", "download"):
        raise ValueError(direction)
    sock = opener(server, destination.host, destination.bulk_port)
    try:
        peak_reset = server is not None and server.reset_peak_rss()
        rss_before = server.rss_kib() if server is not None else 0
        server_cpu = server.cpu_seconds() if server is not None else 0.0
        dest_cpu = destination.cpu_seconds()
        client_cpu = _client_cpu()
        machine = _procfs.MachineCPU.now()
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        if direction == "upload":
            sock.sendall(b"U" + size.to_bytes(8, "big"))
            _send_bulk(sock, size, deadline)
            acknowledged = int.from_bytes(_recv_exactly(sock, 8), "big")
            if acknowledged != size:
                raise TunnelError(f"destination got {acknowledged} of {size} bytes")
        else:
            sock.sendall(b"D" + size.to_bytes(8, "big"))
            _receive_bulk(sock, size, deadline)
        seconds = time.perf_counter() - started
        busy, steal = _procfs.MachineCPU.now().percent_since(machine)
        result: dict[str, Any] = {
            "bytes": size,
            "seconds": seconds,
            "mib_s": size / seconds / 2**20,
            "client_cpu_s": _client_cpu() - client_cpu,
            "destination_cpu_s": destination.cpu_seconds() - dest_cpu,
            "machine_busy_pct": busy,
            "machine_steal_pct": steal,
        }
        accounted = result["client_cpu_s"] + result["destination_cpu_s"]
        if server is not None:
            cpu = server.cpu_seconds() - server_cpu
            accounted += cpu
            result["server_cpu_s"] = cpu
            result["server_cpu_s_per_gib"] = cpu / (size / 2**30)
            result["server_rss_before_kib"] = rss_before
            result["server_peak_rss_kib"] = server.peak_rss_kib()
            result["server_peak_rss_is_per_run"] = peak_reset
        result["other_cpu_pct"] = max(0.0, busy - 100 * accounted / seconds)
        return result
    except TimeoutError:
        raise TunnelError(f"{direction} stalled for {IO_TIMEOUT:.0f}s") from None
    finally:
        sock.close()


def _send_bulk(sock: socket.socket, size: int, deadline: float) -> None:
    payload = memoryview(bytes(CHUNK))
    sent = 0
    while sent < size:
        if time.monotonic() > deadline:
            raise TunnelError(f"upload timed out after {sent} of {size} bytes")
        chunk = payload[: min(CHUNK, size - sent)]
        sock.sendall(chunk)
        sent += len(chunk)


def _receive_bulk(sock: socket.socket, size: int, deadline: float) -> None:
    buffer = memoryview(bytearray(CHUNK))
    received = 0
    while received < size:
        if time.monotonic() > deadline:
            raise TunnelError(f"download timed out after {received} of {size} bytes")
        n = sock.recv_into(buffer, min(CHUNK, size - received))
        if n == 0:
            raise TunnelError(f"download: EOF after {received} of {size} bytes")
        received += n


# -- slow reader ------------------------------------------------------------------


class _MemorySampler(threading.Thread):
    """Samples a server tree's RSS and PSS every C{interval} seconds until stopped."""

    def __init__(self, server: ServerProcess, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.stopped = threading.Event()
        self.max_rss_kib = 0
        self.max_pss_kib = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.max_rss_kib = max(self.max_rss_kib, self.server.rss_kib())
                self.max_pss_kib = max(self.max_pss_kib, self.server.pss_kib())
                self.samples += 1
            except (OSError, RuntimeError):
                pass
            self.stopped.wait(self.interval)

    def finish(self) -> None:
        self.stopped.set()
        self.join(5)


def slow_download(
    server: ServerProcess,
    destination: Destination,
    size: int,
    rate_mib_s: float,
    timeout: float,
    chunk: int = 256 << 10,
) -> dict[str, Any]:
    """
    A download of C{size} bytes that the client reads at most C{rate_mib_s}
    MiB/s (C{chunk} at a time, sleeping whenever it is ahead of the rate),
    while the destination sends as fast as it can: a proxy either stops
    reading from the destination (flow control) or buffers the difference.

    @return: the rate reached; the server tree's peak RSS (the kernel's peak
        per process, summed, and never below the highest sample) and highest
        sampled PSS, with their values before the transfer.
    """
    sock = open_tunnel(server, destination.host, destination.bulk_port)
    sampler = _MemorySampler(server)
    try:
        peak_reset = server.reset_peak_rss()
        rss_before = server.rss_kib()
        pss_before = server.pss_kib()
        server_cpu = server.cpu_seconds()
        sampler.start()
        rate = rate_mib_s * 2**20
        buffer = memoryview(bytearray(chunk))
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        sock.sendall(b"D" + size.to_bytes(8, "big"))
        received = 0
        while received < size:
            if time.monotonic() > deadline:
                raise TunnelError(
                    f"slow download timed out after {received} of {size} bytes"
                )
            ahead = received / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
            n = sock.recv_into(buffer, min(chunk, size - received))
            if n == 0:
                raise TunnelError(f"slow download: EOF after {received} of {size}")
            received += n
        seconds = time.perf_counter() - started
        sampler.finish()
        peak = max(server.peak_rss_kib(), sampler.max_rss_kib)
        return {
            "bytes": size,
            "seconds": seconds,
            "mib_s": size / seconds / 2**20,
            "rate_limit_mib_s": rate_mib_s,
            "server_cpu_s": server.cpu_seconds() - server_cpu,
            "server_rss_before_kib": rss_before,
            "server_pss_before_kib": pss_before,
            "server_peak_rss_kib": peak,
            "server_rss_growth_kib": peak - rss_before,
            "server_peak_rss_is_per_run": peak_reset,
            "server_sampled_peak_rss_kib": sampler.max_rss_kib,
            "server_sampled_peak_pss_kib": sampler.max_pss_kib,
            "samples": sampler.samples,
            "server_processes": server.processes(),
        }
    except TimeoutError:
        raise TunnelError(f"slow download stalled for {IO_TIMEOUT:.0f}s") from None
    finally:
        sampler.stopped.set()
        sock.close()


# -- handshake rate -------------------------------------------------------------


class _SessionError(Exception):
    """A handshake session went wrong; the message is its error kind."""


#: Echoing this byte makes the destination close the connection (the
#: idle-tunnel test ends its tunnels so).
QUIT = b"q"


class _Session(asyncio.Protocol):
    """
    One handshake session as a state machine: (SOCKS request, 8-byte reply)
    then a 1-byte echo of L{QUIT}, which makes the destination close; the
    session ends with the proxy passing that close on.

    The far side closes first on purpose: the side that closes first keeps
    the connection in TIME_WAIT for 60 s, and had it been the client (and so
    the proxy's outbound socket), thousands of sessions a second would fill
    the ephemeral port range of the load generator and of every proxy, and
    the run would measure the kernel's port search instead of the servers
    (see the README).
    """

    def __init__(self, request: bytes | None, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.stage = "reply" if request is not None else "echo"
        self.buffer = b""
        self.echoed_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request if self.request is not None else QUIT)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.stage == "reply":
            self.buffer += data
            if len(self.buffer) < 8:
                return
            reply, rest = self.buffer[:8], self.buffer[8:]
            if reply[0] != 0 or reply[1] != GRANTED:
                self._fail(f"reply code {reply[1]}")
            elif rest:
                self._fail("data after the reply")
            else:
                self.stage = "echo"
                self.transport.write(QUIT)  # type: ignore[union-attr]
        elif self.stage == "echo":
            if data != QUIT:
                self._fail("wrong echo")
                return
            self.echoed_at = time.perf_counter()
            self.stage = "close"
        else:
            self._fail("data after the echo")

    def eof_received(self) -> bool:
        if self.stage == "close":
            if not self.done.done():
                self.done.set_result(None)
        else:
            self._fail(f"EOF while waiting for the {self.stage}")
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(f"connection lost while waiting for the {self.stage}")

    def _fail(self, kind: str) -> None:
        if not self.done.done():
            self.done.set_exception(_SessionError(kind))
        if self.transport is not None:
            self.transport.abort()


@dataclass
class _Tally:
    session_ms: list[float]
    echo_ms: list[float]
    errors: collections.Counter[str]


#: Makes one session's protocol, given the future it completes.
SessionFactory = Callable[["asyncio.Future[None]"], _Session]


async def _worker(
    host: str,
    port: int,
    make_session: SessionFactory,
    deadline: float,
    session_timeout: float,
    max_errors: int,
    tally: _Tally,
) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < deadline and sum(tally.errors.values()) < max_errors:
        done: asyncio.Future[None] = loop.create_future()
        session = make_session(done)
        started = time.perf_counter()
        transport = None
        try:
            async with asyncio.timeout(session_timeout):
                transport, _ = await loop.create_connection(
                    lambda s=session: s, host, port
                )
                await done
        except TimeoutError:
            tally.errors[f"timeout while waiting for the {session.stage}"] += 1
        except _SessionError as e:
            tally.errors[str(e)] += 1
        except OSError as e:
            tally.errors[f"connect: {e.strerror or e}"] += 1
        else:
            ended = time.perf_counter()
            tally.session_ms.append((ended - started) * 1000)
            tally.echo_ms.append((session.echoed_at - started) * 1000)
            continue
        finally:
            if transport is not None:
                transport.close()
        await asyncio.sleep(0.01)  # after an error: no hot loop


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


async def _handshake_async(
    host: str,
    port: int,
    make_session: SessionFactory,
    concurrency: int,
    duration: float,
    session_timeout: float,
    max_errors: int,
) -> tuple[_Tally, float]:
    tally = _Tally([], [], collections.Counter())
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(
            _worker(
                host, port, make_session, deadline, session_timeout, max_errors, tally
            )
            for _ in range(concurrency)
        )
    )
    return tally, time.perf_counter() - started


def handshake_run(
    server: ServerProcess | None,
    destination: Destination,
    socks4a: bool,
    concurrency: int,
    duration: float,
    session_timeout: float = 10.0,
    max_errors: int = 1000,
) -> dict[str, Any]:
    """
    C{concurrency} clients doing sessions back to back for C{duration}
    seconds: connect, SOCKS4 (or 4A, C{localhost}) request for the echo
    server, 8-byte reply (must be 90), 1-byte echo, FIN, wait for the far
    side's close.  Direct (C{server} L{None}): connect, echo, FIN, wait.

    The proxy passes the client's FIN on, so it closes its outbound socket
    first and that socket's port stays in TIME_WAIT for 60 s; see the
    README on Dante, which binds that port itself.

    Session latency runs from the start of the connect to the far side's
    close; echo latency to the echoed byte.
    """
    if server is None:
        host, port, request = destination.host, destination.echo_port, None
    else:
        host, port = server.host, server.port
        request = socks4_request(
            destination.host,
            destination.echo_port,
            SOCKS4A_HOSTNAME if socks4a else None,
        )
    return measure_sessions(
        server,
        destination,
        host,
        port,
        lambda done: _Session(request, done),
        concurrency,
        duration,
        session_timeout,
        max_errors,
    )


def measure_sessions(
    server: ServerProcess | None,
    destination: Destination,
    host: str,
    port: int,
    make_session: SessionFactory,
    concurrency: int,
    duration: float,
    session_timeout: float = 10.0,
    max_errors: int = 1000,
) -> dict[str, Any]:
    """
    C{concurrency} clients doing sessions (each made by C{make_session})
    to C{host:port} back to back for C{duration} seconds, and what they
    cost: the rate, latencies, errors by kind and the CPU of the server,
    the destination and this process (the handshake tests' figures).
    """
    server_cpu = server.cpu_seconds() if server is not None else 0.0
    dest_cpu = destination.cpu_seconds()
    client_cpu = _client_cpu()
    machine = _procfs.MachineCPU.now()
    tally, elapsed = run_loop(
        _handshake_async(
            host, port, make_session, concurrency, duration, session_timeout, max_errors
        )
    )
    busy, steal = _procfs.MachineCPU.now().percent_since(machine)
    sessions = len(tally.session_ms)
    session_ms = sorted(tally.session_ms)
    result: dict[str, Any] = {
        "sessions": sessions,
        "seconds": elapsed,
        "sessions_s": sessions / elapsed,
        "errors": dict(tally.errors),
        "error_count": sum(tally.errors.values()),
        "p50_ms": _percentile(session_ms, 0.50),
        "p90_ms": _percentile(session_ms, 0.90),
        "p99_ms": _percentile(session_ms, 0.99),
        "max_ms": session_ms[-1] if session_ms else None,
        "echo_p50_ms": statistics.median(tally.echo_ms) if tally.echo_ms else None,
        "client_cpu_pct": 100 * (_client_cpu() - client_cpu) / elapsed,
        "destination_cpu_pct": 100 * (destination.cpu_seconds() - dest_cpu) / elapsed,
        "machine_busy_pct": busy,
        "machine_steal_pct": steal,
    }
    if server is not None:
        cpu = server.cpu_seconds() - server_cpu
        result["server_cpu_pct"] = 100 * cpu / elapsed
        result["server_cpu_us_per_session"] = 1e6 * cpu / sessions if sessions else None
    accounted = sum(
        result.get(key, 0.0)
        for key in ("client_cpu_pct", "destination_cpu_pct", "server_cpu_pct")
    )
    result["other_cpu_pct"] = max(0.0, busy - accounted)
    return result


# -- idle tunnels ---------------------------------------------------------------


def idle_tunnels(
    server: ServerProcess,
    destination: Destination,
    count: int,
    warmup: int = 20,
    settle: float = 1.0,
    batch: int = 16,
) -> dict[str, Any]:
    """
    Open C{count} tunnels to the echo server through C{server}, check each
    is granted, measure the server's memory, then check each still echoes a
    byte and measure again; finally close them all.

    Tunnels are opened C{batch} at a time (connect them all, send every
    request, then read every reply), well under the servers' listen
    backlogs.  Memory is the RSS and PSS of the server's whole process tree.

    The baseline is taken after C{warmup} tunnels were opened, used and
    closed, so one-time costs (lazy imports, first allocations) are not
    charged to the tunnels.
    """
    host, port = destination.host, destination.echo_port
    _warm_up(server, destination, warmup)
    time.sleep(settle)
    rss_before, pss_before = server.rss_kib(), server.pss_kib()
    tunnels: list[socket.socket] = []
    result: dict[str, Any] = {
        "count": count,
        "rss_before_kib": rss_before,
        "pss_before_kib": pss_before,
        "processes_before": server.processes(),
    }
    started = time.perf_counter()
    try:
        while len(tunnels) < count:
            first = len(tunnels)
            try:
                _open_batch(server, host, port, min(batch, count - first), tunnels)
            except (OSError, TunnelError) as e:
                raise TunnelError(
                    f"tunnels {first + 1}-{first + batch} of {count} "
                    f"({len(tunnels)} open): {e}"
                ) from None
        result["established"] = len(tunnels)
        result["open_seconds"] = time.perf_counter() - started
        time.sleep(settle)
        rss_open, pss_open = server.rss_kib(), server.pss_kib()
        for i, sock in enumerate(tunnels):
            try:
                _echo_one(sock)
            except (OSError, TunnelError) as e:
                raise TunnelError(f"echo on tunnel {i + 1} of {count}: {e}") from None
        result["echoed"] = len(tunnels)
        time.sleep(settle)
        rss_echoed, pss_echoed = server.rss_kib(), server.pss_kib()
        result["processes"] = server.processes()
        result["ended_by_destination"] = _end_tunnels(tunnels)
    finally:
        for sock in tunnels:
            sock.close()
    time.sleep(settle)
    result.update(
        rss_open_kib=rss_open,
        rss_echoed_kib=rss_echoed,
        pss_open_kib=pss_open,
        pss_echoed_kib=pss_echoed,
        rss_closed_kib=server.rss_kib(),
        kib_per_tunnel_open=(rss_open - rss_before) / count,
        kib_per_tunnel=(rss_echoed - rss_before) / count,
        pss_kib_per_tunnel=(pss_echoed - pss_before) / count,
    )
    return result


def warm_memory(
    server: ServerProcess,
    destination: Destination,
    warmup: int = 20,
    settle: float = 1.0,
) -> dict[str, Any]:
    """
    The memory of a fresh C{server} once warm, measured as the idle test's
    baseline is: after C{warmup} tunnels were opened, used and closed.
    """
    _warm_up(server, destination, warmup)
    time.sleep(settle)
    return {
        "warmup": warmup,
        "rss_kib": server.rss_kib(),
        "pss_kib": server.pss_kib(),
        "processes": server.processes(),
    }


def _warm_up(server: ServerProcess, destination: Destination, tunnels: int) -> None:
    """Open, use (a 1-byte echo) and close C{tunnels} tunnels, one at a time."""
    for _ in range(tunnels):
        with open_tunnel(server, destination.host, destination.echo_port) as sock:
            _echo_one(sock)


def _end_tunnels(tunnels: list[socket.socket], timeout: float = 30.0) -> int:
    """
    End tunnels from the far end: a C{q} on each makes the destination
    close, then read up to each EOF (the proxy passing the close on).  The
    destination closing first keeps 10,000 TIME_WAITs off the proxy's
    outbound ports, which for Dante (it binds them) would block the ports
    for every later connect for 60 s.  Returns how many ended so; the rest
    are just closed by the caller.
    """
    ended = 0
    for sock in tunnels:
        with contextlib.suppress(OSError):
            sock.sendall(QUIT)
    deadline = time.monotonic() + timeout  # for all of them together
    for sock in tunnels:
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            while sock.recv(64):
                pass
        except OSError:
            continue
        ended += 1
    return ended


def _open_batch(
    server: ServerProcess, host: str, port: int, size: int, tunnels: list[socket.socket]
) -> None:
    """Open C{size} tunnels at once and append them to C{tunnels}."""
    request = socks4_request(host, port)
    batch: list[socket.socket] = []
    try:
        for _ in range(size):
            batch.append(
                socket.create_connection((server.host, server.port), timeout=IO_TIMEOUT)
            )
        for sock in batch:
            sock.sendall(request)
        for sock in batch:
            _await_reply(sock)
    except BaseException:
        for sock in batch:
            sock.close()
        raise
    tunnels.extend(batch)


def _echo_one(sock: socket.socket) -> None:
    sock.sendall(b"x")
    try:
        echoed = _recv_exactly(sock, 1)
    except TimeoutError:
        raise TunnelError(f"no echo within {IO_TIMEOUT:.0f}s") from None
    if echoed != b"x":
        raise TunnelError(f"echo returned {echoed!r}")
