"""
What a session is and what it leaves behind: its states, the server's
limits, the record logged when it ends and the snapshot the status page
shows, with the record's text and JSON fields.

Plain data: no Twisted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Limits",
    "SessionInfo",
    "SessionRecord",
    "SessionState",
    "UDPCounters",
    "recordFields",
    "summaryLine",
]


class SessionState(Enum):
    """Where a session is; transitions only go down this list."""

    NEGOTIATING = "negotiating"
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    #: BIND: listening, first reply sent, waiting for the inbound peer.
    WAITING = "waiting for BIND peer"
    #: UDP ASSOCIATE: granted; datagrams flow, the TCP connection is idle.
    ASSOCIATED = "udp association"
    RELAYING = "relaying"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Limits:
    """
    Timeouts and limits of a server, all in seconds or counts.

    @ivar negotiateTimeout: the whole request must arrive within this time
        of the connection being accepted (a total, not per byte).
    @ivar connectTimeout: from the complete request until the outbound
        connection is up, name resolution included.
    @ivar idleTimeout: a relay with no bytes either way for this long is
        closed; 0 turns it off.
    @ivar maxConnections: concurrent client connections.  At the limit, the
        oldest session that has not sent a complete request yet is closed
        to make room for a new client; only when there is none is the new
        client refused: answered in the version its first byte names
        (SOCKS4: reply 91; SOCKS5: C{05 FF}) and closed.
    @ivar maxPendingBytes: bytes a client may send after its request before
        the outbound connection is up; beyond it reading pauses (nothing is
        dropped).
    @ivar lingerTimeout: after a failure reply the server stops writing and
        waits this long for the client to close, discarding its input, so the
        reply is not destroyed by a TCP reset.
    @ivar bindTimeout: how long a BIND listener waits for its one inbound
        connection (the protocol's own two minutes).
    @ivar maxBindsPerClient: concurrent BIND listeners one client address
        may hold.
    @ivar maxConnectionsPerClient: concurrent connections from one client
        address; 0 for no limit.
    @ivar maxLookupsPerClient: SOCKS4A name lookups one client may have
        running at once; its further lookups wait their turn.
    @ivar maxLookups: SOCKS4A name lookups running at once, all clients
        together: at most the resolver's threads (the reactor's pool has
        10, shared with other work; twistd gives its resolver a pool of
        this size of its own).
    @ivar lookupReserve: of C{maxLookups}, how many only a client with no
        lookup running may take, so that slow names held by a few clients
        never hold up another client's first lookup.
    @ivar ipv6ClientPrefix: per-client limits count an IPv6 client by its
        address's first this many bits (a /64 is one host's or one
        customer's); C{::1} and IPv4 clients by their address.
    @ivar ratePerClient: new connections one client address may open per
        C{rateWindow} seconds; 0 for no limit.
    @ivar rateWindow: the window of C{ratePerClient}, in seconds.
    @ivar udpIdleTimeout: a UDP association with no datagram relayed either
        way for this long ends (its TCP connection is closed); 0 turns it
        off.
    @ivar maxUDPPerClient: concurrent UDP associations one client address
        may hold.
    """

    negotiateTimeout: float = 30.0
    connectTimeout: float = 30.0
    idleTimeout: float = 120.0
    maxConnections: int = 200
    maxPendingBytes: int = 65536
    lingerTimeout: float = 2.0
    bindTimeout: float = 120.0
    maxBindsPerClient: int = 4
    maxConnectionsPerClient: int = 0
    maxLookupsPerClient: int = 4
    maxLookups: int = 8
    lookupReserve: int = 4
    ipv6ClientPrefix: int = 64
    ratePerClient: int = 0
    rateWindow: float = 1.0
    udpIdleTimeout: float = 120.0
    maxUDPPerClient: int = 8

    def __post_init__(self) -> None:
        for name in (
            "negotiateTimeout",
            "connectTimeout",
            "lingerTimeout",
            "bindTimeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if min(self.idleTimeout, self.udpIdleTimeout) < 0:
            raise ValueError(
                "idleTimeout and udpIdleTimeout must be 0 (off) or positive"
            )
        if self.maxUDPPerClient < 1:
            raise ValueError("maxUDPPerClient must be positive")
        if min(self.maxConnectionsPerClient, self.ratePerClient) < 0:
            raise ValueError("per-client limits must be 0 (off) or positive")
        if self.rateWindow <= 0:
            raise ValueError("rateWindow must be positive")
        if min(self.maxConnections, self.maxPendingBytes, self.maxBindsPerClient) < 1:
            raise ValueError(
                "maxConnections, maxPendingBytes and maxBindsPerClient must be positive"
            )
        if min(self.maxLookupsPerClient, self.maxLookups) < 1:
            raise ValueError("maxLookupsPerClient and maxLookups must be positive")
        if not 0 <= self.lookupReserve < self.maxLookups:
            raise ValueError("lookupReserve must be 0 or more, below maxLookups")
        if not 1 <= self.ipv6ClientPrefix <= 128:
            raise ValueError("ipv6ClientPrefix must be 1..128")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """
    What one client connection did, logged once when it ends.

    Text fields the client controls are already escaped and capped.

    @ivar client: C{host:port} of the client (C{"unix"} for a UNIX socket).
    @ivar user: the USERID (SOCKS4), or the authenticated user (SOCKS5).
    @ivar command: C{"connect"}/C{"bind"}/C{"udp"}, or L{None}
        if no request came.
    @ivar destination: the requested C{host:port}, or L{None}.
    @ivar resolved: the address actually connected to, or L{None}.
    @ivar reply: the reply code sent, or L{None} if none was.
    @ivar bytesUp: bytes relayed from client to destination.
    @ivar bytesDown: bytes relayed from destination to client.
    @ivar duration: seconds from accept to close.
    @ivar identUser: the user the client host's identd named, if asked.
    @ivar reason: why the session ended, or the policy's reason.
    @ivar rule: the rule that decided, if any.
    @ivar outcome: how the request ended, in words no SOCKS version owns
        (an L{Outcome} value: C{"granted"}, C{"denied by rule"},
        C{"refused"}, C{"host unreachable"}, C{"timed out"}, ...), or
        L{None} if no reply was sent; SOCKS4's C{reply} says less (91 for
        every failure but the ident ones).
    @ivar version: the SOCKS version the client spoke (4 for SOCKS4 and
        4A, 5), or L{None} if it spoke neither.
    @ivar auth: the SOCKS5 authentication method (C{"none"},
        C{"password"}), or L{None} (SOCKS4, or no method chosen).
    @ivar route: the route (C{--routes}) the request took, as C{file:line},
        or L{None} (no routes, or none matched).
    @ivar upstream: the upstream SOCKS server it went through (the last
        tried), a URL or C{host:port} without a password; or L{None}.
    @ivar udp: for a UDP association, what it relayed and dropped (its
        payload bytes are C{bytesUp} and C{bytesDown}); else L{None}.
    """

    client: str
    user: str
    command: str | None
    destination: str | None
    resolved: str | None
    reply: int | None
    bytesUp: int
    bytesDown: int
    duration: float
    identUser: str | None
    reason: str
    rule: str | None
    outcome: str | None = None
    version: int | None = None
    auth: str | None = None
    route: str | None = None
    upstream: str | None = None
    udp: UDPStats | None = None


@dataclass(frozen=True, slots=True)
class UDPStats:
    """
    What one UDP association relayed and dropped, as its record says.

    @ivar datagramsUp: datagrams relayed from the client to destinations.
    @ivar datagramsDown: datagrams relayed from destinations to the client.
    @ivar fragments: datagrams from the client with FRAG not 0, dropped
        (the relay does not reassemble).
    @ivar denied: datagrams from the client to a destination the policy
        (or a C{deny} route) denied, dropped.
    @ivar dropped: other datagrams dropped: a malformed header, a source
        other than the client's, a reply from a host the client never sent
        to, a name that did not resolve, a full queue, a send that failed,
        a destination a C{sockd} route takes (no relay-to-relay UDP).
    """

    datagramsUp: int
    datagramsDown: int
    fragments: int
    denied: int
    dropped: int


class UDPCounters:
    """
    The live counts of one UDP association (mutable: one increment per
    datagram); L{stats} is their frozen copy for the record.
    """

    __slots__ = (
        "bytesDown",
        "bytesUp",
        "datagramsDown",
        "datagramsUp",
        "denied",
        "dropped",
        "fragments",
        "lastActivity",
    )

    def __init__(self, now: float) -> None:
        #: When a datagram was last relayed either way (the clock's seconds).
        self.lastActivity = now
        self.datagramsUp = self.datagramsDown = 0
        self.bytesUp = self.bytesDown = 0
        self.fragments = self.denied = self.dropped = 0

    def stats(self) -> UDPStats:
        """The counts as they are now."""
        return UDPStats(
            self.datagramsUp,
            self.datagramsDown,
            self.fragments,
            self.denied,
            self.dropped,
        )


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """
    A live session as the status page shows it (a snapshot; text fields the
    client controls are escaped).

    @ivar id: the session's number, unique within the factory.
    @ivar client: C{host:port} of the client.
    @ivar user: the USERID.
    @ivar identUser: what the client's identd said, if asked.
    @ivar command: C{connect}/C{bind}/C{udp}, or L{None} before the request.
    @ivar destination: the requested C{host:port} (the name for 4A).
    @ivar resolved: the address connected to (for BIND: the peer), if any.
    @ivar state: the L{SessionState} value.
    @ivar bytesUp: bytes relayed from the client so far.
    @ivar bytesDown: bytes relayed to the client so far.
    @ivar started: when the connection was accepted (the clock's seconds;
        Unix time with a real reactor).
    @ivar idle: seconds since the last byte relayed either way (since
        accept, before relaying).
    @ivar rule: the rule that decided, if any.
    @ivar route: the route (C{file:line}) the request took, if any.
    @ivar upstream: the upstream SOCKS server it went through, if any.
    @ivar version: the SOCKS version the client speaks (4 for SOCKS4 and
        4A, 5), or L{None} before its first byte or if it speaks neither.
    @ivar auth: the SOCKS5 authentication method (C{"none"},
        C{"password"}), or L{None} (SOCKS4, or no method chosen yet).
    @ivar udp: for a UDP association, its counts so far; else L{None}.
    """

    id: int
    client: str
    user: str
    identUser: str | None
    command: str | None
    destination: str | None
    resolved: str | None
    state: str
    bytesUp: int
    bytesDown: int
    started: float
    idle: float
    rule: str | None
    route: str | None = None
    upstream: str | None = None
    version: int | None = None
    auth: str | None = None
    udp: UDPStats | None = None


#: How the log line names a version (L{None}: the client spoke neither).
_PROTOCOLS = {4: "socks4", 5: "socks5"}


def summaryLine(r: SessionRecord) -> str:
    """A session record's log line (every client-controlled field escaped)."""
    # A connection that never completed a request has no command and no
    # destination: the line says so, in the same two words' places.
    asked = f"{r.command} {r.destination}" if r.command else "no-request -"
    return (
        f"session {r.client} {asked} resolved={r.resolved} "
        f"user={r.user} ident={r.identUser} reply={r.reply} up={r.bytesUp} "
        f"down={r.bytesDown} duration={r.duration:.3f}s "
        f"proto={_PROTOCOLS.get(r.version or 0)} auth={r.auth} rule={r.rule} "
        # Only for a routed request: every other line keeps its shape.
        + (f"route={r.route} upstream={r.upstream} " if r.route else "")
        + f"reason={r.reason}"
    ) + _udpSummary(r.udp)


def _udpSummary(udp: UDPStats | None) -> str:
    """The UDP association's counts for the log line (none for TCP)."""
    if udp is None:
        return ""
    return (
        f" datagrams-up={udp.datagramsUp} datagrams-down={udp.datagramsDown}"
        f" fragments={udp.fragments} denied={udp.denied} dropped={udp.dropped}"
    )


def recordFields(record: SessionRecord) -> dict[str, object]:
    """
    A session record's fields by name, for a structured log event; a UDP
    association's counts as a mapping under C{udp} (L{None} for TCP).
    """
    fields = {name: getattr(record, name) for name in SessionRecord.__slots__}
    udp = record.udp
    if udp is not None:
        fields["udp"] = {name: getattr(udp, name) for name in UDPStats.__slots__}
    return fields
