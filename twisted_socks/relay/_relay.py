"""
The relay object: one tunnel's byte flow once the SOCKS reply is decided.

A L{Relay} is handed the two connected transports, the bytes queued before
the reply (client to server) and those the destination sent early, and any
early FIN, once (L{Relay.start}).  From then on it copies each way, each side
throttling the other (Twisted's C{portforward} pattern: each transport is the
other's producer), passes each FIN on as a half-close, counts bytes and notes
the last activity, and moves the tunnel into the kernel (L{SpliceRelay}) at
the first bulk read, or from the start, falling back to copying when no pipe
can be had.  Copying and splicing are behind this one interface: the session
neither knows nor asks which one runs.

The session keeps what outlives the flow: the timers (idle and drain), which
transports are gone, closing, and the record, which reads the counters here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._fastio import halfCloseNow, spliceable, writeNow
from ._splice import PipePool, SpliceRelay

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["BULK", "Relay", "RelayOwner"]

#: A read at least this big means a bulk transfer: the copying relay hands
#: the tunnel to the in-kernel one (Twisted reads at most 64 KiB at once).
BULK = 32 * 1024


class RelayOwner(Protocol):
    """What a L{Relay} reports to the session that owns it."""

    def _relayFinished(self) -> None:
        """Both sides have sent FIN and each was passed on."""

    def _relayNoPipe(self, error: OSError) -> None:
        """No pipe for the in-kernel relay: the tunnel carries on copying."""

    def _relayPipes(self) -> PipePool:
        """The pipe pool for the in-kernel relay."""


class Relay:
    """
    Relays between a client and a server transport, by copying or in the
    kernel.

    @ivar client: the client's transport.
    @ivar server: the destination's transport.
    @ivar bytesUp: bytes relayed from the client to the destination.
    @ivar bytesDown: bytes relayed from the destination to the client.
    @ivar lastActivity: the clock's time when bytes last moved.
    @ivar clientEOF: whether the client has sent FIN.
    @ivar serverEOF: whether the destination has sent FIN.
    """

    # A relay lives as long as its tunnel: slots, as for the session.
    __slots__ = (
        "_clientThrottled",
        "_clock",
        "_moveOnBulk",
        "_owner",
        "_serverThrottled",
        "_splice",
        "bytesDown",
        "bytesUp",
        "client",
        "clientEOF",
        "lastActivity",
        "server",
        "serverEOF",
    )

    def __init__(
        self,
        owner: RelayOwner,
        clock: IReactorTime,
        client: Any,
        server: Any,
        moveOnBulk: bool,
    ) -> None:
        """
        @param owner: told when both sides are done, or no pipe was had;
            gives the pipe pool (asked of the owner when needed rather than
            kept here: a bound method per tunnel costs 64 bytes).
        @param clock: gives the time of the last activity.
        @param client: the client's transport.
        @param server: the destination's transport.
        @param moveOnBulk: whether a bulk read moves the tunnel into the
            kernel.
        """
        self._owner = owner
        self._clock = clock
        self.client = client
        self.server = server
        self._moveOnBulk = moveOnBulk
        self.bytesUp = 0
        self.bytesDown = 0
        self.lastActivity = clock.seconds()
        self.clientEOF = False
        self.serverEOF = False
        # Which transports have the other registered as their producer.
        self._clientThrottled = False
        self._serverThrottled = False
        # The in-kernel relay, once the tunnel has moved there.
        self._splice: SpliceRelay | None = None

    @property
    def spliced(self) -> bool:
        """Whether the tunnel has moved into the kernel (and may be back)."""
        return self._splice is not None

    def start(
        self,
        reply: bytes,
        pending: bytes,
        early: bytes,
        clientEOF: bool,
        serverEOF: bool,
        spliceAtStart: bool,
    ) -> None:
        """
        Send C{reply} to the client, then C{pending} to the server and
        C{early} to the client, pass on the FINs already seen, and relay.

        @param reply: the SOCKS reply, the first bytes the client gets.
        @param pending: what the client sent after its request.
        @param early: what the destination sent before the reply was sent.
        @param clientEOF: whether the client has already sent FIN.
        @param serverEOF: whether the destination has already sent FIN.
        @param spliceAtStart: relay in the kernel from the start, if both
            transports can be handed over now.
        """
        client = self.client
        server = self.server
        self.clientEOF = clientEOF
        self.serverEOF = serverEOF
        # Checked before the reply is written: the in-kernel relay writes it
        # itself, and a transport with bytes buffered cannot be handed over.
        if spliceAtStart and spliceable(client) and spliceable(server):
            self.bytesUp += len(pending)
            self.bytesDown += len(early)
            self._handOver(pending, reply + early)
            return
        writeNow(client, reply)
        # Each side throttles the other: when one's write buffer fills, the
        # other stops reading (twisted.protocols.portforward's pattern).
        client.registerProducer(server, True)
        server.registerProducer(client, True)
        self._clientThrottled = self._serverThrottled = True
        # Undo the session's own pause (see its _queue) before flushing, so
        # that a flush filling the server's buffer can pause the client again.
        client.resumeProducing()
        if pending:
            self.bytesUp += len(pending)
            server.write(pending)
        if early:
            self.serverDataReceived(early)
        if clientEOF:
            self._shutdownServerWrite()
        if serverEOF:
            self.serverReadLost()

    # -- the copying relay ----------------------------------------------------

    def clientDataReceived(self, data: bytes) -> None:
        """The client sent C{data}: count it and pass it on."""
        # The hot path: straight through, flow-controlled by the producer
        # registration made in start.  No timer reset per chunk: the idle
        # timer checks lastActivity when it fires.
        self.bytesUp += len(data)
        self.lastActivity = self._clock.seconds()
        if len(data) >= BULK and self._spliceBulk(data, b""):
            return
        writeNow(self.server, data)

    def serverDataReceived(self, data: bytes) -> None:
        """The destination sent C{data}: count it and pass it on."""
        self.bytesDown += len(data)
        self.lastActivity = self._clock.seconds()
        if len(data) >= BULK and self._spliceBulk(b"", data):
            return
        writeNow(self.client, data)

    def clientReadLost(self) -> None:
        """The client sent FIN: pass it on."""
        self.clientEOF = True
        # Once both sides are done, closing sends the FIN: no half-close
        # first.
        if not self.serverEOF:
            self._shutdownServerWrite()
        self._finishIfBothClosed()

    def serverReadLost(self) -> None:
        """The destination sent FIN: pass it on."""
        self.serverEOF = True
        if not self.clientEOF:
            self._unthrottleClient()
            halfCloseNow(self.client)
        self._finishIfBothClosed()

    def unthrottle(self) -> None:
        """Unregister both producers, as closing the transports needs."""
        self._unthrottleClient()
        self.unthrottleServer()

    # A consumer's producer must be unregistered before the consumer is shut
    # down: FileDescriptor.doWrite resumes a paused producer instead of
    # completing a pending close, so the FIN or close would never be sent.
    def _unthrottleClient(self) -> None:
        if self._clientThrottled:
            self._clientThrottled = False
            self.client.unregisterProducer()

    def unthrottleServer(self) -> None:
        """Unregister the client as the server transport's producer."""
        if self._serverThrottled:
            self._serverThrottled = False
            self.server.unregisterProducer()

    def _shutdownServerWrite(self) -> None:
        self.unthrottleServer()
        halfCloseNow(self.server)

    def _finishIfBothClosed(self) -> None:
        if self.clientEOF and self.serverEOF:
            self._owner._relayFinished()

    # -- the in-kernel relay --------------------------------------------------

    def _spliceBulk(self, toServer: bytes, toClient: bytes) -> bool:
        """
        A big chunk (already counted) arrived on the copying relay: move the
        tunnel into the kernel if bulk moves it and both transports can be
        handed over now, sending the chunk first.

        Tunnels start on the copying relay and move only when bulk data
        shows up: an idle or chatty tunnel then costs no relay objects and
        no pipe, and a bulk one gets the in-kernel relay from its first big
        read on.
        """
        if not self._moveOnBulk or self._splice is not None:
            return False
        if not (spliceable(self.client) and spliceable(self.server)):
            # Something is still buffered (or a transport is not a plain
            # socket); a later chunk may find them quiet.
            return False
        self.unthrottle()
        self._handOver(toServer, toClient)
        return True

    def _handOver(self, toServer: bytes, toClient: bytes) -> None:
        """Give both sockets to a new in-kernel relay, these bytes first."""
        self._splice = SpliceRelay(
            self._clock,  # type: ignore[arg-type]
            self._owner._relayPipes(),
            self,
            self.client,
            self.server,
        )
        self._splice.start(toServer, toClient, self.clientEOF, self.serverEOF)

    # SpliceOwner: what the in-kernel relay reports.

    def _spliced(self, toServer: bool, size: int) -> None:
        if toServer:
            self.bytesUp += size
        else:
            self.bytesDown += size
        self.lastActivity = self._clock.seconds()

    def _spliceHalfClosed(self, toServer: bool) -> None:
        if toServer:
            self.clientEOF = True
        else:
            self.serverEOF = True
        self._finishIfBothClosed()

    def _spliceFailed(self, transport: Any, error: OSError) -> None:
        # The leg whose socket failed is aborted, as Twisted does when its
        # own recv or send fails; its connectionLost does the rest.
        self.leaveSplice()
        transport.abortConnection()

    def _spliceNoPipe(self, error: OSError) -> None:
        # Out of descriptors: the tunnel goes back to the copying relay for
        # the rest of its life (a later bulk read would only fail again
        # while descriptors are short, at the cost of a relay each time).
        self._owner._relayNoPipe(error)
        self.leaveSplice(carryOn=True)

    def leaveSplice(self, carryOn: bool = False) -> None:
        """
        Stop the in-kernel relay, if it runs, and hand what its pipes hold,
        and any FIN still owed, to the transports; from here on the tunnel
        relays (if C{carryOn}) or closes through them exactly as the copying
        relay does.
        """
        relay = self._splice
        if relay is None or not relay.running:
            return
        toServer, toClient = relay.stop()
        client = self.client
        server = self.server
        clientEOF, passedUp = relay.finished(toServer=True)
        serverEOF, passedDown = relay.finished(toServer=False)
        self.clientEOF = self.clientEOF or clientEOF
        self.serverEOF = self.serverEOF or serverEOF
        if carryOn:
            self._copyAgain()
        # After the producers are registered, so that a big write of what
        # the pipes held pauses the other side as any copied chunk would.
        if toServer:
            server.write(toServer)
        if toClient:
            client.write(toClient)
        if clientEOF and not passedUp:
            halfCloseNow(server)
        if serverEOF and not passedDown:
            halfCloseNow(client)

    def _copyAgain(self) -> None:
        """
        The copying relay takes over from a stopped in-kernel one: read each
        side that has not sent FIN, each throttled by the other's buffer.
        """
        client = self.client
        server = self.server
        # A consumer that is to be half-closed must have no producer (see
        # _unthrottleClient), so a side's producer is registered only while
        # bytes can still flow into it.
        if not self.serverEOF:
            client.registerProducer(server, True)
            self._clientThrottled = True
            server.resumeProducing()
        if not self.clientEOF:
            server.registerProducer(client, True)
            self._serverThrottled = True
            client.resumeProducing()
