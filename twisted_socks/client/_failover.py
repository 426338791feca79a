"""
One attempt through a route's SOCKS servers, one server at a time, until
one grants the request or the route's user says to stop: failover.

Both routing sides use it: the client's L{RoutingEndpoint} (fail over only
while no server has been reached) and a server's L{Router} (fail over on an
upstream's failure, take its verdict on the destination as the answer, mark
it bad after failures in a row).  What differs between them is injected as
L{FailoverSteps}: how a server is tried, which failures fail over, what is
counted and logged, and what the attempt ends with when no server is left.
L{Failover} holds what is the same: the order, one server at a time, the
end given once, and cancellation at any stage.

@see: L{twisted_socks.client._routing}, L{twisted_socks.outbound._routed}.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from ._routes import ProxyServer

__all__ = ["Failover", "FailoverSteps", "serverEndpoint"]

_T = TypeVar("_T")


class FailoverSteps(Protocol[_T]):
    """
    What one side of routing decides for a L{Failover}.
    """

    def begin(self, server: ProxyServer) -> Deferred[_T]:
        """
        Start the attempt through C{server}.

        @return: fires with what the attempt gives (a connected protocol, a
            listening port) or fails; raising is the same as failing.
        """

    def granted(self, server: ProxyServer, result: _T, wanted: bool) -> None:
        """
        C{server} granted the request.

        @param wanted: L{False} if the attempt had already ended (cancelled)
            and C{result} will not be used: the steps let go of it.
        """

    def judge(
        self, server: ProxyServer, reason: Failure, remaining: Sequence[ProxyServer]
    ) -> Failure | None:
        """
        The attempt through C{server} failed with C{reason}: what now.

        @param remaining: the servers still to try, in order (for the log
            line that says which comes next).
        @return: the failure the whole attempt ends with, or L{None} to try
            the next server (or end with L{exhausted} if none is left).
        """

    def exhausted(self) -> Failure:
        """The failure of an attempt with no server left to try."""


class Failover(Generic[_T]):
    """
    The servers in turn, as C{steps} decide; cancellable throughout.

    @ivar result: fires with the granting server's result, or fails with
        what C{steps} ended with.  Cancelling it stops the current server's
        attempt and tries no other.
    """

    def __init__(self, servers: Sequence[ProxyServer], steps: FailoverSteps[_T]):
        """
        @param servers: the servers to try, in the order to try them.
        @param steps: the side's decisions.
        """
        self._servers = list(servers)
        self._steps = steps
        self._pending: Deferred[_T] | None = None
        self._done = False
        self.result: Deferred[_T] = Deferred(self._cancel)

    def start(self) -> Deferred[_T]:
        """Try the first server; L{result}."""
        self._tryNext()
        return self.result

    def _tryNext(self) -> None:
        """Begin through the next server, or end as the steps say."""
        if not self._servers:
            self._finish(self._steps.exhausted())
            return
        server = self._servers.pop(0)
        try:
            d = self._steps.begin(server)
        except Exception:
            d = fail(Failure())
        self._pending = d
        d.addCallbacks(
            lambda result: self._granted(server, result),
            lambda reason: self._failed(server, reason),
        )

    def _granted(self, server: ProxyServer, result: _T) -> None:
        """A server granted the request."""
        self._pending = None
        wanted = not self._done
        self._steps.granted(server, result, wanted)
        if wanted:
            self._done = True
            self.result.callback(result)

    def _failed(self, server: ProxyServer, reason: Failure) -> None:
        """A server's attempt failed: end, or the next one's turn."""
        self._pending = None
        if self._done:
            return  # the echo of our own cancellation
        final = self._steps.judge(server, reason, tuple(self._servers))
        if final is not None:
            self._finish(final)
        else:
            self._tryNext()

    def _finish(self, reason: Failure) -> None:
        """End with C{reason}, once."""
        if self._done:
            return
        self._done = True
        self.result.errback(reason)

    def _cancel(self, result: Deferred[_T]) -> None:
        """Stop the current server's attempt; try no other."""
        # Deferred.cancel() fails the result with CancelledError after this.
        self._done = True
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()


def serverEndpoint(
    reactor: Any, server: ProxyServer, timeout: float
) -> IStreamClientEndpoint:
    """
    A TCP endpoint for the SOCKS server C{server}; literals skip the
    resolver (C{reactor} needs C{IReactorPluggableNameResolver} only for a
    server written as a name).
    """
    endpointClass: type[Any] = HostnameEndpoint
    if ":" in server.host:
        endpointClass = TCP6ClientEndpoint
    elif _isIPv4(server.host):
        endpointClass = TCP4ClientEndpoint
    return endpointClass(  # type: ignore[no-any-return]
        reactor, server.host, server.port, timeout=timeout
    )


def _isIPv4(host: str) -> bool:
    """Whether C{host} is an IPv4 literal (a dotted quad)."""
    try:
        IPv4Address(host)
    except ValueError:
        return False
    return True
