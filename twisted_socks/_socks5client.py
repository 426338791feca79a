"""
The SOCKS5 client's side of the wire (RFC 1928, RFC 1929), with no I/O and
no Twisted imports.

A client sends what L{twisted_socks._socks5} and L{twisted_socks._userpass}
encode (L{encodeGreeting}, L{encodeAuthRequest}, L{encodeRequest5}) and
reads three answers, parsed here in the shape of L{twisted_socks._codec}:
the method selection (C{05 METHOD}), the sub-negotiation status
(C{01 STATUS}) and the reply (C{05 REP RSV ATYP BND.ADDR BND.PORT}), each
judged byte by byte, C{None} until complete.  A reply comes in any of the
three address types: Dante answers a failed name with ATYP 3, echoing it.

What is not one of these answers raises L{MalformedReply5}, a
L{MalformedReply}, so a handshake driver shared with SOCKS4 catches both
versions' garbage with one clause.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._clienterrors import MalformedReply
from ._incremental import IncrementalParser
from ._socks5 import (
    SOCKS5_VERSION,
    Address,
    AddressType,
    ReplyCode5,
    SOCKS5ProtocolError,
    addressTypeOf,
    destinationText,
    parseAddress,
)
from ._userpass import AUTH_VERSION

__all__ = [
    "MAX_REPLY5_SIZE",
    "MalformedReply5",
    "Reply5",
    "ReplyParser5",
    "parseAuthStatus",
    "parseMethodSelection",
    "parseReply5",
]

#: VER, REP, RSV, ATYP, the longest address (a 255-byte name), BND.PORT.
MAX_REPLY5_SIZE = 4 + 1 + 255 + 2

_REPLY_CODES = frozenset(ReplyCode5)


class MalformedReply5(MalformedReply):
    """
    The server's answer is not the SOCKS5 message expected: a wrong VER, a
    REP outside 00-08, an unknown ATYP, an empty or invalid name.
    """


@dataclass(frozen=True, slots=True)
class Reply5:
    """
    A server's reply to a request.

    @ivar code: REP.
    @ivar port: BND.PORT: in a CONNECT reply the outbound socket's port; in
        BIND replies the listening port, then the peer's; in a UDP ASSOCIATE
        reply the relay's port.
    @ivar address: BND.ADDR for ATYP 1 and 4, else L{None}.
    @ivar name: BND.ADDR for ATYP 3, else L{None}.
    """

    code: ReplyCode5
    port: int
    address: Address | None
    name: str | None

    @property
    def granted(self) -> bool:
        """Whether the server granted the request (REP 00)."""
        return self.code is ReplyCode5.SUCCEEDED

    @property
    def addressType(self) -> AddressType:
        """The ATYP the reply came with."""
        return addressTypeOf(self.address)

    @property
    def destination(self) -> str:
        """BND.ADDR as text: the name or the address."""
        return destinationText(self.address, self.name)


def parseMethodSelection(buffer: bytes) -> tuple[int, int] | None:
    """
    Parse the server's method selection, C{05 METHOD}.

    @return: L{None} until both bytes arrived; then the method (C{0xFF}: no
        acceptable method) and 2.
    @raise MalformedReply5: for a VER other than 5 (a SOCKS4 server answers
        0, an HTTP proxy "H").
    """
    if buffer[:1] and buffer[0] != SOCKS5_VERSION:
        raise MalformedReply5(f"method selection version {buffer[0]} (expected 5)")
    if len(buffer) < 2:
        return None
    return buffer[1], 2


def parseAuthStatus(buffer: bytes) -> tuple[int, int] | None:
    """
    Parse the server's sub-negotiation response, C{01 STATUS}.

    @return: L{None} until both bytes arrived; then STATUS (0: success) and 2.
    @raise MalformedReply5: for a VER other than 1, as PySocks and
        python-socks refuse it (a server answering C{05 00} has confused the
        sub-negotiation with the greeting).
    """
    if buffer[:1] and buffer[0] != AUTH_VERSION:
        raise MalformedReply5(f"auth status version {buffer[0]} (expected 1)")
    if len(buffer) < 2:
        return None
    return buffer[1], 2


def parseReply5(buffer: bytes) -> tuple[Reply5, int] | None:
    """
    Parse one reply from the start of C{buffer}.

    RSV is not judged: it carries nothing a client needs, and refusing a
    server over it would fail sessions that work with every other client.

    @return: L{None} while C{buffer} is a strict prefix of a reply; else the
        reply and the number of bytes it occupied (what follows is the
        relayed stream, or a BIND's second reply).
    @raise MalformedReply5: as soon as the bytes so far cannot start a reply.
    """
    size = len(buffer)
    if size >= 1 and buffer[0] != SOCKS5_VERSION:
        raise MalformedReply5(f"reply version {buffer[0]} (expected 5)")
    if size >= 2 and buffer[1] not in _REPLY_CODES:
        raise MalformedReply5(f"unknown reply code {buffer[1]}")
    try:
        parsed = parseAddress(buffer, 3)
    except SOCKS5ProtocolError as e:
        raise MalformedReply5(f"reply: {e}") from e
    if parsed is None:
        return None
    address, name, end = parsed
    if size < end + 2:
        return None
    port = int.from_bytes(buffer[end : end + 2], "big")
    return Reply5(ReplyCode5(buffer[1]), port, address, name), end + 2


class ReplyParser5(IncrementalParser[Reply5]):
    """An incremental parser of replies (L{parseReply5})."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(parseReply5)
