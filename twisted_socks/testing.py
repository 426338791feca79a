"""
Test doubles for programs that embed twisted-socks, and for our own tests.

Everything here is deterministic and in memory: a name resolver and an
ident resolver whose answers the test controls, an outbound connector that
connects protocols to L{StringTransport}s when the test says so, and a
policy with a fixed answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address

from twisted.internet import address as taddress
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
)
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from .ident._ident import FakeIdentResolver
from .interfaces import IAccessPolicy, IOutboundConnector
from .policy._policy import AccessRequest, Decision, IPAddress

__all__ = [
    "FakeConnector",
    "FakeHostnameResolver",
    "FakeIdentResolver",
    "FakeListeningPort",
    "HalfCloseableStringTransport",
    "PendingConnection",
    "PendingResolution",
    "RecordingPolicy",
]


class HalfCloseableStringTransport(StringTransport):
    """
    A L{StringTransport} that also records half-close and abort.

    @ivar writeClosed: whether L{loseWriteConnection} was called.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("lenient", True)
        super().__init__(*args, **kwargs)
        self.writeClosed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        """Record a half-close (FIN after the buffered data)."""
        self.writeClosed = True

    def abortConnection(self) -> None:
        """Record an abort (RST, buffered data dropped)."""
        self.aborted = True
        super().abortConnection()


@implementer(IHostResolution)
@dataclass
class PendingResolution:
    """One lookup the fake resolver was asked for, not yet answered."""

    name: str
    port: int
    receiver: IResolutionReceiver
    cancelled: bool = False
    done: bool = False

    def cancel(self) -> None:
        """Mark the lookup abandoned (the receiver hears nothing more)."""
        self.cancelled = True

    def complete(self, addresses: Iterable[str]) -> None:
        """Deliver C{addresses} (IP literals, in order), then completion."""
        if self.done:
            raise RuntimeError(f"lookup of {self.name!r} answered twice")
        self.done = True
        for text in addresses:
            address = ip_address(text)
            kind = (
                taddress.IPv4Address if address.version == 4 else taddress.IPv6Address
            )
            self.receiver.addressResolved(kind("TCP", str(address), self.port))
        self.receiver.resolutionComplete()


@implementer(IHostnameResolver)
class FakeHostnameResolver:
    """
    An L{IHostnameResolver} answering from a table, or when the test says.

    @param answers: name to list of IP literals; a name with an entry is
        answered at once (an empty list means "no such name"). Names without
        an entry stay pending in L{lookups} until the test completes them.
    """

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = dict(answers or {})
        #: Every lookup made, in order.
        self.lookups: list[PendingResolution] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: object = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Record the lookup; answer it now if the table knows the name."""
        resolution = PendingResolution(hostName, portNumber, resolutionReceiver)
        self.lookups.append(resolution)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName in self.answers:
            resolution.complete(self.answers[hostName])
        return resolution


@dataclass
class PendingConnection:
    """One outbound connection the fake connector was asked for."""

    address: IPAddress
    port: int
    factory: IProtocolFactory
    deferred: Deferred[IProtocol]
    cancelled: bool = False
    protocol: IProtocol | None = None
    transport: HalfCloseableStringTransport = field(
        default_factory=HalfCloseableStringTransport
    )

    def succeed(self) -> IProtocol:
        """Connect a protocol from the factory to a string transport."""
        protocol = self.factory.buildProtocol(
            taddress.IPv4Address("TCP", str(self.address), self.port)
        )
        if protocol is None:
            raise RuntimeError("factory refused to build a protocol")
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        self.deferred.callback(protocol)
        return protocol

    def fail(self, reason: Exception) -> None:
        """Fail the connection attempt with C{reason}."""
        self.deferred.errback(reason)


@implementer(IListeningPort)
@dataclass
class FakeListeningPort:
    """
    A BIND listener the fake connector opened; the test brings peers in.

    @ivar listening: whether it still listens (L{stopListening} ends it).
    """

    interface: str
    factory: IProtocolFactory
    port: int = 40001
    listening: bool = True
    peers: list[HalfCloseableStringTransport] = field(default_factory=list)

    def getHost(self) -> taddress.IPv4Address:
        """The address the listener announces."""
        return taddress.IPv4Address("TCP", self.interface, self.port)

    def startListening(self) -> None:
        """Already listening."""

    def stopListening(self) -> Deferred[None]:
        """Stop accepting connections."""
        self.listening = False
        return succeed(None)

    def connectFrom(self, host: str, port: int) -> IProtocol | None:
        """
        An inbound connection from C{host}:C{port}, as the kernel would hand
        it over; L{None} if the factory refused it (the socket is closed).
        """
        if not self.listening:
            raise RuntimeError("connection to a port that no longer listens")
        peer = taddress.IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(peer)
        if protocol is None:
            return None
        transport = HalfCloseableStringTransport(
            hostAddress=self.getHost(), peerAddress=peer
        )
        self.peers.append(transport)
        protocol.makeConnection(transport)
        return protocol


@implementer(IOutboundConnector)
class FakeConnector:
    """
    An L{IOutboundConnector} that records requests and connects on demand.

    @ivar connections: every L{PendingConnection}, in order.
    """

    def __init__(self) -> None:
        self.connections: list[PendingConnection] = []
        #: Every BIND listener opened, in order.
        self.listeners: list[FakeListeningPort] = []

    def connect(
        self, address: IPAddress, port: int, factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """Record the request; the test decides its outcome."""

        def cancel(d: Deferred[IProtocol]) -> None:
            pending.cancelled = True
            d.errback(CancelledError())

        deferred: Deferred[IProtocol] = Deferred(cancel)
        pending = PendingConnection(address, port, factory, deferred)
        self.connections.append(pending)
        return deferred

    def listen(
        self, interface: str, factory: IProtocolFactory
    ) -> Deferred[IListeningPort]:
        """Open a L{FakeListeningPort} at once."""
        port = FakeListeningPort(interface, factory, 40001 + len(self.listeners))
        self.listeners.append(port)
        return succeed(port)


@implementer(IAccessPolicy)
class RecordingPolicy:
    """
    A policy with a fixed answer that records what it was asked.

    @param allowed: the answer to give (or a callable taking the
        L{AccessRequest} and returning a L{Decision}).
    """

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        #: Every request judged, in order.
        self.requests: list[AccessRequest] = []

    def decide(self, request: AccessRequest) -> Decision:
        """Record C{request}; answer with the fixed decision."""
        self.requests.append(request)
        if self.allowed:
            return Decision.allow("test policy allows", "test")
        return Decision.deny("test policy denies", "test")
