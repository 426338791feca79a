"""
The UDP ASSOCIATE sequence of a session: judge the association on the
client (no destination yet), ask the routes whether any datagram of it
could go direct (L{twisted_socks.outbound._udproute}), open its relay
socket, say where it is, and keep it until its TCP connection or its idle
timer ends it.

The datagrams themselves are L{twisted_socks.server._udp}'s; the steps it
shares with CONNECT and BIND (deciding, ident, refusals, hooks) are the
pipeline's.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorUDP
from twisted.python.failure import Failure

from .._logfields import hostPort
from ..outbound._udproute import associationRefusal
from ..policy._policy import AccessRequest, IdentMode, normalizeAddress
from ..wire._outcome import Outcome
from ..wire._request import Command
from ._pipeline import Pipeline
from ._udp import WILDCARD, UDPAssociation

if TYPE_CHECKING:
    from ..wire._request import SessionRequest
    from ._session import ServerSession

__all__ = ["serveAssociation", "udpInterface"]


def serveAssociation(session: ServerSession, request: SessionRequest) -> None:
    """Serve the UDP ASSOCIATE C{request} for C{session}."""
    _Association(session, request).step(None)


class _Association(Pipeline):
    """One UDP ASSOCIATE request's way through the server."""

    __slots__ = ()

    async def run(self) -> None:
        """
        Judge the association (client, user, auth; no destination yet),
        open its relay socket, say where it is, and keep it until the TCP
        connection or the idle timer ends it.
        """
        session, request = self._session, self._request
        if not IReactorUDP.providedBy(self._factory.reactor):
            # An embedder's reactor without UDP (a memory reactor): the
            # command cannot be served at all.
            self._end(Outcome.COMMAND_NOT_SUPPORTED, "the reactor has no UDP")
        access = AccessRequest(
            client=session.clientAddress,
            clientPort=session.clientPort,
            command=Command.UDP_ASSOCIATE,
            user=request.user,
            port=0,
            hostname=None,
            address=None,
            userSource=request.userSource,
            version=request.version,
        )
        decision = await self._decide(access)
        if not decision.allowed:
            self._rejected(decision)
        router = self._factory.router
        if router is not None:
            # Rules first, then routes, as for CONNECT: an association none
            # of whose datagrams could go direct is refused (no UDP through
            # upstreams).
            routed = associationRefusal(router.table, request.user, access.client)
            if routed is not None:
                outcome, reason, route = routed
                session.rule, session.route = decision.rule, route.location
                self._end(outcome, reason)
        mode = decision.identMode or self._factory.identMode
        if mode is not IdentMode.OFF and not self._ident.known():
            await self._identify(decision)
        session.rule = decision.rule
        refusal = self._ident.refusal(mode, request.user)
        if refusal is not None:
            self._end(*refusal)
        interfaces = udpInterface(session)
        if interfaces is None:
            self._end(
                Outcome.COMMAND_NOT_SUPPORTED, "UDP ASSOCIATE needs a client on IP"
            )
        # The port the client said it will send from, if it said: only
        # with an address (the zeros, or its own), not a name such as the
        # "0" PySocks sends.
        named = request.port if request.hostname is None and request.port else None
        association = UDPAssociation(session, self._policy, access, named)
        if not association.take():
            self._end(Outcome.DENIED, "max-udp-per-client reached")
        try:
            bindOn, announce = interfaces
            try:
                host, port = association.open(bindOn)
            except Exception:
                reason = f"cannot open the UDP relay: {Failure().getErrorMessage()}"
                self._end(Outcome.FAILURE, reason)
            self._runHook(decision.action, session.identUser)
            session.connectedTo = hostPort(announce or host, port)
            session.associated(
                session.frontEnd.reply(Outcome.GRANTED, announce or host, port),
                association.counters,
            )
            why = await self._settle(association.ended)
        finally:
            association.close()
        session.fail(None, why)


def udpInterface(session: ServerSession) -> tuple[str, str | None] | None:
    """
    Where C{session}'s relay socket listens, and the address its grant
    names instead, if configured (C{--udp-address}, for a server behind
    NAT); L{None} for a client that is not on IP (a UNIX socket), or when
    neither address is known.

    The socket listens on the address the client reached over TCP: the
    client can reach that one, and it is of the client's family.
    """
    if session.clientAddress is None:
        # A client on a UNIX socket: no address its datagrams could be
        # recognised by.
        return None
    announce = session.factory.udpAddress
    host: Any = session.transport.getHost()  # type: ignore[union-attr]
    local = normalizeAddress(getattr(host, "host", "") or "")
    if local is not None:
        return str(local), announce
    if announce is None:
        return None
    return WILDCARD[ip_address(announce).version], announce
