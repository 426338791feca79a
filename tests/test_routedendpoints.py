"""
How a server's L{Router} reaches its upstreams: an upstream written as an
IP literal through the server's lean connector (no name resolution, no
timer but the client handshake's), the endpoint to it made once per routes
load, and Twisted's endpoints kept for names and scoped IPv6 literals.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, fail
from twisted.internet.endpoints import HostnameEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError as TCPRefused
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from tests._support import eventually, listen
from twisted_socks.client._routes import parseRoutes
from twisted_socks.outbound._connect import ConnectorEndpoint
from twisted_socks.outbound._routed import ChainedAttempt, Router


def _router(text: str, clock: Any) -> Router:
    """A router of the server routes C{text}."""
    return Router(clock, parseRoutes(text, "routes", server=True), timeout=5.0)


def _proxyEndpointOf(router: Router, index: int = 0) -> Any:
    """The endpoint that reaches the first route's upstream C{index}."""
    route = router.table.routes[0]
    attempt = ChainedAttempt(route, "192.0.2.1", 80)
    return router.endpoint(route.servers[index], attempt)._proxyEndpoint


def test_literalUpstreamUsesTheConnector() -> None:
    """
    An upstream written as an IPv4 or IPv6 literal is reached through a
    L{ConnectorEndpoint} (the connector direct sessions use), for every
    version's line.
    """
    router = _router(
        "sockd @=socks5h://127.0.0.1:1080,socks4a://[::1]:1081 0/0\n", Clock()
    )
    first, second = _proxyEndpointOf(router, 0), _proxyEndpointOf(router, 1)
    assert isinstance(first, ConnectorEndpoint)
    assert isinstance(second, ConnectorEndpoint)
    assert repr(first) == "<ConnectorEndpoint to 127.0.0.1:1080>"


def test_namedOrScopedUpstreamUsesTwistedsEndpoint() -> None:
    """
    An upstream written as a name is resolved by Twisted's endpoint; an
    IPv6 literal with a scope keeps Twisted's TCP6 endpoint, which keeps the
    scope.
    """
    router = _router(
        "sockd @=socks5h://proxy.example:1080,socks5h://[fe80::1%lo]:1080 0/0\n",
        MemoryReactorClock(),
    )
    assert isinstance(_proxyEndpointOf(router, 0), HostnameEndpoint)
    assert isinstance(_proxyEndpointOf(router, 1), TCP6ClientEndpoint)


def test_upstreamEndpointsLastUntilTheRoutesChange() -> None:
    """
    Sessions through the same upstream share one endpoint to it; routes
    put in force (a reload) get fresh ones.
    """
    text = "sockd @=socks5h://127.0.0.1:1080 0/0\n"
    router = _router(text, Clock())
    first = _proxyEndpointOf(router)
    assert _proxyEndpointOf(router) is first
    router.table = parseRoutes(text, "routes", server=True)
    assert _proxyEndpointOf(router) is not first


class _Refusing:
    """A connector whose attempts fail with C{error}."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def connect(self, address: Any, port: int, factory: Any) -> Any:
        """Fail at once."""
        return fail(self.error)


def test_declinedFactoryFailsWithNoProtocol() -> None:
    """
    A factory that builds no protocol fails the attempt with
    L{NoProtocol}, as Twisted's endpoints say it; a refused connection
    stays Twisted's connect error.
    """
    failures: list[Failure] = []
    for error in (ConnectionRefusedError("the factory refused"), TCPRefused()):
        endpoint = ConnectorEndpoint(_Refusing(error), IPv4Address("127.0.0.1"), 1)
        endpoint.connect(Factory()).addErrback(failures.append)
    assert failures[0].check(NoProtocol)
    assert failures[1].check(TCPRefused)


class _Silent(Protocol):
    """An upstream that accepts and never answers; tells when it is closed."""

    closed = 0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Count the close."""
        _Silent.closed += 1


@pytest_twisted.ensureDeferred
async def test_chainedConnectSetsOneTimer(ports: list[IListeningPort]) -> None:
    """
    A chained connect to a literal upstream sets one timer (the client
    handshake's, which bounds the connection and the reply), not a
    connector's deadline and resolution step besides; cancelling it closes
    the connection to the upstream.
    """
    port = listen(ports, Factory.forProtocol(_Silent))
    router = _router(f"sockd @=socks5h://127.0.0.1:{port} 0/0\n", reactor)
    route = router.table.routes[0]
    _Silent.closed = 0
    before = len(reactor.getDelayedCalls())  # type: ignore[attr-defined]
    connecting = router.connect(
        ChainedAttempt(route, "192.0.2.1", 80), Factory.forProtocol(Protocol)
    )
    assert len(reactor.getDelayedCalls()) == before + 1  # type: ignore[attr-defined]
    failures: list[Failure] = []
    connecting.addErrback(failures.append)
    connecting.cancel()
    assert failures[0].check(CancelledError)
    await eventually(lambda: _Silent.closed == 1)
