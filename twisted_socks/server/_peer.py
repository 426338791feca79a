"""
The destination side of a tunnel: the protocol of the outbound connection
(or of BIND's inbound peer), which hands its events to the session and,
once the session relays, its bytes straight to the relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

    from ..relay._relay import Relay
    from ._session import ServerSession

__all__ = ["BindPeerProtocol", "OutboundFactory", "OutboundProtocol", "SlottedProtocol"]


@implementer(IProtocol, ILoggingContext)
class SlottedProtocol:
    """
    What L{twisted.internet.protocol.Protocol} gives a protocol, for classes
    with C{__slots__} only.

    A subclass of C{Protocol}, which has no slots, still gets a per-instance
    attribute dictionary (Python 3.11 allocates its values array with the
    object): about 40 bytes per object, two objects per tunnel, for as long
    as the tunnel lasts.
    """

    __slots__ = ("connected", "transport")

    def __init__(self) -> None:
        self.connected = 0
        self.transport: ITransport | None = None

    def makeConnection(self, transport: ITransport) -> None:
        """Connected: remember the transport, then C{connectionMade}."""
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        """The connection is up."""

    def dataReceived(self, data: bytes) -> None:
        """Bytes arrived."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """The connection is gone."""

    def logPrefix(self) -> str:
        """How the reactor labels this connection's log events."""
        return self.__class__.__name__


@implementer(IHalfCloseableProtocol)
class OutboundProtocol(SlottedProtocol):
    """
    The destination side of a tunnel: its events go to the session, and
    while the session relays, its bytes go straight to the relay.
    """

    __slots__ = ("_relay", "_session")

    def __init__(self, session: ServerSession) -> None:
        super().__init__()
        self._session = session
        # Installed by the session while it relays: the destination's bytes
        # then go straight to the relay (see ServerSession._close).
        self._relay: Relay | None = None

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the destination: to the relay, or kept until it runs."""
        relay = self._relay
        if relay is not None:
            relay.serverDataReceived(data)
        else:
            self._session._outboundDataReceived(data)

    def readConnectionLost(self) -> None:
        """The destination sent FIN."""
        self._session._outboundReadLost()

    def writeConnectionLost(self) -> None:
        """Our own half-close (loseWriteConnection) completed; nothing to do."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """The destination connection is gone."""
        self._session._outboundLost()


class BindPeerProtocol(OutboundProtocol):
    """
    BIND's inbound peer: like an outbound connection, except that it has
    no connect Deferred to say it is up, so it fires one of its own.
    """

    __slots__ = ("_arrived",)

    def __init__(self, session: ServerSession, arrived: Deferred[Any]) -> None:
        super().__init__(session)
        self._arrived: Deferred[Any] | None = arrived

    def connectionMade(self) -> None:
        """The peer's connection is up: the session's BIND goes on."""
        arrived, self._arrived = self._arrived, None
        if arrived is not None:
            arrived.callback(self)


class OutboundFactory(Factory):
    """Builds the one outbound protocol of a session's connect attempt."""

    noisy = False

    def __init__(self, session: ServerSession) -> None:
        self._session = session

    def buildProtocol(self, addr: IAddress | None) -> OutboundProtocol:  # type: ignore[override]
        """The destination side of C{session}'s tunnel."""
        return OutboundProtocol(self._session)
