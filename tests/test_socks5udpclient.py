"""
L{SOCKS5UDPEndpoint} (UDP ASSOCIATE) on real loopback sockets: against a
scripted SOCKS5 server whose relay is a UDP socket the test drives (the
request's bytes, a wildcard relay address, what is dropped, the end of the
association with its TCP connection), against Dante's relay, and against
microsocks, which has no UDP.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from tests._support import eventually, listen
from tests.test_client import TIMEOUT, tcp, withTimeout
from tests.test_socks5interop import PASSWORD, USER, dante5, microsocks
from twisted_socks import CommandNotSupported
from twisted_socks.client._socks5udpclient import SOCKS5UDPEndpoint, SOCKS5UDPPort
from twisted_socks.wire._socks5 import ReplyCode5, encodeReply5
from twisted_socks.wire._socks5udp import encodeDatagram, parseDatagram

# The imported fixtures are used by name, which linters cannot see: listing
# them here marks them as used.
__all__ = ["dante5", "microsocks"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "alice"}, "both a username and a password"),
        ({"user": "a", "password": ""}, "password must be 1..255"),
        ({"timeout": 0}, "timeout must be positive"),
    ],
)
def test_misuseIsRefusedAtConstruction(kwargs: dict[str, Any], message: str) -> None:
    """Bad credentials or timeout raise L{ValueError} before anything is sent."""
    with pytest.raises(ValueError, match=message):
        SOCKS5UDPEndpoint(reactor, tcp(1080), **kwargs)


class Inbox(DatagramProtocol):
    """Keeps what it receives; notes when it is started and stopped."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []
        self.started = False
        self.stopped = False

    def startProtocol(self) -> None:
        self.started = True

    def stopProtocol(self) -> None:
        self.stopped = True

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


class UDPEcho(DatagramProtocol):
    """Sends every datagram back to where it came from."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)  # type: ignore[union-attr]


class ScriptedAssociate(Protocol):
    """
    A SOCKS5 server that grants one UDP ASSOCIATE, naming C{relayPort} on
    the wildcard address, and keeps the request it got.
    """

    def __init__(self, relayPort: int, requests: list[bytes]) -> None:
        self.relayPort = relayPort
        self.requests = requests
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer == b"\x05\x01\x00":
            self.buffer = b""
            self.transport.write(b"\x05\x00")  # type: ignore[union-attr]
        elif len(self.buffer) == 10:
            self.requests.append(self.buffer)
            self.transport.write(  # type: ignore[union-attr]
                encodeReply5(ReplyCode5.SUCCEEDED, self.relayPort)
            )


@pytest_twisted.ensureDeferred
async def test_associationThroughAScriptedRelay(ports: list[IListeningPort]) -> None:
    """
    The request is UDP ASSOCIATE from 0.0.0.0:0; a wildcard relay address
    means the proxy's host; a write goes to the relay with its header (a
    name as ATYP 3); from what comes back, datagrams from another source,
    with a bad header or fragmented are dropped and counted, and the rest
    reach the protocol with the remote sender's address; when the TCP
    connection ends, the port stops and so does the protocol.
    """
    relay = Inbox()
    relayPort = reactor.listenUDP(0, relay, interface="127.0.0.1")  # type: ignore[attr-defined]
    ports.append(relayPort)
    requests: list[bytes] = []
    servers: list[ScriptedAssociate] = []

    def build() -> ScriptedAssociate:
        server = ScriptedAssociate(relayPort.getHost().port, requests)
        servers.append(server)
        return server

    proxy = listen(ports, Factory.forProtocol(build))
    inbox = Inbox()
    port = await withTimeout(SOCKS5UDPEndpoint(reactor, tcp(proxy)).listen(inbox))
    assert isinstance(port, SOCKS5UDPPort)
    assert requests == [b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"]
    assert port.relay == ("127.0.0.1", relayPort.getHost().port)
    assert inbox.started

    port.write(b"query", ("example.com", 53))
    await eventually(lambda: bool(relay.received), TIMEOUT)
    [(datagram, source)] = relay.received
    parsed = parseDatagram(datagram)
    assert (parsed.name, parsed.port, parsed.data) == ("example.com", 53, b"query")
    assert source[1] == port.getHost().port

    local = ("127.0.0.1", port.getHost().port)
    stranger = Inbox()
    strangerPort = reactor.listenUDP(0, stranger, interface="127.0.0.1")  # type: ignore[attr-defined]
    ports.append(strangerPort)
    answer = encodeDatagram(b"answer", 53, IPv4Address("192.0.2.1"))
    strangerPort.write(answer, local)
    relayPort.write(b"\x00\x00", local)
    relayPort.write(
        encodeDatagram(b"piece", 53, IPv4Address("192.0.2.1"), fragment=1), local
    )
    relayPort.write(answer, local)
    await eventually(lambda: bool(inbox.received), TIMEOUT)
    assert inbox.received == [(b"answer", ("192.0.2.1", 53))]
    assert port.dropped == 3

    servers[0].transport.loseConnection()  # type: ignore[union-attr]
    await eventually(lambda: inbox.stopped, TIMEOUT)
    await withTimeout(port.stopListening())


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteRelaysDatagramsBothWays(
    dante5: int, ports: list[IListeningPort]
) -> None:
    """
    Through Dante's relay, datagrams to an IP literal and to a name reach a
    UDP echo server, and the echoes come back with the echo server's own
    address; stopping the port ends the association and the protocol.
    """
    echo = reactor.listenUDP(0, UDPEcho(), interface="127.0.0.1")  # type: ignore[attr-defined]
    ports.append(echo)
    echoPort = echo.getHost().port
    inbox = Inbox()
    port = await withTimeout(SOCKS5UDPEndpoint(reactor, tcp(dante5)).listen(inbox))
    port.write(b"to an address", ("127.0.0.1", echoPort))
    await eventually(lambda: len(inbox.received) == 1, TIMEOUT)
    port.write(b"to a name", ("localhost", echoPort))
    await eventually(lambda: len(inbox.received) == 2, TIMEOUT)
    assert inbox.received == [
        (b"to an address", ("127.0.0.1", echoPort)),
        (b"to a name", ("127.0.0.1", echoPort)),
    ]
    stopped: Deferred[None] = port.stopListening()
    await withTimeout(stopped)
    assert inbox.stopped


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_microsocksHasNoUDP(microsocks: int) -> None:
    """microsocks answers UDP ASSOCIATE with REP 07: L{CommandNotSupported}."""
    endpoint = SOCKS5UDPEndpoint(reactor, tcp(microsocks), user=USER, password=PASSWORD)
    with pytest.raises(CommandNotSupported):
        await withTimeout(endpoint.listen(Inbox()))
    assert PASSWORD not in repr(endpoint)
