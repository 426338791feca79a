"""The default outbound connector: a direct TCP connection to one address."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
)
from zope.interface import implementer

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
        endpointClass = (
            TCP4ClientEndpoint
            if isinstance(address, IPv4Address)
            else TCP6ClientEndpoint
        )
        # The source address applies to destinations of its own family; an
        # IPv4 source cannot reach an IPv6 destination (the kernel chooses).
        bindAddress = self._bindAddress
        if bindAddress is not None:
            if ip_address(bindAddress[0]).version != address.version:
                bindAddress = None
        endpoint = endpointClass(
            self._reactor,
            str(address),
            port,
            timeout=self._timeout,
            bindAddress=bindAddress,
        )
        return endpoint.connect(factory)

    def listen(
        self, interface: str, factory: IProtocolFactory
    ) -> Deferred[IListeningPort]:
        """Listen on C{interface}, kernel-chosen port, backlog 1 (one peer)."""
        endpoint = TCP4ServerEndpoint(self._reactor, 0, backlog=1, interface=interface)
        return endpoint.listen(factory)  # type: ignore[no-any-return]
