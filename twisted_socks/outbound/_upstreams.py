"""
What a server knows of its upstream SOCKS servers (C{--routes}): their
state, what their refusals tell a client, and whether a route loops back
into the server itself.  No Twisted: L{twisted_socks.outbound._routed}
connects through them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..policy._policy import normalizeAddress
from ..wire._outcome import Outcome
from ..wire._socks4reply import RequestRejected
from ..wire._socks5client import SOCKS5Rejected

if TYPE_CHECKING:
    from ..client._routes import ProxyServer, Route, RouteTable
    from ._selfaddress import ListeningAddresses

__all__ = [
    "UpstreamRefusal",
    "UpstreamState",
    "findLoop",
    "isGeneralFailure5",
    "outcomeOfVerdict",
]

#: What an upstream's SOCKS5 refusal (REP) tells the client, as an outcome
#: its front end says in its own version (to SOCKS4: 91).
_SOCKS5_VERDICTS = {
    1: Outcome.FAILURE,
    2: Outcome.DENIED,
    3: Outcome.NETWORK_UNREACHABLE,
    4: Outcome.HOST_UNREACHABLE,
    5: Outcome.REFUSED,
    6: Outcome.TIMED_OUT,
    7: Outcome.COMMAND_NOT_SUPPORTED,
    8: Outcome.ADDRESS_TYPE_NOT_SUPPORTED,
}


def outcomeOfVerdict(error: BaseException) -> Outcome | None:
    """
    The outcome an upstream's refusal gives the client, or L{None} if
    C{error} is not an upstream's verdict.

    SOCKS5 02-08 keep their meaning (to a SOCKS4 client all say 91); SOCKS4
    92 and 93 (the upstream's ident checks) are policy refusals (SOCKS5 02),
    91 a failure (01).
    """
    if isinstance(error, SOCKS5Rejected):
        return _SOCKS5_VERDICTS.get(int(error.replyCode), Outcome.FAILURE)
    if isinstance(error, RequestRejected):
        return Outcome.FAILURE if int(error.replyCode) == 91 else Outcome.DENIED
    return None


def isGeneralFailure5(error: BaseException | None) -> bool:
    """Whether C{error} is an upstream's SOCKS5 01 (which fails over)."""
    return isinstance(error, SOCKS5Rejected) and int(error.replyCode) == 1


class UpstreamRefusal(Exception):
    """
    A chained connect ended with this outcome: an upstream's verdict, or
    the handshake failure of the last upstream tried.

    @ivar outcome: what the client is told.
    """

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class UpstreamState:
    """
    What the server knows of one upstream: its failures in a row, whether
    it is marked bad and until when, and its counters for C{/metrics}.

    @ivar name: the upstream as logs and records show it (a URL or
        C{host:port}, never with a password).
    @ivar failuresInARow: failures since its last success.
    @ivar badUntil: the clock time until which it is skipped, or L{None}.
    @ivar sessions: sessions it carried (granted through it).
    @ivar failures: attempts through it that failed (those that count
        toward C{route.maxfail}).
    @ivar failovers: times the next upstream was tried after it failed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.failuresInARow = 0
        self.badUntil: float | None = None
        self.sessions = 0
        self.failures = 0
        self.failovers = 0

    def isBad(self, now: float) -> bool:
        """Whether it is skipped at C{now}."""
        return self.badUntil is not None and now < self.badUntil


#: Upstream names that are this host whatever the resolver says.
_LOOPBACK_NAMES = {"localhost": ("127.0.0.1", "::1")}


def findLoop(
    table: RouteTable, listening: ListeningAddresses
) -> tuple[Route, ProxyServer] | None:
    """
    The first route, and its upstream, that would loop back into this
    server: an upstream that is one of its own listeners (an IP literal,
    or C{localhost}); L{None} if none is.
    """
    for route in table.routes:
        for server in route.servers:
            hosts = _LOOPBACK_NAMES.get(server.host.lower(), (server.host,))
            for host in hosts:
                address = normalizeAddress(host)
                if address is not None and listening.includes(address, server.port):
                    return route, server
    return None
