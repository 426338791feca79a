"""
The SOCKS5 UDP datagram header (RFC 1928 section 7), with no I/O and no
Twisted imports.

Every datagram between a client and the UDP relay carries
C{RSV(2)=0000 FRAG ATYP DST.ADDR DST.PORT DATA}: from the client, the
destination; from the relay, the remote sender.  A datagram is one message,
never part of a stream, so it is parsed whole (L{parseDatagram}) rather than
incrementally; a malformed one raises L{BadDatagram} and is dropped, since
there is no one to reply to.  Fragments (FRAG not 0) parse fine and say so
(L{Datagram.isFragment}): the relay drops and counts them, as RFC 1928
allows a relay without reassembly to.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._socks5 import (
    MAX_NAME_LENGTH,
    Address,
    AddressType,
    SOCKS5ProtocolError,
    addressTypeOf,
    destinationText,
    encodeAddress,
    packPort,
    parseAddress,
)

__all__ = [
    "MAX_DATAGRAM_HEADER_SIZE",
    "BadDatagram",
    "Datagram",
    "encodeDatagram",
    "parseDatagram",
]

#: RSV(2), FRAG, ATYP, the longest address (a length octet and 255 bytes of
#: name), DST.PORT: the most a relay must allow for on top of the payload.
MAX_DATAGRAM_HEADER_SIZE = 4 + 1 + MAX_NAME_LENGTH + 2


@dataclass(frozen=True, slots=True)
class Datagram:
    """
    One UDP datagram with its SOCKS5 header: from a client, the destination
    and the payload; to a client, the remote sender and the payload.

    @ivar fragment: FRAG; anything but 0 is a fragment.
    @ivar port: DST.PORT (never 0).
    @ivar address: DST.ADDR for ATYP 1 and 4 (never all zeros), else L{None}.
    @ivar name: DST.ADDR for ATYP 3, else L{None}.
    @ivar data: the payload (may be empty).
    """

    fragment: int
    port: int
    address: Address | None
    name: str | None
    data: bytes

    @property
    def isFragment(self) -> bool:
        """Whether FRAG is non-zero (the relay drops the datagram)."""
        return self.fragment != 0

    @property
    def addressType(self) -> AddressType:
        """The ATYP the header came with."""
        return addressTypeOf(self.address)

    @property
    def destination(self) -> str:
        """The destination (or sender) as text: the name or the address."""
        return destinationText(self.address, self.name)


class BadDatagram(SOCKS5ProtocolError):
    """
    A UDP datagram whose SOCKS5 header is malformed or truncated.  It is
    dropped without a reply.
    """

    replyCode = None
    reply = None


def parseDatagram(data: bytes) -> Datagram:
    """
    Parse one UDP datagram: C{RSV(2)=0000 FRAG ATYP DST.ADDR DST.PORT DATA}.

    @raise BadDatagram: for a truncated header, RSV other than 0, an unknown
        ATYP, a bad name, or a destination no datagram can go to (port 0,
        0.0.0.0 or C{::}, which Linux delivers to the local host).
    """
    if data[:2] != b"\0\0":
        raise BadDatagram("RSV not 0000" if len(data) >= 2 else "truncated header")
    try:
        parsed = parseAddress(data, 3)
    except SOCKS5ProtocolError as e:
        raise BadDatagram(str(e)) from e
    if parsed is None or len(data) < parsed[2] + 2:
        raise BadDatagram("truncated header")
    address, name, end = parsed
    if address is not None and not int(address):
        raise BadDatagram(f"DST.ADDR {address}")
    port = int.from_bytes(data[end : end + 2], "big")
    if port == 0:
        raise BadDatagram("DST.PORT 0")
    return Datagram(data[2], port, address, name, data[end + 2 :])


def encodeDatagram(
    data: bytes,
    port: int,
    address: Address | None = None,
    name: str | None = None,
    fragment: int = 0,
) -> bytes:
    """
    Encode a UDP datagram with its SOCKS5 header.

    @raise ValueError: for a port outside 1..65535, a fragment outside
        0..255, an all-zeros address, a bad name, or not exactly one of
        C{address} and C{name}.
    """
    if (address is None) == (name is None):
        raise ValueError("give exactly one of address and name")
    if port == 0:
        raise ValueError("a datagram cannot go to port 0")
    if address is not None and not int(address):
        raise ValueError(f"a datagram cannot go to {address}")
    if not 0 <= fragment <= 0xFF:
        raise ValueError(f"fragment out of range: {fragment}")
    return (
        bytes([0, 0, fragment]) + encodeAddress(address, name) + packPort(port) + data
    )
