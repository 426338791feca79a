"""
The SOCKS5 client's side of the wire (RFC 1928, RFC 1929), with no I/O and
no Twisted imports.

A client sends what L{twisted_socks.wire._socks5} and L{twisted_socks.wire._userpass}
encode (L{encodeGreeting}, L{encodeAuthRequest}, L{encodeRequest5}) and
reads three answers, parsed here in the shape of L{twisted_socks.wire._socks4}:
the method selection (C{05 METHOD}), the sub-negotiation status
(C{01 STATUS}) and the reply (C{05 REP RSV ATYP BND.ADDR BND.PORT}), each
judged byte by byte, C{None} until complete.  A reply comes in any of the
three address types: Dante answers a failed name with ATYP 3, echoing it.

What is not one of these answers raises L{MalformedReply5}, a
L{MalformedReply}, so a handshake driver shared with SOCKS4 catches both
versions' garbage with one clause.

L{SOCKS5Negotiation} strings the three together for the shared handshake
driver (L{twisted_socks.client._handshake}): greeting, method selection, the RFC
1929 exchange when the server chose it, the request, then the replies.  It
sends each message only once the server has answered the one before: a
client that pipelines them loses its request on microsocks, which reads one
message per C{recv()}.  The errors a client reports for each refusal are
here too, each carrying what the server said.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import ClassVar

from ._clienterrors import MalformedReply, SOCKSError
from ._incremental import IncrementalParser
from ._socks5 import (
    SOCKS5_VERSION,
    Address,
    AddressType,
    Method,
    ReplyCode5,
    SOCKS5ProtocolError,
    addressTypeOf,
    destinationText,
    encodeGreeting,
    parseAddress,
)
from ._userpass import AUTH_SUCCESS, AUTH_VERSION, encodeAuthRequest

__all__ = [
    "MAX_REPLY5_SIZE",
    "AddressTypeNotSupported",
    "ClosedBeforeReply5",
    "CommandNotSupported",
    "ConnectionRefused5",
    "GeneralSOCKSFailure",
    "HostUnreachable5",
    "MalformedReply5",
    "NetworkUnreachable5",
    "NoAcceptableMethod",
    "NotAllowedByRuleset",
    "Reply5",
    "ReplyParser5",
    "SOCKS5AuthenticationFailed",
    "SOCKS5Negotiation",
    "SOCKS5Rejected",
    "TTLExpired",
    "parseAuthStatus",
    "parseMethodSelection",
    "parseReply5",
    "rejectionFor5",
]

#: VER, REP, RSV, ATYP, the longest address (a 255-byte name), BND.PORT.
MAX_REPLY5_SIZE = 4 + 1 + 255 + 2

_REPLY_CODES = frozenset(ReplyCode5)


class MalformedReply5(MalformedReply):
    """
    The server's answer is not the SOCKS5 message expected: a wrong VER, a
    REP outside 00-08, an unknown ATYP, an empty or invalid name.
    """


class ClosedBeforeReply5(MalformedReply5):
    """
    The server selected a method (and accepted the login, if it asked for
    one), was sent the request, and closed the connection cleanly before
    any byte of the reply due (for BIND, the first or the second).
    OpenSSH's C{ssh -D} does this for a destination it cannot reach; a
    server that crashed or was stopped while handling the request looks
    the same, so this says when, not why.
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


# -- what a client reports ---------------------------------------------------------


class NoAcceptableMethod(SOCKSError):
    """
    The server accepts none of the authentication methods offered
    (C{05 FF}): it wants credentials that were not given, or a method this
    client does not speak (GSSAPI).
    """


class SOCKS5AuthenticationFailed(SOCKSError):
    """
    The server refused the username and password (RFC 1929 STATUS not 0).

    @ivar status: the STATUS octet the server sent.
    """

    def __init__(self, message: str = "", status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class SOCKS5Rejected(SOCKSError):
    """
    The server refused the request: its reply's REP was not 00.  Each REP
    has its own subclass; L{rejectionFor5} picks it.

    @cvar replyCode: the REP this class stands for.
    @ivar reply: the reply, when there is one.
    """

    replyCode: ClassVar[ReplyCode5] = ReplyCode5.GENERAL_FAILURE

    def __init__(self, message: str = "", reply: Reply5 | None = None) -> None:
        super().__init__(message or _REJECTION_TEXT[self.replyCode])
        self.reply = reply


class GeneralSOCKSFailure(SOCKS5Rejected):
    """REP 01, general SOCKS server failure (microsocks: also a failed lookup)."""


class NotAllowedByRuleset(SOCKS5Rejected):
    """REP 02: the server's rules deny the request."""

    replyCode = ReplyCode5.NOT_ALLOWED


class NetworkUnreachable5(SOCKS5Rejected):
    """REP 03: the server has no route to the destination's network."""

    replyCode = ReplyCode5.NETWORK_UNREACHABLE


class HostUnreachable5(SOCKS5Rejected):
    """REP 04: the destination host is unreachable, or its name did not resolve."""

    replyCode = ReplyCode5.HOST_UNREACHABLE


class ConnectionRefused5(SOCKS5Rejected):
    """REP 05: the destination refused the server's connection."""

    replyCode = ReplyCode5.CONNECTION_REFUSED


class TTLExpired(SOCKS5Rejected):
    """REP 06, "TTL expired": in practice, the server's connect timed out."""

    replyCode = ReplyCode5.TTL_EXPIRED


class CommandNotSupported(SOCKS5Rejected):
    """REP 07: the server does not do this command (BIND or UDP, often)."""

    replyCode = ReplyCode5.COMMAND_NOT_SUPPORTED


class AddressTypeNotSupported(SOCKS5Rejected):
    """REP 08: the server cannot reach this address family (IPv6, often)."""

    replyCode = ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED


_REJECTION_TEXT = {
    ReplyCode5.GENERAL_FAILURE: "general SOCKS server failure (REP 1)",
    ReplyCode5.NOT_ALLOWED: "not allowed by the server's ruleset (REP 2)",
    ReplyCode5.NETWORK_UNREACHABLE: "network unreachable (REP 3)",
    ReplyCode5.HOST_UNREACHABLE: "host unreachable (REP 4)",
    ReplyCode5.CONNECTION_REFUSED: "connection refused (REP 5)",
    ReplyCode5.TTL_EXPIRED: "TTL expired: the server's connect timed out (REP 6)",
    ReplyCode5.COMMAND_NOT_SUPPORTED: "command not supported (REP 7)",
    ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported (REP 8)",
}

_REJECTIONS: dict[ReplyCode5, type[SOCKS5Rejected]] = {
    cls.replyCode: cls
    for cls in (
        GeneralSOCKSFailure,
        NotAllowedByRuleset,
        NetworkUnreachable5,
        HostUnreachable5,
        ConnectionRefused5,
        TTLExpired,
        CommandNotSupported,
        AddressTypeNotSupported,
    )
}


def rejectionFor5(reply: Reply5, context: str = "") -> SOCKS5Rejected | None:
    """
    The error for a refusing C{reply}, or L{None} if it granted.

    @param context: appended to the message (what was asked, of whom).
    """
    if reply.granted:
        return None
    message = _REJECTION_TEXT[reply.code] + (f": {context}" if context else "")
    return _REJECTIONS[reply.code](message, reply=reply)


# -- the exchange ------------------------------------------------------------------


class _Step(Enum):
    """What the negotiation waits for."""

    METHOD = auto()
    AUTH = auto()
    REPLY = auto()


_METHOD_NAMES = {0x00: "no authentication", 0x01: "GSSAPI", 0x02: "username/password"}

#: The answer a clean close came before.
_CLOSED_TEXT = {
    _Step.METHOD: "the method selection",
    _Step.AUTH: "the authentication status",
    _Step.REPLY: "the reply",
}


class SOCKS5Negotiation:
    """
    The client's side of one SOCKS5 exchange: greeting, method selection,
    optional RFC 1929 sub-negotiation, request, then the replies as they
    arrive (one for CONNECT and UDP ASSOCIATE, two for BIND).

    A L{twisted_socks.client._handshake.Negotiation}: it holds the password only
    until it is sent, and never shows it.
    """

    __slots__ = ("_buffer", "_credentials", "_outgoing", "_request", "_step")

    def __init__(
        self, request: bytes, credentials: tuple[bytes, bytes] | None = None
    ) -> None:
        """
        @param request: the encoded request, sent once a method is settled.
        @param credentials: the username and password, 1..255 bytes each,
            or L{None} to offer no authentication only.  When given, both
            "no authentication" and username/password are offered, as curl
            does; the server chooses.
        @raise ValueError: for credentials out of RFC 1929's bounds.
        """
        methods = [Method.NO_AUTHENTICATION]
        if credentials is not None:
            # Checked now, so misuse is reported to the caller who passed it.
            encodeAuthRequest(*credentials)
            methods.append(Method.USERNAME_PASSWORD)
        self._request = request
        self._credentials = credentials
        self._outgoing = encodeGreeting(methods)
        self._buffer = b""
        self._step = _Step.METHOD

    def __repr__(self) -> str:
        return f"<SOCKS5Negotiation waiting for {self._step.name.lower()}>"

    def dataToSend(self) -> bytes:
        """The message the last answer called for (the greeting at first)."""
        data, self._outgoing = self._outgoing, b""
        return data

    def receiveData(self, data: bytes) -> None:
        """Take bytes the proxy sent."""
        self._buffer += data

    def nextReply(self) -> Reply5 | None:
        """
        The next complete reply, or L{None} until one is here; the method
        selection and the authentication status are handled on the way.

        @raise NoAcceptableMethod: for C{05 FF}.
        @raise SOCKS5AuthenticationFailed: for a STATUS other than 0.
        @raise MalformedReply5: for bytes that cannot be the answer due,
            including a method that was not offered.
        """
        while True:
            if self._step is _Step.REPLY:
                parsed = parseReply5(self._buffer)
                if parsed is None:
                    return None
                reply, used = parsed
                self._buffer = self._buffer[used:]
                return reply
            answer = (
                parseMethodSelection(self._buffer)
                if self._step is _Step.METHOD
                else parseAuthStatus(self._buffer)
            )
            if answer is None:
                return None
            value, used = answer
            self._buffer = self._buffer[used:]
            if self._step is _Step.METHOD:
                self._methodSelected(value)
            else:
                self._authenticated(value)

    def _methodSelected(self, method: int) -> None:
        if method == Method.NO_ACCEPTABLE:
            raise NoAcceptableMethod(
                "the SOCKS5 server accepts none of the methods offered ("
                + (
                    "no authentication, username/password"
                    if self._credentials is not None
                    else "no authentication; it may want a username and password"
                )
                + ")"
            )
        if method == Method.USERNAME_PASSWORD and self._credentials is not None:
            self._outgoing += encodeAuthRequest(*self._credentials)
            self._step = _Step.AUTH
            return
        if method != Method.NO_AUTHENTICATION:
            name = _METHOD_NAMES.get(method, f"0x{method:02x}")
            raise MalformedReply5(
                f"the server chose method {name}, which was not offered"
            )
        self._sendRequest()

    def _authenticated(self, status: int) -> None:
        if status != AUTH_SUCCESS:
            user = self._credentials[0] if self._credentials else b""
            name = user.decode("utf-8", "replace")
            raise SOCKS5AuthenticationFailed(
                f"the SOCKS5 server refused username {name!r}"
                f" and its password (RFC 1929 status {status})",
                status=status,
            )
        self._sendRequest()

    def _sendRequest(self) -> None:
        # Appended: answers that arrived together are all handled in one
        # nextReply(), before the driver collects what to send.
        self._outgoing += self._request
        self._request = b""
        # The password is no longer needed; drop it rather than keep it in
        # memory for the life of the connection.
        if self._credentials is not None:
            self._credentials = (self._credentials[0], b"")
        self._step = _Step.REPLY

    def takeData(self) -> bytes:
        """The bytes after the last reply read, and forget them."""
        data, self._buffer = self._buffer, b""
        return data

    def connectionClosed(self) -> MalformedReply5:
        """
        A clean close before the answer due: say which one; after the
        request and before any reply byte, L{ClosedBeforeReply5}.
        """
        received = (
            f" ({len(self._buffer)} bytes of it received)" if self._buffer else ""
        )
        hint = ""
        if self._step is _Step.METHOD:
            # Servers without an acceptable method should answer 05 FF, but
            # OpenSSH and pproxy just close; so does anything not SOCKS5.
            hint = "; it may want a method not offered, or not speak SOCKS5"
        elif self._step is _Step.REPLY and not self._buffer:
            # OpenSSH's ssh -D (9.x) closes without a reply when it cannot
            # reach the destination, where others answer REP 04 or 05.
            hint = "; OpenSSH (ssh -D) does this when it cannot reach the destination"
        when = _CLOSED_TEXT[self._step]
        silent = self._step is _Step.REPLY and not self._buffer
        return (ClosedBeforeReply5 if silent else MalformedReply5)(
            f"the SOCKS5 server closed the connection before {when}{received}{hint}"
        )
