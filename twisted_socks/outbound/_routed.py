"""
A server's routes (C{--routes}): reaching a destination through upstream
SOCKS servers, with failover, and the upstreams' state.

The routes file is the client's routing file, read by the same parser
(L{twisted_socks.client._routes}, with C{from=} and the C{route.maxfail} and
C{route.badexpire} lines a server's file may hold).  The rules say whether
a request I{may} go ahead; a route says I{how}: C{direct} (as without
routes, and the answer when no route matches), C{deny} (answered as a rule
denial) or C{sockd}, through the line's upstreams, one at a time, with the
client endpoints (L{twisted_socks.client._socks4endpoints},
L{twisted_socks.client._socks5endpoints}).

An upstream is given up on for the next one only while nothing has been
said to the client: its TCP connection failed or timed out, its greeting
or login failed, or it answered SOCKS5 01 (general failure).  Its verdict
on the destination (SOCKS5 02-08, SOCKS4 91-93) is the answer, in the
client's version.  A SOCKS5 upstream that closes after the request
without a reply (C{ssh -D}'s refusal, or a crash) is failed over but not
counted toward its bad mark.  An upstream that failed C{route.maxfail}
times in a row is skipped for C{route.badexpire} seconds, by the injected
clock; when every upstream of a line is marked bad, they are all tried
anyway.

Credentials for an upstream come from the route line only: the client's
own user and password are never sent on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from random import Random
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectError, NoProtocol
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..client._failover import Failover, serverEndpoint
from ..client._routes import ProxyServer, Route, RouteAction, RouteTable
from ..client._socks4endpoints import SOCKS4BindEndpoint, SOCKS4ClientEndpoint
from ..client._socks5endpoints import SOCKS5BindEndpoint, SOCKS5ClientEndpoint
from ..wire._clienterrors import HandshakeTimeout, MalformedReply
from ..wire._outcome import Outcome
from ..wire._proxyurl import SCHEMES
from ..wire._socks5client import (
    ClosedBeforeReply5,
    NoAcceptableMethod,
    SOCKS5AuthenticationFailed,
)
from ._connect import ConnectorEndpoint, TCPConnector
from ._upstreams import (
    UpstreamRefusal,
    UpstreamState,
    isGeneralFailure5,
    outcomeOfVerdict,
)

__all__ = ["ChainedAttempt", "Router"]

_log = Logger(namespace="twisted_socks.routes")

#: The errors after which the next upstream is tried: the upstream, not
#: the destination, failed (SOCKS5 01 is checked apart: see L{_failsOver}).
_FAILOVER_ERRORS = (
    ConnectError,
    HandshakeTimeout,
    MalformedReply,
    NoAcceptableMethod,
    SOCKS5AuthenticationFailed,
)


@dataclass(frozen=True, slots=True)
class ChainedAttempt:
    """
    Where a chained connect is going: the line and the destination.

    @ivar route: the C{sockd} route.
    @ivar host: the destination sent upstream: an approved IP literal, or a
        name when every upstream of the line resolves remotely.
    @ivar port: the destination port.
    """

    route: Route
    host: str
    port: int


class Router:
    """
    A server's routes and its upstreams' state; the routes are replaced
    on a reload, the state of an upstream that stays is kept.

    @ivar table: the routes in force.
    """

    def __init__(
        self,
        reactor: Any,
        table: RouteTable,
        timeout: float = 30.0,
        random: Random | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTime} and C{IReactorTCP};
            C{IReactorPluggableNameResolver} for upstreams written as names.
        @param timeout: seconds for each upstream: connection and handshake.
        @param random: shuffles C{balance} lines (inject a seeded one).
        @param clock: the clock of C{badexpire}; C{reactor} by default.
        """
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        # Upstreams are reached as direct sessions reach destinations: by
        # the lean connector, with no deadline of its own (the client
        # handshake's timer bounds the connection and the reply) and no
        # source address (the outbound address is for destinations).
        self._connector = TCPConnector(reactor, timeout=None)
        self._proxies: dict[ProxyServer, IStreamClientEndpoint] = {}
        self.table = table
        self._timeout = timeout
        self._random = random if random is not None else Random()
        self._states: dict[ProxyServer, UpstreamState] = {}

    @property
    def table(self) -> RouteTable:
        """The routes in force."""
        return self._table

    @table.setter
    def table(self, table: RouteTable) -> None:
        # A reload starts the endpoints to the upstreams afresh.
        self._table = table
        self._proxies = {}

    def match(self, host: str, port: int, user: str, client: Any) -> Route | None:
        """
        The route of a request; L{None} (no match, or a C{direct} line)
        goes direct.
        """
        route = self.table.match(host, port, user, client)
        if route is None or route.action is RouteAction.DIRECT:
            return None
        return route

    @staticmethod
    def resolvesRemotely(route: Route) -> bool:
        """
        Whether a name goes upstream unresolved: every upstream of the
        line resolves (C{socks4a}, C{socks5h}, or C{host[:port]}).  A line
        that mixes in a local-resolving one gets approved literals only.
        """
        return route.resolvesRemotely

    def state(self, server: ProxyServer) -> UpstreamState:
        """The state of C{server}, made on first use."""
        state = self._states.get(server)
        if state is None:
            state = self._states[server] = UpstreamState(str(server))
        return state

    def upstreams(self) -> list[UpstreamState]:
        """Every upstream of the routes in force, in file order, once each."""
        seen: dict[ProxyServer, None] = {}
        for route in self.table.routes:
            seen.update(dict.fromkeys(route.servers))
        return [self.state(server) for server in seen]

    def order(self, route: Route) -> list[ProxyServer]:
        """
        The upstreams of C{route} in the order to try them: shuffled for
        C{balance}; those marked bad left out, unless all are.
        """
        servers = list(route.servers)
        if route.balance:
            self._random.shuffle(servers)
        now = self._clock.seconds()
        good = [s for s in servers if not self.state(s).isBad(now)]
        return good or servers

    def connect(
        self,
        attempt: ChainedAttempt,
        factory: IProtocolFactory,
        onUpstream: Any = None,
    ) -> Deferred[IProtocol]:
        """
        Connect to the destination through the route's upstreams.

        @param onUpstream: called with each upstream's name as it is tried
            (the session records the one it took).
        @return: fires with the connected protocol; or fails with
            L{UpstreamRefusal} (a verdict, or the last upstream's handshake
            failure), or the last upstream's connect error.  Cancelling it
            stops the attempt; no other upstream is tried.
        """
        steps = _UpstreamSteps(self, attempt, factory, onUpstream, bind=False)
        return Failover(self.order(attempt.route), steps).start()

    def listen(
        self,
        attempt: ChainedAttempt,
        factory: IProtocolFactory,
        onUpstream: Any = None,
    ) -> Deferred[Any]:
        """
        BIND through the route's upstreams, failing over as L{connect} does
        until one grants the first reply.

        @return: fires with the upstream's bound port: its C{getHost()} is
            where the peer must connect, its C{connected} fires with the
            protocol (built for the peer's address) at the second reply.
        """
        steps = _UpstreamSteps(self, attempt, factory, onUpstream, bind=True)
        return Failover(self.order(attempt.route), steps).start()

    def succeeded(self, server: ProxyServer) -> None:
        """C{server} carried a session (or judged one): its failures reset."""
        state = self.state(server)
        state.failuresInARow = 0
        state.badUntil = None

    def failed(self, server: ProxyServer) -> None:
        """C{server} failed; after C{maxfail} in a row, it is marked bad."""
        state = self.state(server)
        state.failures += 1
        state.failuresInARow += 1
        if state.failuresInARow >= self.table.maxFail:
            state.badUntil = self._clock.seconds() + self.table.badExpire
            _log.warn(
                "upstream {upstream} marked bad for {seconds:g}s after {count}"
                " failure(s) in a row",
                upstream=state.name,
                seconds=self.table.badExpire,
                count=state.failuresInARow,
            )

    def endpoint(
        self, server: ProxyServer, attempt: ChainedAttempt, bind: bool = False
    ) -> Any:
        """
        The client endpoint that reaches C{attempt}'s destination through
        C{server} (or, for C{bind}, has it listen for a peer from there):
        its scheme's version, the line's credentials only.
        """
        version, remote = SCHEMES[server.scheme] if server.scheme else (4, True)
        tcp = self._proxies.get(server)
        if tcp is None:
            tcp = self._proxies[server] = self._proxyEndpoint(server)
        if version == 5:
            return (SOCKS5BindEndpoint if bind else SOCKS5ClientEndpoint)(
                self._reactor,
                attempt.host,
                attempt.port,
                tcp,
                user=server.user,
                password=server.password,
                timeout=self._timeout,
                remoteResolve=remote,
            )
        return (SOCKS4BindEndpoint if bind else SOCKS4ClientEndpoint)(
            self._reactor,
            attempt.host,
            attempt.port,
            tcp,
            user=server.user or b"",
            timeout=self._timeout,
            remoteResolve=remote,
        )

    def _proxyEndpoint(self, server: ProxyServer) -> IStreamClientEndpoint:
        """
        The endpoint that connects to C{server}, made once per routes load
        and shared by its sessions: the connector for an IP literal, a
        name-resolving endpoint for a name.
        """
        try:
            address = ip_address(server.host)
        except ValueError:
            return serverEndpoint(self._reactor, server, self._timeout)
        if getattr(address, "scope_id", None):
            # A link-local literal with its interface (fe80::1%eth0): left
            # to Twisted's endpoint, which has always carried the scope.
            return serverEndpoint(self._reactor, server, self._timeout)
        return ConnectorEndpoint(self._connector, address, server.port)


class _UpstreamSteps:
    """
    The server's side of one chained connect or BIND (see L{Failover}): an
    upstream's verdict is the answer, its failure the next one's turn, with
    the upstreams' marks and counters kept by the L{Router}.
    """

    def __init__(
        self,
        router: Router,
        attempt: ChainedAttempt,
        factory: IProtocolFactory,
        onUpstream: Any,
        bind: bool,
    ) -> None:
        self._bind = bind
        self._router = router
        self._attempt = attempt
        self._factory = factory
        self._onUpstream = onUpstream
        self._last: Failure | None = None

    def begin(self, server: ProxyServer) -> Deferred[Any]:
        """Connect (or listen) through C{server}."""
        router = self._router
        if self._onUpstream is not None:
            self._onUpstream(router.state(server).name)
        try:
            endpoint = router.endpoint(server, self._attempt, self._bind)
            if self._bind:
                return endpoint.listen(self._factory)  # type: ignore[no-any-return]
            return endpoint.connect(self._factory)  # type: ignore[no-any-return]
        except ValueError as e:
            return fail(_CannotCarry(str(e)))

    def granted(self, server: ProxyServer, result: Any, wanted: bool) -> None:
        """An upstream granted the request; let go of it if nobody waits."""
        self._router.succeeded(server)
        if not wanted:
            # Granted after the session gave up: nothing will use it.
            if self._bind:
                result.stopListening()
            elif result.transport is not None:
                result.transport.loseConnection()
            return
        self._router.state(server).sessions += 1

    def judge(
        self, server: ProxyServer, reason: Failure, remaining: Sequence[ProxyServer]
    ) -> Failure | None:
        """An upstream's verdict is the answer; its failure, the next one's turn."""
        router = self._router
        error = reason.value
        if isinstance(error, _CannotCarry):
            # A destination this upstream cannot carry (an IPv6 literal to
            # plain SOCKS4): the next one may; the upstream is not to blame.
            unsupported = Outcome.ADDRESS_TYPE_NOT_SUPPORTED
            self._last = Failure(UpstreamRefusal(unsupported, str(error)))
            return None
        verdict = outcomeOfVerdict(error) if error is not None else None
        if verdict is not None and not isGeneralFailure5(error):
            router.succeeded(server)  # it answered, about the destination
            return Failure(UpstreamRefusal(verdict, f"upstream {server}: {error}"))
        if reason.check(NoProtocol):
            return reason
        if not isinstance(error, ClosedBeforeReply5):
            if not _failsOver(error):
                return reason
            router.failed(server)
        # else it spoke SOCKS5 and took the request, then closed: OpenSSH's
        # refusal of a destination, or a crash mid-request; nobody can
        # tell.  The client has been told nothing, so the next upstream may
        # try; but no bad mark, or any client could get a working upstream
        # skipped by asking for a port it refuses (a crashed one fails its
        # next connection, which counts).
        self._last = self._failure(server, reason)
        if remaining:
            router.state(server).failovers += 1
            _log.warn(
                "upstream {upstream} failed ({reason}); trying {next}",
                upstream=str(server),
                reason=reason.getErrorMessage(),
                next=str(remaining[0]),
            )
        return None

    @staticmethod
    def _failure(server: ProxyServer, reason: Failure) -> Failure:
        """What the client is told if C{server}'s failure is the last."""
        error = reason.value
        if isinstance(error, ConnectError):
            return reason
        return Failure(UpstreamRefusal(Outcome.FAILURE, f"upstream {server}: {error}"))

    def exhausted(self) -> Failure:
        """The last failure, when every upstream was tried."""
        return self._last or Failure(_noUpstream(self._attempt.route))


class _CannotCarry(Exception):
    """An upstream's endpoint refused the destination before any I/O."""


def _failsOver(error: BaseException | None) -> bool:
    """Whether the next upstream is tried after C{error}."""
    return isinstance(error, _FAILOVER_ERRORS) or isGeneralFailure5(error)


def _noUpstream(route: Route) -> UpstreamRefusal:
    """The refusal of a line with no upstream to try (never parsed so)."""
    return UpstreamRefusal(Outcome.FAILURE, f"route {route.location}: no upstream")
