"""
RFC 1413 ident lookups over TCP, and resolvers for when ident is off or
under test.

The wire format is parsed by L{twisted_socks.wire._identparse}; this module only
connects, sends the query, collects one capped line and keeps the deadline.
Twisted's own C{twisted.protocols.ident} client is not used: on Python 3 it
mixes str and bytes and fails on every query, and it has neither a deadline
nor a line cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ..interfaces import IIdentResolver
from ..policy._policy import normalizeAddress
from ..wire._identparse import (
    MAX_RESPONSE,
    IdentAnswer,
    IdentError,
    IdentProtocolError,
    IdentTimeout,
    IdentUnreachable,
    identQuery,
    parseIdentResponse,
)

__all__ = ["FakeIdentResolver", "NullIdentResolver", "RFC1413Resolver"]

#: An address as an L{IIdentResolver} takes it: host (an IP literal) and port.
Address = tuple[str, int]


class _IdentProtocol(Protocol):
    """Send the query; hand the first line, or how it failed, to the lookup."""

    def __init__(self, lookup: _Lookup) -> None:
        self._lookup = lookup
        self._buffer = b""

    def connectionMade(self) -> None:
        self._lookup.connected(self)
        if self.transport is not None:
            self.transport.write(self._lookup.query)

    def dataReceived(self, data: bytes) -> None:
        if self._lookup.finished:
            return
        # Keep at most MAX_RESPONSE bytes whatever the peer sends: the line,
        # end-of-line included, must fit in them.
        self._buffer = (self._buffer + data)[:MAX_RESPONSE]
        end = self._buffer.find(b"\n")
        if end == -1:
            if len(self._buffer) >= MAX_RESPONSE:
                self._lookup.failed(
                    IdentProtocolError(
                        f"no end of line in the first {MAX_RESPONSE} bytes"
                    )
                )
            return
        line = self._buffer[:end]
        # RFC 1413 ends lines with CRLF; a bare LF is accepted too.
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            answer = self._lookup.parse(line)
        except IdentError as error:
            self._lookup.failed(error)
        else:
            self._lookup.answered(answer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A line cut short by the close is not an answer: "root" may be the
        # first four letters of "rootkit". RFC 1413 reads a premature close
        # as UNKNOWN-ERROR.
        self._lookup.failed(IdentProtocolError("identd closed before answering"))


class _IdentFactory(Factory):
    noisy = False  # one lookup per request: no start/stop log lines

    def __init__(self, lookup: _Lookup) -> None:
        self._lookup = lookup

    def buildProtocol(self, addr: IAddress | None) -> _IdentProtocol:
        return _IdentProtocol(self._lookup)


class _Lookup:
    """
    One lookup: a connection attempt, then a connection, under one deadline.

    Whatever ends it first (an answer, an error, the deadline, a cancel)
    settles L{result} once, stops the timer and closes or abandons the
    connection; later events are ignored.
    """

    def __init__(self, clock: IReactorTime, clientPort: int, serverPort: int) -> None:
        self.clientPort = clientPort
        self.serverPort = serverPort
        self.query = identQuery(clientPort, serverPort)
        self.finished = False
        self.result: Deferred[IdentAnswer] = Deferred(self._cancel)
        self._clock = clock
        self._timer: IDelayedCall | None = None
        self._connecting: Deferred[IProtocol] | None = None
        self._protocol: _IdentProtocol | None = None

    def start(
        self, endpoint: TCP4ClientEndpoint | TCP6ClientEndpoint, timeout: float
    ) -> None:
        self._timer = self._clock.callLater(timeout, self._timedOut, timeout)
        connecting = endpoint.connect(_IdentFactory(self))
        if not self.finished:
            self._connecting = connecting
        connecting.addErrback(self._connectFailed)

    def parse(self, line: bytes) -> IdentAnswer:
        return parseIdentResponse(line, self.clientPort, self.serverPort)

    def connected(self, protocol: _IdentProtocol) -> None:
        self._protocol = protocol
        self._connecting = None
        if self.finished:
            # Cannot happen while finishing cancels the attempt; be safe.
            self._close(abort=True)

    def answered(self, answer: IdentAnswer) -> None:
        if self._finish():
            # Everything has been said: close politely.
            self._close(abort=False)
            self.result.callback(answer)

    def failed(self, error: IdentError) -> None:
        if self._finish():
            self._close(abort=True)
            self.result.errback(error)

    def _finish(self) -> bool:
        """Mark the lookup settled; return whether it was still running."""
        if self.finished:
            return False
        self.finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return True

    def _close(self, abort: bool) -> None:
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            transport = self._protocol.transport
            if abort:
                # Drop whatever else the identd sends, at once.
                transport.abortConnection()  # type: ignore[attr-defined]
            else:
                transport.loseConnection()

    def _connectFailed(self, reason: Failure) -> None:
        if reason.check(ConnectingCancelledError) and self.finished:
            # Our own doing: the lookup ended while still connecting.
            return
        if reason.check(ConnectTimeoutError):
            self.failed(IdentTimeout("connecting to identd timed out"))
        else:
            self.failed(
                IdentUnreachable(
                    f"cannot connect to identd: {reason.getErrorMessage()}"
                )
            )

    def _timedOut(self, timeout: float) -> None:
        self._timer = None
        self.failed(IdentTimeout(f"identd did not answer within {timeout:g} s"))

    def _cancel(self, result: Deferred[IdentAnswer]) -> None:
        # The Deferred fails itself with CancelledError once this returns.
        if self._finish():
            self._close(abort=True)


@implementer(IIdentResolver)
class RFC1413Resolver:
    """
    Ask the client host's identd (RFC 1413) who owns a connection.

    The query goes out from the address the client connected to, so that a
    multi-homed identd sees the same address pair as the connection asked
    about. Lookups never block the reactor and any number can run at once.

    @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
    @param port: the identd port on client hosts; 113 but for tests.
    @param timeout: seconds from the call to the answer, connecting
        included. RFC 1413 suggests waiting 30 s or more; a SOCKS client
        waits for the whole lookup, so the default is shorter.
    """

    def __init__(
        self, reactor: IReactorTCP, port: int = 113, timeout: float = 10.0
    ) -> None:
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._port = port
        self._timeout = timeout

    def lookup(self, client: Address, server: Address) -> Deferred[str]:
        """
        Ask who owns the connection from C{client} to C{server}.

        @param client: the client's address and port, as the server sees
            them; the identd asked is on this address.
        @param server: the server's own address and port of the connection;
            the query is sent from this address.
        @return: a cancellable L{Deferred} firing with the user-id, or
            failing as L{lookupAnswer} says.
        """
        return self.lookupAnswer(client, server).addCallback(lambda answer: answer.user)

    def lookupAnswer(self, client: Address, server: Address) -> Deferred[IdentAnswer]:
        """
        Like L{lookup}, with the whole answer: user, opsys and charset.

        @param client: as for L{lookup}.
        @param server: as for L{lookup}.
        @return: a L{Deferred} firing with the L{IdentAnswer}, or failing
            with L{IdentUnreachable} (no connection to the identd, or
            C{client} is not an IP address), L{IdentErrorReply} (it answered
            C{ERROR}), L{IdentTimeout} (no answer within the timeout) or
            L{IdentProtocolError} (a malformed or over-long answer, or a
            close before one). Cancelling it closes the connection or stops
            connecting; it leaves no timer behind whatever the outcome.
        @raise ValueError: if a port is not in 1..65535, which no TCP
            connection has.
        """
        clientHost, clientPort = client
        serverHost, serverPort = server
        clientAddress = normalizeAddress(clientHost)
        if clientAddress is None:
            return fail(IdentUnreachable(f"{clientHost!r} is not an IP address"))
        serverAddress = normalizeAddress(serverHost)
        if isinstance(clientAddress, IPv4Address):
            endpointClass: type[TCP4ClientEndpoint | TCP6ClientEndpoint]
            endpointClass = TCP4ClientEndpoint
            connectHost = str(clientAddress)
            bindHost = str(serverAddress) if serverAddress is not None else None
        else:
            endpointClass = TCP6ClientEndpoint
            # Keep the scope id: a link-local address needs it to connect.
            connectHost = clientHost
            bindHost = serverHost if serverAddress is not None else None
        if serverAddress is None or serverAddress.version != clientAddress.version:
            # No address of ours in the client's family: let the kernel pick.
            bindHost = None
        lookup = _Lookup(self._clock, clientPort, serverPort)
        endpoint = endpointClass(
            self._reactor,
            connectHost,
            self._port,
            # Our own deadline covers connecting; the endpoint's comes later
            # so that it never decides first.
            timeout=self._timeout + 1,
            bindAddress=(bindHost, 0) if bindHost is not None else None,
        )
        lookup.start(endpoint, self._timeout)
        return lookup.result


@implementer(IIdentResolver)
class NullIdentResolver:
    """The resolver for ident off: every lookup fails at once."""

    def lookup(self, client: Address, server: Address) -> Deferred[str]:
        """
        Fail without asking anyone.

        @param client: ignored.
        @param server: ignored.
        @return: a L{Deferred} already failed with L{IdentUnreachable}.
        """
        return fail(IdentUnreachable("ident lookups are disabled"))


@implementer(IIdentResolver)
class FakeIdentResolver:
    """
    An L{IIdentResolver} answering from a table, or when the test says.

    @param answers: maps C{(clientHost, clientPort)}, or just C{clientHost}
        for any port, to a user name or to the L{IdentError} to fail with;
        a host-and-port entry wins over a host entry. Lookups with no entry
        stay pending in L{pending} until the test fires their Deferreds.
    @ivar lookups: every C{(client, server)} asked about, in order.
    @ivar pending: C{(client, server, deferred)} for each lookup that had no
        entry, in order; a cancelled lookup is removed.
    """

    def __init__(
        self, answers: Mapping[Address | str, str | IdentError] | None = None
    ) -> None:
        self.answers: dict[Address | str, str | IdentError] = dict(answers or {})
        self.lookups: list[tuple[Address, Address]] = []
        self.pending: list[tuple[Address, Address, Deferred[str]]] = []

    def lookup(self, client: Address, server: Address) -> Deferred[str]:
        """
        Record the lookup; answer it now if the table has an entry.

        @param client: the client's address and port.
        @param server: the server's address and port.
        @return: a L{Deferred} with the table's answer, or a pending one.
        """
        self.lookups.append((client, server))
        for key in (client, client[0]):
            if key in self.answers:
                answer = self.answers[key]
                if isinstance(answer, IdentError):
                    return fail(answer)
                return succeed(answer)

        def cancel(d: Deferred[str]) -> None:
            self.pending[:] = [p for p in self.pending if p[2] is not d]
            d.errback(CancelledError(f"ident lookup of {client} abandoned"))

        deferred: Deferred[str] = Deferred(cancel)
        self.pending.append((client, server, deferred))
        return deferred
