"""
What bytes sent before the reply cost the server: heap per session stays
within a small multiple of C{maxPendingBytes}, however finely the client
paces them.

The server runs in-process so that C{tracemalloc} counts its heap exactly.
The clients are plain non-blocking sockets written from the reactor's own
thread, two bytes per socket per reactor iteration (with C{TCP_NODELAY}),
so that each read of the server gets one two-byte segment; their
destination is a blackhole, so every session stays connecting and queues
what it gets.
"""

from __future__ import annotations

import socket
import time
import tracemalloc
from ipaddress import IPv4Address

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater

from tests._support import eventually, listen
from twisted_socks import Command, Limits, SOCKSv4ServerFactory, encodeRequest

#: Sessions trickling at once.
SESSIONS = 4
#: The server's cap on bytes queued before the reply (the default).
CAP = 65536


@pytest_twisted.ensureDeferred
async def test_pacedPendingBytesCostHeapProportionalToTheCap(
    ports: list[IListeningPort], blackhole: int
) -> None:
    """
    C{SESSIONS} clients each send a CONNECT to a blackhole and then just
    under the 64 KiB cap, two bytes per segment: the server's heap grows
    by at most four times the cap per session (the bytes themselves, the
    session and its sockets included), where a list of two-byte chunks
    cost about 28 times.
    """
    factory = SOCKSv4ServerFactory(
        reactor,
        limits=Limits(maxPendingBytes=CAP, connectTimeout=300),
        splice=False,
    )
    port = listen(ports, factory)
    clients: list[socket.socket] = []
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(SESSIONS):
            client = socket.create_connection(("127.0.0.1", port))
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.sendall(
                encodeRequest(Command.CONNECT, blackhole, IPv4Address("127.0.0.1"))
            )
            client.setblocking(False)
            clients.append(client)
        await eventually(
            lambda: [s.state for s in factory.sessions()] == ["connecting"] * SESSIONS
        )
        connecting = tracemalloc.get_traced_memory()[0]
        began = time.monotonic()
        segment = b"ab"
        for _ in range((CAP - 1) // len(segment)):
            for client in clients:
                client.send(segment)
            # One reactor iteration per round: the server reads each
            # client's segment on its own before the next is sent.
            await deferLater(reactor, 0, lambda: None)
        sent = (CAP - 1) // len(segment) * len(segment)
        await eventually(
            lambda: all(
                len(s._pending) == sent  # type: ignore[attr-defined]
                for s in factory.activeSessions
            )
        )
        queued = tracemalloc.get_traced_memory()[0]
        seconds = time.monotonic() - began
    finally:
        tracemalloc.stop()
        for client in clients:
            # A reset: a client that merely closes is still waited for
            # (its FIN is passed on once the destination answers).
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            client.close()
    perSession = (queued - start) / SESSIONS
    pendingOnly = (queued - connecting) / SESSIONS
    print(
        f"figures: {SESSIONS} sessions, {sent} bytes each in "
        f"{len(segment)}-byte segments ({seconds:.1f} s): heap "
        f"{perSession / 1024:.0f} KiB per session "
        f"({pendingOnly / 1024:.0f} KiB of it for the queued bytes), "
        f"{perSession / CAP:.2f}x the cap"
    )
    await eventually(lambda: not factory.activeSessions)
    assert perSession <= 4 * CAP
