"""
The SOCKS5 wire format (RFC 1928), with no I/O and no Twisted imports.

The server reads two messages from a client over TCP, each with an
incremental parser in the shape of L{twisted_socks.wire._socks4}: the greeting
(L{GreetingParser}) and the request (L{RequestParser5}); the RFC 1929
username/password sub-negotiation between them lives in
L{twisted_socks.wire._userpass}.  Each parser takes whatever chunks TCP delivers,
answers "need more" (L{None}) until the last byte of its message has
arrived, then returns a frozen value once and keeps the bytes that followed
as C{trailingData} (the next message of a pipelining client, or stream
data).  Every field is judged the moment its byte arrives and every length
is bounded by its one-byte length field, so no parser holds more than its
message's maximum size.

Errors from the peer are L{SOCKS5ProtocolError} subclasses; each says what
to send before closing: a 10-byte failure reply (L{SOCKS5ProtocolError.replyCode}),
C{05 FF}, C{01 01}, or nothing (L{SOCKS5ProtocolError.reply} holds the
bytes).  Misuse by the local program (an encoder given a port out of range,
a name too long) raises L{ValueError} or L{TypeError}, never a protocol
error.

UDP datagram headers are in L{twisted_socks.wire._socks5udp}; the client side's
reply parser is in L{twisted_socks.wire._socks5client}.

Names (ATYP 3) follow the SOCKS4A rule of L{twisted_socks.wire._socks4}: 1..255
bytes of the printable ASCII a DNS name or an address literal holds
(letters, digits, C{-._:}); they are decoded as ASCII and never IDNA-decoded,
so an IDN arrives, is logged and is judged as its A-label (C{xn--...}), as
curl, PySocks and python-socks send it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from ._incremental import IncrementalParser
from ._socks4 import addressText
from ._socks5replies import ReplyCode5 as ReplyCode5
from ._socks5replies import replyFor5 as replyFor5

__all__ = [
    "MAX_GREETING_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_REQUEST5_SIZE",
    "SOCKS5_VERSION",
    "AddressType",
    "BadGreetingVersion",
    "BadRequestVersion",
    "Command5",
    "EmptyName",
    "Greeting",
    "GreetingParser",
    "InvalidName",
    "Method",
    "NoMethodsOffered",
    "NonZeroReserved",
    "ReplyCode5",
    "Request5",
    "RequestParser5",
    "SOCKS5ProtocolError",
    "UnknownAddressType",
    "UnknownCommand5",
    "ZeroAddress5",
    "ZeroPort5",
    "encodeGreeting",
    "encodeMethodSelection",
    "encodeReply5",
    "encodeRequest5",
    "parseGreeting",
    "parseRequest5",
    "replyFor5",
]

SOCKS5_VERSION = 5
#: A name's length is one octet; RFC 1035 caps DNS names at 255 octets too.
MAX_NAME_LENGTH = 255
#: VER, NMETHODS, up to 255 methods.
MAX_GREETING_SIZE = 2 + 255
#: VER, CMD, RSV, ATYP, the longest address (a length octet and 255 bytes of
#: name), DST.PORT.
MAX_REQUEST5_SIZE = 4 + 1 + MAX_NAME_LENGTH + 2

# The same bytes as a SOCKS4A hostname (see _codec): a name goes into log
# lines and policy decisions, so only what a DNS name or an address literal
# can hold is let in; IDNs arrive as A-labels.
_NAME_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:"
)
_PORT = struct.Struct("!H")


class Method(IntEnum):
    """The authentication methods this project knows (RFC 1928 section 3)."""

    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command5(IntEnum):
    """The CMD field of a request."""

    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class AddressType(IntEnum):
    """The ATYP field of a request, a reply or a datagram header."""

    IPV4 = 1
    NAME = 3
    IPV6 = 4


Address = IPv4Address | IPv6Address


def destinationText(address: Address | None, name: str | None) -> str:
    """A destination as text: C{name} if there is one, else C{address}."""
    return name if name is not None else addressText(address)


def addressTypeOf(address: Address | None) -> AddressType:
    """The ATYP that carries C{address} (L{None}: a name)."""
    if address is None:
        return AddressType.NAME
    return AddressType.IPV4 if address.version == 4 else AddressType.IPV6


@dataclass(frozen=True, slots=True)
class Greeting:
    """
    A client's greeting: the authentication methods it offers.

    @ivar methods: the METHODS octets in the client's order (unknown values
        included: 03-FE are IANA-assigned or private, not malformed).
    """

    methods: tuple[int, ...]

    def offers(self, method: int) -> bool:
        """Whether the client offered C{method}."""
        return method in self.methods


@dataclass(frozen=True, slots=True)
class Request5:
    """
    A complete SOCKS5 request.

    @ivar command: CONNECT, BIND or UDP ASSOCIATE.
    @ivar port: DST.PORT (0 only for BIND and UDP ASSOCIATE, where it means
        "not known yet").
    @ivar address: DST.ADDR for ATYP 1 and 4; L{None} for a name.
    @ivar name: DST.ADDR for ATYP 3 (ASCII, 1..255 characters), else L{None}.
    """

    command: Command5
    port: int
    address: Address | None
    name: str | None

    @property
    def addressType(self) -> AddressType:
        """The ATYP the request came with."""
        return addressTypeOf(self.address)

    @property
    def destination(self) -> str:
        """The requested destination as text: the name or the address."""
        return destinationText(self.address, self.name)


# -- errors ----------------------------------------------------------------------


def failureReply(code: ReplyCode5) -> bytes:
    """The 10-byte reply that refuses a request with C{code}."""
    # Clients size a reply by its ATYP, so a failure is a full reply; its
    # BND fields mean nothing, and IPv4 zeros are the shortest (microsocks
    # sends the same).
    return bytes([SOCKS5_VERSION, code, 0, AddressType.IPV4]) + b"\0" * 6


class SOCKS5ProtocolError(Exception):
    """
    The peer sent something that is not an acceptable SOCKS5 message.

    @cvar replyCode: the REP of the 10-byte failure reply to send before
        closing, for errors in a request; L{None} for errors before the
        request, which no reply code can answer.
    @cvar reply: exactly the bytes to send before closing, or L{None} to
        close without a word (the peer does not speak the protocol, or it
        is a datagram, which is dropped).
    """

    replyCode: ClassVar[ReplyCode5 | None] = ReplyCode5.GENERAL_FAILURE
    reply: ClassVar[bytes | None] = failureReply(ReplyCode5.GENERAL_FAILURE)


class BadGreetingVersion(SOCKS5ProtocolError):
    """The greeting's VER is not 5: no SOCKS5 answer would be understood."""

    replyCode = None
    reply = None


class NoMethodsOffered(SOCKS5ProtocolError):
    """
    NMETHODS is 0 (RFC 1928 gives 1 to 255).  Answered C{05 FF} and a
    close, as Dante and microsocks answer it.
    """

    replyCode = None
    reply = bytes([SOCKS5_VERSION, Method.NO_ACCEPTABLE])


class BadRequestVersion(SOCKS5ProtocolError):
    """The request's VER is not 5."""


class UnknownCommand5(SOCKS5ProtocolError):
    """CMD is not CONNECT, BIND or UDP ASSOCIATE (Tor's RESOLVE included)."""

    replyCode = ReplyCode5.COMMAND_NOT_SUPPORTED
    reply = failureReply(ReplyCode5.COMMAND_NOT_SUPPORTED)


class NonZeroReserved(SOCKS5ProtocolError):
    """The request's RSV octet is not 0."""


class UnknownAddressType(SOCKS5ProtocolError):
    """ATYP is not 1, 3 or 4."""

    replyCode = ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED
    reply = failureReply(ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED)


class EmptyName(SOCKS5ProtocolError):
    """
    A name of length 0.  Resolvers turn C{""} into 0.0.0.0, which Linux
    connects to the local host.
    """


class InvalidName(SOCKS5ProtocolError):
    """A name with bytes no DNS name or address literal holds (NUL, CR, ...)."""


class ZeroAddress5(SOCKS5ProtocolError):
    """
    A CONNECT to 0.0.0.0 or C{::}, which Linux connects to the local host.
    (BIND and UDP ASSOCIATE may send zeros: they mean "any" or "not known".)
    """


class ZeroPort5(SOCKS5ProtocolError):
    """A CONNECT to port 0, which no service listens on."""


# -- the address field, shared by requests, replies and datagrams ----------------


def _checkName(name: bytes) -> None:
    if not _NAME_BYTES.issuperset(name):
        raise InvalidName("name holds bytes outside printable ASCII")


def parseAddress(
    buffer: bytes, offset: int
) -> tuple[Address | None, str | None, int] | None:
    """
    Parse ATYP and DST.ADDR starting at C{buffer[offset]}.

    @return: L{None} while the address is incomplete; else the IP address
        (or L{None}), the name (or L{None}), and the offset just past it.
    @raise SOCKS5ProtocolError: L{UnknownAddressType}, L{EmptyName} or
        L{InvalidName}, as soon as the bytes so far show it.
    """
    size = len(buffer)
    if size <= offset:
        return None
    atyp = buffer[offset]
    start = offset + 1
    if atyp == AddressType.IPV4:
        if size < start + 4:
            return None
        return IPv4Address(buffer[start : start + 4]), None, start + 4
    if atyp == AddressType.IPV6:
        if size < start + 16:
            return None
        return IPv6Address(buffer[start : start + 16]), None, start + 16
    if atyp != AddressType.NAME:
        raise UnknownAddressType(f"address type {atyp}")
    if size <= start:
        return None
    length = buffer[start]
    if length == 0:
        raise EmptyName("name of length 0")
    name = buffer[start + 1 : start + 1 + length]
    _checkName(name)
    if len(name) < length:
        return None
    return None, name.decode("ascii"), start + 1 + length


def encodeAddress(address: Address | None, name: str | None) -> bytes:
    """
    Encode ATYP and the address: C{name} (IDNA-encoded if it is not ASCII),
    else C{address}, else 0.0.0.0.

    @raise ValueError: for both, or a name that is empty, over 255 bytes or
        holds bytes no DNS name holds.
    @raise TypeError: for an C{address} that is not an IP address.
    """
    if address is not None and name is not None:
        raise ValueError("give at most one of address and name")
    if name is not None:
        raw = name.encode("ascii" if name.isascii() else "idna")
        if not 1 <= len(raw) <= MAX_NAME_LENGTH or not _NAME_BYTES.issuperset(raw):
            raise ValueError(f"name must be 1..255 bytes of a DNS name: {name!r}")
        return bytes([AddressType.NAME, len(raw)]) + raw
    if address is None:
        address = IPv4Address(0)
    if not isinstance(address, IPv4Address | IPv6Address):
        raise TypeError(f"not an IP address: {address!r}")
    return bytes([addressTypeOf(address)]) + address.packed


def packPort(port: int) -> bytes:
    """
    Two octets in network order.

    @raise ValueError: for a port outside 0..65535.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return _PORT.pack(port)


# -- the greeting -----------------------------------------------------------------


def parseGreeting(buffer: bytes) -> tuple[Greeting, int] | None:
    """
    Parse a greeting (C{05 NMETHODS METHODS...}) from the start of C{buffer}.

    @return: L{None} while C{buffer} is a strict prefix of a greeting; else
        the greeting and the number of bytes it occupied.
    @raise SOCKS5ProtocolError: L{BadGreetingVersion} or L{NoMethodsOffered}.
    """
    size = len(buffer)
    if size >= 1 and buffer[0] != SOCKS5_VERSION:
        raise BadGreetingVersion(f"version {buffer[0]}")
    if size < 2:
        return None
    count = buffer[1]
    if count == 0:
        raise NoMethodsOffered("NMETHODS 0")
    end = 2 + count
    if size < end:
        return None
    return Greeting(tuple(buffer[2:end])), end


def encodeGreeting(methods: Iterable[int]) -> bytes:
    """
    Encode a client's greeting offering C{methods}.

    @raise ValueError: for no methods, more than 255, or one outside 0..255.
    """
    octets = bytes(methods)
    if not 1 <= len(octets) <= 255:
        raise ValueError("offer 1..255 methods")
    return bytes([SOCKS5_VERSION, len(octets)]) + octets


def encodeMethodSelection(method: int) -> bytes:
    """
    Encode the server's choice, C{05 METHOD} (C{05 FF}: none acceptable).

    @raise ValueError: for a method outside 0..255.
    """
    if not 0 <= method <= 0xFF:
        raise ValueError(f"method out of range: {method}")
    return bytes([SOCKS5_VERSION, method])


# -- the request ------------------------------------------------------------------

_COMMANDS = frozenset(Command5)


def parseRequest5(buffer: bytes) -> tuple[Request5, int] | None:
    """
    Parse one request (C{05 CMD 00 ATYP DST.ADDR DST.PORT}) from the start
    of C{buffer}.

    @return: L{None} while C{buffer} is a strict prefix of a request that may
        still turn out valid; else the request and the number of bytes it
        occupied (what follows is stream data).
    @raise SOCKS5ProtocolError: as soon as the bytes so far cannot start an
        acceptable request.
    """
    size = len(buffer)
    if size >= 1 and buffer[0] != SOCKS5_VERSION:
        raise BadRequestVersion(f"version {buffer[0]}")
    if size >= 2 and buffer[1] not in _COMMANDS:
        raise UnknownCommand5(f"command {buffer[1]}")
    if size >= 3 and buffer[2] != 0:
        raise NonZeroReserved(f"RSV {buffer[2]}")
    parsed = parseAddress(buffer, 3)
    if parsed is None:
        return None
    address, name, end = parsed
    command = Command5(buffer[1])
    if command is Command5.CONNECT and address is not None and not int(address):
        raise ZeroAddress5(f"CONNECT to {address}")
    if size < end + 2:
        return None
    (port,) = _PORT.unpack_from(buffer, end)
    # BIND's DST.PORT is informative and UDP ASSOCIATE's may be "not known
    # yet" (RFC 1928 section 7); only CONNECT needs a real port.
    if port == 0 and command is Command5.CONNECT:
        raise ZeroPort5("CONNECT to port 0")
    return Request5(command, port, address, name), end + 2


def encodeRequest5(
    command: Command5,
    port: int,
    address: Address | None = None,
    name: str | None = None,
) -> bytes:
    """
    Encode a request (used by the client and by tests).  With neither
    C{address} nor C{name}, DST.ADDR is 0.0.0.0 (UDP ASSOCIATE's "not
    known"); a non-ASCII C{name} is sent IDNA-encoded.

    @raise ValueError: for out-of-range or oversize fields, or both
        C{address} and C{name}.
    """
    return (
        bytes([SOCKS5_VERSION, Command5(command), 0])
        + encodeAddress(address, name)
        + packPort(port)
    )


def encodeReply5(
    code: ReplyCode5,
    port: int = 0,
    address: Address | None = None,
    name: str | None = None,
) -> bytes:
    """
    Encode a reply: C{05 REP 00 ATYP BND.ADDR BND.PORT}.  With neither
    C{address} nor C{name}, BND.ADDR is 0.0.0.0 (a failure needs nothing
    else).

    @raise ValueError: for an unknown code, a port outside 0..65535, a bad
        name, or both C{address} and C{name}.
    """
    return (
        bytes([SOCKS5_VERSION, ReplyCode5(code), 0])
        + encodeAddress(address, name)
        + packPort(port)
    )


class GreetingParser(IncrementalParser[Greeting]):
    """An L{IncrementalParser} of greetings (L{parseGreeting})."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(parseGreeting)


class RequestParser5(IncrementalParser[Request5]):
    """An L{IncrementalParser} of requests (L{parseRequest5})."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(parseRequest5)
