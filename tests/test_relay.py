"""
The relay object on its own (L{twisted_socks.relay._relay.Relay}), driven
through in-memory transports: what it is handed once at the start, the
counters, the half-closes and the mutual throttling.

The relay over real sockets (copying and in the kernel) is covered through
the server by tests/test_server.py, tests/test_splice.py and
tests/test_nopipes.py.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_socks.relay._relay import BULK, Relay
from twisted_socks.relay._splice import PipePool


class HalfClosingTransport(StringTransport):
    """A L{StringTransport} that notes its half-close."""

    writeClosed = False

    def loseWriteConnection(self) -> None:
        """Note the FIN, as a TCP transport would send it."""
        self.writeClosed = True


class Owner:
    """A L{RelayOwner} that notes what it is told."""

    def __init__(self) -> None:
        self.finished = 0
        self.noPipes: list[OSError] = []

    def _relayFinished(self) -> None:
        self.finished += 1

    def _relayNoPipe(self, error: OSError) -> None:
        self.noPipes.append(error)

    def _relayPipes(self) -> PipePool:
        raise RuntimeError("in-memory transports are never spliced")


def makeRelay(
    clock: Clock | None = None,
) -> tuple[Relay, Owner, HalfClosingTransport, HalfClosingTransport]:
    """A relay between two fresh in-memory transports, bulk moving on."""
    owner = Owner()
    client = HalfClosingTransport()
    server = HalfClosingTransport()
    relay = Relay(owner, clock or Clock(), client, server, True)
    return relay, owner, client, server


def test_startDeliversTheQueuedBytesOnceAndThrottlesEachWay() -> None:
    """
    L{Relay.start} sends the reply and the destination's early bytes to the
    client, the client's queued bytes to the destination, counts both (the
    reply excluded), and makes each transport the other's producer.
    """
    relay, owner, client, server = makeRelay()
    relay.start(
        b"REPLY",
        b"abc",
        b"xy",
        False,
        False,
        False,
    )
    assert (client.value(), server.value()) == (b"REPLYxy", b"abc")
    assert (relay.bytesUp, relay.bytesDown) == (3, 2)
    assert (client.producer, server.producer) == (server, client)
    assert (owner.finished, relay.spliced) == (0, False)


def test_earlyClientEOFHalfClosesTheDestinationAtTheStart() -> None:
    """
    A FIN the client sent before the reply half-closes the destination at
    the start, its producer unregistered first; the tunnel goes on the other
    way.
    """
    relay, owner, client, server = makeRelay()
    relay.start(b"R", b"", b"", True, False, False)
    assert (server.writeClosed, client.writeClosed) == (True, False)
    assert (server.producer, client.producer) == (None, server)
    assert owner.finished == 0


def test_earlyServerEOFHalfClosesTheClientAtTheStart() -> None:
    """
    A FIN the destination sent before the reply half-closes the client at
    the start; the client's FIN then ends the tunnel, telling the owner
    once (closing sends that FIN: no half-close first).
    """
    relay, owner, client, server = makeRelay()
    relay.start(b"R", b"", b"", False, True, False)
    assert (client.writeClosed, server.writeClosed) == (True, False)
    assert client.producer is None
    assert owner.finished == 0
    relay.clientReadLost()
    assert server.writeClosed is False
    assert owner.finished == 1


def test_bothEOFsBeforeTheStartFinishAtOnce() -> None:
    """
    A tunnel whose both sides sent FIN before the reply gets the queued
    bytes and the client's FIN through, then ends at the start.
    """
    relay, owner, client, server = makeRelay()
    relay.start(b"R", b"last", b"", True, True, False)
    assert (client.value(), server.value()) == (b"R", b"last")
    assert server.writeClosed is True
    assert owner.finished == 1


def test_countersAndLastActivityFollowTheBytes() -> None:
    """
    Bytes each way are passed on and counted, and each chunk moves the last
    activity to the clock's time (what the session's idle timer reads).
    """
    clock = Clock()
    relay, _, client, server = makeRelay(clock)
    relay.start(b"R", b"", b"", False, False, False)
    clock.advance(5)
    relay.clientDataReceived(b"hello")
    assert (server.value(), relay.bytesUp, relay.lastActivity) == (b"hello", 5, 5)
    clock.advance(7)
    relay.serverDataReceived(b"hi")
    assert (client.value(), relay.bytesDown, relay.lastActivity) == (b"Rhi", 2, 12)


def test_bulkOnTransportsThatCannotBeHandedOverIsCopied() -> None:
    """
    A bulk chunk moves the tunnel into the kernel only when both transports
    are plain quiet sockets: on others it is copied, and the relay never
    asks for a pipe.
    """
    relay, owner, _, server = makeRelay()
    relay.start(b"R", b"", b"", False, False, True)
    chunk = b"x" * BULK
    relay.clientDataReceived(chunk)
    assert (server.value(), relay.bytesUp, relay.spliced) == (chunk, BULK, False)
    assert owner.noPipes == []


def test_unthrottleUnregistersBothProducers() -> None:
    """L{Relay.unthrottle}, as closing needs, leaves neither side a producer."""
    relay, _, client, server = makeRelay()
    relay.start(b"R", b"", b"", False, False, False)
    relay.unthrottle()
    assert (client.producer, server.producer) == (None, None)
