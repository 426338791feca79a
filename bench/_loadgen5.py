"""
The SOCKS5 load generator (issue 17): the client side of the C{socks5}
section.

It reuses L{_loadgen}'s measurement: the same throughput transfer (with a
SOCKS5 opener), the same concurrent-session engine and CPU accounting (with
a SOCKS5 session protocol).  New here: the RFC 1928 method negotiation, the
RFC 1929 username/password sub-negotiation, CONNECT by address (ATYP 1) or
by name (ATYP 3, resolved by the proxy), and a UDP ASSOCIATE workload that
sends datagrams with the RFC 1928 UDP header through the proxy's relay to a
loopback UDP echo and counts the replies.

Every client waits for each reply before it sends the next message (no
pipelining), as curl and the other clients the peers serve do; microsocks
mishandles a pipelined request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import _loadgen
import _procfs
from _loadgen import TunnelError
from _targets import Destination, ServerProcess

__all__ = [
    "Credentials",
    "NotSupported",
    "connect_request",
    "handshake_run5",
    "open_tunnel5",
    "transfer5",
    "udp_run",
]

VERSION = 5
NO_AUTH = 0x00
USERPASS = 0x02
CONNECT = 0x01
UDP_ASSOCIATE = 0x03
SUCCEEDED = 0x00
#: RFC 1928 reply names, for messages.
REPLIES = {
    0x01: "general failure",
    0x02: "not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


@dataclass(frozen=True)
class Credentials:
    """An RFC 1929 user name and password (the bench's own throwaway pair)."""

    username: str
    password: str

    def __repr__(self) -> str:
        # Never print a password, not even the bench's.
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def message(self) -> bytes:
        """The RFC 1929 sub-negotiation request."""
        user, password = self.username.encode(), self.password.encode()
        return bytes([1, len(user)]) + user + bytes([len(password)]) + password


class NotSupported(Exception):
    """The proxy refused a command with a SOCKS5 reply code (e.g. 07)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"{code:02x} {REPLIES.get(code, 'unassigned')}")
        self.code = code


def greeting(credentials: Credentials | None) -> bytes:
    """The method selection message: no-auth only, or username/password only."""
    return bytes([VERSION, 1, NO_AUTH if credentials is None else USERPASS])


def connect_request(
    host: str, port: int, hostname: str | None = None, command: int = CONNECT
) -> bytes:
    """
    A SOCKS5 request for C{host:port} (ATYP 1), or with C{hostname} for
    C{hostname:port} (ATYP 3, the proxy resolves it).
    """
    if hostname is not None:
        name = hostname.encode("ascii")
        address = bytes([3, len(name)]) + name
    else:
        address = b"\x01" + ipaddress.IPv4Address(host).packed
    return bytes([VERSION, command, 0]) + address + port.to_bytes(2, "big")


def reply_length(head: bytes) -> int | None:
    """
    The length of the reply whose first bytes are C{head}, or L{None} until
    enough of it is known; L{TunnelError} for an unknown address type.
    """
    if len(head) < 5:
        return None
    atyp = head[3]
    if atyp == 1:
        return 10
    if atyp == 4:
        return 22
    if atyp == 3:
        return 7 + head[4]
    raise TunnelError(f"reply {head.hex()}: address type {atyp}")


def bound_address(reply: bytes) -> tuple[str, int]:
    """BND.ADDR and BND.PORT of a complete reply with an address (ATYP 1 or 4)."""
    port = int.from_bytes(reply[-2:], "big")
    if reply[3] == 1:
        return str(ipaddress.IPv4Address(reply[4:8])), port
    if reply[3] == 4:
        return str(ipaddress.IPv6Address(reply[4:20])), port
    return reply[5:-2].decode("ascii", "replace"), port


# -- blocking tunnels (throughput, UDP's control connection) -----------------------


def _negotiate(sock: socket.socket, credentials: Credentials | None) -> None:
    """Method selection and, with C{credentials}, the RFC 1929 login."""
    sock.sendall(greeting(credentials))
    method = _loadgen._recv_exactly(sock, 2)
    wanted = NO_AUTH if credentials is None else USERPASS
    if method != bytes([VERSION, wanted]):
        raise TunnelError(f"method reply {method.hex()}, not 05{wanted:02x}")
    if credentials is not None:
        sock.sendall(credentials.message())
        status = _loadgen._recv_exactly(sock, 2)
        if status[1] != 0:
            raise TunnelError(f"login refused ({status.hex()})")


def _request(sock: socket.socket, request: bytes) -> bytes:
    """Send C{request}, read the whole reply; L{NotSupported} unless it is 00."""
    sock.sendall(request)
    head = _loadgen._recv_exactly(sock, 5)
    if head[0] != VERSION:
        raise TunnelError(f"reply {head.hex()}: not SOCKS5")
    if head[1] != SUCCEEDED:
        raise NotSupported(head[1])
    length = reply_length(head) or len(head)  # five bytes always tell
    return head + _loadgen._recv_exactly(sock, length - 5)


def open_tunnel5(
    server: ServerProcess | None,
    host: str,
    port: int,
    credentials: Credentials | None = None,
    hostname: str | None = None,
) -> socket.socket:
    """
    A blocking socket connected to C{host:port} through C{server} by SOCKS5
    CONNECT (or straight there when C{server} is L{None}).
    """
    if server is None:
        return socket.create_connection((host, port), timeout=_loadgen.IO_TIMEOUT)
    sock = socket.create_connection(
        (server.host, server.port), timeout=_loadgen.IO_TIMEOUT
    )
    try:
        _negotiate(sock, credentials)
        _request(sock, connect_request(host, port, hostname))
    except NotSupported as e:
        sock.close()
        raise TunnelError(f"CONNECT refused: {e}") from None
    except TimeoutError:
        sock.close()
        raise TunnelError(f"no reply within {_loadgen.IO_TIMEOUT:.0f}s") from None
    except BaseException:
        sock.close()
        raise
    return sock


def transfer5(
    server: ServerProcess,
    destination: Destination,
    direction: str,
    size: int,
    timeout: float,
) -> dict[str, Any]:
    """L{_loadgen.transfer} through a SOCKS5 (no-auth, ATYP 1) tunnel."""
    return _loadgen.transfer(
        server, destination, direction, size, timeout, opener=open_tunnel5
    )


# -- session rate -----------------------------------------------------------------


class _Session5(_loadgen._Session):
    """
    One SOCKS5 session: greeting, (login,) CONNECT, then the SOCKS4
    session's 1-byte echo of C{q} and the far side's close.
    """

    def __init__(
        self,
        credentials: Credentials | None,
        request: bytes,
        done: asyncio.Future[None],
    ) -> None:
        super().__init__(request, done)
        self.credentials = credentials
        self.stage = "method reply"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(greeting(self.credentials))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.stage not in ("method reply", "login reply", "reply"):
            super().data_received(data)
            return
        self.buffer += data
        while self.stage in ("method reply", "login reply", "reply"):
            if not self._step():
                return

    def _step(self) -> bool:
        """Handle one complete message of C{buffer}; whether to go on."""
        transport = self.transport
        assert transport is not None
        if self.stage == "method reply":
            if len(self.buffer) < 2:
                return False
            method, self.buffer = self.buffer[:2], self.buffer[2:]
            if self.credentials is None:
                if method != bytes([VERSION, NO_AUTH]):
                    self._fail(f"method reply {method.hex()}")
                    return False
                self.stage = "reply"
                transport.write(self.request or b"")
            else:
                if method != bytes([VERSION, USERPASS]):
                    self._fail(f"method reply {method.hex()}")
                    return False
                self.stage = "login reply"
                transport.write(self.credentials.message())
            return True
        if self.stage == "login reply":
            if len(self.buffer) < 2:
                return False
            status, self.buffer = self.buffer[:2], self.buffer[2:]
            if status[1] != 0:
                self._fail(f"login refused ({status.hex()})")
                return False
            self.stage = "reply"
            transport.write(self.request or b"")
            return True
        try:
            length = reply_length(self.buffer)
        except TunnelError as e:
            self._fail(str(e))
            return False
        if length is None or len(self.buffer) < length:
            return False
        if self.buffer[1] != SUCCEEDED:
            self._fail(f"reply code {self.buffer[1]:02x}")
        elif len(self.buffer) > length:
            self._fail("data after the reply")
        else:
            self.buffer = b""
            self.stage = "echo"
            transport.write(_loadgen.QUIT)
        return False


def handshake_run5(
    server: ServerProcess,
    destination: Destination,
    credentials: Credentials | None,
    hostname: str | None,
    concurrency: int,
    duration: float,
) -> dict[str, Any]:
    """
    C{concurrency} SOCKS5 clients doing sessions back to back for
    C{duration} seconds: connect, method selection, login (with
    C{credentials}), CONNECT to the echo server (by address, or by
    C{hostname}), 1-byte echo of C{q}, the far side's close.  The figures
    are those of L{_loadgen.handshake_run}.
    """
    request = connect_request(destination.host, destination.echo_port, hostname)
    return _loadgen.measure_sessions(
        server,
        destination,
        server.host,
        server.port,
        lambda done: _Session5(credentials, request, done),
        concurrency,
        duration,
    )


# -- UDP through an association -----------------------------------------------------

#: The UDP test's payload per datagram (bytes after the SOCKS5 UDP header).
UDP_PAYLOAD = 512
#: Datagrams in flight at once: enough to keep the relay busy, few enough
#: that no socket buffer on the way overflows.
UDP_WINDOW = 16
#: A datagram not answered within this is counted lost and replaced.
UDP_WAIT = 0.2


def udp_header(host: str, port: int) -> bytes:
    """The RFC 1928 UDP request header for C{host:port} (RSV, FRAG 0, ATYP 1)."""
    return b"\0\0\0\x01" + ipaddress.IPv4Address(host).packed + struct.pack("!H", port)


def udp_run(
    server: ServerProcess,
    destination: Destination,
    duration: float,
    credentials: Credentials | None = None,
    window: int = UDP_WINDOW,
    payload: int = UDP_PAYLOAD,
) -> dict[str, Any]:
    """
    One UDP association (asked for with DST 0.0.0.0:0: the client does not
    know its address yet, as RFC 1928 allows), then C{duration} seconds of
    datagrams to the destination's UDP echo through the relay, C{window} in
    flight: each reply (checked: the header names the echo, the payload is
    whole) sends the next.  The association ends with its TCP connection.

    @return: round trips/s (each is two datagrams through the relay), lost
        datagrams, server CPU per round trip.
    @raise NotSupported: the server refused the association (e.g. 07).
    @raise TunnelError: a refused login, a broken reply, or no reply at all.
    """
    control = socket.create_connection(
        (server.host, server.port), timeout=_loadgen.IO_TIMEOUT
    )
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            _negotiate(control, credentials)
            reply = _request(
                control, connect_request("0.0.0.0", 0, command=UDP_ASSOCIATE)
            )
        except TimeoutError:
            raise TunnelError("no UDP ASSOCIATE reply") from None
        relay_host, relay_port = bound_address(reply)
        if relay_host in ("0.0.0.0", "::"):
            relay_host = server.host  # "the address the request came to"
        udp.bind(("127.0.0.1", 0))
        udp.connect((relay_host, relay_port))
        udp.settimeout(UDP_WAIT)
        header = udp_header(destination.host, destination.udp_echo_port)
        datagram = header + bytes(payload)
        server_cpu = server.cpu_seconds()
        dest_cpu = destination.cpu_seconds()
        client_cpu = _loadgen._client_cpu()
        machine = _procfs.MachineCPU.now()
        sent = received = malformed = timeouts = 0
        started = time.perf_counter()
        deadline = started + duration
        for _ in range(window):
            udp.send(datagram)
            sent += 1
        while time.perf_counter() < deadline:
            try:
                answer = udp.recv(65535)
            except TimeoutError:
                # Nothing for UDP_WAIT: the window was lost; refill it.
                timeouts += 1
                for _ in range(window):
                    udp.send(datagram)
                    sent += 1
                continue
            if answer[: len(header)] != header or len(answer) != len(datagram):
                malformed += 1
            else:
                received += 1
            udp.send(datagram)
            sent += 1
        elapsed = time.perf_counter() - started
        busy, steal = _procfs.MachineCPU.now().percent_since(machine)
        cpu = server.cpu_seconds() - server_cpu
        client = 100 * (_loadgen._client_cpu() - client_cpu) / elapsed
        dest = 100 * (destination.cpu_seconds() - dest_cpu) / elapsed
        return {
            "relay": f"{relay_host}:{relay_port}",
            "payload": payload,
            "window": window,
            "sent": sent,
            "received": received,
            "malformed": malformed,
            "window_timeouts": timeouts,
            # In flight at the end are not lost; at most a window of them.
            "lost": max(0, sent - received - malformed - window),
            "seconds": elapsed,
            "round_trips_s": received / elapsed,
            "server_cpu_pct": 100 * cpu / elapsed,
            "server_cpu_us_per_round_trip": 1e6 * cpu / received if received else None,
            "client_cpu_pct": client,
            "destination_cpu_pct": dest,
            "machine_busy_pct": busy,
            "machine_steal_pct": steal,
            "other_cpu_pct": max(0.0, busy - client - dest - 100 * cpu / elapsed),
        }
    finally:
        udp.close()
        control.close()
