"""
Our own SOCKS5 client endpoints against our own server, in-process on real
loopback sockets: CONNECT with and without a login, a refused login, BIND
on IPv4 and (for a client that reached the server over IPv6) on IPv6.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.endpoints import (
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from tests._support import Echo, listen
from tests.test_client import (
    TIMEOUT,
    Collector,
    bindAndPeer,
    roundTrip,
    tcp,
    withTimeout,
)
from twisted_socks import SOCKS5BindEndpoint, SOCKS5ClientEndpoint, SOCKSv4ServerFactory
from twisted_socks.wire._socks5client import SOCKS5AuthenticationFailed


def startServer(ports: list[IListeningPort], **kwargs: object) -> int:
    """Our server on 127.0.0.1, with C{kwargs}; its port."""
    return listen(ports, SOCKSv4ServerFactory(reactor, **kwargs))  # type: ignore[arg-type]


def users() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A checker that knows ann."""
    return InMemoryUsernamePasswordDatabaseDontUse(ann=b"s3cret:@%")


@pytest_twisted.ensureDeferred
async def test_connectWithoutLogin(ports: list[IListeningPort]) -> None:
    """SOCKS5 CONNECT, no authentication: 200 kB come back intact."""
    proxy = startServer(ports)
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(200_000)
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", echo, tcp(proxy))
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_connectWithLogin(ports: list[IListeningPort]) -> None:
    """With a checker, our client logs in and the tunnel carries data."""
    proxy = startServer(ports, credentialsChecker=users())
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(50_000)
    endpoint = SOCKS5ClientEndpoint(
        reactor, "localhost", echo, tcp(proxy), user="ann", password=b"s3cret:@%"
    )
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_wrongPasswordFailsTheConnect(ports: list[IListeningPort]) -> None:
    """A wrong password fails the client's connect as an authentication failure."""
    proxy = startServer(ports, credentialsChecker=users())
    endpoint = SOCKS5ClientEndpoint(
        reactor, "127.0.0.1", 80, tcp(proxy), user="ann", password=b"nope"
    )
    with pytest.raises(SOCKS5AuthenticationFailed):
        await withTimeout(connectProtocol(endpoint, Collector()))


@pytest_twisted.ensureDeferred
async def test_bindThroughOurServer(ports: list[IListeningPort]) -> None:
    """
    BIND: C{listen()} fires with where our server listens, a peer connects
    there, the second reply connects the application, and data and
    half-close cross both ways.
    """
    proxy = startServer(ports)
    endpoint = SOCKS5BindEndpoint(reactor, "127.0.0.1", 21, tcp(proxy))
    await bindAndPeer(endpoint)


@pytest_twisted.ensureDeferred
async def test_bindListensOnIPv6ForAnIPv6Client(ports: list[IListeningPort]) -> None:
    """
    A client that reached the server on C{::1} gets its BIND listener on
    C{::1}, announced with ATYP 4, and its peer's data through it.
    """
    try:
        server = reactor.listenTCP(  # type: ignore[attr-defined]
            0, SOCKSv4ServerFactory(reactor), interface="::1"
        )
    except Exception:
        pytest.skip("no IPv6 loopback on this host")
    ports.append(server)
    proxy = TCP6ClientEndpoint(reactor, "::1", server.getHost().port, timeout=TIMEOUT)
    client = Collector()
    endpoint = SOCKS5BindEndpoint(reactor, "::1", 21, proxy)
    port = await withTimeout(endpoint.listen(Factory.forProtocol(lambda: client)))
    host = port.getHost()
    assert isinstance(host, IPv6Address) and host.host == "::1"
    peer = Collector(b"over IPv6", closeWrite=True)
    await withTimeout(
        connectProtocol(TCP6ClientEndpoint(reactor, "::1", host.port), peer)
    )
    await withTimeout(port.connected)
    assert await withTimeout(client.eof) == b"over IPv6"
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)
