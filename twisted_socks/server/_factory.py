"""
The SOCKS4/4A server's factory: one per listening server, holding its
collaborators (policy, connector, resolvers, metrics), its limits and
admission, and the sessions in progress; it builds a
L{SOCKSv4ServerProtocol} per client connection and logs each session's
record as it ends.

The names other modules have always imported from here (the session's
records and states, the protocol) are here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IHostnameResolver, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ..outbound._connect import TCPConnector
from ..outbound._selfaddress import ListeningAddresses
from ..policy._policy import IdentMode, LoopbackClientsPolicy
from ..relay._splice import PipePool, spliceAvailable
from ._admission import SHED_REASON, Admission
from ._authfailures import AuthFailures
from ._metricsguard import asServerMetrics
from ._records import (
    Limits,
    SessionInfo,
    SessionRecord,
    SessionState,
    recordFields,
    summaryLine,
)
from ._sniff import SOCKSServerProtocol
from ._socks4 import SOCKSv4ServerProtocol

if TYPE_CHECKING:
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.internet.interfaces import IAddress

    from ..interfaces import (
        IAccessPolicy,
        IIdentResolver,
        IOutboundConnector,
        IServerMetrics,
    )
    from ..outbound._routed import Router
    from ._session import ServerSession

__all__ = [
    "ALL_PROTOCOLS",
    "Limits",
    "SOCKSServerProtocol",
    "SOCKSv4ServerFactory",
    "SOCKSv4ServerProtocol",
    "SessionInfo",
    "SessionRecord",
    "SessionState",
]

#: The SOCKS versions a server speaks unless told otherwise.
ALL_PROTOCOLS = frozenset({4, 5})

#: Where the per-session records go: a namespace of their own, so observers
#: can route them (to a JSON file, to syslog) apart from everything else.
_sessionLog = Logger(namespace="twisted_socks.session")


class SOCKSv4ServerFactory(Factory):
    """
    Builds L{SOCKSServerProtocol}s (SOCKS4/4A and SOCKS5 on one port);
    holds a server's collaborators and counters.

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
    @param protocols: the SOCKS versions served (4: SOCKS4 and 4A, 5:
        SOCKS5); a client of another is refused (SOCKS4 with 91, SOCKS5
        with C{05 FF}) and closed.  Both by default.
    @param credentialsChecker: an L{ICredentialsChecker} of
        C{IUsernamePassword} credentials (such as C{PasswordFileChecker},
        or an embedder's own: PAM, LDAP, a database).  With one, SOCKS5
        clients must log in with username/password (RFC 1929) and SOCKS4
        requests, which cannot, are refused with 91 unless the policy says
        it judges them knowing that (its C{withUsers} is C{True}, as the
        rules' and the default policy's are when built for a server with
        users: then rules with C{auth=none} may admit them); without one,
        SOCKS5 clients use no authentication.
    @param authFailures: the failed-login limit per client (see
        L{AuthFailures}); 10 a minute by default.
    @param udpAddress: the address SOCKS5 UDP ASSOCIATE grants name as
        the relay's (for a server behind NAT); by default the address the
        client reached.  The reactor must provide C{IReactorUDP} for UDP
        ASSOCIATE.
    """

    #: The routes (C{--routes}) and the upstreams' state; L{None}: direct.
    router: Router | None = None

    protocol = SOCKSServerProtocol  # type: ignore[assignment]
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
        protocols: frozenset[int] = ALL_PROTOCOLS,
        credentialsChecker: ICredentialsChecker | None = None,
        authFailures: AuthFailures | None = None,
        udpAddress: str | None = None,
    ) -> None:
        self.reactor = reactor
        if not protocols or not protocols <= ALL_PROTOCOLS:
            raise ValueError(f"protocols must be some of 4 and 5, not {protocols!r}")
        #: The SOCKS versions served.
        self.protocols = frozenset(protocols)
        #: Checks SOCKS5 usernames and passwords; L{None}: no authentication.
        self.credentialsChecker = credentialsChecker

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
        #: The address UDP ASSOCIATE grants name; L{None}: the address each
        #: client reached the server on.
        self.udpAddress = udpAddress
        #: The port numbers of this server's UDP relay sockets, each with
        #: how many sockets have it (one per family at most): datagrams to
        #: them are refused.
        self.udpRelayPorts: dict[int, int] = {}
        #: The addresses this server listens on: a CONNECT to one of them
        #: is refused (see L{addListeningAddress}).
        self.listeningAddresses = ListeningAddresses()
        #: Asks client hosts' identd; L{None}: every lookup counts as "no
        #: identd" (so strict mode then refuses with 92).
        self.identResolver = identResolver
        #: The ident check for requests whose policy decision names none.
        self.identMode = identMode
        self.limits = limits if limits is not None else Limits()
        #: Counts failed logins per client (a client as the per-client
        #: limits count one).
        self.authFailures = (
            authFailures
            if authFailures is not None
            else AuthFailures(reactor, ipv6Prefix=self.limits.ipv6ClientPrefix)
        )
        self.policy: IAccessPolicy = (
            policy
            if policy is not None
            else LoopbackClientsPolicy(withUsers=credentialsChecker is not None)
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
        self.activeSessions: set[ServerSession] = self.admission.active
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

    def buildProtocol(self, addr: IAddress | None) -> ServerSession:  # type: ignore[override]
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

    def _admit(self, session: ServerSession) -> str | None:
        """Admit C{session}, or say which limit turns it away."""
        key = session.clientKey()
        refusal = self.admission.admit(session, key)
        if refusal is None:
            # Kept: behind a PROXY-protocol listener the address changes
            # once the header is read, and the count must come off the same
            # key.
            session._limitKey = key
            self._metrics.sessionStarted(session=session)
        return refusal

    def _shed(self, session: ServerSession) -> None:
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

    def _sessionEnded(self, session: ServerSession, record: SessionRecord) -> None:
        self.admission.ended(session, session._limitKey)
        self.sessionsEnded += 1
        # Rendered once here, as an f-string: the event's format is just
        # "{summary}", cheap for any observer, and the launcher's observer
        # writes the summary as it is (twisted_socks.app._textlog).
        _sessionLog.info(
            "{summary}", summary=summaryLine(record), **recordFields(record)
        )
        self._metrics.sessionEnded(record=record)
        if self._sessionObserver is not None:
            self._sessionObserver(record)
