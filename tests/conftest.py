"""Fixtures shared by the test modules."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from twisted.internet.interfaces import IListeningPort

from tests._support import EchoDestination

if TYPE_CHECKING:
    from tests._socks5peers import CountingHTTPServer


@pytest.fixture
def ports() -> Iterator[list[IListeningPort]]:
    """Listening ports to close after the test."""
    opened: list[IListeningPort] = []
    yield opened
    for port in opened:
        port.stopListening()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """
    A loopback port whose SYNs go unanswered: a listener with a full accept
    queue that never accepts (Linux then drops further SYNs).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


@pytest.fixture
def echo() -> Iterator[EchoDestination]:
    """An echoing destination on loopback (a thread per connection)."""
    destination = EchoDestination()
    destination.start()
    yield destination
    destination.close()


@pytest.fixture
def web() -> Iterator[CountingHTTPServer]:
    """
    A loopback HTTP server serving L{tests._socks5peers.BODY} and counting
    what it sent, for this test only (the real SOCKS5 clients' page).
    """
    # Imported here: the real-client helpers load bcrypt and the interop
    # tools, which most test modules never need.
    from tests._socks5peers import CountingHTTPServer

    server = CountingHTTPServer()
    yield server
    server.close()
