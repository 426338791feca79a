"""
The mechanics of one client connection, whatever it asked for: who the
client is, the one timer that carries its deadlines, the bytes queued
before the relay, the hand-over to the L{Relay} and the destination leg,
closing without a reset and draining what is buffered.  What the session
decides (when to fail, what to answer, what to record) is
L{twisted_socks.server._session}'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._logfields import escapeField
from ..policy._policy import normalizeAddress
from ..relay._fastio import closeNow, halfCloseNow
from ..relay._relay import Relay
from ._admission import clientKey
from ._peer import SlottedProtocol
from ._records import SessionState

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ..relay._splice import PipePool
    from ._factory import SOCKSv4ServerFactory

__all__ = ["Connection"]

#: Replaces a session's negotiation-time containers (queues, the parser)
#: once the relay starts, so that a long-lived tunnel does not keep them;
#: immutable, so that any late use fails loudly.
SPENT: Any = ()


class Connection(SlottedProtocol):
    """
    A client connection's mechanics; a subclass decides what happens at
    its deadlines (C{_timedOut}) and what closing means for its request
    (extending C{_close}).
    """

    factory: SOCKSv4ServerFactory

    __slots__ = (
        "_clientAddress",
        "_clientEOF",
        "_clientGone",
        "_clientHost",
        "_clientPort",
        "_clock",
        "_lastActivity",
        "_limits",
        "_outbound",
        "_outboundEOF",
        "_outboundEarly",
        "_outboundGone",
        "_pending",
        "_reason",
        "_relay",
        "_timer",
        "factory",
        "state",
    )

    def __init__(self, factory: SOCKSv4ServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.state = SessionState.NEGOTIATING
        self._clock = factory.reactor
        self._limits = factory.limits
        self._timer: IDelayedCall | None = None
        # Bytes each way before the relay starts, each kept in one growing
        # buffer: a list of the chunks read would cost a bytes object and a
        # list slot, about 56 bytes, per chunk, and a client pacing two
        # bytes per segment made the 64 KiB pending cap cost 1.4 MiB.
        self._pending = bytearray()
        # The connected destination protocol (an OutboundProtocol, typed Any
        # because its transport is used through TCP-only methods).
        self._outbound: Any = None
        self._outboundEarly = bytearray()
        self._clientEOF = False
        self._outboundEOF = False
        self._clientGone = False
        self._outboundGone = False
        self._lastActivity = 0.0
        self._reason = ""
        self._clientHost = "?"
        # The relay, from the reply on (see _handOver).
        self._relay: Relay | None = None

    def _timedOut(self, why: str) -> None:
        """The deadline C{why} passed: the subclass decides what it means."""
        raise NotImplementedError()

    # -- the client -------------------------------------------------------------

    def clientKey(self) -> str:
        """The client key per-client limits count by (see L{clientKey})."""
        return clientKey(
            self._clientAddress, self._clientHost, self._limits.ipv6ClientPrefix
        )

    @property
    def clientAddress(self) -> Any:
        """The client's IP address, or L{None} when it is not on IP."""
        return self._clientAddress

    @property
    def clientPort(self) -> int:
        """The client's source port (0 when it is not on IP)."""
        return self._clientPort

    @property
    def clientText(self) -> str:
        """The client as C{host:port}, for logs (C{"unix"} off IP)."""
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

    # -- the relay --------------------------------------------------------------

    def _handOver(self, outbound: Any, reply: bytes) -> None:
        """Send the (last) grant C{reply}, then hand the tunnel to a L{Relay}."""
        self._outbound = outbound
        self.state = SessionState.RELAYING
        pending, self._pending = bytes(self._pending), SPENT
        early, self._outboundEarly = bytes(self._outboundEarly), SPENT
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

    def _relayNoPipe(self, error: OSError) -> None:
        """No pipe for splice(2): the subclass says so, with what it knows."""
        raise NotImplementedError()

    def _relayFinished(self) -> None:
        self._endRelay("both sides closed")

    def _relayPipes(self) -> PipePool:
        return self.factory._pipePool()

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

    # -- closing ------------------------------------------------------------------

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

    def _linger(self) -> None:
        """After a failure reply: close without risking a reset."""
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
        """Enter CLOSED: stop the timer, drop the queue, uninstall the relay."""
        self.state = SessionState.CLOSED
        self._reason = reason
        self._pending = SPENT
        if self._outbound is not None:
            # Uninstall the relay: later bytes from the destination are
            # discarded (see _outboundDataReceived).
            self._outbound._relay = None
        self._cancelTimer()

    def abort(self, reason: str) -> None:
        """Close this session at once (both legs, buffered data dropped)."""
        if self._relay is not None:
            self._relay.leaveSplice()
        if self.state is not SessionState.CLOSED:
            self._close(reason)
        self.transport.abortConnection()  # type: ignore[union-attr]
        if self._outbound is not None and not self._outboundGone:
            self._outbound.transport.abortConnection()

    # -- the queue and the timer --------------------------------------------------

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
