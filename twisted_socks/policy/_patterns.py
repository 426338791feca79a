"""
Destination and client patterns of the rules and routes files, and how an
address is matched against them. Pure values, no Twisted, no zope.

An address pattern is an address and a mask; a host pattern a SOCKS4A name
(exact, or a domain and its subdomains); a port pattern a range or its
negation. L{embeddedIPv4} finds the IPv4 address an IPv6 destination stands
for, so a rule about that IPv4 address decides it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._policy import IPAddress

__all__ = [
    "AddressPattern",
    "HostPattern",
    "PortPattern",
    "destinationAddress",
    "embeddedIPv4",
]


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """
    An address and a mask; an address matches when C{address & mask} equals
    C{value}. A zero mask matches every address of either family (so the
    classic C{0.0.0.0 0.0.0.0} still means "anything" for IPv6 clients); as
    a destination, see L{twisted_socks.Rule.destinationMatches}.
    """

    version: int
    value: int
    mask: int
    text: str

    @property
    def universal(self) -> bool:
        """Whether every address matches."""
        return self.mask == 0

    @property
    def anyFamily(self) -> bool:
        """
        Whether this is Dante's C{0/0}: every address of both families, as
        a destination too (C{0.0.0.0/0} and C{::/0} name one family each).
        """
        return self.mask == 0 and self.text == "0/0"

    def matches(self, address: IPAddress | None) -> bool:
        """Whether C{address} (L{None}: not an IP client) matches."""
        if self.mask == 0:
            return True
        if address is None or address.version != self.version:
            return False
        return (int(address) & self.mask) == self.value


@dataclass(frozen=True, slots=True)
class HostPattern:
    """A SOCKS4A destination name: exact, or a domain and its subdomains."""

    name: str
    suffix: bool

    def matches(self, hostname: str | None) -> bool:
        """Whether C{hostname} (case-insensitive, trailing dot ignored) matches."""
        if hostname is None:
            return False
        host = hostname.lower().rstrip(".")
        if self.suffix:
            return host == self.name or host.endswith("." + self.name)
        return host == self.name


@dataclass(frozen=True, slots=True)
class PortPattern:
    """A destination-port condition: C{low <= port <= high}, or its negation."""

    low: int
    high: int
    negate: bool = False

    def matches(self, port: int) -> bool:
        """Whether C{port} satisfies the condition."""
        return (self.low <= port <= self.high) != self.negate


#: Prefixes whose addresses carry an IPv4 address in their last 32 bits:
#: IPv4-translated (RFC 2765) and NAT64's well-known prefix (RFC 6052).
_IPV4_IN_LOW_BITS = (ip_network("::ffff:0:0:0/96"), ip_network("64:ff9b::/96"))


def embeddedIPv4(address: IPAddress) -> IPv4Address | None:
    """
    The IPv4 address an IPv6 address stands for, if any.

    Each of these reaches the IPv4 host from the proxy's side, through the
    kernel (mapped C{::ffff:a.b.c.d}, IPv4-compatible C{::a.b.c.d} over an
    automatic tunnel), a 6to4 interface (C{2002:AABB:CCDD::/48}) or a NAT64
    gateway (C{64:ff9b::a.b.c.d}), so a rule about that IPv4 address must
    decide it too. C{::} and C{::1} are IPv6's own, not IPv4-compatible.
    """
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    value = int(address)
    if value >> 32 == 0:
        return IPv4Address(value) if value > 1 else None
    if any(address in prefix for prefix in _IPV4_IN_LOW_BITS):
        return IPv4Address(value & 0xFFFFFFFF)
    return address.sixtofour


def destinationAddress(address: IPAddress) -> IPAddress:
    """The address a destination is judged as: its L{embeddedIPv4}, if any."""
    return embeddedIPv4(address) or address
