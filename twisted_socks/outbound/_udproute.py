"""
What a server's routes (C{--routes}) do to UDP ASSOCIATE.  No Twisted.

Routes say how a destination is reached; for UDP the server can only send
directly: there is no relay-to-relay UDP (issue 19).  So a datagram whose
destination takes a C{sockd} line is dropped ("chained"), one that takes a
C{deny} line is denied, and only a C{direct} line (or no match) sends it.

The association itself is refused when no datagram of it could ever be
sent: when every line that applies to the client (its C{from=} and users)
down to one that covers every destination and port is a C{sockd} or
C{deny} line.  With a C{sockd} line among them the answer is 07 (command
not supported: the datagrams would need an upstream's UDP relay); with
C{deny} lines only, 02, as a C{deny} route answers a CONNECT.  Otherwise
the association is granted and each datagram is routed on its own.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from ..policy._patterns import AddressPattern
from ..wire._outcome import Outcome

if TYPE_CHECKING:
    from ..client._routes import Route, RouteTable
    from ..policy._policy import IPAddress

__all__ = ["DatagramWay", "associationRefusal", "datagramWay"]

#: The ports a datagram can name, as a line must cover them all.
_LOWEST, _HIGHEST = 0, 65535


class DatagramWay(Enum):
    """What becomes of a datagram, by the route its destination takes."""

    #: Sent to the destination (a C{direct} line, or no line).
    DIRECT = "direct"
    #: Dropped as a rule denial drops it (a C{deny} line).
    DENIED = "denied"
    #: Dropped: the line goes through upstreams, and UDP cannot.
    CHAINED = "dropped as chained"


def datagramWay(route: Route | None) -> DatagramWay:
    """What a datagram whose destination takes C{route} becomes."""
    if route is None:
        return DatagramWay.DIRECT
    # Imported here, with a route only: a server without --routes never
    # loads the routes grammar (the launcher's idle memory budget).
    from ..client._routes import RouteAction

    if route.action is RouteAction.DIRECT:
        return DatagramWay.DIRECT
    if route.action is RouteAction.DENY:
        return DatagramWay.DENIED
    return DatagramWay.CHAINED


def _coversEverything(route: Route) -> bool:
    """Whether every destination, on every port, takes C{route}."""
    destination = route.destination
    if not isinstance(destination, AddressPattern) or not destination.universal:
        return False
    port = route.port
    if port is None:
        return True
    if port.negate:
        # Only an exclusion of nothing a datagram can name covers them all.
        return port.high < _LOWEST or port.low > _HIGHEST
    return port.low <= _LOWEST and port.high >= _HIGHEST


def _appliesTo(route: Route, user: str, client: IPAddress | None) -> bool:
    """Whether C{route} may take some request of C{user} from C{client}."""
    if route.users is not None and user not in route.users:
        return False
    return route.clients is None or route.clients.matches(client)


def associationRefusal(
    table: RouteTable, user: str, client: IPAddress | None
) -> tuple[Outcome, str, Route] | None:
    """
    Why a UDP association of C{user} from C{client} is refused by the
    routes (the outcome, the reason for the record, the deciding line), or
    L{None} if some datagram of it could go direct.

    The lines that apply to the client are read in order down to the first
    that covers everything (no match at all goes direct): one C{direct}
    line among them, and the association is granted.
    """
    from ..client._routes import RouteAction  # with routes only (see above)

    chained: Route | None = None
    denied: Route | None = None
    for route in table.routes:
        if not _appliesTo(route, user, client):
            continue
        if route.action is RouteAction.DIRECT:
            return None
        if route.action is RouteAction.SOCKD:
            chained = chained or route
        else:
            denied = denied or route
        if _coversEverything(route):
            break
    else:
        # Destinations no line covers go direct.
        return None
    if chained is not None:
        reason = (
            f"every datagram would go through an upstream (route "
            f"{chained.location}): no relay-to-relay UDP"
        )
        return Outcome.COMMAND_NOT_SUPPORTED, reason, chained
    if denied is not None:
        return Outcome.DENIED, f"denied by route {denied.location}", denied
    return None  # defensive: the loop ends on a line that is one or the other
