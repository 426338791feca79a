"""
The benchmark's destination servers, run as a process of their own.

It listens on two kernel-chosen ports and announces them as one JSON line on
stdout, C{{"echo_port": ..., "bulk_port": ...}}:

  - echo (asyncio, main thread): sends back every byte it gets until the peer
    sends EOF, then closes; after echoing a C{b"q"} it closes the connection
    itself.  It serves the handshake test (a 1-byte echo) and the
    idle-tunnel test (it holds connections as long as the peer does; a C{q}
    on each ends them from this side, which keeps the TIME_WAITs off the
    proxy's outbound ports).
    It listens on 127.0.0.1 and, when it can get the same port there, on
    ::1, so a SOCKS4A request for C{localhost} works wherever C{localhost}
    resolves to.
  - bulk (one thread per connection, blocking sockets, 1 MiB buffers): the
    throughput test.  The client sends a 9-byte header, C{b"U"} or C{b"D"}
    and a big-endian uint64 size.  C{U} (upload): it reads that many bytes,
    then replies with the count received as a uint64.  C{D} (download): it
    sends that many bytes.  Then it waits for the client to close.
  - UDP echo (asyncio, on 127.0.0.1, announced as C{udp_echo_port}): sends
    every datagram back to its sender.  It serves the SOCKS5 UDP test, whose
    datagrams arrive from the proxy's relay socket and go back to it.

It exits when its stdin reaches EOF (the harness closed it, or died) or on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import signal
import socket
import sys
import threading

#: One recv/send buffer; big enough that per-call overhead is negligible.
CHUNK = 1 << 20
#: A bulk connection idle this long is dropped (bounds every blocking call).
IO_TIMEOUT = 120.0
BACKLOG = 4096


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: Echoing this byte makes the echo server close the connection.
QUIT = b"q"


class _Echo(asyncio.Protocol):
    """Echo everything; close after echoing L{QUIT}, and on EOF."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        if QUIT in data:
            self.transport.close()  # after the echo is written

    def eof_received(self) -> bool:
        return False  # close the connection


class _UDPEcho(asyncio.DatagramProtocol):
    """Send every datagram back to where it came from."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error from a relay that went away: nothing to do


def _listening_socket(
    family: socket.AddressFamily, host: str, port: int
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _echo_sockets() -> list[socket.socket]:
    """127.0.0.1:P and, if it can get the same P, [::1]:P."""
    for _attempt in range(20):
        v4 = _listening_socket(socket.AF_INET, "127.0.0.1", 0)
        port = v4.getsockname()[1]
        try:
            v6 = _listening_socket(socket.AF_INET6, "::1", port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                v4.close()
                continue
            return [v4]  # no IPv6 loopback here: IPv4 only
        return [v4, v6]
    return [_listening_socket(socket.AF_INET, "127.0.0.1", 0)]


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += more
    return data


def _sink(conn: socket.socket, size: int) -> int:
    buffer = memoryview(bytearray(CHUNK))
    received = 0
    while received < size:
        n = conn.recv_into(buffer, min(CHUNK, size - received))
        if n == 0:
            break
        received += n
    return received


def _source(conn: socket.socket, size: int) -> None:
    payload = memoryview(bytes(CHUNK))
    sent = 0
    while sent < size:
        chunk = payload[: min(CHUNK, size - sent)]
        conn.sendall(chunk)
        sent += len(chunk)


def _serve_bulk(conn: socket.socket) -> None:
    """One throughput connection (see the module docstring)."""
    with conn, contextlib.suppress(OSError):
        conn.settimeout(IO_TIMEOUT)
        header = _recv_exactly(conn, 9)
        op, size = header[:1], int.from_bytes(header[1:], "big")
        if op == b"U":
            conn.sendall(_sink(conn, size).to_bytes(8, "big"))
        elif op == b"D":
            _source(conn, size)
        else:
            return
        # Wait for the client's close; bounded by IO_TIMEOUT.
        while conn.recv(CHUNK):
            pass


def _accept_bulk(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # the listener was closed: shutting down
        conn.setblocking(True)
        threading.Thread(target=_serve_bulk, args=(conn,), daemon=True).start()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF
        loop.call_soon_threadsafe(stop)

    threading.Thread(target=watch_stdin, daemon=True).start()

    echo_servers = [
        await loop.create_server(_Echo, sock=sock, backlog=BACKLOG)
        for sock in _echo_sockets()
    ]
    bulk = _listening_socket(socket.AF_INET, "127.0.0.1", 0)
    threading.Thread(target=_accept_bulk, args=(bulk,), daemon=True).start()
    udp_echo, _ = await loop.create_datagram_endpoint(
        _UDPEcho, local_addr=("127.0.0.1", 0)
    )

    announcement = {
        "echo_port": echo_servers[0].sockets[0].getsockname()[1],
        "echo_ipv6": len(echo_servers) > 1,
        "bulk_port": bulk.getsockname()[1],
        "udp_echo_port": udp_echo.get_extra_info("sockname")[1],
    }
    sys.stdout.write(json.dumps(announcement) + "\n")
    sys.stdout.flush()
    try:
        await stopped
    finally:
        bulk.close()
        udp_echo.close()
        for server in echo_servers:
            server.close()


if __name__ == "__main__":
    _raise_fd_limit()
    try:
        import uvloop  # the bench extra: a cheaper destination (see _loadgen)
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())
