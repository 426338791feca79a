"""
The request sequence of a session, in words no SOCKS version owns, top to
bottom in one coroutine: decide on the name, resolve it, decide on each
address, ask identd, connect (or listen, for BIND), hand over to the relay;
for UDP ASSOCIATE, judge the association and keep its UDP relay
(L{twisted_socks.server._udp}) until it ends.

The session admitted the client when it connected and writes the record
when it ends; everything between a complete L{SessionRequest} and the relay
is here.  How the coroutine is driven, and stopped when the session
closes, is L{twisted_socks.server._sequence}'s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    NoRouteError,
)
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._logfields import hostPort
from ..outbound._resolve import answeredFromMemory, resolveHostname
from ..outbound._selfaddress import ListeningAddresses
from ..policy._policy import (
    AccessRequest,
    Decision,
    IdentFailure,
    IdentMode,
    normalizeAddress,
)
from ..wire._outcome import Outcome, outcomeForErrno
from ..wire._request import Command, addressText
from ._bind import BindListener, bindInterface, stopListening
from ._identcheck import IdentCheck
from ._peer import OutboundFactory
from ._records import SessionState
from ._sequence import Sequence

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..client._routes import Route
    from ..wire._request import SessionRequest
    from ._session import ServerSession

__all__ = ["Pipeline", "servePipeline"]

_log = Logger(namespace="twisted_socks.server")

#: An approved address and the decision that approved it.
_Candidate = tuple[AccessRequest, Decision]


def servePipeline(session: ServerSession, request: SessionRequest) -> None:
    """Serve C{request} for C{session}, to a grant or a failure reply."""
    Pipeline(session, request).step(None)


class Pipeline(Sequence):
    """
    One request's way through the server; garbage once it is served (the
    tunnel keeps only the session).
    """

    __slots__ = ("_factory", "_ident", "_policy", "_request")

    def __init__(self, session: ServerSession, request: SessionRequest) -> None:
        super().__init__(session)
        self._request = request
        self._factory = factory = session.factory
        # One policy judges the whole request, even if a reload replaces the
        # factory's policy between the name check and the address checks.
        self._policy = factory.policy
        self._ident = IdentCheck(session)
        self.begin(self.run())

    async def run(self) -> None:
        """The sequence, from the request to the relay or a refusal."""
        session, request = self._session, self._request
        access = AccessRequest(
            client=session.clientAddress,
            clientPort=session.clientPort,
            command=request.command,
            user=request.user,
            port=request.port,
            hostname=request.hostname,
            address=request.address,
            userSource=request.userSource,
            version=request.version,
        )
        # A name is judged before it is looked up: a denied name never is.
        decision = await self._decide(access)
        if not decision.allowed:
            self._rejected(decision)
        route = self._route(access)
        candidates = [(access, decision)]
        # Through upstreams that all resolve, the name goes on as it was
        # judged; else only approved addresses leave (no rebinding window).
        if request.hostname is not None and not _namesGoUpstream(route):
            addresses = await self._lookUp(access)
            session.state = SessionState.CONNECTING
            candidates = await self._decideEach(access, addresses)
        # Each approved address is used only under the decision that
        # approved it: its own ident check, its own action, its own rule in
        # the record.  CONNECT connects to the first that passes (the next
        # if that fails); BIND accepts its peer from any that passes.  With
        # none left, the last refusal is the reply.
        bind = request.command is Command.BIND
        ident = self._ident
        peers: dict[Any, Decision] = {}
        refusal: tuple[Outcome, str] | None = None
        for candidate, decision in candidates:
            mode = decision.identMode or self._factory.identMode
            refusal = None if bind else self._selfRefusal(candidate)
            if refusal is None and mode is not IdentMode.OFF and not ident.known():
                # Asked when the first address needs it, not before: an
                # address whose rule asks nothing is not kept waiting.
                await self._identify(decision)
            session.rule = decision.rule
            if refusal is None:
                refusal = ident.refusal(mode, request.user)
            if refusal is not None:
                continue
            if bind and route is not None:
                await self._bindThrough(route, candidate, decision)
                return
            if bind:
                peers[candidate.address] = decision
                continue
            self._runHook(decision.action, session.identUser)
            refusal = await self._connect(candidate, route)
            if refusal is None:
                return
        if peers:
            await self._bind(peers)
            return
        self._end(*(refusal or (Outcome.FAILURE, "no address to connect to")))

    # -- the ways out ----------------------------------------------------------

    def _rejected(self, decision: Decision) -> NoReturn:
        """The policy denied the request."""
        self._session.rule = decision.rule
        self._runHook(decision.action, None)
        self._end(Outcome.DENIED, f"denied: {decision.reason}")

    def _runHook(self, hook: Callable[..., object] | None, *args: object) -> None:
        """Run a decision's hook; a failing hook is logged, never fatal."""
        if hook is not None:
            try:
                hook(*args)
            except Exception:
                _log.failure("rule hook failed")

    # -- the steps --------------------------------------------------------------

    async def _decide(self, access: AccessRequest) -> Decision:
        """What this request's policy says of C{access}."""
        try:
            result = self._policy.decide(access)
        except Exception:
            _log.failure("access policy raised")
            self._end(Outcome.FAILURE, "access policy error")
        if isinstance(result, Deferred):
            try:
                result = await self._settle(result)
            except Exception:
                _log.failure("access policy failed")
                self._end(Outcome.FAILURE, "access policy error")
        return result

    async def _lookUp(self, access: AccessRequest) -> list[Any]:
        """The addresses of the requested name, in the resolver's order."""
        factory = self._factory
        lookups = factory.admission.lookups
        name = access.hostname or ""
        key: str | None = None
        # The resolver runs getaddrinfo on a few threads; names that never
        # answer, from one client or a few, would stall every other
        # client's lookups, so the lookup budget says when this one may
        # start (a busy client behind one NAT address waits its turn rather
        # than get a refusal).  A name the cache knows is answered at once,
        # on no thread: it needs no turn, and never waits behind slow names.
        if not answeredFromMemory(factory.nameResolver, name):
            key = self._session.clientKey()
            turn: Deferred[None] = Deferred()
            lookups.request(key, self._session, lambda: turn.callback(None))
            if not turn.called:  # most turns come at once: no wait then
                await self._settle(turn)
        # The client's turn ends when the resolver is done, not when this
        # session gives up: an abandoned getaddrinfo still holds its thread.
        finished = None if key is None else (lambda: lookups.finished(key))
        resolving = resolveHostname(
            factory.nameResolver, name, access.port, finished=finished
        )
        try:
            addresses = await self._settle(resolving)
        except Exception as e:
            factory.metrics.dnsLookup(ok=False)
            self._end(Outcome.HOST_UNREACHABLE, f"name lookup failed: {e}")
        factory.metrics.dnsLookup(ok=True)
        return addresses

    async def _decideEach(
        self, access: AccessRequest, addresses: list[Any]
    ) -> list[_Candidate]:
        """
        The resolved addresses the policy approves, each with its decision.
        Every address is judged, and only approved ones are ever connected
        to; there is no second lookup, so no DNS-rebinding window.
        """
        # A name that resolves to 0.0.0.0 or :: ("0", "0.0.0.0") would reach
        # the proxy host itself on Linux: refused like a literal 0.0.0.0,
        # before any policy could approve it.
        usable = [a for a in addresses if not a.is_unspecified]
        if not usable:
            self._end(Outcome.DENIED, "name resolves to an unspecified address")
        approved: list[_Candidate] = []
        firstDenial: Decision | None = None
        for address in usable[: self._factory.maxCandidates]:
            candidate = replace(access, address=address)
            decision = await self._decide(candidate)
            if decision.allowed:
                approved.append((candidate, decision))
            elif firstDenial is None:
                firstDenial = decision
        if approved:
            return approved
        if firstDenial is not None:
            self._rejected(firstDenial)
        self._end(Outcome.FAILURE, "no address to connect to")  # defensive

    def _route(self, access: AccessRequest) -> Route | None:
        """
        How the request goes (C{--routes}): L{None} direct, else through
        the upstreams of a C{sockd} line; a C{deny} line ends it as a rule
        denial does.
        """
        router = self._factory.router
        if router is None:
            return None
        host = access.hostname or addressText(access.address or "")
        route = router.match(host, access.port, access.user, access.client)
        if route is None:
            return None
        self._session.route = route.location
        # Here only with --routes, whose modules are loaded by then: a
        # server without routes never imports the client's endpoints.
        from ..client._routes import RouteAction

        if route.action is RouteAction.DENY:
            self._end(Outcome.DENIED, f"denied by route {route.location}")
        return route

    async def _connect(
        self, access: AccessRequest, route: Route | None = None
    ) -> tuple[Outcome, str] | None:
        """
        Connect to an approved address (through C{route}'s upstreams, a
        name too) and start relaying; or why not (for the next address to
        try, or the reply).
        """
        session = self._session
        address = access.address
        router = self._factory.router
        if route is not None and router is not None:
            host = access.hostname if address is None else addressText(address)
            session.connectedTo = hostPort(host or "", access.port)
            from ..outbound._routed import ChainedAttempt

            attempt = ChainedAttempt(route, host or "", access.port)
            connecting = router.connect(
                attempt, OutboundFactory(session), session.tookUpstream
            )
        elif address is None:  # a policy cannot get here without an address
            self._end(Outcome.FAILURE, "no destination address")
        else:
            session.connectedTo = hostPort(addressText(address), access.port)
            connecting = self._factory.connector.connect(
                address, access.port, OutboundFactory(session)
            )
        try:
            outbound = await self._settle(connecting, _loseOutbound)
        except Exception:
            # The next address, if any (e.g. "localhost" gives ::1 first,
            # and the service is IPv4-only); else this is the reply.
            # (The Failure is not kept in this frame: its traceback holds
            # the frame, and the cycle would keep the session alive until
            # the garbage collector's next pass.)
            return _connectRefusal(Failure(), chained=route is not None)
        session.startRelay(outbound, session.connectReply(outbound))
        return None

    def _selfRefusal(self, access: AccessRequest) -> tuple[Outcome, str] | None:
        """
        The refusal of a destination that is this server itself: a tunnel
        to its own listener would make a request pipelined into it come
        from the server's own address (laundering the client's).
        """
        address, port = access.address, access.port
        if address is None:
            return None
        if not self._factory.listeningAddresses.includes(address, port):
            # Always a self address, whether or not the listeners were
            # registered: the one this client came in on.
            host: Any = self._session.transport.getHost()  # type: ignore[union-attr]
            own = normalizeAddress(getattr(host, "host", ""))
            if own is None or getattr(host, "port", None) != port:
                return None
            if ListeningAddresses.plain(address) != own:
                return None
        return (
            Outcome.DENIED,
            f"destination {hostPort(addressText(address), port)} is this server's own "
            "listening address",
        )

    # -- ident (RFC 1413) -------------------------------------------------------

    async def _identify(self, decision: Decision) -> None:
        """
        Ask the client's identd who it is; what it says (or its silence)
        runs the hook of C{decision}, the first address's that needed it.
        """
        try:
            user = await self._settle(self._ident.ask())
        except Exception:
            self._ident.failed(Failure())
            self._runHook(decision.identFailed, IdentFailure.NO_IDENTD, None)
            return
        if not self._ident.answered(user, self._request.user):
            self._runHook(decision.identFailed, IdentFailure.BAD_ID, user)

    # -- BIND -------------------------------------------------------------------

    async def _bind(self, peers: dict[Any, Decision]) -> None:
        """
        Listen for the one inbound peer, from an approved address only;
        say where (the first reply), then who came (the second).
        """
        session = self._session
        # Listen under the first address's decision; a peer from another
        # address brings its own (see BindListener.peerArrived).
        decision = next(iter(peers.values()))
        self._approve(decision)
        interface = bindInterface(session)
        if interface is None:
            self._end(
                Outcome.ADDRESS_TYPE_NOT_SUPPORTED,
                "BIND needs an IPv4 address to listen on",
            )
        listener = BindListener(session, peers, decision, self._approve)
        if not listener.take():
            self._end(Outcome.DENIED, "max-binds-per-client reached")
        try:
            try:
                port = await self._settle(listener.listen(interface), stopListening)
            except Exception:
                reason = f"cannot listen: {Failure().getErrorMessage()}"
                self._end(Outcome.FAILURE, reason)
            listener.listening(port)
            host: Any = port.getHost()
            session.write(session.frontEnd.reply(Outcome.GRANTED, host.host, host.port))
            session.state = SessionState.WAITING
            session.restartTimer(session.factory.limits.bindTimeout, "bind timeout")
            peer = await self._settle(listener.arrived)
        finally:
            listener.stop()
        address: Any = peer.transport.getPeer()  # type: ignore[union-attr]
        session.connectedTo = f"{address.host}:{address.port}"
        # The second reply names the peer that connected (as CSTC and Dante).
        reply = session.frontEnd.reply(Outcome.GRANTED, address.host, address.port)
        session.startRelay(peer, reply)

    async def _bindThrough(
        self, route: Route, access: AccessRequest, decision: Decision
    ) -> None:
        """
        BIND through C{route}'s upstreams: their two replies relayed one
        for one (where the upstream listens, then who came).
        """
        session, router = self._session, self._factory.router
        if router is None:  # _route found the route in this router
            self._end(Outcome.FAILURE, "no routes")
        self._approve(decision)
        host = access.hostname or addressText(access.address or "")
        peers = _PeerAddress(session)
        from ..outbound._routed import ChainedAttempt

        attempt = ChainedAttempt(route, host, access.port)
        try:
            port = await self._settle(
                router.listen(attempt, peers, session.tookUpstream), stopListening
            )
        except Exception:
            self._end(*_connectRefusal(Failure(), chained=True))
        try:
            bound: Any = port.getHost()
            session.write(
                session.frontEnd.reply(Outcome.GRANTED, bound.host, bound.port)
            )
            session.state = SessionState.WAITING
            session.restartTimer(session.factory.limits.bindTimeout, "bind timeout")
            try:
                peer = await self._settle(port.connected, _loseOutbound)
            except Exception:
                self._end(
                    Outcome.FAILURE, f"upstream BIND: {Failure().getErrorMessage()}"
                )
        finally:
            if peers.address is None:
                port.stopListening()
        address = peers.address
        session.connectedTo = f"{address.host}:{address.port}"
        reply = session.frontEnd.reply(Outcome.GRANTED, address.host, address.port)
        session.startRelay(peer, reply)

    def _approve(self, decision: Decision) -> None:
        """The BIND goes ahead under C{decision}: its rule, its action."""
        self._session.rule = decision.rule
        self._runHook(decision.action, self._session.identUser)


class _PeerAddress(OutboundFactory):
    """The session's factory, noting the peer's address (a BIND's second reply)."""

    def __init__(self, session: ServerSession) -> None:
        super().__init__(session)
        self.address: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        """The destination side of the tunnel, for the peer at C{addr}."""
        self.address = addr
        return super().buildProtocol(addr)


def _loseOutbound(outbound: Any) -> None:
    """A connection that came up after its session closed: close it."""
    outbound.transport.loseConnection()


def _namesGoUpstream(route: Route | None) -> bool:
    """Whether a name goes upstream unresolved (see L{Router.resolvesRemotely})."""
    if route is None:
        return False
    from ..outbound._routed import Router

    return Router.resolvesRemotely(route)


def _connectRefusal(failure: Failure, chained: bool) -> tuple[Outcome, str]:
    """The outcome and reason of a failed connect (C{chained}: by a route)."""
    if chained:
        from ..outbound._upstreams import UpstreamRefusal

        if isinstance(failure.value, UpstreamRefusal):
            return failure.value.outcome, str(failure.value)
    return _connectOutcome(failure), f"connect failed: {failure.getErrorMessage()}"


def _connectOutcome(failure: Failure) -> Outcome:
    """
    Why a connect failed, in the words SOCKS5 has for it (SOCKS4 says 91
    whatever it was): refused, unreachable, timed out, or a failure.
    """
    if failure.check(ConnectTimeout, ConnectingCancelledError):
        return Outcome.TIMED_OUT
    code = getattr(failure.value, "osError", None)
    if code is None and failure.check(ConnectionRefusedError):
        return Outcome.REFUSED
    if code is None and failure.check(NoRouteError):
        return Outcome.HOST_UNREACHABLE
    return outcomeForErrno(code)
