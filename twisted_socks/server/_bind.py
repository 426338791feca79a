"""
BIND's one-shot listener: which peers may connect to it (each approved
address, under the decision that approved it), the client's BIND slot, and
the peer's protocol, which says when it is connected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory

from .._logfields import escapeField
from ..policy._policy import Decision, normalizeAddress
from ..wire._outcome import Outcome
from ._peer import BindPeerProtocol
from ._records import SessionState

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IAddress

    from ._session import ServerSession

__all__ = ["BindListener"]


class BindListener:
    """
    The listener of one BIND request, from its first reply to its peer.

    @param approve: called with a peer's decision when it is not the one
        the session listens under (its rule is then the session's).
    """

    __slots__ = (
        "_approval",
        "_approve",
        "_counted",
        "_port",
        "_session",
        "arrived",
        "peers",
    )

    def __init__(
        self,
        session: ServerSession,
        peers: dict[Any, Decision],
        approval: Decision,
        approve: Callable[[Decision], object],
    ) -> None:
        self._session = session
        #: The addresses the peer may come from, each with its decision.
        self.peers = peers
        self._approval = approval
        self._approve = approve
        self._port: Any = None
        self._counted = False
        #: Fires with the peer's protocol once the peer is connected.
        self.arrived: Deferred[BindPeerProtocol] = Deferred()

    def take(self) -> bool:
        """Take one of the client's BIND slots; C{False} at the cap."""
        session = self._session
        self._counted = session.factory.admission.bindStarted(session.clientKey())
        return self._counted

    def listen(self, interface: str) -> Deferred[Any]:
        """Open the listener on C{interface}."""
        return self._session.factory.connector.listen(interface, _BindFactory(self))

    def listening(self, port: Any) -> None:
        """The listener is open (and stopped by L{stop})."""
        self._port = port

    def peerArrived(self, addr: Any) -> BindPeerProtocol | None:
        """An inbound connection from C{addr}: the one we wait for, or not."""
        session = self._session
        if session.state is not SessionState.WAITING:
            return None
        self.stop()
        host = getattr(addr, "host", "")
        decision = self.peers.get(normalizeAddress(host))
        if decision is None:
            expected = ", ".join(sorted(str(a) for a in self.peers))
            session.fail(
                Outcome.DENIED,
                f"BIND peer {escapeField(host)} is not the requested {expected}",
            )
            return None
        if decision != self._approval:
            # The peer came from an address another rule approved: that
            # rule is the one the session ends up under.
            self._approval = decision
            self._approve(decision)
        return BindPeerProtocol(session, self.arrived)

    def stop(self) -> None:
        """Stop listening, and give the client's BIND slot back (once)."""
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()
        if self._counted:
            self._counted = False
            session = self._session
            session.factory.admission.bindEnded(session.clientKey())


def bindInterface(session: ServerSession) -> str | None:
    """
    The address to listen on and to tell the client: the configured one,
    else the address the client reached us on if the front end's replies
    can name it (never 0.0.0.0 unless configured: the client must be able
    to pass it on).
    """
    if session.factory.bindAddress is not None:
        return session.factory.bindAddress
    host: Any = session.transport.getHost()  # type: ignore[union-attr]
    local = normalizeAddress(getattr(host, "host", ""))
    if local is None or not session.frontEnd.canAnnounce(local):
        return None
    return str(local)


def stopListening(port: Any) -> None:
    """A listener that came up after its session closed: stop it."""
    port.stopListening()


class _BindFactory(Factory):
    """The one-shot listener's factory: the listener decides on each peer."""

    noisy = False

    def __init__(self, listener: BindListener) -> None:
        self._listener = listener

    def buildProtocol(self, addr: IAddress | None) -> BindPeerProtocol | None:  # type: ignore[override]
        """The peer's protocol; L{None} (a close) for a wrong or second peer."""
        return self._listener.peerArrived(addr)
