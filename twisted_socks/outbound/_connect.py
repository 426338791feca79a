"""
The default outbound connector: a direct TCP connection to one address.

It connects its own non-blocking socket and, once connected, hands the
protocol a Twisted TCP transport (L{twisted.internet.tcp.Connection}) built
on that socket.  C{reactor.connectTCP} would do the same job with a
connector, a client transport, two DelayedCalls and five C{epoll_ctl}
calls per connection; at thousands of SOCKS sessions a second that is a
measurable share of the server's CPU.  On reactors that do not poll real
descriptors (a test's MemoryReactor) it uses C{reactor.connectTCP}.

This module decides how to connect and starts the attempt (the fast path:
the socket, the source address, C{connect_ex}); what happens to the socket
after that lives in L{twisted_socks.outbound._rawtcp}.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from ipaddress import IPv6Address, ip_address
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import (
    CannotListenError,
    ConnectingCancelledError,
    NoProtocol,
    getConnectError,
)
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..interfaces import IOutboundConnector
from ..policy._policy import IPAddress
from ..wire._socks4 import addressText
from ._rawtcp import Dialing, QuietPort

__all__ = ["ConnectorEndpoint", "TCPConnector"]

#: Linux's IP_BIND_ADDRESS_NO_PORT (Python 3.11's socket module lacks the
#: name): with a source address but port 0, leave the port to connect(),
#: which may share it with connections to other destinations.
_BIND_ADDRESS_NO_PORT = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform.startswith("linux") else None
)
_SOCK_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)


@implementer(IOutboundConnector)
class TCPConnector:
    """
    Connect straight to the given address.

    @param reactor: the reactor to connect with.  On POSIX reactors (epoll,
        poll, select, asyncio) the connector connects sockets of its own;
        on any other it calls C{reactor.connectTCP}.
    @param timeout: seconds before a connect attempt is given up, or L{None}
        (or 0) for none but the kernel's own (about two minutes of SYN
        retries).  The server passes L{None}: its connect deadline
        (C{Limits.connectTimeout}) cancels the attempt itself.
    @param bindAddress: the local C{(host, port)} outbound connections come
        from, for multi-homed gateways, or L{None} for the kernel's choice.
        With port 0 the port is left to C{connect} (Linux's
        C{IP_BIND_ADDRESS_NO_PORT}), so busy gateways do not run out of
        ports: a port bound before connecting must be free of every socket
        on that address, TIME_WAIT ones included, while one chosen by
        C{connect} only needs a unique address and port pair.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        timeout: float | None = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> None:
        self._reactor: Any = reactor
        self._timeout = timeout if timeout else None
        self._bindAddress = bindAddress
        # Sockets of our own need a reactor that polls real descriptors; a
        # test reactor (MemoryReactor) only records connectTCP calls.
        self._ownSockets = os.name == "posix" and isinstance(reactor, PosixReactorBase)

    def connect(
        self, address: IPAddress, port: int, factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """
        Connect to C{address}:C{port}; the literal address, never a name.

        The L{Deferred} fires with the protocol C{factory} built, once it is
        connected, or fails with Twisted's connect error (for example
        L{twisted.internet.error.ConnectionRefusedError}).  Cancelling it
        abandons the attempt.
        """
        if not self._ownSockets:
            return self._connectTCP(address, port, factory)
        family = socket.AF_INET6 if isinstance(address, IPv6Address) else socket.AF_INET
        host = addressText(address)
        try:
            skt = socket.socket(family, socket.SOCK_STREAM | _SOCK_FLAGS)
        except OSError as e:
            return fail(getConnectError((e.errno, e.strerror)))
        try:
            if not _SOCK_FLAGS:
                skt.setblocking(False)
            self._bind(skt, address)
            code = skt.connect_ex((host, port))
        except OSError as e:
            skt.close()
            return fail(getConnectError((e.errno, e.strerror)))
        if code == errno.EINPROGRESS:
            # To a destination on this host the handshake has usually
            # finished inside connect() itself: on loopback the kernel runs
            # the SYN, SYN-ACK and ACK inline.  Asking again costs one
            # system call (EALREADY while it is still under way) and, when
            # it is done, saves waiting for writability: two epoll_ctl, a
            # getsockopt and a reactor turn (about 5% of a short session's
            # CPU through a local proxy).  A refusal shows up here too.
            code = skt.connect_ex((host, port))
            if code in (errno.EALREADY, errno.EINPROGRESS):
                code = errno.EINPROGRESS
            elif code == errno.EISCONN:
                code = 0
        if code not in (0, errno.EINPROGRESS):
            skt.close()
            # Linux answers EAGAIN when no local port is left for the
            # destination; strerror's "temporarily unavailable" hides that.
            why = "no local port left" if code == errno.EAGAIN else os.strerror(code)
            return fail(getConnectError((code, why)))
        dialing = Dialing(self._reactor, skt, (host, port), factory)
        deferred = dialing.deferred  # connected() lets go of it as it fires
        if code == 0:
            dialing.connected()
        else:
            dialing.wait(self._timeout)
        return deferred

    def _connectTCP(
        self, address: IPAddress, port: int, factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """Connect through C{reactor.connectTCP}, for reactors of other kinds."""
        attempt = _Connecting(factory)
        attempt.connector = self._reactor.connectTCP(
            addressText(address),
            port,
            attempt,
            timeout=self._timeout if self._timeout is not None else 30,
            bindAddress=self._sourceFor(address),
        )
        return attempt.deferred

    def _sourceFor(self, address: IPAddress) -> tuple[str, int] | None:
        # The source address applies to destinations of its own family; an
        # IPv4 source cannot reach an IPv6 destination (the kernel chooses).
        bindAddress = self._bindAddress
        if bindAddress is None:
            return None
        if ip_address(bindAddress[0]).version != address.version:
            return None
        return bindAddress

    def _bind(self, skt: socket.socket, address: IPAddress) -> None:
        bindAddress = self._sourceFor(address)
        if bindAddress is None:
            return
        if bindAddress[1] == 0 and _BIND_ADDRESS_NO_PORT is not None:
            try:
                skt.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
            except OSError:
                pass  # an old kernel: bind picks the port, as before
        skt.bind(bindAddress)

    def listen(
        self, interface: str, factory: IProtocolFactory
    ) -> Deferred[IListeningPort]:
        """
        Listen on C{interface}, kernel-chosen port, backlog 1 (one peer).

        On POSIX reactors the listener is a L{QuietPort}: Twisted's own
        port writes two untagged lines per BIND (C{"... starting on N"},
        C{"(TCP Port N Closed)"}), while the session's record already says
        what the BIND did.
        """
        # An IPv6 interface for a SOCKS5 client that reached us over IPv6.
        ipv6 = ":" in interface
        if not self._ownSockets:
            endpointType = TCP6ServerEndpoint if ipv6 else TCP4ServerEndpoint
            endpoint = endpointType(self._reactor, 0, backlog=1, interface=interface)
            return endpoint.listen(factory)  # type: ignore[no-any-return]
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        try:
            skt = socket.socket(family, socket.SOCK_STREAM | _SOCK_FLAGS)
        except OSError as e:
            return fail(CannotListenError(interface, 0, e))
        try:
            if not _SOCK_FLAGS:
                skt.setblocking(False)
            skt.bind((interface, 0))
            skt.listen(1)
        except OSError as e:
            skt.close()
            return fail(CannotListenError(interface, 0, e))
        port = QuietPort(self._reactor, skt, factory)
        port.startListening()
        return succeed(port)


@implementer(IStreamClientEndpoint)
class ConnectorEndpoint:
    """
    A client endpoint for one fixed address, through an
    L{IOutboundConnector}: a chained session's connection to an upstream
    written as an IP literal goes the way a direct session's does, without
    a Twisted endpoint's wrapping protocol, its connector and its name
    resolution step.  Immutable: one serves every session.

    It sets no timer of its own: whoever connects bounds the attempt (the
    client handshake's one timer covers the connection and the reply).
    """

    def __init__(self, connector: IOutboundConnector, address: IPAddress, port: int):
        """
        @param connector: connects, with no deadline of its own.
        @param address: the literal address to reach.
        @param port: its port.
        """
        self._connector = connector
        self._address = address
        self._port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect to the address.

        @return: fires with the connected protocol; fails with Twisted's
            connect error, or L{NoProtocol} if C{protocolFactory} declined
            (as Twisted's endpoints say it).
        """
        connecting = self._connector.connect(self._address, self._port, protocolFactory)
        return connecting.addErrback(_declinedIsNoProtocol)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} to {addressText(self._address)}:{self._port}>"


def _declinedIsNoProtocol(reason: Failure) -> Failure:
    """The connector's "factory refused" as an endpoint says it."""
    # The builtin ConnectionRefusedError is the connector's word for a
    # declining factory; a refused TCP connection is Twisted's own class.
    if reason.type is ConnectionRefusedError:
        return Failure(NoProtocol())
    return reason


class _Connecting(ClientFactory):
    """
    One outbound connection attempt; C{deferred} fires with the protocol
    once it is connected.
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory: IProtocolFactory | None = factory
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)
        self.connector: IConnector | None = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """Build the real protocol, handed over once connected."""
        factory, self._factory = self._factory, None
        if factory is None:
            return None
        protocol = factory.buildProtocol(addr)  # type: ignore[arg-type]
        if protocol is None:
            self._failed(Failure(ConnectionRefusedError("the factory refused")))
            return None
        return _HandOver(self, protocol)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """The attempt failed (refused, unreachable, timed out)."""
        self._failed(reason)

    def _connected(self, protocol: IProtocol) -> None:
        self.connector = None
        deferred, self.deferred = self.deferred, None  # type: ignore[assignment]
        if deferred is not None:
            deferred.callback(protocol)

    def _failed(self, reason: Failure) -> None:
        self._factory = None
        self.connector = None
        deferred, self.deferred = self.deferred, None  # type: ignore[assignment]
        if deferred is not None:
            deferred.errback(reason)

    def _cancel(self, deferred: Deferred[IProtocol]) -> None:
        connector = self.connector
        self._factory = None
        self.connector = None
        self.deferred = None  # type: ignore[assignment]
        if connector is not None:
            deferred.errback(ConnectingCancelledError(connector.getDestination()))
            connector.stopConnecting()


class _HandOver(Protocol):
    """
    Stands in for the real protocol only until the connection is made, then
    puts the real one in its place on the transport, so that no wrapper sits
    between the socket and the relay for the rest of the connection.
    """

    def __init__(self, attempt: _Connecting, protocol: IProtocol) -> None:
        self._attempt = attempt
        self._protocol = protocol

    def makeConnection(self, transport: ITransport) -> None:
        """Connected: hand the transport to the real protocol."""
        # tcp.Client dispatches every later event to its .protocol.
        transport.protocol = self._protocol  # type: ignore[attr-defined]
        # Once connected, a tcp.Client uses its connector only to report the
        # end (connectionLost), which nobody here listens to: a shared
        # do-nothing stand-in lets the connector, its factory and this
        # attempt go, about 300 bytes per tunnel for as long as it lasts.
        if getattr(transport, "connector", None) is not None:
            transport.connector = _RELEASED  # type: ignore[attr-defined]
        self._protocol.makeConnection(transport)
        attempt: Any = self._attempt
        self._attempt = None  # type: ignore[assignment]
        attempt._connected(self._protocol)


class _Released:
    """The connector of every connection handed over (see L{_HandOver})."""

    def connectionLost(self, reason: Failure) -> None:
        """Nobody is told: the protocol hears of it from its transport."""


_RELEASED = _Released()
