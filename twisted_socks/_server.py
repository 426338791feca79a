"""
The SOCKS4/4A server: one protocol instance per client connection.

A session moves through L{SessionState}: it negotiates (reads one request),
resolves a SOCKS4A name, connects, and then relays.  All parsing is done by
the sans-IO codec; access decisions by an L{IAccessPolicy}; outbound
connections by an L{IOutboundConnector}; this module only sequences them and
moves bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    NoRouteError,
)
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHostnameResolver,
    ILoggingContext,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._admission import SHED_REASON, Admission, clientKey
from ._codec import (
    Command,
    ReplyCode,
    Request,
    RequestParser,
    SOCKSProtocolError,
    UnknownCommand,
    addressText,
    encodeReply,
    replyFor,
)
from ._connect import TCPConnector
from ._identparse import IdentUnreachable
from ._logfields import escapeField, hostPort
from ._metricsguard import asServerMetrics
from ._outcome import Outcome, outcomeForErrno
from ._policy import (
    AccessRequest,
    Decision,
    IdentFailure,
    IdentMode,
    LoopbackClientsPolicy,
    normalizeAddress,
)
from ._resolve import answeredFromMemory, resolveHostname
from ._selfaddress import ListeningAddresses
from .relay._fastio import closeNow, halfCloseNow
from .relay._relay import Relay
from .relay._splice import PipePool, spliceAvailable

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

    from .interfaces import (
        IAccessPolicy,
        IIdentResolver,
        IOutboundConnector,
        IServerMetrics,
    )

__all__ = [
    "Limits",
    "SOCKSv4ServerFactory",
    "SOCKSv4ServerProtocol",
    "SessionInfo",
    "SessionRecord",
    "SessionState",
]


class SessionState(Enum):
    """Where a session is; transitions only go down this list."""

    NEGOTIATING = "negotiating"
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    #: BIND: listening, first reply sent, waiting for the inbound peer.
    WAITING = "waiting for BIND peer"
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
        to make room for a new client; only when there is none does the new
        client get reply 91 and a close.
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

    def __post_init__(self) -> None:
        for name in (
            "negotiateTimeout",
            "connectTimeout",
            "lingerTimeout",
            "bindTimeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.idleTimeout < 0:
            raise ValueError("idleTimeout must be 0 (off) or positive")
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
    @ivar user: the USERID.
    @ivar command: C{"connect"}/C{"bind"}, or L{None} if no request came.
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


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """
    A live session as the status page shows it (a snapshot; text fields the
    client controls are escaped).

    @ivar id: the session's number, unique within the factory.
    @ivar client: C{host:port} of the client.
    @ivar user: the USERID.
    @ivar identUser: what the client's identd said, if asked.
    @ivar command: C{connect}/C{bind}, or L{None} before the request.
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


_log = Logger(namespace="twisted_socks.server")
#: Where the per-session records go: a namespace of their own, so observers
#: can route them (to a JSON file, to syslog) apart from everything else.
_sessionLog = Logger(namespace="twisted_socks.session")


def _summary(r: SessionRecord) -> str:
    """A session record's log line (every client-controlled field escaped)."""
    # A connection that never completed a request has no command and no
    # destination: the line says so, in the same two words' places.
    asked = f"{r.command} {r.destination}" if r.command else "no-request -"
    return (
        f"session {r.client} {asked} resolved={r.resolved} "
        f"user={r.user} ident={r.identUser} reply={r.reply} up={r.bytesUp} "
        f"down={r.bytesDown} duration={r.duration:.3f}s rule={r.rule} "
        f"reason={r.reason}"
    )


#: Replaces a session's negotiation-time containers (parser, queues,
#: candidate lists) once the relay starts, so that a long-lived tunnel does
#: not keep them; immutable, so that any late use fails loudly.
_SPENT: Any = ()

#: The decision of a session not yet judged, and of one relaying (whose
#: decision has done its work: the rule's name is kept apart).
_UNDECIDED = Decision(False, "")

#: Shared and read-only: only BIND sessions need a table of their own.
_NO_PEERS: Mapping[Any, Decision] = MappingProxyType({})


@implementer(IProtocol, ILoggingContext)
class _SlottedProtocol:
    """
    What L{twisted.internet.protocol.Protocol} gives a protocol, for classes
    with C{__slots__} only.

    A subclass of C{Protocol}, which has no slots, still gets a per-instance
    attribute dictionary (Python 3.11 allocates its values array with the
    object): about 40 bytes per object, two objects per tunnel, for as long
    as the tunnel lasts.
    """

    __slots__ = ("connected", "transport")

    def __init__(self) -> None:
        self.connected = 0
        self.transport: ITransport | None = None

    def makeConnection(self, transport: ITransport) -> None:
        """Connected: remember the transport, then C{connectionMade}."""
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        """The connection is up."""

    def dataReceived(self, data: bytes) -> None:
        """Bytes arrived."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """The connection is gone."""

    def logPrefix(self) -> str:
        """How the reactor labels this connection's log events."""
        return self.__class__.__name__


@implementer(IHalfCloseableProtocol)
class _OutboundProtocol(_SlottedProtocol):
    """
    The destination side of a tunnel: its events go to the session, and
    while the session relays, its bytes go straight to the relay.
    """

    __slots__ = ("_relay", "_session")

    def __init__(self, session: SOCKSv4ServerProtocol) -> None:
        super().__init__()
        self._session = session
        # Installed by the session while it relays: the destination's bytes
        # then go straight to the relay (see SOCKSv4ServerProtocol._close).
        self._relay: Relay | None = None

    def connectionMade(self) -> None:
        # For CONNECT the session starts relaying when the connect Deferred
        # fires; an inbound BIND peer has no Deferred, so it announces itself.
        if self._session.state is SessionState.WAITING:
            self._session._bindPeerConnected(self)

    def dataReceived(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            relay.serverDataReceived(data)
        else:
            self._session._outboundDataReceived(data)

    def readConnectionLost(self) -> None:
        self._session._outboundReadLost()

    def writeConnectionLost(self) -> None:
        # Our own half-close (loseWriteConnection) completed; nothing to do.
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._session._outboundLost()


class _OutboundFactory(Factory):
    noisy = False

    def __init__(self, session: SOCKSv4ServerProtocol) -> None:
        self._session = session

    def buildProtocol(self, addr: IAddress | None) -> _OutboundProtocol:  # type: ignore[override]
        return _OutboundProtocol(self._session)


class _BindFactory(Factory):
    """The one-shot listener's factory: the session decides on each peer."""

    noisy = False

    def __init__(self, session: SOCKSv4ServerProtocol) -> None:
        self._session = session

    def buildProtocol(self, addr: IAddress | None) -> _OutboundProtocol | None:  # type: ignore[override]
        # None closes the connection: a wrong peer, or a second one.
        return self._session._bindPeerArrived(addr)


@implementer(IHalfCloseableProtocol)
class SOCKSv4ServerProtocol(_SlottedProtocol):
    """
    Serves one SOCKS4/4A client connection.

    Not meant to be subclassed: behaviour is changed through the factory's
    policy, connector and resolver.
    """

    factory: SOCKSv4ServerFactory

    # Slots: a session object lives as long as its tunnel, and at tens of
    # thousands of idle tunnels the per-instance dict is most of its memory.
    __slots__ = (
        "_approval",
        "_bindCounted",
        "_bindPeers",
        "_candidates",
        "_clientAddress",
        "_clientEOF",
        "_clientGone",
        "_clientHost",
        "_clientPort",
        "_clock",
        "_connectedTo",
        "_finished",
        "_firstDenial",
        "_identError",
        "_identUser",
        "_inFlight",
        "_lastActivity",
        "_limitKey",
        "_limits",
        "_listener",
        "_outbound",
        "_outboundEOF",
        "_outboundEarly",
        "_outboundGone",
        "_outcome",
        "_parser",
        "_pending",
        "_policy",
        "_reason",
        "_relay",
        "_rule",
        "_started",
        "_timer",
        "_unjudged",
        "factory",
        "id",
        "request",
        "state",
    )

    def __init__(self, factory: SOCKSv4ServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.state = SessionState.NEGOTIATING
        self.request: Request | None = None
        self._clock = factory.reactor
        self._limits = factory.limits
        self._parser = RequestParser()
        self._timer: IDelayedCall | None = None
        self._inFlight: Deferred[Any] | None = None
        # Bytes each way before the relay starts, each kept in one growing
        # buffer: a list of the chunks read would cost a bytes object and a
        # list slot, about 56 bytes, per chunk, and a client pacing two
        # bytes per segment made the 64 KiB pending cap cost 1.4 MiB.
        self._pending = bytearray()
        # The connected destination protocol (an _OutboundProtocol, typed Any
        # because its transport is used through TCP-only methods).
        self._outbound: Any = None
        self._outboundEarly = bytearray()
        self._clientEOF = False
        self._outboundEOF = False
        self._clientGone = False
        self._outboundGone = False
        self._finished = False
        self._started = 0.0
        self._lastActivity = 0.0
        self._limitKey = ""
        self.id = factory._nextSessionId()
        self._clientHost = "?"
        self._connectedTo: str | None = None
        # Resolved addresses still to be judged, and the approved ones still
        # to be tried (each with the decision that approved it), in the
        # resolver's order of preference.
        self._unjudged: list[AccessRequest] = []
        self._candidates: list[tuple[AccessRequest, Decision]] = []
        self._firstDenial: Decision | None = None
        # The decision of the address being tried (or connected to).
        self._approval = _UNDECIDED
        # The client's identd is asked at most once per session (its answer
        # does not depend on the destination): what it said, or why it
        # said nothing.
        self._identUser: str | None = None
        self._identError: str | None = None
        # BIND: the listener, the addresses the peer may come from (each
        # with the decision that approved it), and whether this session
        # counts against its client's BIND cap.
        self._listener: Any = None
        self._bindPeers: Mapping[Any, Decision] = _NO_PEERS
        self._bindCounted = False
        # How the request ended, once it has (L{None}: not yet, or no
        # request); the reply sent is what SOCKS4 says of it.
        self._outcome: Outcome | None = None
        self._reason = ""
        self._rule: str | None = None
        # The relay, from the reply on (see _startRelay).
        self._relay: Relay | None = None

    # -- connection events --------------------------------------------------

    def connectionMade(self) -> None:
        self._started = self._lastActivity = self._clock.seconds()
        self._identifyClient()
        refusal = self.factory._admit(self)
        if refusal is not None:
            self._fail(Outcome.DENIED, refusal)
            return
        self._timer = self._clock.callLater(
            self._limits.negotiateTimeout, self._timedOut, "negotiate timeout"
        )

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is SessionState.RELAYING:
            # The hot path: the relay, straight through.
            self._relay.clientDataReceived(data)  # type: ignore[union-attr]
        elif state is SessionState.NEGOTIATING:
            try:
                request = self._parser.feed(data)
            except SOCKSProtocolError as e:
                self._fail(_badRequest(e), f"bad request: {type(e).__name__}: {e}")
                return
            if request is not None:
                self._requestReceived(request, self._parser.trailingData)
        elif state is not SessionState.CLOSED:
            self._queue(data)
        # CLOSED: lingering after a failure reply; input is discarded.

    def readConnectionLost(self) -> None:
        """The client sent FIN: pass it on, or note it until the relay is up."""
        self._clientEOF = True
        if self.state is SessionState.RELAYING:
            self._relay.clientReadLost()  # type: ignore[union-attr]
        elif self.state is SessionState.NEGOTIATING:
            self._fail(None, "client closed before completing its request")
        elif self.state is SessionState.WAITING:
            # A BIND client that hangs up before its peer arrives (a FIN is
            # all we see of that): free the listener now, not at the timeout.
            self._fail(None, "client closed while waiting for the BIND peer")
        elif self.state is SessionState.CLOSED and self._outbound is None:
            # Lingering after a failure reply: the client has read it.
            self.transport.loseConnection()  # type: ignore[union-attr]
        # RESOLVING/CONNECTING: a client may send its request, its data and
        # FIN at once (`printf ... | nc -N`); the FIN is passed on in
        # _connected.

    def writeConnectionLost(self) -> None:
        """Our half-close towards the client completed; nothing to do."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        relay = self._relay
        if relay is not None:
            relay.leaveSplice()
        if self.state is not SessionState.CLOSED:
            self._close("client closed")
        self._clientGone = True
        if relay is not None and not self._outboundGone:
            # Deliver what the destination still has buffered, within the
            # drain limit.
            relay.unthrottleServer()
            closeNow(relay.server)
            if self._timer is None:
                self._armDrainTimer()
        else:
            self._cancelTimer()
        if not self._finished:
            self._finished = True
            self.factory._sessionEnded(self, self._record())

    # -- the request --------------------------------------------------------

    def _clientKey(self) -> str:
        """The client key per-client limits count by (see L{clientKey})."""
        return clientKey(
            self._clientAddress, self._clientHost, self._limits.ipv6ClientPrefix
        )

    @property
    def _clientText(self) -> str:
        # Built when needed (logs, status) rather than kept: one string
        # less per tunnel.
        host = self._clientHost
        return host if host == "unix" else f"{host}:{self._clientPort}"

    def _identifyClient(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        self._clientAddress = normalizeAddress(host) if isinstance(host, str) else None
        self._clientPort = int(getattr(peer, "port", 0) or 0)
        self._clientHost = escapeField(host) if isinstance(host, str) else "unix"

    def _requestReceived(self, request: Request, trailing: bytes) -> None:
        self.request = request
        self.factory.admission.negotiated(self)
        # Asked again now: behind a PROXY-protocol listener the real client
        # address is known only once the header has been read (a socket's
        # own transport cannot change its peer).
        if not isinstance(self.transport, tcp.Connection):
            self._identifyClient()
        # One policy judges the whole request, even if a reload replaces the
        # factory's policy between the name check and the address checks.
        self._policy = self.factory.policy
        self._restartTimer(self._limits.connectTimeout, "connect timeout")
        if trailing:
            self._queue(trailing)
        self.state = SessionState.CONNECTING
        access = AccessRequest(
            client=self._clientAddress,
            clientPort=self._clientPort,
            command=request.command,
            user=request.user,
            port=request.port,
            hostname=request.hostname,
            address=request.address,
        )
        if request.isSOCKS4A:
            self.state = SessionState.RESOLVING
            self._judge(access, self._nameApproved)
        else:
            self._judge(access, self._addressApproved)

    def _judge(
        self,
        access: AccessRequest,
        allowed: Callable[[AccessRequest, Decision], None],
        denied: Callable[[AccessRequest, Decision], None] | None = None,
    ) -> None:
        """
        Ask this request's policy about C{access}; continue with C{allowed}
        or C{denied} (by default a denial rejects the request).
        """
        try:
            result = self._policy.decide(access)
        except Exception:
            _log.failure("access policy raised")
            self._fail(Outcome.FAILURE, "access policy error")
            return
        if isinstance(result, Deferred):
            self._inFlight = result
            result.addCallbacks(
                self._judged,
                self._policyFailed,
                callbackArgs=(access, allowed, denied),
            )
        else:
            self._judged(result, access, allowed, denied)

    def _judged(
        self,
        decision: Decision,
        access: AccessRequest,
        allowed: Callable[[AccessRequest, Decision], None],
        denied: Callable[[AccessRequest, Decision], None] | None,
    ) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            return
        if decision.allowed:
            allowed(access, decision)
        elif denied is not None:
            denied(access, decision)
        else:
            self._rejected(decision)

    def _runHook(self, hook: Callable[..., object] | None, *args: object) -> None:
        """Run a decision's hook; a failing hook is logged, never fatal."""
        if hook is not None:
            try:
                hook(*args)
            except Exception:
                _log.failure("rule hook failed")

    def _rejected(self, decision: Decision) -> None:
        self._rule = decision.rule
        self._runHook(decision.action, None)
        self._fail(Outcome.DENIED, f"denied: {decision.reason}")

    def _policyFailed(self, failure: Failure) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            return
        _log.failure("access policy failed", failure)
        self._fail(Outcome.FAILURE, "access policy error")

    def _nameApproved(self, access: AccessRequest, decision: Decision) -> None:
        # The resolver runs getaddrinfo on a few threads; names that never
        # answer, from one client or a few, would stall every other client's
        # lookups, so the lookup budget says when this one may start (a busy
        # client behind one NAT address waits its turn rather than get 91).
        # A name the cache knows is answered at once, on no thread: it
        # needs no turn, and never waits behind slow names.
        if answeredFromMemory(self.factory.nameResolver, access.hostname or ""):
            self._startLookup(None, access)
            return
        key = self._clientKey()
        self.factory.admission.lookups.request(
            key, self, lambda: self._startLookup(key, access)
        )

    def _startLookup(self, key: str | None, access: AccessRequest) -> None:
        lookups = self.factory.admission.lookups
        # The client's turn ends when the resolver is done, not when this
        # session gives up: an abandoned getaddrinfo still holds its thread.
        d = resolveHostname(
            self.factory.nameResolver,
            access.hostname or "",
            access.port,
            finished=None if key is None else lambda: lookups.finished(key),
        )
        self._inFlight = d
        d.addCallbacks(self._resolved, self._resolveFailed, callbackArgs=(access,))

    def _resolved(self, addresses: list[Any], access: AccessRequest) -> None:
        self._inFlight = None
        self.factory.metrics.dnsLookup(ok=True)
        if self.state is SessionState.CLOSED:
            return
        # Every address is judged, and only approved ones are ever connected
        # to; there is no second lookup, so no DNS-rebinding window.
        self.state = SessionState.CONNECTING
        # A name that resolves to 0.0.0.0 or :: ("0", "0.0.0.0") would reach
        # the proxy host itself on Linux: refused like DSTIP 0.0.0.0, before
        # any policy could approve it.
        usable = [a for a in addresses if not a.is_unspecified]
        if not usable:
            self._fail(Outcome.DENIED, "name resolves to an unspecified address")
            return
        self._unjudged = [
            replace(access, address=address)
            for address in usable[: self.factory.maxCandidates]
        ]
        self._judgeNextCandidate()

    def _judgeNextCandidate(self) -> None:
        if self._unjudged:
            self._judge(
                self._unjudged.pop(0), self._candidateAllowed, self._candidateDenied
            )
        elif self._candidates:
            self._nextCandidate()
        elif self._firstDenial is not None:
            self._rejected(self._firstDenial)
        else:  # a resolver that returned addresses and then none: defensive
            self._fail(Outcome.FAILURE, "no address to connect to")

    def _candidateAllowed(self, access: AccessRequest, decision: Decision) -> None:
        self._candidates.append((access, decision))
        self._judgeNextCandidate()

    def _candidateDenied(self, access: AccessRequest, decision: Decision) -> None:
        if self._firstDenial is None:
            self._firstDenial = decision
        self._judgeNextCandidate()

    def _resolveFailed(self, failure: Failure) -> None:
        self._inFlight = None
        if not failure.check(CancelledError):
            self.factory.metrics.dnsLookup(ok=False)
        if self.state is not SessionState.CLOSED:
            self._fail(Outcome.HOST_UNREACHABLE, f"name lookup failed: {failure.value}")

    def _addressApproved(self, access: AccessRequest, decision: Decision) -> None:
        self._candidates.append((access, decision))
        self._nextCandidate()

    # -- each approved address, under its own decision ------------------------

    def _nextCandidate(self, refusal: tuple[Outcome, str] | None = None) -> None:
        """
        Use the approved addresses in order, each only under the decision
        that approved it: its own ident check, its own action, its own rule
        in the record.  CONNECT connects to the first that passes (and comes
        back here if that fails); BIND accepts its peer from any that pass.
        With none left, the last refusal is the reply.

        @param refusal: why the previous address was not used, if one was
            tried.
        """
        bind = self.request is not None and self.request.command is Command.BIND
        while self._candidates:
            access, decision = self._candidates[0]
            mode = decision.identMode or self.factory.identMode
            refusal = None if bind else self._selfRefusal(access)
            if refusal is None and mode is not IdentMode.OFF and not self._identKnown():
                # Asked when the first address needs it, not before: an
                # address whose rule asks nothing is not kept waiting.
                self._askIdent()
                return
            del self._candidates[0]
            self._approval = decision
            self._rule = decision.rule
            if refusal is None:
                refusal = self._identRefusal(mode)
            if refusal is not None:
                continue
            if bind:
                self._bindPeers = {**self._bindPeers, access.address: decision}
                continue
            self._runHook(decision.action, self._identUser)
            self._connect(access)
            return
        if self._bindPeers:
            # Listen under the first address's decision; a peer from
            # another address brings its own (see _bindPeerArrived).
            self._approval = decision = next(iter(self._bindPeers.values()))
            self._rule = decision.rule
            self._runHook(decision.action, self._identUser)
            self._bindListen()
            return
        outcome, reason = refusal or (Outcome.FAILURE, "no address to connect to")
        self._fail(outcome, reason)

    def _selfRefusal(self, access: AccessRequest) -> tuple[Outcome, str] | None:
        """
        The refusal of a destination that is this server itself: a tunnel
        to its own listener would make a request pipelined into it come
        from the server's own address (laundering the client's).
        """
        address, port = access.address, access.port
        if address is None:
            return None
        if not self.factory.listeningAddresses.includes(address, port):
            # Always a self address, whether or not the listeners were
            # registered: the one this client came in on.
            host: Any = self.transport.getHost()  # type: ignore[union-attr]
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

    # -- ident (RFC 1413) -----------------------------------------------------

    def _identKnown(self) -> bool:
        """Whether identd has been asked (and has answered, or failed to)."""
        return self._identUser is not None or self._identError is not None

    def _askIdent(self) -> None:
        """Ask the client's identd who it is, then go on with the addresses."""
        resolver = self.factory.identResolver
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        host: Any = self.transport.getHost()  # type: ignore[union-attr]
        if resolver is None or self._clientAddress is None:
            self._identFailed(Failure(IdentUnreachable("no ident for this client")))
            return
        d = resolver.lookup((peer.host, peer.port), (host.host, host.port))
        self._inFlight = d
        d.addCallbacks(self._identified, self._identFailed)

    def _identified(self, user: str) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            return
        request = self.request
        matched = request is not None and user == request.user
        self.factory.metrics.identLookup(outcome="match" if matched else "mismatch")
        self._identUser = user
        if not matched:
            # Once per session, with the decision of the address that
            # needed the answer first.
            hook = self._candidates[0][1].identFailed
            self._runHook(hook, IdentFailure.BAD_ID, user)
        self._nextCandidate()

    def _identFailed(self, failure: Failure) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            return
        self.factory.metrics.identLookup(outcome=type(failure.value).__name__)
        self._identError = failure.getErrorMessage()
        hook = self._candidates[0][1].identFailed
        self._runHook(hook, IdentFailure.NO_IDENTD, None)
        self._nextCandidate()

    def _identRefusal(self, mode: IdentMode) -> tuple[Outcome, str] | None:
        """The reply and reason if the ident answer rules out C{mode}."""
        if mode is IdentMode.OFF:
            return None
        if self._identError is not None:
            if mode is IdentMode.STRICT:
                return Outcome.NO_IDENTD, f"no ident answer: {self._identError}"
            _log.info(
                "no ident answer for {client}, allowed (lenient): {why}",
                client=self._clientText,
                # The identd runs on the client's host: its ERROR text is
                # the client's text.
                why=escapeField(self._identError),
            )
            return None
        if self.request is None or self._identUser != self.request.user:
            return Outcome.IDENT_MISMATCH, "ident user differs from USERID"
        return None

    # -- BIND -----------------------------------------------------------------

    def _bindListen(self) -> None:
        """Open the one-shot listener and send the first reply."""
        # The inbound peer must come from the requested address (for 4A, one
        # of the approved addresses of the name): see _bindPeers.
        interface = self._bindInterface()
        if interface is None:
            self._fail(
                Outcome.ADDRESS_TYPE_NOT_SUPPORTED,
                "BIND needs an IPv4 address to listen on",
            )
            return
        if not self.factory._bindStarted(self):
            self._fail(Outcome.DENIED, "max-binds-per-client reached")
            return
        self._bindCounted = True
        d = self.factory.connector.listen(interface, _BindFactory(self))
        self._inFlight = d
        d.addCallbacks(self._bindListening, self._bindListenFailed)

    def _bindInterface(self) -> str | None:
        """
        The IPv4 address to listen on and to tell the client: the configured
        one, else the address the client reached us on (never 0.0.0.0
        unless configured: the client must be able to pass it on).
        """
        if self.factory.bindAddress is not None:
            return self.factory.bindAddress
        local = normalizeAddress(getattr(self.transport.getHost(), "host", ""))  # type: ignore[union-attr]
        return str(local) if local is not None and local.version == 4 else None

    def _bindListening(self, port: Any) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            port.stopListening()
            self._bindDone()
            return
        self._listener = port
        host = port.getHost()
        self.transport.write(  # type: ignore[union-attr]
            encodeReply(ReplyCode.GRANTED, host.port, IPv4Address(host.host))
        )
        self.state = SessionState.WAITING
        self._restartTimer(self._limits.bindTimeout, "bind timeout")

    def _bindListenFailed(self, failure: Failure) -> None:
        self._inFlight = None
        self._bindDone()
        if self.state is not SessionState.CLOSED:
            self._fail(Outcome.FAILURE, f"cannot listen: {failure.getErrorMessage()}")

    def _bindPeerArrived(self, addr: Any) -> _OutboundProtocol | None:
        """An inbound connection from C{addr}: the one we wait for, or not."""
        if self.state is not SessionState.WAITING:
            return None
        self._stopListener()
        host = getattr(addr, "host", "")
        decision = self._bindPeers.get(normalizeAddress(host))
        if decision is None:
            expected = ", ".join(sorted(str(a) for a in self._bindPeers))
            self._fail(
                Outcome.DENIED,
                f"BIND peer {escapeField(host)} is not the requested {expected}",
            )
            return None
        if decision != self._approval:
            # The peer came from an address another rule approved: that
            # rule is the one the session ends up under.
            self._approval = decision
            self._rule = decision.rule
            self._runHook(decision.action, self._identUser)
        self._bindPeers = _NO_PEERS
        return _OutboundProtocol(self)

    def _bindPeerConnected(self, peer: _OutboundProtocol) -> None:
        address: Any = peer.transport.getPeer()  # type: ignore[union-attr]
        self._connectedTo = f"{address.host}:{address.port}"
        # The second reply names the peer that connected (as CSTC and Dante).
        reply = encodeReply(ReplyCode.GRANTED, address.port, IPv4Address(address.host))
        self._startRelay(peer, reply)

    def _stopListener(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.stopListening()
        self._bindDone()

    def _bindDone(self) -> None:
        if self._bindCounted:
            self._bindCounted = False
            self.factory._bindEnded(self)

    def _connect(self, access: AccessRequest) -> None:
        """Connect to an approved address."""
        address = access.address
        if address is None:  # a policy cannot get here without an address
            self._fail(Outcome.FAILURE, "no destination address")
            return
        self._connectedTo = hostPort(addressText(address), access.port)
        d = self.factory.connector.connect(address, access.port, _OutboundFactory(self))
        self._inFlight = d
        d.addCallbacks(self._connected, self._connectFailed)

    def _connectFailed(self, failure: Failure) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            return
        # The next address, if any (e.g. "localhost" gives ::1 first, and
        # the service is IPv4-only); else this failure is the reply.
        self._nextCandidate(
            (_connectOutcome(failure), f"connect failed: {failure.getErrorMessage()}")
        )

    def _connected(self, outbound: Any) -> None:
        self._inFlight = None
        if self.state is SessionState.CLOSED:
            outbound.transport.loseConnection()
            return
        self._startRelay(outbound, encodeReply(ReplyCode.GRANTED))

    def _startRelay(self, outbound: Any, reply: bytes) -> None:
        """Send the (last) reply 90, then hand the tunnel to a L{Relay}."""
        self._outbound = outbound
        self._outcome = Outcome.GRANTED
        self.state = SessionState.RELAYING
        # Not kept in _lastActivity: the relay keeps the time from here on
        # (one float per tunnel, not two).
        now = self._clock.seconds()
        self.factory.metrics.handshake(seconds=now - self._started)
        self._restartTimer(self._limits.idleTimeout, "idle timeout")
        # The negotiation is over: what it held is garbage from here on.
        self._parser = self._unjudged = self._candidates = _SPENT
        self._approval = _UNDECIDED
        self._clientAddress = None  # for the policy and ident, both done
        pending, self._pending = bytes(self._pending), _SPENT
        early, self._outboundEarly = bytes(self._outboundEarly), _SPENT
        factory = self.factory
        self._relay = relay = Relay(
            self,
            self._clock,
            self.transport,
            outbound.transport,
            factory.splice,
        )
        # Installed before the start, so that the destination's bytes read
        # from here on go to the relay.
        outbound._relay = relay
        relay.start(
            reply,
            pending,
            early,
            self._clientEOF,
            self._outboundEOF,
            factory.spliceAtStart,
        )

    # RelayOwner: what the relay reports.

    def _relayFinished(self) -> None:
        self._endRelay("both sides closed")

    def _relayPipes(self) -> PipePool:
        return self.factory._pipePool()

    def _relayNoPipe(self, error: OSError) -> None:
        _log.info(
            "no pipe for the in-kernel relay ({why}): {client} to {destination}"
            " carries on through the copying relay",
            why=error.strerror or error,
            client=self._clientText,
            destination=self._connectedTo,
        )

    @property
    def bytesUp(self) -> int:
        """Bytes relayed from the client to the destination so far."""
        relay = self._relay
        return 0 if relay is None else relay.bytesUp

    @property
    def bytesDown(self) -> int:
        """Bytes relayed from the destination to the client so far."""
        relay = self._relay
        return 0 if relay is None else relay.bytesDown

    def _lastActive(self) -> float:
        relay = self._relay
        return self._lastActivity if relay is None else relay.lastActivity

    # -- the destination side -------------------------------------------------

    def _outboundDataReceived(self, data: bytes) -> None:
        # Once relaying, the outbound protocol hands its bytes to the relay
        # directly; these are the bytes around it.
        if self.state is not SessionState.CLOSED:
            # Cannot normally happen (the connect Deferred fires before the
            # reactor reads), but never drop bytes.
            self._outboundEarly += data
        # CLOSED: the client is gone; nothing can deliver these bytes.

    def _outboundReadLost(self) -> None:
        self._outboundEOF = True
        if self.state is SessionState.RELAYING:
            self._relay.serverReadLost()  # type: ignore[union-attr]

    def _outboundLost(self) -> None:
        relay = self._relay
        if relay is not None:
            relay.leaveSplice()
        self._outboundGone = True
        if self.state is SessionState.RELAYING:
            self._endRelay("destination closed")
        elif self._clientGone:
            self._cancelTimer()

    def _endRelay(self, reason: str, drainTimeout: float | None = None) -> None:
        """
        Close both legs, each after its buffered data is written, aborting
        whatever is still open after C{drainTimeout} (default: the idle
        timeout, or the connect timeout when idling is unlimited).
        """
        relay: Any = self._relay
        relay.leaveSplice()
        self._close(reason)
        relay.unthrottle()
        # Closing the client runs connectionLost (at once, when nothing is
        # buffered), which closes the outbound leg as well; the second call
        # is then a no-op.
        closeNow(self.transport)
        closeNow(relay.server)
        self._armDrainTimer(drainTimeout)

    def _armDrainTimer(self, delay: float | None = None) -> None:
        # loseConnection() waits until buffered data is written; a peer that
        # stops reading would otherwise hold both sockets for ever.
        # One timer at a time: closing a half-closed client can run
        # connectionLost (which arms this too) inside _endRelay; a second,
        # uncancelled timer would keep the whole session alive until it fired.
        self._cancelTimer()
        if self._clientGone and (self._outbound is None or self._outboundGone):
            return
        if delay is None:
            delay = self._limits.idleTimeout or self._limits.connectTimeout
        self._timer = self._clock.callLater(delay, self._drainTimedOut)

    def _drainTimedOut(self) -> None:
        self._timer = None
        if not self._clientGone:
            self.transport.abortConnection()  # type: ignore[union-attr]
        if self._outbound is not None and not self._outboundGone:
            self._outbound.transport.abortConnection()

    # -- helpers --------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= self._limits.maxPendingBytes:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _restartTimer(self, seconds: float, why: str) -> None:
        timer = self._timer
        if (
            seconds > 0
            and timer is not None
            and timer.active()
            and timer.func == self._timedOut  # type: ignore[attr-defined]
        ):
            # One DelayedCall carries a session through its negotiate,
            # connect and idle deadlines: moving it later is a field update,
            # where cancel plus callLater costs an object and heap work.
            timer.args = (why,)  # type: ignore[attr-defined]
            timer.reset(seconds)
            return
        self._cancelTimer()
        self._timer = (
            self._clock.callLater(seconds, self._timedOut, why) if seconds > 0 else None
        )

    def _timedOut(self, why: str) -> None:
        self._timer = None
        if self.state is SessionState.NEGOTIATING:
            # No complete request to answer; a reply would be noise.
            self._fail(None, why)
        elif self.state is SessionState.RELAYING:
            idle = self._clock.seconds() - self._lastActive()
            remaining = self._limits.idleTimeout - idle
            if remaining > 0:
                # Bytes moved since the timer was armed: wait out the rest.
                self._restartTimer(remaining, why)
                return
            # Idle: nothing has moved either way. A clean close when nothing
            # is buffered; if a peer has stopped reading, what it left
            # buffered cannot be delivered, so only a short linger.
            self._endRelay(why, self._limits.lingerTimeout)
        else:
            # Waiting for the policy, a lookup, identd or the connect.
            self._fail(Outcome.TIMED_OUT, why)

    def _fail(self, outcome: Outcome | None, reason: str) -> None:
        """
        Tell the client C{outcome} (L{None}: nothing to answer), then close
        without risking a reset.
        """
        if self.state is SessionState.CLOSED:
            return
        self._close(reason)
        if outcome is not None:
            self._outcome = outcome
            self.transport.write(encodeReply(replyFor(outcome)))  # type: ignore[union-attr]
        if self._clientEOF:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        # Closing a socket with unread input makes the kernel send RST, which
        # can destroy the reply before the client reads it. So: FIN after the
        # reply, discard input, and close when the client does or the linger
        # timer fires.
        halfCloseNow(self.transport)
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self._timer = self._clock.callLater(
            self._limits.lingerTimeout, self._drainTimedOut
        )

    def _close(self, reason: str) -> None:
        """Enter CLOSED: stop the timer and abandon any pending operation."""
        self.state = SessionState.CLOSED
        self._reason = reason
        self._pending = _SPENT
        if self._outbound is not None:
            # Uninstall the relay: later bytes from the destination are
            # discarded (see _outboundDataReceived).
            self._outbound._relay = None
        self._cancelTimer()
        if self.request is not None and self.request.isSOCKS4A:
            self.factory.admission.lookups.forget(self._clientKey(), self)
        self._stopListener()
        if self._inFlight is not None:
            inFlight, self._inFlight = self._inFlight, None
            inFlight.cancel()

    def abort(self, reason: str) -> None:
        """Close this session at once (both legs, buffered data dropped)."""
        if self._relay is not None:
            self._relay.leaveSplice()
        if self.state is not SessionState.CLOSED:
            self._close(reason)
        self.transport.abortConnection()  # type: ignore[union-attr]
        if self._outbound is not None and not self._outboundGone:
            self._outbound.transport.abortConnection()

    def info(self) -> SessionInfo:
        """A snapshot of this session for the status page."""
        request = self.request
        return SessionInfo(
            id=self.id,
            client=self._clientText,
            user=escapeField(request.userid) if request is not None else "",
            identUser=(
                escapeField(self._identUser) if self._identUser is not None else None
            ),
            command=request.command.name.lower() if request is not None else None,
            destination=(
                hostPort(request.destination, request.port)
                if request is not None
                else None
            ),
            resolved=self._connectedTo if self._outcome is Outcome.GRANTED else None,
            state=self.state.value,
            bytesUp=self.bytesUp,
            bytesDown=self.bytesDown,
            started=self._started,
            idle=max(0.0, self._clock.seconds() - self._lastActive()),
            rule=escapeField(self._rule) if self._rule is not None else None,
        )

    def _record(self) -> SessionRecord:
        request = self.request
        outcome = self._outcome
        destination = None
        if request is not None:
            destination = hostPort(request.destination, request.port)
        return SessionRecord(
            client=self._clientText,
            user=escapeField(request.userid) if request is not None else "",
            command=request.command.name.lower() if request is not None else None,
            destination=destination,
            resolved=self._connectedTo if self._outcome is Outcome.GRANTED else None,
            reply=int(replyFor(outcome)) if outcome is not None else None,
            bytesUp=self.bytesUp,
            bytesDown=self.bytesDown,
            duration=self._clock.seconds() - self._started,
            identUser=(
                escapeField(self._identUser) if self._identUser is not None else None
            ),
            reason=escapeField(self._reason),
            rule=escapeField(self._rule) if self._rule is not None else None,
            outcome=outcome.value if outcome is not None else None,
        )


class SOCKSv4ServerFactory(Factory):
    """
    Builds L{SOCKSv4ServerProtocol}s; holds a server's collaborators and
    counters.

    @param reactor: provides L{IReactorTime} (timeouts) and, unless a
        C{connector} is given, L{IReactorTCP}.
    @param policy: who may do what; L{LoopbackClientsPolicy} by default.
    @param connector: makes outbound connections; direct TCP by default.
    @param nameResolver: resolves SOCKS4A names; the reactor's
        C{nameResolver} by default.
    @param limits: timeouts and limits.
    @param sessionObserver: called with each L{SessionRecord} as its session
        ends, besides the log event (for accounting).
    @param identResolver: asks the client host's identd (RFC 1413).
    @param identMode: the ident check for requests whose policy decision
        does not choose one (rules choose with C{?=}); off by default.
    @param bindAddress: the IPv4 address BIND listeners listen on and name
        in their first reply; by default the address the client reached.
    @param metrics: told about the server's events, for monitoring: an
        L{IServerMetrics} provider (such as L{ServerMetrics}), or any object
        with some of its methods (C{sessionStarted(session)},
        C{sessionEnded(record)}, C{sessionShed()}, C{dnsLookup(ok)},
        C{identLookup(outcome)}, C{handshake(seconds)}; the missing ones do
        nothing).  A method that raises is logged, never fatal.
    @param splice: relay in the kernel with C{splice(2)} (Linux).  L{None}
        (the default): a tunnel starts on the copying relay and moves into
        the kernel at its first bulk read (an idle tunnel then holds no
        relay objects and no pipe), where available; the environment
        variable C{TWISTED_SOCKS_RELAY} can override the default with
        C{copy} (never) or C{splice} (from the start).  C{True}: from the
        start of every tunnel (L{ValueError} where it is not available).
        C{False}: always copy through Python.  A session whose transports
        are not plain TCP or UNIX sockets (TLS, a HAProxy wrapper) copies
        whatever this says.
    """

    protocol = SOCKSv4ServerProtocol  # type: ignore[assignment]
    noisy = False
    #: How many of a name's addresses are judged and tried, at most.
    maxCandidates = 4

    def __init__(
        self,
        reactor: IReactorTime,
        policy: IAccessPolicy | None = None,
        connector: IOutboundConnector | None = None,
        nameResolver: IHostnameResolver | None = None,
        limits: Limits | None = None,
        sessionObserver: Callable[[SessionRecord], object] | None = None,
        identResolver: IIdentResolver | None = None,
        identMode: IdentMode = IdentMode.OFF,
        bindAddress: str | None = None,
        metrics: object = None,
        splice: bool | None = None,
    ) -> None:
        self.reactor = reactor
        atStart = bool(splice)
        if splice is None:
            mode = os.environ.get("TWISTED_SOCKS_RELAY", "auto").lower()
            splice = spliceAvailable() and mode != "copy"
            atStart = splice and mode == "splice"
        elif splice and not spliceAvailable():
            raise ValueError("splice relaying needs Linux and Python 3.10 or later")
        #: Whether sessions relay with C{splice(2)} where their transports
        #: allow it.
        self.splice = splice
        #: Whether they do from the start, rather than from the first bulk
        #: read.
        self.spliceAtStart = atStart
        self._pipes: PipePool | None = None
        #: The IPv4 address BIND listeners use and announce; L{None}: the
        #: address each client reached the server on.
        self.bindAddress = bindAddress
        #: The addresses this server listens on: a CONNECT to one of them
        #: is refused (see L{addListeningAddress}).
        self.listeningAddresses = ListeningAddresses()
        #: Asks client hosts' identd; L{None}: every lookup counts as "no
        #: identd" (so strict mode then refuses with 92).
        self.identResolver = identResolver
        #: The ident check for requests whose policy decision names none.
        self.identMode = identMode
        self.limits = limits if limits is not None else Limits()
        self.policy: IAccessPolicy = (
            policy if policy is not None else LoopbackClientsPolicy()
        )
        if connector is None:
            # No timer of the connector's own: the session's connect
            # deadline (limits.connectTimeout) cancels the attempt.
            connector = TCPConnector(reactor, timeout=None)  # type: ignore[arg-type]
        self.connector: IOutboundConnector = connector
        if nameResolver is None:
            nameResolver = reactor.nameResolver  # type: ignore[attr-defined]
        self.nameResolver: IHostnameResolver = nameResolver
        self._sessionObserver = sessionObserver
        #: Every count a limit is checked against, and the checks.
        self.admission = Admission(self.limits, reactor, self._shed)
        #: Sessions admitted and not yet ended.
        self.activeSessions: set[SOCKSv4ServerProtocol] = self.admission.active
        #: Sessions ended, admitted or not.
        self.sessionsEnded = 0
        #: Running SOCKS4A lookups per client key.
        self.lookupsByClient = self.admission.lookups.running
        #: Admitted connections per client key.
        self.connectionsByClient = self.admission.connectionsByClient
        #: Open BIND listeners per client key (see maxBindsPerClient).
        self.bindsByClient = self.admission.bindsByClient
        self.metrics = metrics
        self._lastSessionId = 0

    def addListeningAddress(self, address: IAddress) -> None:
        """
        Tell the server an address it listens on (a listening port's
        C{getHost()}), so that it refuses a CONNECT to it with 91: a tunnel
        to itself would let a request pipelined into it come from the
        server's own address, which rules trusting local clients allow.  For
        a wildcard address (C{0.0.0.0}, C{::}) every local address on that
        port is refused.  C{twistd socks} and C{twisted-socks} call this for
        each of their listeners; a program that listens with this factory
        itself should too.  Whatever is said here, each session refuses the
        address and port its own client connected to.  Addresses that are
        not IP (UNIX sockets) are ignored.
        """
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if isinstance(host, str) and isinstance(port, int):
            self.listeningAddresses.add(host, port)

    def buildProtocol(self, addr: IAddress | None) -> SOCKSv4ServerProtocol:  # type: ignore[override]
        """Make the protocol for one client connection."""
        return self.protocol(self)

    def stopFactory(self) -> None:
        """Close the idle pipes of the splice relay (live relays keep theirs)."""
        if self._pipes is not None:
            self._pipes.close()
            self._pipes = None

    def _pipePool(self) -> PipePool:
        if self._pipes is None:
            self._pipes = PipePool()
        return self._pipes

    @property
    def rejectedOverLimit(self) -> int:
        """Connections turned away by a connection limit."""
        return self.admission.rejectedOverLimit

    @property
    def sessionsShed(self) -> int:
        """Sessions closed while negotiating, to make room for new clients."""
        return self.admission.shedCount

    def _admit(self, session: SOCKSv4ServerProtocol) -> str | None:
        """Admit C{session}, or say which limit turns it away."""
        key = session._clientKey()
        refusal = self.admission.admit(session, key)
        if refusal is None:
            # Kept: behind a PROXY-protocol listener the address changes
            # once the header is read, and the count must come off the same
            # key.
            session._limitKey = key
            self._metrics.sessionStarted(session=session)
        return refusal

    def _shed(self, session: SOCKSv4ServerProtocol) -> None:
        # No reply: the session sent no complete request to answer (as at
        # its negotiation deadline).  An abort, not a FIN and a linger: the
        # slot and the descriptor must be free now, for the new client.
        self._metrics.sessionShed()
        session.abort(SHED_REASON)

    def sessions(self) -> list[SessionInfo]:
        """Snapshots of the sessions in progress, oldest first."""
        return sorted(
            (session.info() for session in self.activeSessions), key=lambda i: i.id
        )

    def _nextSessionId(self) -> int:
        self._lastSessionId += 1
        return self._lastSessionId

    @property
    def metrics(self) -> IServerMetrics:
        """
        Told about the server's events: what was given as C{metrics},
        guarded and completed (see L{asServerMetrics}), or a L{NullMetrics}.
        Setting it takes what the C{metrics} parameter takes.
        """
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: object) -> None:
        self._metrics = asServerMetrics(metrics)

    def _bindStarted(self, session: SOCKSv4ServerProtocol) -> bool:
        return self.admission.bindStarted(session._clientKey())

    def _bindEnded(self, session: SOCKSv4ServerProtocol) -> None:
        self.admission.bindEnded(session._clientKey())

    def _sessionEnded(
        self, session: SOCKSv4ServerProtocol, record: SessionRecord
    ) -> None:
        self.admission.ended(session, session._limitKey)
        self.sessionsEnded += 1
        # Rendered once here, as an f-string: the event's format is just
        # "{summary}", cheap for any observer, and the launcher's observer
        # writes the summary as it is (twisted_socks._textlog).
        _sessionLog.info("{summary}", summary=_summary(record), **_fields(record))
        self._metrics.sessionEnded(record=record)
        if self._sessionObserver is not None:
            self._sessionObserver(record)


def _badRequest(error: SOCKSProtocolError) -> Outcome | None:
    """What a malformed request is told (L{None}: nothing, just a close)."""
    if error.replyCode is None:
        return None
    if isinstance(error, UnknownCommand):
        return Outcome.COMMAND_NOT_SUPPORTED
    return Outcome.FAILURE


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


def _fields(record: SessionRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in SessionRecord.__slots__}
