"""
SOCKS4 replies as a client reads them, with no I/O and no Twisted imports.

L{parseReply} reads the server's 8-byte reply, judging each byte as it
arrives; L{rejectionFor} is the error a refusing reply stands for
(L{RequestRejected} and its two ident subclasses, the refusals the protocol
can express).  L{SOCKS4Negotiation} is the whole client side of one SOCKS4
exchange in the shape the handshake driver (L{twisted_socks.client._handshake})
runs: the request out, the replies in, the stream's first bytes after them.
The request itself is encoded by L{twisted_socks.wire._socks4.encodeRequest}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from ._clienterrors import MalformedReply, SOCKSError
from ._socks4 import REPLY_SIZE, REPLY_VERSION, SOCKS_VERSION, ReplyCode

__all__ = [
    "NoIdentdRejection",
    "Reply",
    "RequestRejected",
    "SOCKS4Negotiation",
    "UserIdMismatch",
    "parseReply",
    "rejectionFor",
]

#: The reply as the client reads it: VN, CD, DSTPORT, DSTIP.
_REPLY = struct.Struct("!BBH4s")

# The spec says a reply's VN "should be 0", and curl and PySocks insist on it.
# Some servers echo the request's VN 4 instead; accepting it costs nothing,
# because no other protocol a client could meet on a SOCKS port starts its
# answer with 0 or 4 (SOCKS5 answers 5, HTTP answers "H").
_REPLY_VERSIONS = frozenset({REPLY_VERSION, SOCKS_VERSION})
_REPLY_CODES = frozenset(ReplyCode)


@dataclass(frozen=True, slots=True)
class Reply:
    """
    A server's 8-byte reply to a request.

    @ivar code: CD, one of the four codes the protocol defines.
    @ivar port: DSTPORT.  Meaningful in BIND replies (the listening port, then
        the inbound peer's port); CONNECT replies carry whatever the server
        chose, which the spec says to ignore.
    @ivar address: DSTIP, as for C{port}.  In a first BIND reply, 0.0.0.0
        means "the address of the SOCKS server you are connected to".
    """

    code: ReplyCode
    port: int
    address: IPv4Address

    @property
    def granted(self) -> bool:
        """Whether the server granted the request (CD 90)."""
        return self.code is ReplyCode.GRANTED


class RequestRejected(SOCKSError):
    """
    The server refused or failed the request (CD 91).

    A server replies 91 for a policy denial, a failed or timed-out connection
    to the destination, a SOCKS4A name it could not resolve, and (as a second
    BIND reply) an inbound connection from the wrong host.  The ident
    refusals are subclasses, so catching this class catches every refusal.

    @cvar replyCode: the CD this class stands for.
    @ivar reply: the reply that carried the refusal, if there was one.
    """

    replyCode: ReplyCode = ReplyCode.REJECTED

    def __init__(self, message: str = "", reply: Reply | None = None) -> None:
        super().__init__(message or _REJECTION_TEXT[self.replyCode])
        self.reply = reply


class NoIdentdRejection(RequestRejected):
    """
    The server refused the request because it could not reach an identd on
    the client's host (CD 92).
    """

    replyCode = ReplyCode.NO_IDENTD


class UserIdMismatch(RequestRejected):
    """
    The server refused the request because the client's identd reported a
    different user than the request's USERID (CD 93).
    """

    replyCode = ReplyCode.IDENT_MISMATCH


_REJECTION_TEXT = {
    ReplyCode.REJECTED: "request rejected or failed (reply 91)",
    ReplyCode.NO_IDENTD: "request rejected: the server cannot reach identd"
    " on the client (reply 92)",
    ReplyCode.IDENT_MISMATCH: "request rejected: identd reports a different"
    " user-id (reply 93)",
}

_REJECTIONS: dict[ReplyCode, type[RequestRejected]] = {
    ReplyCode.REJECTED: RequestRejected,
    ReplyCode.NO_IDENTD: NoIdentdRejection,
    ReplyCode.IDENT_MISMATCH: UserIdMismatch,
}


def parseReply(buffer: bytes) -> tuple[Reply, int] | None:
    """
    Parse one reply from the start of C{buffer}.

    @return: L{None} if C{buffer} is a strict prefix of a reply that may still
        turn out valid; otherwise the reply and the number of bytes it
        occupied (always L{REPLY_SIZE}: what follows is the relayed stream).
    @raise MalformedReply: as soon as the bytes so far cannot start a reply.
    """
    size = len(buffer)
    # As with requests, judge each field the moment its byte arrives: an HTTP
    # proxy's "HTTP/1.1 400" is recognised after one byte, not after eight.
    if size >= 1 and buffer[0] not in _REPLY_VERSIONS:
        raise MalformedReply(f"reply version {buffer[0]} (expected 0)")
    if size >= 2 and buffer[1] not in _REPLY_CODES:
        raise MalformedReply(f"unknown reply code {buffer[1]}")
    if size < REPLY_SIZE:
        return None
    _, code, port, rawAddress = _REPLY.unpack_from(buffer)
    return Reply(ReplyCode(code), port, IPv4Address(rawAddress)), REPLY_SIZE


def rejectionFor(reply: Reply) -> RequestRejected | None:
    """
    The error a refusing reply stands for.

    @return: L{None} for a grant (CD 90); otherwise a L{RequestRejected} of the
        class matching the reply code, carrying C{reply}.
    """
    if reply.granted:
        return None
    return _REJECTIONS[reply.code](reply=reply)


class SOCKS4Negotiation:
    """
    The client's side of one SOCKS4 exchange: the request to send, then the
    replies as they arrive (one for CONNECT, two for BIND).
    """

    __slots__ = ("_buffer", "_request")

    def __init__(self, request: bytes) -> None:
        """
        @param request: the encoded request, sent as soon as the connection
            to the proxy is made.
        """
        self._request = request
        self._buffer = b""

    def dataToSend(self) -> bytes:
        """The request, the first time; nothing after it."""
        request, self._request = self._request, b""
        return request

    def receiveData(self, data: bytes) -> None:
        """Take bytes the proxy sent."""
        self._buffer += data

    def nextReply(self) -> Reply | None:
        """
        The next complete reply, or L{None} until its 8 bytes are here.

        @raise MalformedReply: as soon as the bytes cannot start a reply.
        """
        parsed = parseReply(self._buffer)
        if parsed is None:
            return None
        reply, used = parsed
        self._buffer = self._buffer[used:]
        return reply

    def takeData(self) -> bytes:
        """The bytes after the last reply read, and forget them."""
        data, self._buffer = self._buffer, b""
        return data

    def connectionClosed(self) -> MalformedReply:
        """A clean close mid-reply: the server spoke, but not SOCKS4."""
        return MalformedReply(
            f"connection closed after {len(self._buffer)} of {REPLY_SIZE} reply bytes"
        )
