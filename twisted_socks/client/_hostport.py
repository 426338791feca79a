"""
A SOCKS server's C{host[:port]} as a routing file writes it, checked as
text: no lookup, no Twisted.  The routing file's grammar
(L{twisted_socks.client._routes}) reads its server lists with these.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

from ..policy._fields import HOSTNAME_CHARS

#: An address of either family (as L{twisted_socks.policy._policy}'s).
IPAddress = IPv4Address | IPv6Address

__all__ = ["SERVER_EXPECTED", "classify", "inetAton", "splitServer"]

#: What a bad server is told it should have been.
SERVER_EXPECTED = (
    "expected a host name, an IPv4 address or [IPv6 address], optionally :port 1-65535"
)
# What inet_aton reads as an IPv4 address besides dotted quads: "127.1",
# "0x7f.1", "2130706433".  Digits, hex and dots only, so no real host name
# (whose last label is never all-numeric) is taken for one.
_NUMERIC_CHARS = frozenset("0123456789abcdefx.")


def splitServer(text: str) -> tuple[str, str | None]:
    """
    The host (checked, brackets removed) and the port text, if any.

    @raise ValueError: for a host that is neither an address nor a
        plausible name, or an IPv6 address without brackets.
    """
    if text.startswith("["):
        close = text.find("]")
        try:
            address = ip_address(text[1:close]) if close > 0 else None
        except ValueError:
            address = None
        rest = text[close + 1 :]
        if not isinstance(address, IPv6Address) or (rest and not rest.startswith(":")):
            raise ValueError(SERVER_EXPECTED)
        return str(address), rest[1:] if rest else None
    if text.count(":") > 1:
        raise ValueError("an IPv6 address goes in brackets, as [::1]:1080")
    host, colon, portText = text.partition(":")
    lowered = host.lower()
    labels = lowered.rstrip(".").split(".")
    try:
        IPv4Address(host)
    except ValueError:
        # Not an address: it has to be a plausible name, and not one of the
        # numeric forms inet_aton would read as an address (write those as
        # dotted quads).
        if (
            not host
            or len(host) > 253
            or not HOSTNAME_CHARS.issuperset(lowered)
            or not all(labels)
            or inetAton(lowered) is not None
        ):
            raise ValueError(SERVER_EXPECTED) from None
    return host, portText if colon else None


def classify(host: str) -> tuple[IPAddress | None, str | None]:
    """
    A destination as the address it denotes, or else as a name; never
    looked up.
    """
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address: IPAddress | None = ip_address(literal)
    except ValueError:
        # The C library connects "127.1" to 127.0.0.1; route it as that, so a
        # numeric spelling cannot slip past an address route.
        address = inetAton(host.lower())
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is not None:
        return address, None
    return None, host


def inetAton(text: str) -> IPv4Address | None:
    """The address the C library reads C{text} as, if it is a numeric form."""
    if not text or not _NUMERIC_CHARS.issuperset(text):
        return None
    try:
        return IPv4Address(socket.inet_aton(text))
    except OSError:
        return None
