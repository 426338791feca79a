"""
The SOCKS4 and SOCKS4A wire format, with no I/O and no Twisted imports.

Requests are parsed incrementally: L{RequestParser} takes whatever chunks TCP
delivers and yields a L{Request} once the last byte of one has arrived.  Until
then it answers "need more" (L{None}) and has consumed nothing, so a request
split at any byte parses exactly as if it came whole.  Every variable-length
field has a cap that is enforced as soon as it is crossed, so the parser never
holds more than L{MAX_REQUEST_SIZE} bytes.

Errors from the peer are L{SOCKSProtocolError} subclasses; each says which
reply (if any) the server should send before it closes.  Misuse by the local
program (for example encoding a reply with a port out of range) raises
L{ValueError} instead, so the two are never confused.

L{encodeRequest} is the client's way in; the client's reading of the
server's 8-byte reply, and the refusals a reply stands for, are in
L{twisted_socks.wire._socks4reply}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from ._outcome import Outcome

# The command and the address text are the version-neutral request's; SOCKS4
# uses two of the commands (see _COMMANDS).
from ._request import Command
from ._request import addressText as addressText

__all__ = [
    "MAX_HOSTNAME_LENGTH",
    "MAX_REQUEST_SIZE",
    "MAX_USERID_LENGTH",
    "REPLY_SIZE",
    "Command",
    "EmptyHostname",
    "HostnameTooLong",
    "InvalidHostname",
    "ReplyCode",
    "Request",
    "RequestParser",
    "SOCKSProtocolError",
    "UnknownCommand",
    "UnsupportedVersion",
    "UserIdTooLong",
    "ZeroAddress",
    "ZeroPort",
    "encodeReply",
    "encodeRequest",
    "parseRequest",
    "replyFor",
]

SOCKS_VERSION = 4
REPLY_VERSION = 0  # the spec says replies carry VN 0; curl rejects anything else

#: The spec sets no limit; Dante caps USERID at 255 bytes and so do we.
MAX_USERID_LENGTH = 255
#: DNS names are at most 255 octets on the wire (RFC 1035 section 3.1).
MAX_HOSTNAME_LENGTH = 255
_HEADER = struct.Struct("!BBH4s")
_HEADER_SIZE = _HEADER.size  # 8
#: The longest request the parser will ever buffer: header, USERID, NUL,
#: hostname, NUL.
MAX_REQUEST_SIZE = _HEADER_SIZE + MAX_USERID_LENGTH + 1 + MAX_HOSTNAME_LENGTH + 1

_REPLY = struct.Struct("!BBH4s")
#: Every reply is exactly this long: VN, CD, DSTPORT, DSTIP.
REPLY_SIZE = _REPLY.size  # 8

# A 4A hostname goes into a log line and, after resolution, into a policy
# decision.  Only the printable ASCII a DNS name or an address literal can hold
# is accepted; IDNs arrive already A-label encoded (PySocks, curl).
_HOSTNAME_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:"
)


class ReplyCode(IntEnum):
    """The CD field of a reply."""

    GRANTED = 90
    REJECTED = 91
    NO_IDENTD = 92
    IDENT_MISMATCH = 93


#: What a SOCKS4 client is told of each outcome: SOCKS4 has one code for
#: every failure but the two of the ident check.
_SOCKS4_REPLIES = {
    Outcome.GRANTED: ReplyCode.GRANTED,
    Outcome.NO_IDENTD: ReplyCode.NO_IDENTD,
    Outcome.IDENT_MISMATCH: ReplyCode.IDENT_MISMATCH,
}


def replyFor(outcome: Outcome) -> ReplyCode:
    """The SOCKS4 reply code (CD) that tells a client C{outcome}."""
    return _SOCKS4_REPLIES.get(outcome, ReplyCode.REJECTED)


@dataclass(frozen=True, slots=True)
class Request:
    """
    A complete SOCKS4 or SOCKS4A request.

    @ivar command: CONNECT or BIND.
    @ivar port: DSTPORT.
    @ivar address: DSTIP for a plain SOCKS4 request; L{None} for SOCKS4A,
        whose destination is C{hostname}.
    @ivar hostname: the SOCKS4A destination name (ASCII), or L{None}.
    @ivar userid: the USERID bytes, without the terminating NUL.
    """

    command: Command
    port: int
    address: IPv4Address | None
    hostname: str | None
    userid: bytes

    @property
    def isSOCKS4A(self) -> bool:
        """Whether the destination is a name for the server to resolve."""
        return self.hostname is not None

    @property
    def user(self) -> str:
        """
        The USERID as text.

        Decoded as UTF-8 with C{surrogateescape}, so it is lossless: bytes that
        are not UTF-8 survive as lone surrogates and never match a name in a
        rules file by accident.
        """
        return self.userid.decode("utf-8", "surrogateescape")

    @property
    def destination(self) -> str:
        """The requested destination as text: the hostname or the address."""
        return self.hostname if self.hostname is not None else addressText(self.address)


class SOCKSProtocolError(Exception):
    """
    The peer sent something that is not an acceptable SOCKS4/4A request.

    @cvar replyCode: the reply to send before closing, or L{None} to close
        without a reply (when the peer does not speak SOCKS4 at all, a SOCKS4
        reply would only confuse it).
    """

    replyCode: ReplyCode | None = ReplyCode.REJECTED


class UnsupportedVersion(SOCKSProtocolError):
    """VN is not 4: an HTTP request, a SOCKS5 greeting, or noise."""

    replyCode = None


class UnknownCommand(SOCKSProtocolError):
    """CD is neither CONNECT nor BIND."""


class UserIdTooLong(SOCKSProtocolError):
    """No NUL within L{MAX_USERID_LENGTH} bytes of USERID."""


class HostnameTooLong(SOCKSProtocolError):
    """No NUL within L{MAX_HOSTNAME_LENGTH} bytes of a SOCKS4A hostname."""


class EmptyHostname(SOCKSProtocolError):
    """
    A SOCKS4A request with an empty hostname.

    Resolvers turn C{""} into 0.0.0.0, which Linux connects to the local host.
    """


class InvalidHostname(SOCKSProtocolError):
    """A SOCKS4A hostname with bytes no DNS name or address literal contains."""


class ZeroAddress(SOCKSProtocolError):
    """
    DSTIP 0.0.0.0.

    It is not SOCKS4A (that needs a non-zero last byte) and connecting to it
    reaches the local host on Linux.
    """


class ZeroPort(SOCKSProtocolError):
    """A CONNECT to port 0, which no service listens on."""


def parseRequest(buffer: bytes) -> tuple[Request, int] | None:
    """
    Parse one request from the start of C{buffer}.

    @return: L{None} if C{buffer} is a strict prefix of a request that may
        still turn out valid; otherwise the request and the number of bytes it
        occupied (anything after them belongs to the stream that follows).
    @raise SOCKSProtocolError: as soon as the bytes so far cannot start an
        acceptable request.
    """
    size = len(buffer)
    # Judge each header field the moment its byte arrives, so garbage is
    # answered at once instead of after a timeout.
    if size >= 1 and buffer[0] != SOCKS_VERSION:
        raise UnsupportedVersion(f"version {buffer[0]}")
    if size >= 2 and buffer[1] not in _COMMANDS:
        raise UnknownCommand(f"command {buffer[1]}")
    if size < _HEADER_SIZE:
        return None
    _, cd, port, rawAddress = _HEADER.unpack_from(buffer)
    command = Command(cd)
    if rawAddress == b"\0\0\0\0":
        raise ZeroAddress("DSTIP 0.0.0.0")
    is4A = rawAddress[:3] == b"\0\0\0"

    useridEnd = buffer.find(b"\0", _HEADER_SIZE, _HEADER_SIZE + MAX_USERID_LENGTH + 1)
    if useridEnd < 0:
        if size > _HEADER_SIZE + MAX_USERID_LENGTH:
            raise UserIdTooLong(f"USERID over {MAX_USERID_LENGTH} bytes")
        return None
    userid = buffer[_HEADER_SIZE:useridEnd]

    if not is4A:
        _checkPort(command, port)
        return (
            Request(command, port, IPv4Address(rawAddress), None, userid),
            useridEnd + 1,
        )

    nameStart = useridEnd + 1
    nameEnd = buffer.find(b"\0", nameStart, nameStart + MAX_HOSTNAME_LENGTH + 1)
    if nameEnd < 0:
        pending = buffer[nameStart : nameStart + MAX_HOSTNAME_LENGTH + 1]
        _checkHostnameBytes(pending)
        if len(pending) > MAX_HOSTNAME_LENGTH:
            raise HostnameTooLong(f"hostname over {MAX_HOSTNAME_LENGTH} bytes")
        return None
    name = buffer[nameStart:nameEnd]
    if not name:
        raise EmptyHostname("empty SOCKS4A hostname")
    _checkHostnameBytes(name)
    _checkPort(command, port)
    return Request(command, port, None, name.decode("ascii"), userid), nameEnd + 1


# SOCKS4 has two of the commands (SOCKS5 adds UDP ASSOCIATE).
_COMMANDS = frozenset((Command.CONNECT, Command.BIND))


def _checkHostnameBytes(name: bytes) -> None:
    if not _HOSTNAME_BYTES.issuperset(name):
        raise InvalidHostname("hostname holds bytes outside printable ASCII")


def _checkPort(command: Command, port: int) -> None:
    # A BIND's DSTPORT is only informative (the port of the primary
    # connection), so only CONNECT needs a real port.
    if port == 0 and command is Command.CONNECT:
        raise ZeroPort("CONNECT to port 0")


class RequestParser:
    """
    Accumulates bytes until one request is complete.

    Feed it chunks with L{feed}; it returns the L{Request} once, after which
    L{trailingData} holds whatever bytes followed the request in the stream
    (pipelined application data, never a second request).
    """

    __slots__ = ("_buffer", "request", "trailingData")

    def __init__(self) -> None:
        self._buffer = b""
        #: The parsed request, once there is one.
        self.request: Request | None = None
        #: Bytes received after the request.
        self.trailingData = b""

    def feed(self, data: bytes) -> Request | None:
        """
        Add C{data}; return the request once it is complete, else L{None}.

        @raise SOCKSProtocolError: if the bytes cannot be a valid request.
        @raise ValueError: if called again after a request was returned
            (the caller must treat later bytes as stream data).
        """
        if self.request is not None:
            raise ValueError("request already parsed; later bytes are stream data")
        self._buffer += data
        parsed = parseRequest(self._buffer)
        if parsed is None:
            return None
        request, used = parsed
        self.request = request
        self.trailingData = self._buffer[used:]
        self._buffer = b""
        return request

    @property
    def bufferedSize(self) -> int:
        """How many bytes of an incomplete request are held."""
        return len(self._buffer)


def encodeReply(
    code: ReplyCode, port: int = 0, address: IPv4Address | None = None
) -> bytes:
    """
    Encode an 8-byte reply: VN 0, CD, DSTPORT, DSTIP.

    @raise ValueError: for a port outside 0..65535.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    packed = address.packed if address is not None else b"\0\0\0\0"
    return _REPLY.pack(REPLY_VERSION, ReplyCode(code), port, packed)


def encodeRequest(
    command: Command,
    port: int,
    address: IPv4Address | None = None,
    hostname: str | None = None,
    userid: bytes = b"",
) -> bytes:
    """
    Encode a request (used by the client and by tests).

    Give exactly one of C{address} (SOCKS4) or C{hostname} (SOCKS4A).

    @raise ValueError: for out-of-range or oversize fields.
    """
    if (address is None) == (hostname is None):
        raise ValueError("give exactly one of address and hostname")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    if b"\0" in userid or len(userid) > MAX_USERID_LENGTH:
        raise ValueError("USERID must hold no NUL and be at most 255 bytes")
    if address is not None:
        header = _HEADER.pack(SOCKS_VERSION, Command(command), port, address.packed)
        return header + userid + b"\0"
    name = (hostname or "").encode(
        "idna" if not (hostname or "").isascii() else "ascii"
    )
    if not name or b"\0" in name or len(name) > MAX_HOSTNAME_LENGTH:
        raise ValueError("hostname must be 1..255 bytes with no NUL")
    # DSTIP 0.0.0.1, as every 4A client seen in the wild sends.
    header = _HEADER.pack(SOCKS_VERSION, Command(command), port, b"\0\0\0\1")
    return header + userid + b"\0" + name + b"\0"
