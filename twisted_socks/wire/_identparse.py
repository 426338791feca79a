"""
RFC 1413 (ident) responses: the error types, and the parser. No Twisted.

The query names a connection by its two ports; the answer names the user
who owns it, or gives an error token::

    query:   6193 , 23
    answer:  6193 , 23 : USERID : UNIX , UTF-8 : stjohns
    answer:  6193,23:ERROR:NO-USER

Whitespace around the separators is optional (oidentd sends none). The
parser takes one line without its end-of-line and either returns an
L{IdentAnswer} or raises an L{IdentError}; it never raises anything else,
whatever bytes it is given.
"""

from __future__ import annotations

import encodings
import pkgutil
from dataclasses import dataclass
from encodings.aliases import aliases as _aliases

__all__ = [
    "MAX_RESPONSE",
    "IdentAnswer",
    "IdentError",
    "IdentErrorReply",
    "IdentProtocolError",
    "IdentTimeout",
    "IdentUnreachable",
    "identQuery",
    "parseIdentResponse",
]

#: The longest response line, end-of-line included, that a lookup waits for:
#: RFC 1413 lets clients abort after 1000 characters without an end of line.
MAX_RESPONSE = 1000


class IdentError(Exception):
    """An ident lookup gave no user name."""


class IdentUnreachable(IdentError):
    """No identd could be reached on the client host (refused, unreachable)."""


class IdentErrorReply(IdentError):
    """
    The identd answered C{ERROR}.

    @ivar token: its error token: C{INVALID-PORT}, C{NO-USER},
        C{HIDDEN-USER}, C{UNKNOWN-ERROR} or a private C{X...} token.
    """

    def __init__(self, token: str) -> None:
        super().__init__(f"identd answered ERROR : {token}")
        self.token = token


class IdentTimeout(IdentError):
    """The identd did not answer in time."""


class IdentProtocolError(IdentError):
    """The identd's answer was malformed, too long, or cut short."""


@dataclass(frozen=True, slots=True)
class IdentAnswer:
    """
    A C{USERID} answer.

    @ivar user: the user-id, decoded (see L{parseIdentResponse}).
    @ivar opsys: the operating system token, as sent (C{UNIX}, C{OTHER}, ...).
        C{OTHER} means the user-id is not a login name but some other
        identifier, possibly an opaque one.
    @ivar charset: the character set the identd named, or L{None} (RFC 1413
        then means US-ASCII).
    """

    user: str
    opsys: str
    charset: str | None


def identQuery(clientPort: int, serverPort: int) -> bytes:
    """
    Build the query asking a client host's identd who owns a connection.

    @param clientPort: the client's source port: the port on the host asked,
        which RFC 1413 calls the port-on-server and sends first.
    @param serverPort: our own port of the connection (the SOCKS server's
        listening port), the RFC's port-on-client.
    @return: the query line, CRLF included.
    @raise ValueError: if a port is not in 1..65535 (a caller's mistake: no
        real connection has such a port).
    """
    for port in (clientPort, serverPort):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is not in 1..65535")
    return b"%d , %d\r\n" % (clientPort, serverPort)


#: Whitespace between tokens is insignificant (RFC 1413 section 5).
_BLANKS = b" \t"


def _port(field: bytes) -> int:
    digits = field.strip(_BLANKS)
    # bytes.isdigit is ASCII-only, so int() below cannot fail; the length cap
    # keeps a run of digits from becoming an expensive or huge integer.
    if not digits.isdigit() or len(digits) > 5:
        raise IdentProtocolError(f"bad port {digits[:20]!r} in the answer")
    return int(digits)


def _token(field: bytes, what: str) -> str:
    text = field.strip(_BLANKS)
    if not text:
        raise IdentProtocolError(f"the answer has an empty {what}")
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise IdentProtocolError(
            f"the answer's {what} {text[:40]!r} is not ASCII"
        ) from None


#: Every character set the standard library has a codec module for, by
#: module name. Only these names reach the codec registry: it caches every
#: name it is asked about, unknown ones included, so passing it names chosen
#: by an identd would let that identd grow our memory without bound.
# Codecs that decode bytes but are no character sets: escape and transfer
# encodings interpret the octets (unicode_escape even warns about invalid
# escapes, which an identd could use to flood the log with warnings).
_NOT_CHARSETS = frozenset(
    {"unicode_escape", "raw_unicode_escape", "punycode", "idna", "undefined"}
)
_ENCODINGS = (
    frozenset(_aliases.values())
    | {module.name for module in pkgutil.iter_modules(encodings.__path__)}
) - _NOT_CHARSETS


def _encodingFor(charset: str | None) -> str | None:
    """The codec module for C{charset}, if the standard library has one."""
    if charset is None:
        # RFC 1413's default is US-ASCII; UTF-8 reads it and more.
        return "utf_8"
    name = encodings.normalize_encoding(charset).lower()
    name = _aliases.get(name, name)
    return name if name in _ENCODINGS else None


def _decodeUser(raw: bytes, charset: str | None) -> str:
    """
    Decode a user-id: with C{charset} if the standard library knows it as a
    text encoding, as UTF-8 if there is none, and as latin-1 whenever that
    fails. Latin-1 maps every octet to one character, so the fallback is
    lossless and never raises.
    """
    encoding = _encodingFor(charset)
    if encoding is None:
        return raw.decode("latin-1")
    try:
        # Codecs such as "hex" or "zlib" are no character sets: bytes.decode
        # refuses them with LookupError, as it does codecs for other systems
        # (mbcs), whose module fails to import here.
        text = raw.decode(encoding)
    except (LookupError, UnicodeError, ValueError):
        return raw.decode("latin-1")
    # Escape codecs (unicode_escape, for one) can turn harmless octets into
    # NUL or line breaks, which the RFC forbids in a user-id and which would
    # let an identd forge lines in our logs; an empty result is no name.
    if not text or any(c in text for c in "\0\r\n"):
        return raw.decode("latin-1")
    return text


def parseIdentResponse(line: bytes, clientPort: int, serverPort: int) -> IdentAnswer:
    """
    Parse an identd's answer to L{identQuery}C{(clientPort, serverPort)}.

    Keywords are matched without regard to case and whitespace around the
    separators is ignored. The user-id is everything after the third colon
    (it may itself contain colons and spaces), stripped of surrounding
    blanks, then decoded: with the answer's character set if the standard
    library knows it as a text encoding, as UTF-8 (a superset of the RFC's
    default US-ASCII) if it names none, and as latin-1 whenever that fails
    or would yield NUL, CR or LF. Decoding therefore never raises
    L{UnicodeError}, and only names the standard library has a codec for are
    ever looked up.

    @param line: the response line without its end-of-line.
    @param clientPort: the client port the query asked about.
    @param serverPort: the server port the query asked about.
    @return: the C{USERID} answer.
    @raise IdentErrorReply: the identd answered C{ERROR}, with its token.
    @raise IdentProtocolError: the answer is malformed: longer than
        L{MAX_RESPONSE}, containing NUL, CR or LF, with missing or empty
        fields, non-numeric ports, ports other than those asked about, or an
        unknown response type.
    """
    if len(line) > MAX_RESPONSE:
        raise IdentProtocolError(f"answer longer than {MAX_RESPONSE} bytes")
    # RFC 1413 excludes NUL, CR and LF from every field, the user-id included.
    for octet, name in ((b"\0", "NUL"), (b"\r", "CR"), (b"\n", "LF")):
        if octet in line:
            raise IdentProtocolError(f"answer contains {name}")
    fields = line.split(b":", 2)
    if len(fields) < 3:
        raise IdentProtocolError(f"answer has too few fields: {line[:80]!r}")
    portPair, responseType, rest = fields
    ports = portPair.split(b",")
    if len(ports) != 2:
        raise IdentProtocolError(f"bad port pair {portPair[:40]!r} in the answer")
    answered = (_port(ports[0]), _port(ports[1]))
    if answered != (clientPort, serverPort):
        raise IdentProtocolError(
            f"answer is about ports {answered[0]}, {answered[1]}, "
            f"not the {clientPort}, {serverPort} asked about"
        )
    kind = _token(responseType, "response type").upper()
    if kind == "ERROR":
        # A private token (X...) may be anything; keep it as text whatever
        # its octets, as the caller only compares or logs it.
        token = rest.strip(_BLANKS)
        if not token:
            raise IdentProtocolError("ERROR answer without an error token")
        raise IdentErrorReply(token.decode("latin-1"))
    if kind != "USERID":
        raise IdentProtocolError(f"unknown response type {kind[:40]!r}")
    opsysField, separator, rawUser = rest.partition(b":")
    if not separator:
        raise IdentProtocolError("USERID answer without a user-id field")
    opsysPart, comma, charsetPart = opsysField.partition(b",")
    opsys = _token(opsysPart, "operating system")
    charset = _token(charsetPart, "character set") if comma else None
    user = rawUser.strip(_BLANKS)
    if not user:
        raise IdentProtocolError("USERID answer with an empty user-id")
    return IdentAnswer(_decodeUser(user, charset), opsys, charset)
