"""
PROXY-protocol listeners that believe only trusted senders.

A listener wrapped in Twisted's PROXY-protocol support (C{haproxy:tcp:1080})
takes the client address from the header the connecting peer sends.  Anyone
who can reach such a listener directly can therefore claim any address, and
be judged by the rules as that address (without rules, as loopback).  As
nginx's C{set_real_ip_from}, L{proxyProtocolEndpoint} accepts connections
only from the addresses of the proxies in front (loopback by default); any
other peer is closed as soon as it is accepted, before a byte of its header
is read, and a log line names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

from .._logfields import escapeField

__all__ = [
    "DEFAULT_TRUSTED_PROXIES",
    "TrustedProxiesFactory",
    "parseTrustedProxies",
    "proxyProtocolEndpoint",
    "sourceTrusted",
]

_log = Logger(namespace="twisted_socks.proxyprotocol")

Network = IPv4Network | IPv6Network

#: Who may send PROXY headers unless told otherwise: this host only.  A
#: proxy on another machine has to be named, so that a C{haproxy:} listener
#: that is reachable from the network does not let every client choose its
#: own address (the usual deployment runs HAProxy on the same host).
DEFAULT_TRUSTED_PROXIES: tuple[Network, ...] = (
    IPv4Network("127.0.0.0/8"),
    IPv6Network("::1/128"),
)


def parseTrustedProxies(values: Iterable[str]) -> tuple[Network, ...]:
    """
    The networks that C{values} name: each an address or a CIDR network
    (C{10.0.0.5}, C{10.0.0.0/24}, C{fd00::/64}), several per value when
    separated by commas.

    @raise ValueError: naming the first item that is neither, or one with
        host bits set (C{10.0.0.5/24}: a typo for the address or the network).
    """
    networks: list[Network] = []
    for value in values:
        for item in value.split(","):
            text = item.strip()
            try:
                networks.append(ip_network(text))
            except ValueError:
                raise ValueError(
                    "--proxy-protocol-from must be addresses or CIDR networks "
                    "(e.g. 10.0.0.5 or 10.0.0.0/24, host bits zero), not "
                    f"{escapeField(text)!r}"
                ) from None
    return tuple(networks)


def _peerAddress(peer: IAddress) -> IPv4Address | IPv6Address | None:
    """The IP address of a TCP peer (IPv4 for an IPv4-mapped IPv6 one)."""
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return None
    try:
        # A link-local IPv6 peer carries its zone (fe80::1%eth0).
        address = ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack tcp6 listener sees IPv4 peers as ::ffff:a.b.c.d.
        return address.ipv4_mapped
    return address


def sourceTrusted(peer: IAddress, trusted: Sequence[Network]) -> bool:
    """
    Whether C{peer}, the connection's real peer, may send a PROXY header.

    A UNIX-socket peer is trusted: who may connect is decided by the
    socket file's permissions, as for a C{unix:} listener without
    C{haproxy:}.  Any other kind of address is not.
    """
    if isinstance(peer, UNIXAddress):
        return True
    address = _peerAddress(peer)
    return address is not None and any(address in network for network in trusted)


@implementer(IProtocolFactory, ILoggingContext)
class TrustedProxiesFactory:
    """
    Wraps a protocol factory: builds its protocols only for connections
    from trusted peers; for any other, builds none (so the listening port
    closes the connection at once) and logs the peer.
    """

    def __init__(self, wrapped: IProtocolFactory, trusted: Sequence[Network]) -> None:
        self.wrappedFactory = wrapped
        self.trusted = tuple(trusted)

    def doStart(self) -> None:
        """Start the wrapped factory."""
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        """Stop the wrapped factory."""
        self.wrappedFactory.doStop()

    def logPrefix(self) -> str:
        """How Twisted's log names the listener: as the wrapped factory."""
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        if callable(prefix):
            return str(prefix())
        return type(self.wrappedFactory).__name__

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        """The wrapped factory's protocol, or L{None} for an untrusted peer."""
        if sourceTrusted(addr, self.trusted):
            return self.wrappedFactory.buildProtocol(addr)
        host = getattr(addr, "host", None)
        _log.warn(
            "refused {source}: not a trusted PROXY-protocol sender "
            "(--proxy-protocol-from); closed before reading its header",
            source=escapeField(str(host if isinstance(host, str) else addr)),
        )
        return None


@implementer(IStreamServerEndpoint)
class _TrustedProxiesEndpoint:
    """A listening endpoint whose factory builds protocols for trusted peers only."""

    def __init__(self, wrapped: IStreamServerEndpoint, trusted: Sequence[Network]):
        self._wrapped = wrapped
        self._trusted = tuple(trusted)

    def listen(self, protocolFactory: IProtocolFactory) -> Any:
        """Listen with the wrapped endpoint; untrusted peers get no protocol."""
        result: Any = self._wrapped.listen(
            TrustedProxiesFactory(protocolFactory, self._trusted)
        )
        return result


def proxyProtocolEndpoint(
    endpoint: IStreamServerEndpoint,
    trustedProxies: Sequence[Network] = DEFAULT_TRUSTED_PROXIES,
) -> IStreamServerEndpoint:
    """
    Wrap a listening endpoint with PROXY-protocol support (v1 and v2, by
    Twisted's L{twisted.protocols.haproxy}) that believes only the peers in
    C{trustedProxies}: a connection from anywhere else is closed as soon as
    it is accepted, and logged.

    This is what C{--listen haproxy:...} builds; use it instead of
    C{serverFromString(reactor, "haproxy:...")}, which trusts every peer.

    @param endpoint: the plain listening endpoint (C{tcp:}, C{tcp6:},
        C{unix:}, an adopted socket).
    @param trustedProxies: networks (L{ipaddress.ip_network}) of the proxies
        allowed to send the header; loopback (C{127.0.0.0/8} and C{::1}) by
        default.  Peers on a UNIX socket are always allowed.
    """
    # Twisted's PROXY wrapper listens through the gate, so the gate is the
    # factory the port calls: it sees the real peer (the wrapper would hand
    # on the header's address) and, by building nothing, keeps the wrapper
    # from ever reading an untrusted header.
    return proxyEndpoint(_TrustedProxiesEndpoint(endpoint, trustedProxies))
