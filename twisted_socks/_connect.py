"""The default outbound connector: a direct TCP connection to one address."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._codec import addressText
from ._policy import IPAddress
from .interfaces import IOutboundConnector

__all__ = ["TCPConnector"]


@implementer(IOutboundConnector)
class TCPConnector:
    """
    Connect straight to the given address.

    @param reactor: the reactor to connect with.
    @param timeout: the TCP connect timeout in seconds; the server's own
        connect deadline normally fires first.
    @param bindAddress: the local C{(host, port)} outbound connections come
        from, for multi-homed gateways, or L{None} for the kernel's choice.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._bindAddress = bindAddress

    def connect(
        self, address: IPAddress, port: int, factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """Connect to C{address}:C{port}; the literal address, never a name."""
        # The source address applies to destinations of its own family; an
        # IPv4 source cannot reach an IPv6 destination (the kernel chooses).
        bindAddress = self._bindAddress
        if bindAddress is not None:
            if ip_address(bindAddress[0]).version != address.version:
                bindAddress = None
        # reactor.connectTCP rather than a client endpoint: an endpoint
        # wraps the protocol for the connection's whole life (an extra call
        # on every event, and three more objects per tunnel; see
        # _Connecting).  connectTCP takes IPv6 literals as well.
        attempt = _Connecting(factory)
        attempt.connector = self._reactor.connectTCP(
            addressText(address),
            port,
            attempt,
            timeout=self._timeout,
            bindAddress=bindAddress,
        )
        return attempt.deferred

    def listen(
        self, interface: str, factory: IProtocolFactory
    ) -> Deferred[IListeningPort]:
        """Listen on C{interface}, kernel-chosen port, backlog 1 (one peer)."""
        endpoint = TCP4ServerEndpoint(self._reactor, 0, backlog=1, interface=interface)
        return endpoint.listen(factory)  # type: ignore[no-any-return]


class _Connecting(ClientFactory):
    """
    One outbound connection attempt; C{deferred} fires with the protocol
    once it is connected.
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory: IProtocolFactory | None = factory
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)
        self.connector: IConnector | None = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """Build the real protocol, handed over once connected."""
        factory, self._factory = self._factory, None
        if factory is None:
            return None
        protocol = factory.buildProtocol(addr)  # type: ignore[arg-type]
        if protocol is None:
            self._failed(Failure(ConnectionRefusedError("the factory refused")))
            return None
        return _HandOver(self, protocol)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """The attempt failed (refused, unreachable, timed out)."""
        self._failed(reason)

    def _connected(self, protocol: IProtocol) -> None:
        self.connector = None
        deferred, self.deferred = self.deferred, None  # type: ignore[assignment]
        if deferred is not None:
            deferred.callback(protocol)

    def _failed(self, reason: Failure) -> None:
        self._factory = None
        self.connector = None
        deferred, self.deferred = self.deferred, None  # type: ignore[assignment]
        if deferred is not None:
            deferred.errback(reason)

    def _cancel(self, deferred: Deferred[IProtocol]) -> None:
        connector = self.connector
        self._factory = None
        self.connector = None
        self.deferred = None  # type: ignore[assignment]
        if connector is not None:
            deferred.errback(ConnectingCancelledError(connector.getDestination()))
            connector.stopConnecting()


class _HandOver(Protocol):
    """
    Stands in for the real protocol only until the connection is made, then
    puts the real one in its place on the transport, so that no wrapper sits
    between the socket and the relay for the rest of the connection.
    """

    def __init__(self, attempt: _Connecting, protocol: IProtocol) -> None:
        self._attempt = attempt
        self._protocol = protocol

    def makeConnection(self, transport: ITransport) -> None:
        """Connected: hand the transport to the real protocol."""
        # tcp.Client dispatches every later event to its .protocol.
        transport.protocol = self._protocol  # type: ignore[attr-defined]
        # Once connected, a tcp.Client uses its connector only to report the
        # end (connectionLost), which nobody here listens to: a shared
        # do-nothing stand-in lets the connector, its factory and this
        # attempt go, about 300 bytes per tunnel for as long as it lasts.
        if getattr(transport, "connector", None) is not None:
            transport.connector = _RELEASED  # type: ignore[attr-defined]
        self._protocol.makeConnection(transport)
        attempt: Any = self._attempt
        self._attempt = None  # type: ignore[assignment]
        attempt._connected(self._protocol)


class _Released:
    """The connector of every connection handed over (see L{_HandOver})."""

    def connectionLost(self, reason: Failure) -> None:
        """Nobody is told: the protocol hears of it from its transport."""


_RELEASED = _Released()
