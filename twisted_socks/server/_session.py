"""
One client connection of the server, whatever SOCKS version it speaks: the
connection's life from accept to close.

A front end (the SOCKS4 one in L{twisted_socks.server._socks4}) turns the
client's bytes into a L{SessionRequest} and says outcomes in its own reply
bytes (L{FrontEnd}); the request itself is served by
L{twisted_socks.server._pipeline}; the mechanics (timer, queue, relay, closing)
are L{twisted_socks.server._connection}'s.  This module decides what the
connection's events mean for its request: when it fails and with what
outcome, when the relay starts, and what the record and the status page
say of it.  Nothing here knows a version's reply codes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import escapeField, hostPort
from ..relay._fastio import closeNow, writeNow
from ..wire._outcome import Outcome
from ..wire._request import Command, UserSource
from ._associate import serveAssociation
from ._connection import Connection
from ._pipeline import servePipeline
from ._records import SessionInfo, SessionRecord, SessionState, UDPCounters

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    from twisted.internet.defer import Deferred

    from ..wire._request import SessionRequest
    from ._factory import SOCKSv4ServerFactory

__all__ = ["FrontEnd", "ServerSession"]

_log = Logger(namespace="twisted_socks.server")


class FrontEnd(Protocol):
    """
    How one protocol version says what became of a request: the seam
    between the version-neutral session and a version's replies.
    """

    def reply(
        self, outcome: Outcome, boundAddress: str | None, boundPort: int
    ) -> bytes:
        """
        The reply bytes that tell the client C{outcome}; for a grant, with
        the address and port the server bound (BIND's listener or peer;
        L{None} and 0 where the version's reply need not name one).
        """

    def replyCode(self, outcome: Outcome) -> int:
        """The version's reply code for C{outcome}, for the session record."""

    def canAnnounce(self, address: IPv4Address | IPv6Address) -> bool:
        """Whether a reply of this version can name C{address} (for BIND)."""


@implementer(IHalfCloseableProtocol)
class ServerSession(Connection):
    """
    Serves one client connection, whatever version its front end speaks.

    The front end calls L{requestReceived} with the parsed request; until
    then, L{dataReceived} hands the client's bytes to C{_negotiate}, which
    a front end's subclass defines.
    """

    # Slots: a session object lives as long as its tunnel, and at tens of
    # thousands of idle tunnels the per-instance dict is most of its memory.
    # (What only the request's negotiation needs lives in the pipeline,
    # which is garbage once the relay runs.)
    __slots__ = (
        "_finished",
        "_frontEnd",
        "_inFlight",
        "_limitKey",
        "_started",
        "connectedTo",
        "id",
        "identUser",
        "outcome",
        "request",
        "route",
        "rule",
        "udp",
        "upstream",
    )

    def __init__(self, factory: SOCKSv4ServerFactory, frontEnd: FrontEnd) -> None:
        super().__init__(factory)
        self._frontEnd = frontEnd
        self.request: SessionRequest | None = None
        #: What the request's pipeline waits for, if anything: closing the
        #: session cancels it, which ends the pipeline (see _pipeline).
        self._inFlight: Deferred[Any] | None = None
        self._finished = False
        self._started = 0.0
        self._limitKey = ""
        self.id = factory._nextSessionId()
        #: The address connected to (for BIND: the peer), as C{host:port}.
        self.connectedTo: str | None = None
        #: What the client's identd said, once asked (at most once).
        self.identUser: str | None = None
        #: How the request ended, once it has (L{None}: not yet, or no
        #: request); the reply sent is what the front end says of it.
        self.outcome: Outcome | None = None
        #: The rule of the decision the session is (or ended) under.
        self.rule: str | None = None
        #: The route (C{file:line}) and the upstream it went through, if any.
        self.route: str | None = None
        self.upstream: str | None = None
        #: A UDP association's counts (L{None}: not one).
        self.udp: UDPCounters | None = None

    # -- connection events --------------------------------------------------

    def connectionMade(self) -> None:
        """Accepted: admit the client, and give it time to ask."""
        self._started = self._lastActivity = self._clock.seconds()
        self._identifyClient()
        refusal = self.factory._admit(self)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._timer = self._clock.callLater(
            self._limits.negotiateTimeout, self._timedOut, "negotiate timeout"
        )

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client: to the relay, the front end, or the queue."""
        state = self.state
        if state is SessionState.RELAYING:
            # The hot path: the relay, straight through.
            self._relay.clientDataReceived(data)  # type: ignore[union-attr]
        elif state is SessionState.NEGOTIATING:
            self._negotiate(data)
        elif state is SessionState.CLOSED:
            # Lingering after a failure reply: input is discarded.
            self._closedDataReceived(data)
        elif state is not SessionState.ASSOCIATED:
            self._queue(data)
        # ASSOCIATED: RFC 1928 gives the TCP connection of a UDP association
        # nothing more to carry; what a client sends on it is discarded.

    def _negotiate(self, data: bytes) -> None:
        """Read the request from C{data}: the front end's part."""
        raise NotImplementedError()

    def _refuse(self, reason: str) -> None:
        """
        A limit turned the client away at accept: tell it so and close (a
        front end that cannot know the version yet answers later).
        """
        self.fail(Outcome.DENIED, reason)

    def _closedDataReceived(self, data: bytes) -> None:
        """Bytes after the session closed: discarded."""

    def readConnectionLost(self) -> None:
        """The client sent FIN: pass it on, or note it until the relay is up."""
        self._clientEOF = True
        if self.state is SessionState.RELAYING:
            self._relay.clientReadLost()  # type: ignore[union-attr]
        elif self.state is SessionState.NEGOTIATING:
            self.fail(None, "client closed before completing its request")
        elif self.state is SessionState.ASSOCIATED:
            # RFC 1928: the association ends with its TCP connection.
            self.fail(None, "client closed the UDP association's connection")
        elif self.state is SessionState.WAITING:
            # A BIND client that hangs up before its peer arrives (a FIN is
            # all we see of that): free the listener now, not at the timeout.
            self.fail(None, "client closed while waiting for the BIND peer")
        elif self.state is SessionState.CLOSED and self._outbound is None:
            # Lingering after a failure reply: the client has read it.
            self.transport.loseConnection()  # type: ignore[union-attr]
        # RESOLVING/CONNECTING: a client may send its request, its data and
        # FIN at once (`printf ... | nc -N`); the FIN is passed on when the
        # relay starts.

    def writeConnectionLost(self) -> None:
        """Our half-close towards the client completed; nothing to do."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """The client connection is gone: drain the destination, then record."""
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

    @property
    def frontEnd(self) -> FrontEnd:
        """How this session's protocol version says outcomes."""
        return self._frontEnd

    @property
    def authenticatedUser(self) -> str | None:
        """
        The name this session's client logged in with, or L{None} if it did
        not (a front end that reads a login before the request says so
        from the login on).
        """
        request = self.request
        if request is not None and request.userSource is UserSource.AUTHENTICATED:
            return request.user
        return None

    def requestReceived(self, request: SessionRequest) -> None:
        """The front end read a complete request: serve it."""
        self.request = request
        self.factory.admission.negotiated(self)
        # Asked again now: behind a PROXY-protocol listener the real client
        # address is known only once the header has been read (a socket's
        # own transport cannot change its peer).
        if not isinstance(self.transport, tcp.Connection):
            self._identifyClient()
        self._restartTimer(self._limits.connectTimeout, "connect timeout")
        if request.trailing:
            self._queue(request.trailing)
        self.state = (
            SessionState.CONNECTING
            if request.hostname is None
            else SessionState.RESOLVING
        )
        if request.command is Command.UDP_ASSOCIATE:
            serveAssociation(self, request)
        else:
            servePipeline(self, request)

    def wait(self, inFlight: Deferred[Any] | None) -> None:
        """
        Note what the pipeline waits for (L{None}: nothing), so that
        closing the session cancels it.
        """
        self._inFlight = inFlight

    def connectReply(self, outbound: Any) -> bytes:
        """
        The grant of a CONNECT to C{outbound} (the connected destination
        protocol); a front end whose grant names the outbound socket's
        address says so by overriding this.
        """
        return self._frontEnd.reply(Outcome.GRANTED, None, 0)

    def write(self, data: bytes) -> None:
        """Send C{data} to the client (a reply before the relay)."""
        # At once when the socket can take it (it nearly always can): a
        # SOCKS5 client waits for its method choice (and login answer)
        # before it sends its request, and Twisted's buffered write would
        # cost two epoll_ctl calls and a reactor iteration per message.
        writeNow(self.transport, data)

    def tookUpstream(self, name: str) -> None:
        """
        The session's connect goes through upstream C{name} (C{--routes}),
        which has a connect period of its own: failing over must not be cut
        short by the first upstream's silence.
        """
        self.upstream = name
        # The upstream's own timer (connectTimeout too) fails over first;
        # this one is the backstop, a second later.
        self._restartTimer(self._limits.connectTimeout + 1.0, "connect timeout")

    def restartTimer(self, seconds: float, why: str) -> None:
        """Move the session's deadline to C{seconds} from now."""
        self._restartTimer(seconds, why)

    def startRelay(self, outbound: Any, reply: bytes) -> None:
        """Send the (last) grant C{reply}, then hand the tunnel to a L{Relay}."""
        self.outcome = Outcome.GRANTED
        # Not kept in _lastActivity: the relay keeps the time from here on
        # (one float per tunnel, not two).
        now = self._clock.seconds()
        self.factory.metrics.handshake(seconds=now - self._started)
        self._restartTimer(self._limits.idleTimeout, "idle timeout")
        # The negotiation is over: what it held is garbage from here on.
        self._spent()
        self._clientAddress = None  # for the policy and ident, both done
        self._handOver(outbound, reply)

    def associated(self, reply: bytes, counters: UDPCounters) -> None:
        """
        Send a UDP association's grant C{reply}; the TCP connection then
        only says, by ending, when the association ends (whose own idle
        timer replaces the session's deadlines).  The record and the live
        table show C{counters}.
        """
        self.udp = counters
        self.outcome = Outcome.GRANTED
        self.state = SessionState.ASSOCIATED
        self.factory.metrics.handshake(seconds=self._clock.seconds() - self._started)
        # No session deadline from here on (0 cancels the timer): the
        # association's idle timer is the one.
        self._restartTimer(0, "")
        self._spent()
        self.write(reply)

    @property
    def bytesUp(self) -> int:
        """Bytes relayed from the client so far (a UDP association's payload)."""
        udp = self.udp
        return super().bytesUp if udp is None else udp.bytesUp

    @property
    def bytesDown(self) -> int:
        """Bytes relayed to the client so far (a UDP association's payload)."""
        udp = self.udp
        return super().bytesDown if udp is None else udp.bytesDown

    def _lastActive(self) -> float:
        udp = self.udp
        return super()._lastActive() if udp is None else udp.lastActivity

    def _spent(self) -> None:
        """Drop what only the front end's negotiation needed."""
        request = self.request
        if request is not None and request.trailing:
            # The pipelined bytes are in the relay now; the record needs the
            # rest of the request only.
            self.request = replace(request, trailing=b"")

    # RelayOwner: the relay could not splice (the rest is Connection's).

    def _relayNoPipe(self, error: OSError) -> None:
        _log.info(
            "no pipe for the in-kernel relay ({why}): {client} to {destination}"
            " carries on through the copying relay",
            why=error.strerror or error,
            client=self.clientText,
            destination=self.connectedTo,
        )

    def _timedOut(self, why: str) -> None:
        self._timer = None
        if self.state is SessionState.NEGOTIATING:
            # No complete request to answer; a reply would be noise.
            self.fail(None, why)
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
            self.fail(Outcome.TIMED_OUT, why)

    def fail(self, outcome: Outcome | None, reason: str) -> None:
        """
        Tell the client C{outcome} (L{None}: nothing to answer), then close
        without risking a reset.
        """
        if self.state is SessionState.CLOSED:
            return
        self._close(reason)
        if outcome is not None:
            self.outcome = outcome
            self.transport.write(self._frontEnd.reply(outcome, None, 0))  # type: ignore[union-attr]
        self._linger()

    def _close(self, reason: str) -> None:
        """Enter CLOSED, and abandon the request's pending operation."""
        super()._close(reason)
        request = self.request
        if request is not None and request.hostname is not None:
            self.factory.admission.lookups.forget(self.clientKey(), self)
        if self._inFlight is not None:
            # The pipeline ends here: what it waited for fails, and the
            # pipeline stops at its one check of the state (see _pipeline).
            inFlight, self._inFlight = self._inFlight, None
            inFlight.cancel()

    def info(self) -> SessionInfo:
        """A snapshot of this session for the status page."""
        request = self.request
        version, auth = self._protocolOf(request)
        return SessionInfo(
            id=self.id,
            client=self.clientText,
            user=escapeField(request.user) if request is not None else "",
            identUser=(
                escapeField(self.identUser) if self.identUser is not None else None
            ),
            command=request.command.word if request is not None else None,
            destination=(
                hostPort(request.destination, request.port)
                if request is not None
                else None
            ),
            resolved=self.connectedTo if self.outcome is Outcome.GRANTED else None,
            state=self.state.value,
            bytesUp=self.bytesUp,
            bytesDown=self.bytesDown,
            started=self._started,
            idle=max(0.0, self._clock.seconds() - self._lastActive()),
            rule=escapeField(self.rule) if self.rule is not None else None,
            route=self.route,
            upstream=self.upstream,
            version=version,
            auth=auth,
            udp=self.udp.stats() if self.udp is not None else None,
        )

    def _protocolOf(
        self, request: SessionRequest | None
    ) -> tuple[int | None, str | None]:
        """The protocol version and auth method the record names."""
        return (None, None) if request is None else (request.version, None)

    def _record(self) -> SessionRecord:
        request = self.request
        outcome = self.outcome
        version, auth = self._protocolOf(request)
        destination = None
        if request is not None:
            destination = hostPort(request.destination, request.port)
        return SessionRecord(
            client=self.clientText,
            user=escapeField(request.user) if request is not None else "",
            command=request.command.word if request is not None else None,
            destination=destination,
            resolved=self.connectedTo if outcome is Outcome.GRANTED else None,
            reply=self._frontEnd.replyCode(outcome) if outcome is not None else None,
            bytesUp=self.bytesUp,
            bytesDown=self.bytesDown,
            duration=self._clock.seconds() - self._started,
            identUser=(
                escapeField(self.identUser) if self.identUser is not None else None
            ),
            reason=escapeField(self._reason),
            rule=escapeField(self.rule) if self.rule is not None else None,
            outcome=outcome.value if outcome is not None else None,
            version=version,
            auth=auth,
            route=self.route,
            upstream=self.upstream,
            udp=self.udp.stats() if self.udp is not None else None,
        )
