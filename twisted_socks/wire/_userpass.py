"""
The RFC 1929 username/password sub-negotiation, with no I/O and no Twisted
imports.

After the server chose method C{02}, the client sends
C{VER=01 ULEN UNAME PLEN PASSWD} (each length 1..255) and the server answers
C{VER=01 STATUS}, C{00} for success; after any other status it closes.
L{CredentialsParser} reads the request incrementally, in the shape of
L{twisted_socks.wire._socks4}: each field judged as its byte arrives, C{None}
until the last byte, then a L{Credentials} once, with what followed (a
pipelined request) in C{trailingData}.

Both fields are opaque octets: the RFC names no charset, PySocks sends
UTF-8 and python-socks ASCII.  They are kept and compared as bytes.  The
wire accepts any byte in either, C{:} and NUL included: that a name may not
contain C{:} is a rule of the password file (C{name:hash} lines), enforced
where the file is read, so a name with C{:} on the wire is merely a name no
user has, answered C{01 01} after the same work as any unknown name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._incremental import IncrementalParser
from ._socks5 import SOCKS5ProtocolError

__all__ = [
    "AUTH_FAILURE",
    "AUTH_SUCCESS",
    "AUTH_VERSION",
    "MAX_CREDENTIALS_SIZE",
    "BadAuthVersion",
    "Credentials",
    "CredentialsParser",
    "EmptyPassword",
    "EmptyUsername",
    "encodeAuthRequest",
    "encodeAuthStatus",
    "parseCredentials",
]

#: The sub-negotiation's VER, in the request and in the response.
AUTH_VERSION = 1
#: STATUS values: RFC 1929 defines only success; any other value is failure.
AUTH_SUCCESS = 0x00
AUTH_FAILURE = 0x01
#: VER, ULEN, UNAME, PLEN, PASSWD at their longest.
MAX_CREDENTIALS_SIZE = 1 + 1 + 255 + 1 + 255


@dataclass(frozen=True, slots=True)
class Credentials:
    """
    A username and password as the client sent them.

    @ivar username: UNAME, 1..255 bytes.
    @ivar password: PASSWD, 1..255 bytes (never shown by C{repr}, so it
        cannot reach a log line or a traceback by accident).
    """

    username: bytes
    password: bytes = field(repr=False)

    @property
    def user(self) -> str:
        """
        The username as text: UTF-8 (the password file's encoding) with
        C{surrogateescape}, so it is lossless and bytes that are not UTF-8
        never match a name by accident.
        """
        return self.username.decode("utf-8", "surrogateescape")


_FAILURE_STATUS = bytes([AUTH_VERSION, AUTH_FAILURE])


class _AuthError(SOCKS5ProtocolError):
    """An unacceptable sub-negotiation: answered C{01 01}, then closed."""

    replyCode = None
    reply = _FAILURE_STATUS


class BadAuthVersion(_AuthError):
    """
    VER is not 1.  Some clients send 5 (the SOCKS version); microsocks
    refuses them with C{01 01} and so do we: accepting would leave them
    expecting a C{05 xx} response that RFC 1929 does not have.
    """


class EmptyUsername(_AuthError):
    """ULEN is 0 (RFC 1929 gives 1 to 255)."""


class EmptyPassword(_AuthError):
    """
    PLEN is 0 (RFC 1929 gives 1 to 255; PySocks and python-socks never
    offer method 02 without a password).
    """


def parseCredentials(buffer: bytes) -> tuple[Credentials, int] | None:
    """
    Parse one sub-negotiation request from the start of C{buffer}.

    @return: L{None} while C{buffer} is a strict prefix of a request; else
        the credentials and the number of bytes they occupied.
    @raise SOCKS5ProtocolError: L{BadAuthVersion}, L{EmptyUsername} or
        L{EmptyPassword}, as soon as the byte that shows it arrives.
    """
    size = len(buffer)
    if size >= 1 and buffer[0] != AUTH_VERSION:
        raise BadAuthVersion(f"version {buffer[0]}")
    if size < 2:
        return None
    nameEnd = 2 + buffer[1]
    if nameEnd == 2:
        raise EmptyUsername("ULEN 0")
    if size <= nameEnd:
        return None
    passwordEnd = nameEnd + 1 + buffer[nameEnd]
    if passwordEnd == nameEnd + 1:
        raise EmptyPassword("PLEN 0")
    if size < passwordEnd:
        return None
    credentials = Credentials(buffer[2:nameEnd], buffer[nameEnd + 1 : passwordEnd])
    return credentials, passwordEnd


class CredentialsParser(IncrementalParser[Credentials]):
    """An incremental parser of sub-negotiation requests (L{parseCredentials})."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(parseCredentials)


def encodeAuthRequest(username: bytes, password: bytes) -> bytes:
    """
    Encode a client's sub-negotiation request.

    @raise TypeError: for text instead of bytes (the caller chooses the
        encoding, usually UTF-8).
    @raise ValueError: for a field that is empty or over 255 bytes.
    """
    for value in (username, password):
        if not isinstance(value, bytes):
            raise TypeError(f"credentials are bytes, not {type(value).__name__}")
        if not 1 <= len(value) <= 255:
            raise ValueError("username and password must be 1..255 bytes each")
    return (
        bytes([AUTH_VERSION, len(username)])
        + username
        + bytes([len(password)])
        + password
    )


def encodeAuthStatus(status: int) -> bytes:
    """
    Encode the server's response, C{01 STATUS} (L{AUTH_SUCCESS} or
    L{AUTH_FAILURE}).

    @raise ValueError: for a status outside 0..255.
    """
    if not 0 <= status <= 0xFF:
        raise ValueError(f"status out of range: {status}")
    return bytes([AUTH_VERSION, status])
