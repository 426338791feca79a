"""
The UDP ASSOCIATE sequence of a session: judge the association on the
client (no destination yet), open its relay socket, say where it is, and
keep it until its TCP connection or its idle timer ends it.

The datagrams themselves are L{twisted_socks.server._udp}'s; the steps it
shares with CONNECT and BIND (deciding, ident, refusals, hooks) are the
pipeline's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorUDP
from twisted.python.failure import Failure

from .._logfields import hostPort
from ..policy._policy import AccessRequest, IdentMode
from ..wire._outcome import Outcome
from ..wire._request import Command
from ._pipeline import Pipeline
from ._udp import UDPAssociation, udpInterface

if TYPE_CHECKING:
    from ..wire._request import SessionRequest
    from ._session import ServerSession

__all__ = ["serveAssociation"]


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
