"""
Tests for the version-neutral client handshake driver
(L{twisted_socks.client._handshake}), driven by a negotiation that is not SOCKS4:
the seam a SOCKS5 client plugs into.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from tests.test_client import PROXY, Harness, RecordingFactory, results
from twisted_socks.client._handshake import Handshake, HandshakeProtocol
from twisted_socks.wire._clienterrors import (
    HandshakeTimeout,
    MalformedReply,
    SOCKSError,
)

#: What the made-up protocol's server says: an answer to the greeting, then
#: the reply to the request.
ACCEPTED = b"OK"
GRANTED = b"GO"


class TwoStepNegotiation:
    """
    A made-up two-step protocol in the shape of SOCKS5's: the client greets,
    the server answers, the client sends its request, the server replies.
    Only the final reply is reported; the answer to the greeting is the
    negotiation's own business.
    """

    def __init__(self) -> None:
        self._outgoing = b"HELLO"
        self._buffer = b""
        self._greeted = False

    def dataToSend(self) -> bytes:
        """Whatever is queued, once."""
        data, self._outgoing = self._outgoing, b""
        return data

    def receiveData(self, data: bytes) -> None:
        """Buffer C{data}."""
        self._buffer += data

    def nextReply(self) -> bytes | None:
        """The final reply, after answering the greeting's answer."""
        if len(self._buffer) < 2:
            return None
        message, self._buffer = self._buffer[:2], self._buffer[2:]
        if not self._greeted:
            if message != ACCEPTED:
                raise MalformedReply(f"bad answer {message!r}")
            self._greeted = True
            self._outgoing = b"REQUEST"
            return self.nextReply()
        return message

    def takeData(self) -> bytes:
        """The bytes after the reply."""
        data, self._buffer = self._buffer, b""
        return data

    def connectionClosed(self) -> SOCKSError:
        """A clean close before the reply."""
        return MalformedReply(f"closed with {len(self._buffer)} bytes pending")


class TwoStepAttempt(Handshake[IProtocol]):
    """A CONNECT in the made-up protocol: the reply connects the app."""

    def __init__(self, reactor: MemoryReactorClock, factory: IProtocolFactory) -> None:
        super().__init__(
            reactor,
            TCP4ClientEndpoint(reactor, *PROXY),
            5.0,
            factory,
            "example.com:80",
        )
        self.app: IProtocol | None = None

    def prepare(self) -> Deferred[None]:
        """Nothing to look up."""
        return succeed(None)

    def prepared(self, value: Any) -> None:
        """Nothing to get ready."""

    def buildHandshake(self) -> HandshakeProtocol | None:
        """The app is built up front, as SOCKS4's CONNECT does."""
        self.app = self._factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 80))
        return self.makeProtocol(TwoStepNegotiation(), self.app)

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """C{GO} grants; anything else refuses."""
        if reply != GRANTED:
            self.fail(Failure(SOCKSError(f"refused: {reply!r}")))
            return
        assert self.app is not None
        self.settle()
        protocol.connectApplication(self.app)
        self.result.callback(self.app)


def start() -> tuple[Harness, TwoStepAttempt, list[Any], RecordingFactory]:
    """An attempt started on a memory reactor, not yet connected."""
    harness = Harness()
    factory = RecordingFactory()
    attempt = TwoStepAttempt(harness.reactor, factory)
    attempt.start()
    return harness, attempt, results(attempt.result), factory


def test_multiStepNegotiationRunsOnTheDriver() -> None:
    """
    The driver writes what the negotiation queues as it goes (the greeting
    on connecting, the request after the greeting's answer), reports only
    the reply, and hands the application the bytes that came with it.
    """
    harness, _, fired, factory = start()
    protocol, transport = harness.acceptConnection()
    assert transport.value() == b"HELLO"
    transport.clear()
    protocol.dataReceived(ACCEPTED[:1])
    assert transport.value() == b""
    protocol.dataReceived(ACCEPTED[1:])
    assert transport.value() == b"REQUEST"
    assert fired == []
    protocol.dataReceived(GRANTED + b"early bytes")
    [(_, app)] = factory.built
    assert fired == [app]
    assert app.received == b"early bytes"
    harness.assertClockIsClear()


def test_wholeExchangeInOneSegment() -> None:
    """Answer, reply and stream in one chunk parse as if they came apart."""
    harness, _, fired, factory = start()
    protocol, transport = harness.acceptConnection()
    protocol.dataReceived(ACCEPTED + GRANTED + b"xyz")
    assert transport.value() == b"HELLOREQUEST"
    [(_, app)] = factory.built
    assert fired == [app]
    assert app.received == b"xyz"


def test_negotiationErrorFailsTheAttempt() -> None:
    """
    An error the negotiation raises fails the attempt with it and closes
    the connection; nothing more is written.
    """
    harness, _, fired, _ = start()
    protocol, transport = harness.acceptConnection()
    transport.clear()
    protocol.dataReceived(b"NO")
    [failure] = fired
    assert failure.check(MalformedReply)
    assert transport.value() == b""
    assert transport.disconnecting
    harness.assertClockIsClear()


def test_cleanCloseMidNegotiationIsTheNegotiationsError() -> None:
    """A FIN before the reply fails with the error the negotiation names."""
    harness, _, fired, _ = start()
    protocol, _ = harness.acceptConnection()
    protocol.dataReceived(ACCEPTED + b"G")
    protocol.connectionLost(Failure(ConnectionDone()))
    [failure] = fired
    assert failure.check(MalformedReply)
    assert "closed with 1 bytes pending" in failure.getErrorMessage()


def test_timeoutNamesTheStage() -> None:
    """
    The one clock covers every stage; its error names the destination and
    the stage the attempt was in.
    """
    harness, _, fired, _ = start()
    harness.acceptConnection()
    harness.reactor.advance(5.0)
    [failure] = fired
    assert failure.check(HandshakeTimeout)
    assert failure.getErrorMessage() == (
        "no reply from the SOCKS server for example.com:80 within 5.0 s"
        " (waiting for the proxy's reply)"
    )


def test_cancellingClosesTheConnection() -> None:
    """Cancelling mid-negotiation closes the connection and stops the clock."""
    harness, attempt, fired, _ = start()
    _, transport = harness.acceptConnection()
    attempt.result.cancel()
    assert transport.disconnecting
    [failure] = fired
    assert failure.check(CancelledError)
    harness.assertClockIsClear()
