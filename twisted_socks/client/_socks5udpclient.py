"""
The client side of SOCKS5 UDP ASSOCIATE (RFC 1928 section 7).

L{SOCKS5UDPEndpoint.listen} runs the handshake on the shared driver
(L{twisted_socks.client._handshake}) with the request "UDP ASSOCIATE from
0.0.0.0:0" (the zeros RFC 1928 prescribes for a client that does not know
its address yet, such as one behind NAT: the relay then takes the first
datagram's source), then binds a local UDP socket and fires with a
L{SOCKS5UDPPort}, which a program uses like the port C{reactor.listenUDP}
returns: C{write(data, (host, port))} goes through the relay with its
header (names allowed), and the datagram protocol's C{datagramReceived}
sees each remote sender's own address.

The association lives as long as the TCP connection that asked for it: when
that connection ends, the port stops (and the protocol's C{stopProtocol}
runs); L{SOCKS5UDPPort.stopListening} ends both.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IReactorUDP,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import (
    DatagramProtocol,
    Factory,
    Protocol,
    connectionDone,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import hostPort
from ..wire._clienterrors import SOCKSError
from ..wire._socks5 import Address, Command5, encodeRequest5
from ..wire._socks5client import Reply5, SOCKS5Negotiation, rejectionFor5
from ..wire._socks5udp import BadDatagram, encodeDatagram, parseDatagram
from ._handshake import Handshake, HandshakeProtocol
from ._socks5handshake import credentialsFor, ipLiteral

__all__ = ["SOCKS5UDPEndpoint", "SOCKS5UDPPort"]


class SOCKS5UDPEndpoint:
    """
    Relay UDP datagrams through a SOCKS5 proxy (UDP ASSOCIATE).

    @param reactor: provides L{IReactorTime} and L{IReactorUDP}.
    @param proxyEndpoint: connects to the proxy (the TCP connection that
        holds the association).
    @param user: the RFC 1929 username, with C{password}; both or neither.
    @param password: its password, never shown by C{repr} or in errors.
    @param timeout: seconds from C{listen()} until the proxy's reply.
    @raise ValueError: as L{twisted_socks.SOCKS5ClientEndpoint}'s.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        proxyEndpoint: IStreamClientEndpoint,
        user: bytes | str | None = None,
        password: bytes | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not IReactorUDP.providedBy(reactor):
            raise TypeError("SOCKS5UDPEndpoint needs a reactor with listenUDP")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive: {timeout}")
        self._reactor = reactor
        self._proxyEndpoint = proxyEndpoint
        self._credentials = credentialsFor(user, password)
        self._timeout = timeout

    def __repr__(self) -> str:
        user = f" user={self._credentials[0]!r}" if self._credentials else ""
        return f"<SOCKS5UDPEndpoint via {self._proxyEndpoint!r}{user}>"

    def listen(self, datagramProtocol: DatagramProtocol) -> Deferred[SOCKS5UDPPort]:
        """
        Ask the proxy for a UDP relay and bind a local socket to talk to it.

        @return: a L{Deferred} that fires with a L{SOCKS5UDPPort} once the
            proxy granted the association (C{datagramProtocol} is started on
            it first), or fails as L{twisted_socks.SOCKS5ClientEndpoint.connect}
            does (L{CommandNotSupported} from servers without UDP, such as
            microsocks).  Cancelling it abandons the attempt.
        """
        attempt = _AssociateAttempt(self, datagramProtocol)
        attempt.start()
        return attempt.result


class _Control(Protocol):
    """The TCP connection holding the association, once granted: its end ends it."""

    def __init__(self, port: SOCKS5UDPPort) -> None:
        self._port = port

    def dataReceived(self, data: bytes) -> None:
        """Nothing is expected on it; ignore what comes."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The association is over: stop the UDP port."""
        self._port._controlLost()


class _AssociateAttempt(Handshake[Any]):
    """One UDP ASSOCIATE on the driver."""

    def __init__(self, endpoint: SOCKS5UDPEndpoint, protocol: DatagramProtocol) -> None:
        # The driver's factory is only told of starts and stops; a UDP
        # association has no stream protocol to build.
        super().__init__(
            endpoint._reactor,
            endpoint._proxyEndpoint,
            endpoint._timeout,
            Factory(),
            "a UDP association",
        )
        self._endpoint = endpoint
        self._datagramProtocol = protocol

    def prepare(self) -> Deferred[None]:
        """Nothing to look up."""
        return succeed(None)

    def prepared(self, value: object) -> None:
        """Nothing to do: the request is always the zeros."""

    def buildHandshake(self) -> HandshakeProtocol | None:
        """A handshake protocol; the control protocol comes after the reply."""
        negotiation = SOCKS5Negotiation(
            encodeRequest5(Command5.UDP_ASSOCIATE, 0), self._endpoint._credentials
        )
        return self.makeProtocol(negotiation, None, halfCloseable=True)

    def replyReceived(self, protocol: HandshakeProtocol, reply: Any) -> None:
        """Granted: bind the local socket and fire; refused: fail."""
        if not isinstance(reply, Reply5):
            raise TypeError(reply)
        transport: Any = protocol.transport
        proxy = transport.getPeer()
        rejection = rejectionFor5(
            reply, f"UDP ASSOCIATE via SOCKS5 server {hostPort(proxy.host, proxy.port)}"
        )
        if rejection is not None:
            self.fail(Failure(rejection))
            return
        relayHost = reply.address
        if relayHost is None or not int(relayHost):
            # A name or the wildcard: the relay is on the proxy's host, as
            # PySocks assumes (RFC 1928 says nothing of either).
            relayHost = ipLiteral(proxy.host)
        if relayHost is None:
            self.fail(
                Failure(
                    SOCKSError(
                        f"the SOCKS5 server named relay {reply.destination!r},"
                        " and its own address is not an IP address"
                    )
                )
            )
            return
        self.settle()
        try:
            port = SOCKS5UDPPort(
                IReactorUDP(self._endpoint._reactor),
                self._datagramProtocol,
                (str(relayHost), reply.port),
                transport.getHost().host,
                protocol,
            )
            protocol.connectApplication(_Control(port))
        except Exception:
            protocol.abort()
            self.result.errback(Failure())
            return
        self.result.callback(port)


class _Receiver(DatagramProtocol):
    """The local UDP socket's protocol: unwraps what the relay sends."""

    def __init__(self, port: SOCKS5UDPPort) -> None:
        self._owner = port

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Pass on a datagram from the relay, with its real sender."""
        self._owner._datagramFromRelay(datagram, addr)


@implementer(IListeningPort)
class SOCKS5UDPPort:
    """
    A UDP association through a SOCKS5 proxy, used like the port
    C{reactor.listenUDP} returns.

    @ivar relay: where datagrams go: the relay's address and port.
    @ivar dropped: how many datagrams were dropped: from a source other than
        the relay, with a malformed header, or fragments (FRAG not 0, which
        this client does not reassemble, as RFC 1928 allows).
    """

    def __init__(
        self,
        reactor: IReactorUDP,
        protocol: DatagramProtocol,
        relay: tuple[str, int],
        interface: str,
        control: HandshakeProtocol,
    ) -> None:
        self.relay = relay
        self.dropped = 0
        self._protocol = protocol
        self._control = control
        self._stopped: list[Deferred[None]] = []
        self._lost = False
        # Bound to the address the TCP connection left from: the same
        # family, and the interface that reaches the proxy.
        self._udp: Any = reactor.listenUDP(
            0, _Receiver(self), interface=interface, maxPacketSize=65535
        )
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        """
        Send C{data} to C{addr} (C{(host, port)}, a name or an IP address)
        through the relay.

        @raise ValueError: for a port out of range or a bad name.
        """
        host, port = addr
        address: Address | None = ipLiteral(host)
        name = None if address is not None else host
        self._udp.write(encodeDatagram(data, port, address, name), self.relay)

    def getHost(self) -> taddress.IPv4Address | taddress.IPv6Address:
        """The local UDP socket's address."""
        host: taddress.IPv4Address | taddress.IPv6Address = self._udp.getHost()
        return host

    def startListening(self) -> None:
        """Do nothing: the port was bound before this object was returned."""

    def stopListening(self) -> Deferred[None]:
        """
        End the association: close the TCP connection that holds it, which
        stops this port.

        @return: a L{Deferred} that fires once both are closed.
        """
        if self._lost:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped.append(stopped)
        self._control.abort()
        return stopped

    loseConnection = stopListening

    def _datagramFromRelay(self, datagram: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) != self.relay:
            # Only the relay may speak for remote hosts; anything else on
            # this socket is someone guessing its port.
            self.dropped += 1
            return
        try:
            parsed = parseDatagram(datagram)
        except BadDatagram:
            self.dropped += 1
            return
        if parsed.isFragment:
            self.dropped += 1
            return
        sender = parsed.destination
        self._protocol.datagramReceived(parsed.data, (sender, parsed.port))

    def _controlLost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._protocol.doStop()
        stopping = self._udp.stopListening()

        def stopped(_: object) -> None:
            for d in self._stopped:
                d.callback(None)
            self._stopped = []

        if isinstance(stopping, Deferred):
            stopping.addBoth(stopped)
        else:
            stopped(None)

    def __repr__(self) -> str:
        return f"<SOCKS5UDPPort relay {hostPort(*self.relay)}>"
