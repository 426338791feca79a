"""
BIND on real sockets: both replies, the peer check, the listener's life.

The server runs in-process on the test reactor; the SOCKS client and the
inbound peer are blocking sockets in threads, as real programs would be.
"""

from __future__ import annotations

import socket
import time
from ipaddress import IPv4Address
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort

from tests._support import eventually, inThread, recvAll, recvExactly
from twisted_socks import Command, Limits, SOCKSv4ServerFactory, encodeRequest

REJECTED = b"\x00\x5b" + b"\0" * 6


def startProxy(ports: list[IListeningPort], **kwargs: Any) -> tuple[int, Any]:
    """An in-process server on 127.0.0.1; its port and factory."""
    factory = SOCKSv4ServerFactory(reactor, **kwargs)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    ports.append(port)
    return port.getHost().port, factory


def bindRequest(proxy: int, peer: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """Send BIND (expecting a peer from C{peer}); return socket, first reply."""
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=10)
    sock.sendall(encodeRequest(Command.BIND, 21, IPv4Address(peer), userid=b"ftp"))
    return sock, recvExactly(sock, 8)


def listenerOf(reply: bytes) -> tuple[str, int]:
    """The address and port a first reply announces."""
    assert reply[:2] == b"\x00\x5a", reply
    return str(IPv4Address(reply[4:8])), int.from_bytes(reply[2:4], "big")


def refuses(address: tuple[str, int]) -> bool:
    """
    Whether nothing listens there any more. Twisted closes a listening
    socket on the reactor's next turn after stopListening(), so a probe
    right after the reply may still find it (and be reset from its backlog
    when it closes): retry briefly until the kernel refuses.
    """
    deadline = time.monotonic() + 2
    while True:
        try:
            socket.create_connection(address, timeout=2).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_bindBothRepliesAndRelay(ports: list[IListeningPort]) -> None:
    """
    First reply: 90, 127.0.0.1 and a kernel-chosen port; the peer connects;
    second reply: 90 with the peer's address and port; data flows both ways
    and half-close passes; the listener refuses connections afterwards.
    """
    proxy, _ = startProxy(ports)

    def client() -> None:
        sock, first = bindRequest(proxy)
        with sock:
            address = listenerOf(first)
            assert address[0] == "127.0.0.1"
            with socket.create_connection(address, timeout=10) as peer:
                second = recvExactly(sock, 8)
                assert (
                    second
                    == b"\x00\x5a"
                    + peer.getsockname()[1].to_bytes(2, "big")
                    + IPv4Address("127.0.0.1").packed
                )
                assert refuses(address)
                peer.sendall(b"x" * 100_000)
                assert recvExactly(sock, 100_000) == b"x" * 100_000
                sock.sendall(b"from client")
                sock.shutdown(socket.SHUT_WR)
                assert recvAll(peer) == b"from client"
                peer.sendall(b"tail")
                peer.close()
                assert recvAll(sock) == b"tail"

    await inThread(client)


@pytest_twisted.ensureDeferred
async def test_bindWrongPeerGets91AndNothingPasses(
    ports: list[IListeningPort],
) -> None:
    """
    A BIND expecting 127.0.0.2: a peer from 127.0.0.1 is dropped without a
    byte, the client gets 91 and a close, and the listener is gone.
    """
    proxy, _ = startProxy(ports)

    def client() -> None:
        sock, first = bindRequest(proxy, peer="127.0.0.2")
        with sock:
            address = listenerOf(first)
            sock.sendall(b"secret for the right peer only")
            with socket.create_connection(address, timeout=10) as intruder:
                intruder.settimeout(5)
                try:
                    got = recvAll(intruder)
                except ConnectionResetError:
                    got = b""
                assert got == b""
            assert recvAll(sock) == REJECTED
            assert refuses(address)

    await inThread(client)


@pytest_twisted.ensureDeferred
async def test_bindTimeout(ports: list[IListeningPort]) -> None:
    """No peer within --bind-timeout: 91, a close, and the port refuses."""
    proxy, _ = startProxy(ports, limits=Limits(bindTimeout=0.5))

    def client() -> float:
        start = time.monotonic()
        sock, first = bindRequest(proxy)
        with sock:
            address = listenerOf(first)
            assert recvAll(sock) == REJECTED
            elapsed = time.monotonic() - start
            assert refuses(address)
            return elapsed

    elapsed = await inThread(client)
    assert 0.4 < elapsed < 3


@pytest_twisted.ensureDeferred
async def test_bindClientHangUpClosesListener(ports: list[IListeningPort]) -> None:
    """The client leaving before the peer arrives: the port refuses after."""
    proxy, factory = startProxy(ports)

    def client() -> tuple[str, int]:
        sock, first = bindRequest(proxy)
        sock.close()
        return listenerOf(first)

    address = await inThread(client)
    await eventually(lambda: not factory.bindsByClient)
    assert await inThread(refuses, address)


@pytest_twisted.ensureDeferred
async def test_bindCapPerClient(ports: list[IListeningPort]) -> None:
    """With --max-binds-per-client 2, a third concurrent BIND gets 91."""
    proxy, _ = startProxy(ports, limits=Limits(maxBindsPerClient=2))

    def client() -> bytes:
        held = [bindRequest(proxy)[0] for _ in range(2)]
        try:
            sock = socket.create_connection(("127.0.0.1", proxy), timeout=10)
            sock.sendall(encodeRequest(Command.BIND, 21, IPv4Address("127.0.0.1")))
            with sock:
                return recvAll(sock)
        finally:
            for sock in held:
                sock.close()

    assert await inThread(client) == REJECTED
