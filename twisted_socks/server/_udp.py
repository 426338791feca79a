"""
A SOCKS5 UDP association (RFC 1928 section 7): the relay's sockets, the
client's source lock, each destination's judgment, and the idle timer.

The client sends to one UDP socket, bound where it reached the server over
TCP and named in the grant; nothing but the client's own address (and, once
known, its source port) is heard on it.  Datagrams go out, and replies come
back, on a second socket per address family, opened when a destination of
that family is first approved: a reply is relayed only from a host and port
the client has sent to, so the client-facing socket never carries a
stranger's datagram.

Each destination is judged once per association, like a CONNECT (the
request's C{command} is UDP ASSOCIATE): an address as it is; a name first
as a name, then looked up through the server's resolver, every address
judged, and datagrams sent to the first approved address only, never to an
address nobody judged (no rebinding).  The answer is kept for the life of
the association (at most L{MAX_DESTINATIONS}), so a stream of datagrams to
one destination runs the policy once.  An approved destination then takes
its route (C{--routes}, matched as the client named it, as for CONNECT):
only a direct one is sent to (L{twisted_socks.outbound._udproute}).
Datagrams that arrive while their destination is being judged wait, at
most L{MAX_WAITING} per destination; more are dropped and counted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..outbound._resolve import resolveHostname
from ..outbound._selfaddress import isLocalAddress
from ..outbound._udproute import DatagramWay, datagramWay
from ..policy._policy import normalizeAddress
from ..wire._request import addressText
from ..wire._socks5 import encodeAddress, packPort
from ..wire._socks5udp import BadDatagram, parseDatagram
from ._records import UDPCounters

if TYPE_CHECKING:
    from ..interfaces import IAccessPolicy
    from ..policy._policy import AccessRequest, Decision
    from ..wire._socks5 import Address
    from ._session import ServerSession

__all__ = ["MAX_DESTINATIONS", "MAX_WAITING", "WILDCARD", "UDPAssociation"]

_log = Logger(namespace="twisted_socks.server")

#: Destinations (and repliers) one association remembers; the oldest is
#: forgotten beyond this, and is judged again if the client sends to it.
MAX_DESTINATIONS = 256
#: Datagrams that may wait for their destination's judgment (or lookup),
#: per destination; the rest are dropped and counted.
MAX_WAITING = 8
#: Destinations one association may have under judgment at once.
MAX_JUDGING = 16

#: What a relay socket reads at most: any UDP datagram (Twisted's default
#: of 8192 would cut bigger ones short, silently).
_MAX_PACKET = 65535

#: The wildcard address of each family (outbound sockets listen on it).
WILDCARD = {4: "0.0.0.0", 6: "::"}


class _Route:
    """
    One destination as the client named it: judged yet or not, and where
    its datagrams go.

    @ivar target: the approved C{(host, port)}, as sockets name it.
    @ivar waiting: datagrams waiting for the judgment (L{None} once done).
    @ivar chained: whether its route goes through upstreams (its datagrams
        are dropped, not denied).
    """

    __slots__ = ("chained", "family", "target", "waiting")

    def __init__(self, first: bytes) -> None:
        self.target: tuple[str, int] | None = None
        self.family = 0
        self.chained = False
        self.waiting: list[bytes] | None = [first]


class UDPAssociation:
    """
    The UDP side of one granted UDP ASSOCIATE, until L{close}.

    @param session: the TCP session that asked (its factory's reactor,
        resolver and metrics are used).
    @param policy: judges each destination.
    @param access: the association's own request, each destination's
        template.
    @param clientPort: the source port the request named, or L{None}:
        the association then locks to its first datagram's source port.
    """

    def __init__(
        self,
        session: ServerSession,
        policy: IAccessPolicy,
        access: AccessRequest,
        clientPort: int | None,
    ) -> None:
        factory = session.factory
        self._session = session
        self._key = session.clientKey()
        self._reactor: Any = factory.reactor
        self._resolver = factory.nameResolver
        self._metrics = factory.metrics
        self._policy = policy
        self._router = factory.router
        self._access = access
        #: What it relayed and dropped (the session record's, once granted).
        self.counters = UDPCounters(self._reactor.seconds())
        self._client = access.client
        self._clientHost = str(access.client)
        self._clientPort = clientPort
        self._idleTimeout = factory.limits.udpIdleTimeout
        self._relayPorts = factory.udpRelayPorts
        self._maxCandidates = factory.maxCandidates
        self._timer: Any = None
        self._counted = False
        self._clientSide: Any = None
        self._outbound: dict[int, Any] = {}
        self._routes: dict[tuple[object, int], _Route] = {}
        #: Who may answer: C{(host, port)} as sockets name it, with the
        #: SOCKS5 header naming it to the client.
        self._peers: dict[tuple[str, int], bytes] = {}
        self._judging = 0
        #: Fires with why the association ended (the idle timer), never
        #: fails; L{close} does not fire it.
        self.ended: Deferred[str] = Deferred()
        self.closed = False

    def take(self) -> bool:
        """Take one of the client's UDP slots; C{False} at the cap."""
        admission = self._session.factory.admission
        self._counted = admission.udpStarted(self._key)
        return self._counted

    def open(self, interface: str) -> tuple[str, int]:
        """
        Open the client-facing socket on C{interface}, and start the idle
        timer.

        @return: the socket's address.
        @raise twisted.internet.error.CannotListenError: if it cannot be
            opened.
        """
        self._clientSide = self._reactor.listenUDP(
            0, _ClientSide(self), interface=interface, maxPacketSize=_MAX_PACKET
        )
        self._own(self._clientSide, 1)
        if self._idleTimeout > 0:
            self._timer = self._reactor.callLater(self._idleTimeout, self._idle)
        host: Any = self._clientSide.getHost()
        return host.host, host.port

    def close(self) -> None:
        """Close every socket, stop the timer, give the slot back (once)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for port in (self._clientSide, *self._outbound.values()):
            if port is not None:
                self._own(port, -1)
                port.stopListening()
        self._clientSide = None
        self._outbound.clear()
        self._routes.clear()
        self._peers.clear()
        if self._counted:
            self._counted = False
            self._session.factory.admission.udpEnded(self._key)

    # -- the idle timer --------------------------------------------------------

    def _idle(self) -> None:
        self._timer = None
        remaining = self._idleTimeout - (
            self._reactor.seconds() - self.counters.lastActivity
        )
        if remaining > 0:
            # Datagrams moved since the timer was armed: wait out the rest.
            self._timer = self._reactor.callLater(remaining, self._idle)
            return
        self.ended.callback("idle timeout (UDP association)")

    # -- from the client -------------------------------------------------------

    def fromClient(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram on the client-facing socket from C{addr}."""
        counters = self.counters
        host, port = addr[0], addr[1]
        if host != self._clientHost and normalizeAddress(host) != self._client:
            counters.dropped += 1
            return
        if port != self._clientPort:
            if self._clientPort is not None:
                counters.dropped += 1
                return
            # The request named no port: the first datagram's is the one.
            self._clientPort = port
        counters.lastActivity = self._reactor.seconds()
        try:
            datagram = parseDatagram(data)
        except BadDatagram:
            counters.dropped += 1
            return
        if datagram.fragment:
            counters.fragments += 1
            return
        name, address = datagram.name, datagram.address
        key = (address if name is None else name.lower(), datagram.port)
        route = self._routes.get(key)
        if route is None:
            self._judge(key, address, name, datagram.port, datagram.data)
            return
        if route.target is not None:
            self._send(route, datagram.data)
        elif route.waiting is None:
            if route.chained:
                counters.dropped += 1
            else:
                counters.denied += 1
        elif len(route.waiting) < MAX_WAITING:
            route.waiting.append(datagram.data)
        else:
            counters.dropped += 1

    def _send(self, route: _Route, payload: bytes) -> None:
        """Send C{payload} to C{route}'s approved address."""
        counters = self.counters
        target = route.target
        if target is None:  # only approved routes get here
            return
        try:
            self._outboundSocket(route.family).write(payload, target)
        except Exception:
            # Too big for the path, no route, a full buffer: datagrams may
            # be lost, and this one is.
            counters.dropped += 1
            return
        counters.datagramsUp += 1
        counters.bytesUp += len(payload)

    def _outboundSocket(self, family: int) -> Any:
        """The socket datagrams to C{family} addresses leave from."""
        port = self._outbound.get(family)
        if port is None:
            port = self._reactor.listenUDP(
                0,
                _Outside(self),
                interface=WILDCARD[family],
                maxPacketSize=_MAX_PACKET,
            )
            self._outbound[family] = port
            self._own(port, 1)
        return port

    def _own(self, port: Any, change: int) -> None:
        """Count C{port}'s number in (1) or out (-1) of the server's relay ports."""
        ports = self._relayPorts
        number: int = port.getHost().port
        held = ports.get(number, 0) + change
        if held > 0:
            ports[number] = held
        else:
            ports.pop(number, None)

    def _isRelay(self, address: Address, port: int) -> bool:
        """
        Whether C{address}:C{port} is one of this server's relay sockets
        (this association's or another's): a datagram there would loop, or
        reach another client's association from this host's address.
        """
        return port in self._relayPorts and isLocalAddress(address)

    # -- judging a destination -------------------------------------------------

    def _judge(
        self,
        key: tuple[object, int],
        address: Address | None,
        name: str | None,
        port: int,
        first: bytes,
    ) -> None:
        """A destination not seen before: judge it, holding C{first}."""
        if address is not None and address.version == 6:
            mapped = address.ipv4_mapped
            if mapped is not None:
                # As for CONNECT: an IPv4-mapped address is the IPv4 host it
                # reaches, for the rules too (an IPv4 deny must not be
                # dodged by writing ::ffff:10.0.0.1); mapped 0.0.0.0 would
                # reach this host.
                if not int(mapped):
                    self.counters.dropped += 1
                    return
                address = mapped
        if self._judging >= MAX_JUDGING:
            self.counters.dropped += 1
            return
        routes = self._routes
        if len(routes) >= MAX_DESTINATIONS:
            del routes[next(iter(routes))]
        route = routes[key] = _Route(first)
        self._judging += 1
        judging = Deferred.fromCoroutine(self._approve(address, name, port))
        judging.addBoth(self._judged, key, route, port)

    async def _approve(
        self, address: Address | None, name: str | None, port: int
    ) -> Address | bool | DatagramWay:
        """
        The address to send to, or whether the destination was denied
        (C{False}: denied; C{True}: not denied, but nowhere to send), or
        L{DatagramWay.CHAINED}: its route goes through upstreams.
        """
        access = replace(self._access, address=address, hostname=name, port=port)
        if address is not None and self._isRelay(address, port):
            return False
        if not (await self._decide(access)).allowed:
            return False
        # Routed before the lookup, as CONNECT is: a name meant for an
        # upstream is not looked up here.
        way = self._way(name if name is not None else addressText(address), port)
        if way is not DatagramWay.DIRECT:
            return way if way is DatagramWay.CHAINED else False
        if address is not None:
            return address
        resolving = resolveHostname(self._resolver, name or "", port)
        try:
            addresses = await resolving
        except Exception:
            self._metrics.dnsLookup(ok=False)
            return True
        self._metrics.dnsLookup(ok=True)
        # As for CONNECT: every address is judged, and only an approved one
        # is sent to; a name that says 0.0.0.0 would reach this host.
        denied = False
        for candidate in addresses[: self._maxCandidates]:
            if candidate.is_unspecified or self._isRelay(candidate, port):
                denied = True
                continue
            if (await self._decide(replace(access, address=candidate))).allowed:
                return candidate
            denied = True
        return not denied

    def _way(self, host: str, port: int) -> DatagramWay:
        """What the routes do to datagrams for C{host}:C{port}."""
        router = self._router
        if router is None:
            return DatagramWay.DIRECT
        route = router.match(host, port, self._access.user, self._client)
        way = datagramWay(route)
        if route is not None and way is DatagramWay.CHAINED:
            # Once per destination and association: the way is remembered.
            _log.info(
                "UDP datagrams from {client} to {destination} dropped: route"
                " {route} goes through upstreams (no relay-to-relay UDP)",
                client=self._session.clientText,
                destination=f"{host}:{port}",
                route=route.location,
            )
        return way

    async def _decide(self, access: AccessRequest) -> Decision:
        """The policy's decision (which may come later)."""
        result: Any = self._policy.decide(access)
        if isinstance(result, Deferred):
            result = await result
        decision: Decision = result
        return decision

    def _judged(
        self, result: object, key: tuple[object, int], route: _Route, port: int
    ) -> None:
        """The judgment of C{route} is in: send what waited, or drop it."""
        self._judging -= 1
        waiting, route.waiting = route.waiting or [], None
        if self.closed:
            return
        counters = self.counters
        if isinstance(result, Failure):
            # A policy that raised: nothing is sent on its behalf.
            _log.failure("access policy failed on a UDP destination", result)
        if result is False:
            counters.denied += len(waiting)
            return
        if result is DatagramWay.CHAINED:
            route.chained = True
            counters.dropped += len(waiting)
            return
        if isinstance(result, (bool, Failure)):
            # Unresolvable (or a policy failure): not remembered, so that
            # the next datagram tries again.
            counters.dropped += len(waiting)
            if self._routes.get(key) is route:
                del self._routes[key]
            return
        address: Any = result
        route.family = address.version
        route.target = target = (str(address), port)
        peers = self._peers
        if target not in peers:
            if len(peers) >= MAX_DESTINATIONS:
                del peers[next(iter(peers))]
            # The header a reply from there carries, made once.
            peers[target] = b"\0\0\0" + encodeAddress(address, None) + packPort(port)
        for payload in waiting:
            self._send(route, payload)

    # -- from destinations -----------------------------------------------------

    def fromOutside(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram on an outbound socket: a reply, if the client sent there."""
        counters = self.counters
        header = self._peers.get((addr[0], addr[1]))
        clientPort = self._clientPort
        if header is None or clientPort is None or self._clientSide is None:
            counters.dropped += 1
            return
        counters.lastActivity = self._reactor.seconds()
        try:
            self._clientSide.write(header + data, (self._clientHost, clientPort))
        except Exception:
            counters.dropped += 1
            return
        counters.datagramsDown += 1
        counters.bytesDown += len(data)


class _ClientSide(DatagramProtocol):
    """The client-facing socket's protocol."""

    noisy = False

    def __init__(self, association: UDPAssociation) -> None:
        self._association = association

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """From the client, or from someone to drop."""
        self._association.fromClient(datagram, addr)


class _Outside(DatagramProtocol):
    """An outbound socket's protocol: replies from destinations."""

    noisy = False

    def __init__(self, association: UDPAssociation) -> None:
        self._association = association

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """From a destination, or from someone to drop."""
        self._association.fromOutside(datagram, addr)
