"""
The Twisted side of client routing: an endpoint that asks a routing table
(L{twisted_socks.client._routes}) how to reach its destination.

L{RoutingEndpoint} is an ordinary L{IStreamClientEndpoint}.  Its C{connect()}
looks the destination up in the table and then:

  - C{deny} (or no matching route): fails with L{RouteDenied}, contacting
    nothing;
  - C{direct}: connects with a L{HostnameEndpoint};
  - C{sockd}: connects through the route's SOCKS servers, one at a time,
    with L{SOCKS4ClientEndpoint}, or L{SOCKS5ClientEndpoint} for a server
    written as a C{socks5h://} or C{socks5://} URL.  A server whose TCP
    connection cannot be made (refused, unreachable, its name unknown, or no
    answer within the timeout) is skipped for the next one: failover.  A
    server that accepted the connection has answered, so whatever it says
    next (a refusal, a garbage reply, a reset, silence) is the outcome, with
    no failover.  With C{balance} the servers are tried in a random order,
    drawn afresh for each connection.

L{twisted_socks.client._strports.parseRoutingEndpoint} builds one from the fields
of a C{socks:conf=...:host=...:port=...} endpoint string.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from random import Random

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..wire._clienterrors import SOCKSError
from ..wire._socks4 import MAX_USERID_LENGTH
from ._failover import Failover, serverEndpoint
from ._routes import (
    ProxyServer,
    Route,
    RouteAction,
    RouteTable,
)
from ._socks4endpoints import SOCKS4ClientEndpoint

__all__ = [
    "ProxiesUnreachable",
    "RouteDenied",
    "RoutingEndpoint",
]

_log = Logger()


class RouteDenied(SOCKSError):
    """
    The routing table says the destination may not be reached.

    Raised before anything is contacted.

    @ivar host: the destination host, as given.
    @ivar port: the destination port.
    @ivar route: the C{deny} route that matched, or L{None} when no route
        matched (which denies).
    @ivar location: C{file:line} of that route, or C{file:end} when none
        matched.
    """

    def __init__(self, host: str, port: int, route: Route | None, path: str) -> None:
        self.host = host
        self.port = port
        self.route = route
        if route is not None:
            self.location = route.location
            message = f"{_describe(host, port)} denied by {route.location}"
        else:
            self.location = f"{path}:end"
            message = (
                f"{_describe(host, port)} matches no route in {path} (no match denies)"
            )
        super().__init__(message)


class ProxiesUnreachable(SOCKSError):
    """
    No SOCKS server of a C{sockd} route accepted a TCP connection.

    @ivar route: the route.
    @ivar attempts: each server tried, in the order tried, with the error
        connecting to it met.
    """

    def __init__(
        self,
        host: str,
        port: int,
        route: Route,
        attempts: tuple[tuple[ProxyServer, BaseException], ...],
    ) -> None:
        self.route = route
        self.attempts = attempts
        tried = "; ".join(
            f"{server}: {_errorText(error)}" for server, error in attempts
        )
        super().__init__(
            f"no SOCKS server reachable for {_describe(host, port)}"
            f" (route {route.location}): {tried or 'no server to try'}"
        )


@implementer(IStreamClientEndpoint)
class RoutingEndpoint:
    """
    Connect to C{host}:C{port} the way a routing table says.

    The route is chosen at each C{connect()}, by the destination as given
    (never resolved: see L{RouteTable.match}), the port and C{user}.

    @param reactor: provides L{IReactorTime} and L{IReactorTCP}, and
        L{IReactorPluggableNameResolver} for direct connections and servers
        given by name.
    @param table: the routes.
    @param host: the destination: a name or an IP literal (an IPv6 literal
        with or without brackets).
    @param port: the destination port.
    @param user: the user the program connects as: matched against C{*=}
        and sent to SOCKS servers as the USERID.
    @param timeout: seconds for each attempt: a direct connection, or one
        SOCKS server (connection and handshake); failing over to the next
        server starts a new period, so a route of C{n} silent servers takes
        up to C{n * timeout}.
    @param remoteResolve: through SOCKS servers written C{host[:port]},
        send names as SOCKS4A (L{True}) or resolve them locally and send
        plain SOCKS4 (L{False}); see L{SOCKS4ClientEndpoint}.  A server
        written as a URL is reached as its scheme says.
    @param random: shuffles the servers of C{balance} routes; a new
        L{Random} by default (inject a seeded one to test).

    @raise ValueError: at construction, for an empty host, a port out of
        range, a timeout that is not positive, or a user that cannot be a
        USERID.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        table: RouteTable,
        host: str,
        port: int,
        user: str = "",
        timeout: float = 30.0,
        remoteResolve: bool = True,
        random: Random | None = None,
    ) -> None:
        if not host:
            raise ValueError("empty destination host")
        if not 1 <= port <= 0xFFFF:
            raise ValueError(f"port out of range 1-65535: {port}")
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be positive: {timeout}")
        userid = user.encode("utf-8", "surrogateescape")
        if b"\0" in userid or len(userid) > MAX_USERID_LENGTH:
            raise ValueError(
                f"user must hold no NUL and be at most {MAX_USERID_LENGTH} bytes"
            )
        self._reactor = reactor
        self._table = table
        self._host = host
        # Connected to (and sent to a proxy) without brackets, which are
        # only the way IPv6 literals are written next to a port.
        self._connectHost = (
            host[1:-1] if host.startswith("[") and host.endswith("]") else host
        )
        self._port = port
        self._user = user
        self._timeout = timeout
        self._remoteResolve = remoteResolve
        self._random = random if random is not None else Random()

    def route(self) -> Route | None:
        """The route C{connect()} would take now; L{None} denies."""
        return self._table.match(self._host, self._port, self._user)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect by the route the table chooses.

        @return: a L{Deferred} that fires with the connected protocol, or
            fails with L{RouteDenied} (denied, or no route), with
            L{ProxiesUnreachable} (no server of the route could be
            reached), with what the one server that was reached said (a
            L{SOCKSError}: L{RequestRejected}, L{SOCKS5Rejected},
            L{SOCKS5AuthenticationFailed}, L{MalformedReply},
            L{HandshakeTimeout}, ...; or the connection error), or with what
            a direct connection met.  Cancelling it stops the attempt at
            any stage; later servers are not tried.
        """
        route = self.route()
        if route is None or route.action is RouteAction.DENY:
            return fail(RouteDenied(self._host, self._port, route, self._table.path))
        try:
            if route.action is RouteAction.DIRECT:
                direct = HostnameEndpoint(
                    self._reactor, self._connectHost, self._port, timeout=self._timeout
                )
                return _cancellable(direct.connect(protocolFactory))
            servers = list(route.servers)
            if route.balance:
                self._random.shuffle(servers)
        except Exception:
            return fail(Failure())
        return Failover(servers, _RouteSteps(self, route, protocolFactory)).start()

    def _throughServer(
        self, server: ProxyServer, hop: _ProxyHop
    ) -> IStreamClientEndpoint:
        """
        The SOCKS endpoint for the destination, through C{hop}: the version,
        resolution and credentials of C{server}'s URL, else SOCKS4A (or
        SOCKS4, by C{remoteResolve}) with the endpoint's user.
        """
        if server.scheme is not None:
            from ..wire._proxyurl import SCHEMES

            version, remoteResolve = SCHEMES[server.scheme]
            if version == 5:
                from ._socks5endpoints import SOCKS5ClientEndpoint

                return SOCKS5ClientEndpoint(
                    self._reactor,
                    self._connectHost,
                    self._port,
                    hop,
                    user=server.user,
                    password=server.password,
                    timeout=self._timeout,
                    remoteResolve=remoteResolve,
                )
            return SOCKS4ClientEndpoint(
                self._reactor,
                self._connectHost,
                self._port,
                hop,
                user=self._user if server.user is None else server.user,
                timeout=self._timeout,
                remoteResolve=remoteResolve,
            )
        return SOCKS4ClientEndpoint(
            self._reactor,
            self._connectHost,
            self._port,
            hop,
            user=self._user,
            timeout=self._timeout,
            remoteResolve=self._remoteResolve,
        )

    def _serverEndpoint(self, server: ProxyServer) -> IStreamClientEndpoint:
        """A TCP endpoint for C{server}; literals skip the resolver."""
        return serverEndpoint(self._reactor, server, self._timeout)

    def __repr__(self) -> str:
        """The destination and the routing file, for logs and debugging."""
        return (
            f"<RoutingEndpoint {_describe(self._host, self._port)}"
            f" by {self._table.path}>"
        )


@implementer(IStreamClientEndpoint)
class _ProxyHop:
    """
    Wraps the endpoint that reaches one SOCKS server, and remembers whether
    the TCP connection to it was attempted and made: which is what decides
    between failing over and failing.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint
        #: Whether a connection was asked for (a SOCKS4 local lookup that
        #: failed never gets that far).
        self.tried = False
        #: Whether the server accepted the connection.
        self.reached = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect, noting whether the server accepted."""
        self.tried = True
        d: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)

        def reached(protocol: IProtocol) -> IProtocol:
            """The TCP connection is up: from now on the server decides."""
            self.reached = True
            return protocol

        return d.addCallback(reached)


class _RouteSteps:
    """
    The client's side of one C{connect()} through a C{sockd} route (see
    L{Failover}): the next server is tried only while none has been reached.
    """

    def __init__(
        self, endpoint: RoutingEndpoint, route: Route, factory: IProtocolFactory
    ) -> None:
        self._endpoint = endpoint
        self._route = route
        self._factory = factory
        self._attempts: list[tuple[ProxyServer, BaseException]] = []
        #: The hop of the server being tried; L{None} until its endpoint
        #: was made (an error before that is final).
        self._hop: _ProxyHop | None = None

    def begin(self, server: ProxyServer) -> Deferred[IProtocol]:
        """Connect through C{server}, remembering whether it was reached."""
        self._hop = None
        hop = _ProxyHop(self._endpoint._serverEndpoint(server))
        d: Deferred[IProtocol] = self._endpoint._throughServer(server, hop).connect(
            self._factory
        )
        self._hop = hop
        return d

    def granted(self, server: ProxyServer, result: IProtocol, wanted: bool) -> None:
        """A server granted the request: nothing to count."""

    def judge(
        self, server: ProxyServer, reason: Failure, remaining: Sequence[ProxyServer]
    ) -> Failure | None:
        """Fail over if the server was not reached; else that is final."""
        hop = self._hop
        if hop is None or hop.reached or not hop.tried or reason.check(NoProtocol):
            # The server answered (so it decides), the attempt failed
            # before any server was contacted, or the application
            # declined: another server would change nothing.
            return reason
        error = reason.value
        if error is None:  # a Failure always has one; typing says maybe
            error = Exception(reason.getErrorMessage())
        self._attempts.append((server, error))
        _log.warn(
            "SOCKS server {server} unreachable for {destination} ({reason}); {next}",
            server=str(server),
            destination=_describe(self._endpoint._host, self._endpoint._port),
            reason=reason.getErrorMessage(),
            next=f"trying {remaining[0]}" if remaining else "none left",
        )
        return None

    def exhausted(self) -> Failure:
        """No server of the route could be reached."""
        endpoint = self._endpoint
        return Failure(
            ProxiesUnreachable(
                endpoint._host, endpoint._port, self._route, tuple(self._attempts)
            )
        )


def _cancellable(inner: Deferred[IProtocol]) -> Deferred[IProtocol]:
    """
    C{inner}'s result; cancelling fails it with L{CancelledError}.

    L{HostnameEndpoint} reports a cancellation during its lookup as a
    L{DNSLookupError}; the caller who cancelled should see the
    cancellation, whatever the stage.
    """
    cancelled = False

    def cancel(outer: Deferred[IProtocol]) -> None:
        """Cancel C{inner}, whose own report of it is then ignored."""
        nonlocal cancelled
        cancelled = True
        inner.cancel()
        # Deferred.cancel() fails outer with CancelledError after this.

    outer: Deferred[IProtocol] = Deferred(cancel)

    def relay(result: IProtocol | Failure) -> None:
        """Pass C{inner}'s outcome on, unless the caller cancelled."""
        if not cancelled:
            outer.callback(result)

    inner.addBoth(relay)
    return outer


def _describe(host: str, port: int) -> str:
    """C{host:port}, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _errorText(error: BaseException) -> str:
    """An error as one line of text, for the list of servers tried."""
    return str(error) or error.__class__.__name__
