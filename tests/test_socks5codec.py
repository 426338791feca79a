"""
Tests for the sans-IO SOCKS5 codec: the greeting and request
(twisted_socks.wire._socks5), the RFC 1929 sub-negotiation
(twisted_socks.wire._userpass), the UDP datagram header
(twisted_socks.wire._socks5udp) and the client's answers
(twisted_socks.wire._socks5client).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets import (
    SOCKS5_TARGETS,
    TARGETS,
    checkCredentials,
    checkDatagram,
    checkGreeting,
    checkReply5,
    checkRequest5,
)
from twisted_socks.wire._clienterrors import MalformedReply
from twisted_socks.wire._incremental import IncrementalParser
from twisted_socks.wire._outcome import Outcome
from twisted_socks.wire._socks4 import Command as Command4
from twisted_socks.wire._socks4 import (
    InvalidHostname,
    SOCKSProtocolError,
    encodeRequest,
    parseRequest,
)
from twisted_socks.wire._socks5 import (
    MAX_GREETING_SIZE,
    MAX_REQUEST5_SIZE,
    AddressType,
    BadGreetingVersion,
    BadRequestVersion,
    Command5,
    EmptyName,
    Greeting,
    GreetingParser,
    InvalidName,
    Method,
    NoMethodsOffered,
    NonZeroReserved,
    ReplyCode5,
    Request5,
    RequestParser5,
    SOCKS5ProtocolError,
    UnknownAddressType,
    UnknownCommand5,
    ZeroAddress5,
    ZeroPort5,
    encodeGreeting,
    encodeMethodSelection,
    encodeReply5,
    encodeRequest5,
    parseGreeting,
    parseRequest5,
    replyFor5,
)
from twisted_socks.wire._socks5client import (
    MAX_REPLY5_SIZE,
    MalformedReply5,
    Reply5,
    ReplyParser5,
    parseAuthStatus,
    parseMethodSelection,
    parseReply5,
)
from twisted_socks.wire._socks5udp import (
    MAX_DATAGRAM_HEADER_SIZE,
    BadDatagram,
    Datagram,
    encodeDatagram,
    parseDatagram,
)
from twisted_socks.wire._userpass import (
    AUTH_FAILURE,
    AUTH_SUCCESS,
    MAX_CREDENTIALS_SIZE,
    BadAuthVersion,
    Credentials,
    CredentialsParser,
    EmptyPassword,
    EmptyUsername,
    encodeAuthRequest,
    encodeAuthStatus,
    parseCredentials,
)

V4 = IPv4Address("192.0.2.7")
V6 = IPv6Address("2001:db8::7")
MAPPED = IPv6Address("::ffff:192.0.2.7")

# -- the tables -------------------------------------------------------------------

#: Valid greetings and what each parses to.
GREETINGS: list[tuple[bytes, Greeting]] = [
    (b"\x05\x01\x00", Greeting((0,))),
    (b"\x05\x01\x02", Greeting((2,))),
    (b"\x05\x02\x00\x02", Greeting((0, 2))),
    (b"\x05\x02\x02\x00", Greeting((2, 0))),
    # curl offers GSSAPI too when built with it.
    (b"\x05\x03\x00\x01\x02", Greeting((0, 1, 2))),
    # Private and unassigned methods are legal; so is an offer of FF.
    (b"\x05\x02\x80\xfe", Greeting((0x80, 0xFE))),
    (b"\x05\x01\xff", Greeting((0xFF,))),
    (b"\x05\x02\x00\x00", Greeting((0, 0))),
    (bytes([5, 255, *range(255)]), Greeting(tuple(range(255)))),
]

#: Valid sub-negotiation requests and what each parses to.
CREDENTIALS: list[tuple[bytes, Credentials]] = [
    (b"\x01\x05alice\x06s3cret", Credentials(b"alice", b"s3cret")),
    (b"\x01\x01a\x01b", Credentials(b"a", b"b")),
    # The password may hold any byte: ":", "@", "%" (curl sends them decoded).
    (b"\x01\x05alice\x08s3cr:t@%", Credentials(b"alice", b"s3cr:t@%")),
    # So may the name: the wire allows ":" (the password file refuses it).
    (b"\x01\x03a:b\x01p", Credentials(b"a:b", b"p")),
    (b"\x01\x02\x00\xff\x02\r\n", Credentials(b"\x00\xff", b"\r\n")),
    (
        b"\x01\x05jos\xc3\xa9\x04\xe2\x82\xac!",
        Credentials("jos\u00e9".encode(), "\u20ac!".encode()),
    ),
    (
        b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255,
        Credentials(b"u" * 255, b"p" * 255),
    ),
]

#: Valid requests of every command and address type.
REQUESTS: list[tuple[bytes, Request5]] = [
    (
        encodeRequest5(Command5.CONNECT, 80, V4),
        Request5(Command5.CONNECT, 80, V4, None),
    ),
    (
        b"\x05\x01\x00\x01\xc0\x00\x02\x07\x01\xbb",
        Request5(Command5.CONNECT, 443, V4, None),
    ),
    (
        encodeRequest5(Command5.CONNECT, 443, V6),
        Request5(Command5.CONNECT, 443, V6, None),
    ),
    (
        encodeRequest5(Command5.CONNECT, 443, MAPPED),
        Request5(Command5.CONNECT, 443, MAPPED, None),
    ),
    (
        b"\x05\x01\x00\x03\x0bexample.com\x00\x50",
        Request5(Command5.CONNECT, 80, None, "example.com"),
    ),
    (
        encodeRequest5(Command5.CONNECT, 65535, name="h" * 255),
        Request5(Command5.CONNECT, 65535, None, "h" * 255),
    ),
    (
        encodeRequest5(Command5.CONNECT, 8080, name="::1"),
        Request5(Command5.CONNECT, 8080, None, "::1"),
    ),
    (
        encodeRequest5(Command5.CONNECT, 1, name="a"),
        Request5(Command5.CONNECT, 1, None, "a"),
    ),
    (
        encodeRequest5(Command5.BIND, 21, V4),
        Request5(Command5.BIND, 21, V4, None),
    ),
    # BIND's DST fields are informative: zeros are legal.
    (
        encodeRequest5(Command5.BIND, 0, IPv4Address(0)),
        Request5(Command5.BIND, 0, IPv4Address(0), None),
    ),
    (
        encodeRequest5(Command5.BIND, 21, name="ftp.example.com"),
        Request5(Command5.BIND, 21, None, "ftp.example.com"),
    ),
    # UDP ASSOCIATE: all zeros ("not known yet"), an IPv6 zero, and
    # PySocks's ("0", port).
    (
        b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
        Request5(Command5.UDP_ASSOCIATE, 0, IPv4Address(0), None),
    ),
    (
        encodeRequest5(Command5.UDP_ASSOCIATE, 0, IPv6Address(0)),
        Request5(Command5.UDP_ASSOCIATE, 0, IPv6Address(0), None),
    ),
    (
        encodeRequest5(Command5.UDP_ASSOCIATE, 40000, name="0"),
        Request5(Command5.UDP_ASSOCIATE, 40000, None, "0"),
    ),
    (
        encodeRequest5(Command5.UDP_ASSOCIATE, 40000, IPv4Address("10.0.0.2")),
        Request5(Command5.UDP_ASSOCIATE, 40000, IPv4Address("10.0.0.2"), None),
    ),
]

#: Valid replies (the client side), in all three address types.
REPLIES: list[tuple[bytes, Reply5]] = [
    (
        b"\x05\x00\x00\x01\x7f\x00\x00\x01\xd4\x31",
        Reply5(ReplyCode5.SUCCEEDED, 54321, IPv4Address("127.0.0.1"), None),
    ),
    (
        encodeReply5(ReplyCode5.SUCCEEDED, 40000, V6),
        Reply5(ReplyCode5.SUCCEEDED, 40000, V6, None),
    ),
    # Dante echoes a failed name: ATYP 3.
    (
        b"\x05\x04\x00\x03\x13nonexistent.invalid\x00\x50",
        Reply5(ReplyCode5.HOST_UNREACHABLE, 80, None, "nonexistent.invalid"),
    ),
    # microsocks: 0.0.0.0:0 for everything.
    (
        b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00",
        Reply5(ReplyCode5.COMMAND_NOT_SUPPORTED, 0, IPv4Address(0), None),
    ),
    # RSV is not judged on the client side.
    (
        b"\x05\x02\x07\x01\x00\x00\x00\x00\x00\x00",
        Reply5(ReplyCode5.NOT_ALLOWED, 0, IPv4Address(0), None),
    ),
    *[
        (encodeReply5(code), Reply5(code, 0, IPv4Address(0), None))
        for code in ReplyCode5
    ],
    (
        encodeReply5(ReplyCode5.SUCCEEDED, 1, name="x" * 255),
        Reply5(ReplyCode5.SUCCEEDED, 1, None, "x" * 255),
    ),
]


def request(
    ver: int = 5, cmd: int = 1, rsv: int = 0, atyp: int = 1, rest: bytes = b""
) -> bytes:
    """A request header with any field set to anything, then C{rest}."""
    return bytes([ver, cmd, rsv, atyp]) + rest


PORT80 = b"\x00\x50"
FAIL = encodeReply5(ReplyCode5.GENERAL_FAILURE)
NO_CMD = encodeReply5(ReplyCode5.COMMAND_NOT_SUPPORTED)
NO_ATYP = encodeReply5(ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED)
AUTH_FAIL = b"\x01\x01"

#: Malformed input: which parser, the bytes, the error and the exact bytes
#: the server must send before closing (None: close without a word).  One
#: row a line: the table reads best unwrapped.
# fmt: off
MALFORMED: list[tuple[str, str, bytes, type[SOCKS5ProtocolError], bytes | None]] = [
    ("greeting", "version 4 (SOCKS4)", b"\x04\x01\x00\x50", BadGreetingVersion, None),
    ("greeting", "version 0", b"\x00", BadGreetingVersion, None),
    ("greeting", "HTTP", b"GET / HTTP/1.1\r\n\r\n", BadGreetingVersion, None),
    ("greeting", "TLS ClientHello", b"\x16\x03\x01", BadGreetingVersion, None),
    ("greeting", "NMETHODS 0", b"\x05\x00", NoMethodsOffered, b"\x05\xff"),
    ("greeting", "NMETHODS 0, more", b"\x05\x00\x00\x02", NoMethodsOffered, b"\x05\xff"),
    ("auth", "VER 5 (confused)", b"\x05\x05alice\x01p", BadAuthVersion, AUTH_FAIL),
    ("auth", "VER 0", b"\x00", BadAuthVersion, AUTH_FAIL),
    ("auth", "VER 2", b"\x02\x01a\x01b", BadAuthVersion, AUTH_FAIL),
    ("auth", "ULEN 0 (Tor accepts it)", b"\x01\x00\x01p", EmptyUsername, AUTH_FAIL),
    ("auth", "ULEN 0, nothing more", b"\x01\x00", EmptyUsername, AUTH_FAIL),
    ("auth", "PLEN 0", b"\x01\x05alice\x00", EmptyPassword, AUTH_FAIL),
    ("auth", "PLEN 0, pipelined request", b"\x01\x01a\x00\x05\x01", EmptyPassword, AUTH_FAIL),
    ("request", "version 4", request(ver=4), BadRequestVersion, FAIL),
    ("request", "version 1 (an auth message)", b"\x01\x05alice", BadRequestVersion, FAIL),
    ("request", "version 0", b"\x00", BadRequestVersion, FAIL),
    ("request", "command 0", request(cmd=0), UnknownCommand5, NO_CMD),
    ("request", "command 4", request(cmd=4), UnknownCommand5, NO_CMD),
    ("request", "Tor RESOLVE", request(cmd=0xF0, atyp=3), UnknownCommand5, NO_CMD),
    ("request", "Tor RESOLVE_PTR", request(cmd=0xF1), UnknownCommand5, NO_CMD),
    ("request", "command 0xff", b"\x05\xff", UnknownCommand5, NO_CMD),
    ("request", "RSV 1", request(rsv=1), NonZeroReserved, FAIL),
    ("request", "RSV 0xff", b"\x05\x01\xff", NonZeroReserved, FAIL),
    ("request", "ATYP 0", request(atyp=0), UnknownAddressType, NO_ATYP),
    ("request", "ATYP 2", request(atyp=2), UnknownAddressType, NO_ATYP),
    ("request", "ATYP 5", request(atyp=5, rest=b"\0" * 6), UnknownAddressType, NO_ATYP),
    ("request", "ATYP 0xff", request(atyp=0xFF), UnknownAddressType, NO_ATYP),
    ("request", "name of length 0", request(atyp=3, rest=b"\0" + PORT80), EmptyName, FAIL),
    ("request", "name with NUL", request(atyp=3, rest=b"\x03a\0b" + PORT80), InvalidName, FAIL),
    ("request", "name, NUL-terminated", request(atyp=3, rest=b"\x02a\0" + PORT80), InvalidName, FAIL),
    ("request", "name with CR LF", request(atyp=3, rest=b"\x04a\r\nb" + PORT80), InvalidName, FAIL),
    ("request", "name with ESC", request(atyp=3, rest=b"\x05\x1b[31m"), InvalidName, FAIL),
    ("request", "name with space", request(atyp=3, rest=b"\x03a b" + PORT80), InvalidName, FAIL),
    ("request", "name with high-bit byte", request(atyp=3, rest=b"\x07caf\xe9.fr" + PORT80), InvalidName, FAIL),
    ("request", "name with slash", request(atyp=3, rest=b"\x03a/b" + PORT80), InvalidName, FAIL),
    ("request", "name with brackets", request(atyp=3, rest=b"\x05[::1]" + PORT80), InvalidName, FAIL),
    ("request", "bad name, incomplete", request(atyp=3, rest=b"\xff\x07"), InvalidName, FAIL),
    ("request", "CONNECT 0.0.0.0", request(rest=b"\0\0\0\0" + PORT80), ZeroAddress5, FAIL),
    ("request", "CONNECT ::", request(atyp=4, rest=b"\0" * 16 + PORT80), ZeroAddress5, FAIL),
    ("request", "CONNECT to port 0", request(rest=V4.packed + b"\0\0"), ZeroPort5, FAIL),
    ("request", "CONNECT name:0", request(atyp=3, rest=b"\x01a\0\0"), ZeroPort5, FAIL),
    ("request", "CONNECT [v6]:0", request(atyp=4, rest=V6.packed + b"\0\0"), ZeroPort5, FAIL),
    ("request", "a SOCKS4 request", encodeRequest(Command4.CONNECT, 80, V4), BadRequestVersion, FAIL),
]
# fmt: on

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "greeting": parseGreeting,
    "auth": parseCredentials,
    "request": parseRequest5,
}
INCREMENTAL: dict[str, Callable[[], IncrementalParser[Any]]] = {
    "greeting": GreetingParser,
    "auth": CredentialsParser,
    "request": RequestParser5,
    "reply": ReplyParser5,
}
CAPS = {
    "greeting": MAX_GREETING_SIZE,
    "auth": MAX_CREDENTIALS_SIZE,
    "request": MAX_REQUEST5_SIZE,
    "reply": MAX_REPLY5_SIZE,
}
VALID: list[tuple[str, bytes, object]] = [
    *[("greeting", raw, value) for raw, value in GREETINGS],
    *[("auth", raw, value) for raw, value in CREDENTIALS],
    *[("request", raw, value) for raw, value in REQUESTS],
    *[("reply", raw, value) for raw, value in REPLIES],
]
PARSE: dict[str, Callable[[bytes], Any]] = {**PARSERS, "reply": parseReply5}
VALID_IDS = [f"{kind}-{i}" for i, (kind, _, _) in enumerate(VALID)]
MALFORMED_IDS = [f"{kind}: {name}" for kind, name, _, _, _ in MALFORMED]

# -- valid input ------------------------------------------------------------------


def test_tablesAreLargeEnough() -> None:
    """The issue asks for the SOCKS4 codec's coverage: 30+ malformed rows."""
    assert len(MALFORMED) >= 40
    assert {kind for kind, _, _ in VALID} == set(INCREMENTAL)


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID, ids=VALID_IDS)
def test_validMessageParsesWhole(kind: str, raw: bytes, expected: object) -> None:
    """A complete message parses to the expected value and consumes itself."""
    assert PARSE[kind](raw) == (expected, len(raw))


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID, ids=VALID_IDS)
def test_everyStrictPrefixNeedsMore(kind: str, raw: bytes, expected: object) -> None:
    """Every strict prefix of a valid message is "need more", never an error."""
    for end in range(len(raw)):
        assert PARSE[kind](raw[:end]) is None, end


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID, ids=VALID_IDS)
def test_byteByByteParsesSameAsWhole(kind: str, raw: bytes, expected: object) -> None:
    """Feeding one byte at a time yields the value on the last byte only."""
    parser = INCREMENTAL[kind]()
    for i in range(len(raw) - 1):
        assert parser.feed(raw[i : i + 1]) is None
        assert parser.result is None
        assert parser.bufferedSize == i + 1
    assert parser.feed(raw[-1:]) == expected
    assert parser.result == expected
    assert parser.trailingData == b""
    assert parser.bufferedSize == 0


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID, ids=VALID_IDS)
def test_trailingDataIsKeptNotParsed(kind: str, raw: bytes, expected: object) -> None:
    """Bytes after a message (even the same message again) are not its own."""
    trailing = raw + b"GET / HTTP/1.1\r\n"
    parser = INCREMENTAL[kind]()
    assert parser.feed(raw + trailing) == expected
    assert parser.trailingData == trailing
    with pytest.raises(ValueError):
        parser.feed(b"more")


def test_pipelinedHandshakeParsesInOneSegment() -> None:
    """
    A greeting, the credentials, a request and the first stream bytes sent
    in one segment (as Dante accepts and microsocks loses) come out of the
    three parsers in order, each handing the rest to the next.
    """
    segment = (
        encodeGreeting([Method.USERNAME_PASSWORD])
        + encodeAuthRequest(b"alice", b"pw")
        + encodeRequest5(Command5.CONNECT, 443, name="example.com")
        + b"\x16\x03\x01"
    )
    greeting = GreetingParser()
    assert greeting.feed(segment) == Greeting((2,))
    credentials = CredentialsParser()
    assert credentials.feed(greeting.trailingData) == Credentials(b"alice", b"pw")
    requests = RequestParser5()
    assert requests.feed(credentials.trailingData) == Request5(
        Command5.CONNECT, 443, None, "example.com"
    )
    assert requests.trailingData == b"\x16\x03\x01"


# -- malformed input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "raw", "error", "reply"), MALFORMED, ids=MALFORMED_IDS
)
def test_malformedRaisesItsErrorWithItsReply(
    kind: str,
    name: str,
    raw: bytes,
    error: type[SOCKS5ProtocolError],
    reply: bytes | None,
) -> None:
    """
    Each malformed message raises its specific error, and the error carries
    the exact bytes the server sends before closing.
    """
    with pytest.raises(error) as caught:
        PARSERS[kind](raw)
    assert type(caught.value) is error
    assert caught.value.reply == reply
    if caught.value.replyCode is not None:
        assert caught.value.reply == encodeReply5(caught.value.replyCode)


@pytest.mark.parametrize(
    ("kind", "name", "raw", "error", "reply"), MALFORMED, ids=MALFORMED_IDS
)
def test_malformedIsDetectedAtItsByte(
    kind: str,
    name: str,
    raw: bytes,
    error: type[SOCKS5ProtocolError],
    reply: bytes | None,
) -> None:
    """
    Fed byte by byte, every malformed message fails at the byte that shows
    it, and the parser never holds more than the longest valid message.
    """
    parser = INCREMENTAL[kind]()
    fed = 0
    with pytest.raises(error):
        for i in range(len(raw)):
            fed = i + 1
            parser.feed(raw[i : i + 1])
            assert parser.bufferedSize <= CAPS[kind]
    # The smallest prefix that fails is exactly what was fed.
    with pytest.raises(error):
        PARSERS[kind](raw[:fed])
    assert PARSERS[kind](raw[: fed - 1]) is None


def test_errorsBeforeTheRequestSendNoReplyCode() -> None:
    """
    Greeting and sub-negotiation errors cannot be answered with a REP: they
    carry C{05 FF}, C{01 01} or nothing; every request error carries a
    10-byte reply with a REP.
    """
    for error in (BadGreetingVersion, NoMethodsOffered, BadAuthVersion, BadDatagram):
        assert error.replyCode is None
    for error in (BadRequestVersion, NonZeroReserved, EmptyName, InvalidName):
        assert error.replyCode is ReplyCode5.GENERAL_FAILURE
        assert error.reply is not None and len(error.reply) == 10
    assert UnknownCommand5.replyCode is ReplyCode5.COMMAND_NOT_SUPPORTED
    assert UnknownAddressType.replyCode is ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED


def test_garbageIsRejectedAtTheFirstByte() -> None:
    """A wrong version is an error as soon as one byte arrived."""
    with pytest.raises(BadGreetingVersion):
        parseGreeting(b"G")
    with pytest.raises(BadAuthVersion):
        parseCredentials(b"\x05")
    with pytest.raises(BadRequestVersion):
        parseRequest5(b"\x04")
    with pytest.raises(MalformedReply5):
        parseReply5(b"\x00")


def test_namesFollowTheSOCKS4ARule() -> None:
    """
    A SOCKS5 name is accepted exactly when the same bytes are accepted as a
    SOCKS4A hostname, and decodes to the same text.
    """
    names = [b"example.com", b"::1", b"a_b-c:1", b"caf\xe9", b"a b", b"a\r\nb"]
    names += [bytes([b]) for b in range(1, 256)]
    for name in names:
        four = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + name + b"\x00"
        five = request(atyp=3, rest=bytes([len(name)]) + name + PORT80)
        try:
            parsed4 = parseRequest(four)
        except InvalidHostname:
            with pytest.raises(InvalidName):
                parseRequest5(five)
            continue
        except SOCKSProtocolError:
            continue
        assert parsed4 is not None
        parsed5 = parseRequest5(five)
        assert parsed5 is not None
        assert parsed5[0].name == parsed4[0].hostname


# -- the values -------------------------------------------------------------------


def test_requestSaysItsAddressTypeAndDestination() -> None:
    """A request names its ATYP and gives its destination as text."""
    assert REQUESTS[0][1].addressType is AddressType.IPV4
    assert REQUESTS[0][1].destination == "192.0.2.7"
    assert REQUESTS[2][1].addressType is AddressType.IPV6
    assert REQUESTS[2][1].destination == "2001:db8::7"
    assert REQUESTS[4][1].addressType is AddressType.NAME
    assert REQUESTS[4][1].destination == "example.com"


def test_greetingOffers() -> None:
    """Greeting.offers answers whether the client offered a method."""
    greeting = Greeting((0, 2))
    assert greeting.offers(Method.NO_AUTHENTICATION)
    assert greeting.offers(Method.USERNAME_PASSWORD)
    assert not greeting.offers(Method.GSSAPI)


def test_passwordNeverShownByRepr() -> None:
    """A password cannot reach a log line or a traceback through repr()."""
    credentials = Credentials(b"alice", b"hunter2")
    assert "hunter2" not in repr(credentials)
    assert "alice" in repr(credentials)


def test_userAsTextIsLossless() -> None:
    """Credentials.user decodes UTF-8 and keeps undecodable bytes as surrogates."""
    credentials = Credentials("jos\u00e9".encode() + b"\xff", b"p")
    assert credentials.user == "jos\u00e9\udcff"
    assert credentials.user.encode("utf-8", "surrogateescape") == credentials.username


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (Outcome.GRANTED, ReplyCode5.SUCCEEDED),
        (Outcome.DENIED, ReplyCode5.NOT_ALLOWED),
        (Outcome.NO_IDENTD, ReplyCode5.NOT_ALLOWED),
        (Outcome.IDENT_MISMATCH, ReplyCode5.NOT_ALLOWED),
        (Outcome.NETWORK_UNREACHABLE, ReplyCode5.NETWORK_UNREACHABLE),
        (Outcome.HOST_UNREACHABLE, ReplyCode5.HOST_UNREACHABLE),
        (Outcome.REFUSED, ReplyCode5.CONNECTION_REFUSED),
        (Outcome.TIMED_OUT, ReplyCode5.TTL_EXPIRED),
        (Outcome.COMMAND_NOT_SUPPORTED, ReplyCode5.COMMAND_NOT_SUPPORTED),
        (Outcome.ADDRESS_TYPE_NOT_SUPPORTED, ReplyCode5.ADDRESS_TYPE_NOT_SUPPORTED),
        (Outcome.FAILURE, ReplyCode5.GENERAL_FAILURE),
    ],
)
def test_replyFor5MapsEveryOutcome(outcome: Outcome, code: ReplyCode5) -> None:
    """Each outcome becomes the REP the reference table gives it."""
    assert replyFor5(outcome) is code


def test_replyFor5CoversEveryOutcome() -> None:
    """No outcome is left without a SOCKS5 code (the table above is whole)."""
    assert len(Outcome) == 11
    assert {replyFor5(outcome) for outcome in Outcome} == set(ReplyCode5)


# -- encoders ---------------------------------------------------------------------


def test_encodeServerAnswers() -> None:
    """Method selection, auth status and replies have the RFC's bytes."""
    assert encodeMethodSelection(Method.NO_AUTHENTICATION) == b"\x05\x00"
    assert encodeMethodSelection(Method.NO_ACCEPTABLE) == b"\x05\xff"
    assert encodeAuthStatus(AUTH_SUCCESS) == b"\x01\x00"
    assert encodeAuthStatus(AUTH_FAILURE) == b"\x01\x01"
    assert encodeReply5(ReplyCode5.GENERAL_FAILURE) == b"\x05\x01\x00\x01" + b"\0" * 6
    assert (
        encodeReply5(ReplyCode5.SUCCEEDED, 0x1234, IPv4Address("10.1.2.3"))
        == b"\x05\x00\x00\x01\x0a\x01\x02\x03\x12\x34"
    )
    assert encodeReply5(ReplyCode5.SUCCEEDED, 1, IPv6Address("::1")) == (
        b"\x05\x00\x00\x04" + b"\0" * 15 + b"\x01\x00\x01"
    )
    assert encodeReply5(ReplyCode5.HOST_UNREACHABLE, 80, name="a.example") == (
        b"\x05\x04\x00\x03\x09a.example\x00\x50"
    )


def test_encodeClientMessages() -> None:
    """Greeting, auth request and request have the RFC's bytes."""
    assert encodeGreeting([0, 2]) == b"\x05\x02\x00\x02"
    assert encodeAuthRequest(b"u", b"pw") == b"\x01\x01u\x02pw"
    assert encodeRequest5(Command5.UDP_ASSOCIATE, 0) == b"\x05\x03\x00\x01" + b"\0" * 6


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID, ids=VALID_IDS)
def test_encodersRoundTrip(kind: str, raw: bytes, expected: Any) -> None:
    """Every valid message re-encodes to the bytes it came from."""
    if kind == "greeting":
        again = encodeGreeting(expected.methods)
    elif kind == "auth":
        again = encodeAuthRequest(expected.username, expected.password)
    elif kind == "request":
        again = encodeRequest5(
            expected.command, expected.port, expected.address, expected.name
        )
    else:
        again = encodeReply5(
            expected.code, expected.port, expected.address, expected.name
        )
        raw = raw[:2] + b"\0" + raw[3:]  # RSV is not kept
    assert again == raw


def test_encodeSendsIdnAsALabels() -> None:
    """A non-ASCII name goes on the wire IDNA-encoded, as PySocks does."""
    raw = encodeRequest5(Command5.CONNECT, 80, name="b\u00fccher.example")
    parsed = parseRequest5(raw)
    assert parsed is not None
    assert parsed[0].name == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "call",
    [
        lambda: encodeGreeting([]),
        lambda: encodeGreeting(range(256)),
        lambda: encodeGreeting([256]),
        lambda: encodeMethodSelection(256),
        lambda: encodeMethodSelection(-1),
        lambda: encodeAuthStatus(256),
        lambda: encodeAuthRequest(b"", b"p"),
        lambda: encodeAuthRequest(b"u", b""),
        lambda: encodeAuthRequest(b"u" * 256, b"p"),
        lambda: encodeAuthRequest(b"u", b"p" * 256),
        lambda: encodeRequest5(Command5.CONNECT, 70000, V4),
        lambda: encodeRequest5(Command5.CONNECT, -1, V4),
        lambda: encodeRequest5(Command5.CONNECT, 80, V4, "x"),
        lambda: encodeRequest5(Command5.CONNECT, 80, name=""),
        lambda: encodeRequest5(Command5.CONNECT, 80, name="h" * 256),
        lambda: encodeRequest5(Command5.CONNECT, 80, name="a b"),
        lambda: encodeRequest5(Command5.CONNECT, 80, name="a\0b"),
        lambda: encodeRequest5(9, 80, V4),  # type: ignore[arg-type]
        lambda: encodeReply5(9),  # type: ignore[arg-type]
        lambda: encodeReply5(ReplyCode5.SUCCEEDED, 65536),
        lambda: encodeDatagram(b"x", 53),
        lambda: encodeDatagram(b"x", 53, V4, "a"),
        lambda: encodeDatagram(b"x", 0, V4),
        lambda: encodeDatagram(b"x", 53, IPv4Address(0)),
        lambda: encodeDatagram(b"x", 53, V4, fragment=256),
    ],
)
def test_encodersRefuseLocalMisuseWithValueError(call: Callable[[], bytes]) -> None:
    """A bad value from our own code is a ValueError, never a protocol error."""
    with pytest.raises(ValueError) as caught:
        call()
    assert not isinstance(caught.value, SOCKS5ProtocolError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encodeAuthRequest("alice", b"p"),  # type: ignore[arg-type]
        lambda: encodeAuthRequest(b"alice", "p"),  # type: ignore[arg-type]
        lambda: encodeRequest5(Command5.CONNECT, 80, "192.0.2.7"),  # type: ignore[arg-type]
        lambda: encodeDatagram("text", 53, V4),  # type: ignore[arg-type]
    ],
)
def test_encodersRefuseWrongTypesWithTypeError(call: Callable[[], bytes]) -> None:
    """Text where bytes belong, or a string for an address, is a TypeError."""
    with pytest.raises(TypeError):
        call()


# -- the client's answers ---------------------------------------------------------


def test_methodSelectionAndAuthStatus() -> None:
    """The client reads C{05 MM} and C{01 SS}, each byte judged as it arrives."""
    assert parseMethodSelection(b"") is None
    assert parseMethodSelection(b"\x05") is None
    assert parseMethodSelection(b"\x05\x02rest") == (2, 2)
    assert parseMethodSelection(b"\x05\xff") == (0xFF, 2)
    assert parseAuthStatus(b"\x01") is None
    assert parseAuthStatus(b"\x01\x00") == (0, 2)
    assert parseAuthStatus(b"\x01\x01") == (1, 2)
    for answer in (b"\x00\x5a", b"HTTP/1.1", b"\x04"):
        with pytest.raises(MalformedReply5):
            parseMethodSelection(answer)
    # A server that answers the sub-negotiation with VER 5 is refused, as
    # PySocks and python-socks refuse it.
    with pytest.raises(MalformedReply5):
        parseAuthStatus(b"\x05\x00")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x5a\x00\x50\x7f\x00\x00\x01",  # a SOCKS4 reply
        b"HTTP/1.1 400 Bad Request\r\n",
        b"\x05\x09",  # REP beyond 08
        b"\x05\xf0",  # Tor's extended errors (SocksPort ExtendedErrors)
        b"\x05\x00\x00\x02",  # ATYP 2
        b"\x05\x00\x00\x03\x00\x00\x00",  # empty name
        b"\x05\x04\x00\x03\x03a\0b\x00\x50",  # NUL in the name
    ],
)
def test_malformedReplyIsASOCKSError(raw: bytes) -> None:
    """
    A reply that is not SOCKS5 raises L{MalformedReply5}, which a driver
    shared with SOCKS4 catches as L{MalformedReply}.
    """
    with pytest.raises(MalformedReply):
        parseReply5(raw)
    with pytest.raises(MalformedReply5):
        ReplyParser5().feed(raw)


def test_bindRepliesComeOneAfterTheOther() -> None:
    """A BIND's two replies in one segment parse as two, then the stream."""
    first = encodeReply5(ReplyCode5.SUCCEEDED, 40000, V4)
    second = encodeReply5(ReplyCode5.SUCCEEDED, 59480, V6)
    parser = ReplyParser5()
    assert parser.feed(first + second + b"data") == Reply5(
        ReplyCode5.SUCCEEDED, 40000, V4, None
    )
    again = ReplyParser5()
    assert again.feed(parser.trailingData) == Reply5(
        ReplyCode5.SUCCEEDED, 59480, V6, None
    )
    assert again.trailingData == b"data"
    assert again.result is not None and again.result.granted


# -- UDP --------------------------------------------------------------------------

#: Valid datagrams and what each parses to.
DATAGRAMS: list[tuple[bytes, Datagram]] = [
    (
        b"\0\0\0\x01\x08\x08\x08\x08\x00\x35query",
        Datagram(0, 53, IPv4Address("8.8.8.8"), None, b"query"),
    ),
    (
        encodeDatagram(b"", 53, V6),
        Datagram(0, 53, V6, None, b""),
    ),
    (
        encodeDatagram(b"\0" * 1400, 443, name="dns.example"),
        Datagram(0, 443, None, "dns.example", b"\0" * 1400),
    ),
    (
        encodeDatagram(b"frag", 53, V4, fragment=1),
        Datagram(1, 53, V4, None, b"frag"),
    ),
    (
        encodeDatagram(b"last", 53, V4, fragment=0x81),
        Datagram(0x81, 53, V4, None, b"last"),
    ),
    (
        encodeDatagram(b"x", 65535, name="h" * 255),
        Datagram(0, 65535, None, "h" * 255, b"x"),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), DATAGRAMS)
def test_datagramParsesAndRoundTrips(raw: bytes, expected: Datagram) -> None:
    """A datagram parses whole to its value and re-encodes to its bytes."""
    assert parseDatagram(raw) == expected
    again = encodeDatagram(
        expected.data, expected.port, expected.address, expected.name, expected.fragment
    )
    assert again == raw


def test_datagramSaysWhetherItIsAFragment() -> None:
    """FRAG is kept so the relay can drop and count fragments."""
    assert not DATAGRAMS[0][1].isFragment
    assert DATAGRAMS[3][1].isFragment
    assert DATAGRAMS[2][1].destination == "dns.example"
    assert DATAGRAMS[1][1].addressType is AddressType.IPV6


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\0",
        b"\0\0",
        b"\0\0\0",
        b"\0\0\0\x01\x08\x08\x08",
        b"\0\0\0\x01\x08\x08\x08\x08\x00",
        b"\0\x01\0\x01\x08\x08\x08\x08\x00\x35x",  # RSV 0001
        b"\x05\x00\0\x01\x08\x08\x08\x08\x00\x35x",  # a request sent as a datagram
        b"\0\0\0\x02\x08\x08\x08\x08\x00\x35x",  # ATYP 2
        b"\0\0\0\x03\x00\x00\x35x",  # empty name
        b"\0\0\0\x03\x05a",  # truncated name
        b"\0\0\0\x03\x03a\r\n\x00\x35",  # CR LF in the name
        b"\0\0\0\x01\x08\x08\x08\x08\x00\x00x",  # port 0
        b"\0\0\0\x01\x00\x00\x00\x00\x00\x35x",  # 0.0.0.0
        b"\0\0\0\x04" + b"\0" * 16 + b"\x00\x35x",  # ::
        b"\0\0\0\x04" + b"\0" * 15,  # truncated IPv6
    ],
)
def test_malformedDatagramIsDropped(raw: bytes) -> None:
    """A malformed or truncated header raises L{BadDatagram}, which has no reply."""
    with pytest.raises(BadDatagram) as caught:
        parseDatagram(raw)
    assert caught.value.reply is None


def test_datagramHeaderSizeIsTheLongestHeader() -> None:
    """L{MAX_DATAGRAM_HEADER_SIZE} is the header of a 255-byte name (262)."""
    raw = encodeDatagram(b"", 1, name="h" * 255)
    assert len(raw) == MAX_DATAGRAM_HEADER_SIZE == 262


# -- properties -------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(0, len(VALID) - 1),
    cuts=st.lists(st.integers(0, 600), max_size=12),
    trailing=st.binary(max_size=40),
)
def test_anyChunkingParsesTheSame(index: int, cuts: list[int], trailing: bytes) -> None:
    """However TCP splits a message and what follows, the result is the same."""
    kind, raw, expected = VALID[index]
    stream = raw + trailing
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    parser = INCREMENTAL[kind]()
    result = None
    consumed = 0
    for start, end in itertools.pairwise(points):
        result = parser.feed(stream[start:end])
        consumed = end
        if result is not None:
            break
    assert result == expected
    assert parser.trailingData + stream[consumed:] == trailing


@settings(max_examples=1500, deadline=None)
@given(kind=st.sampled_from(sorted(PARSE)), data=st.binary(max_size=600))
def test_noInputRaisesAnUndeclaredError(kind: str, data: bytes) -> None:
    """
    Arbitrary bytes only ever yield need-more, a value, or the declared
    error (a L{SOCKS5ProtocolError}, or L{MalformedReply5} for replies).
    """
    declared = MalformedReply5 if kind == "reply" else SOCKS5ProtocolError
    try:
        PARSE[kind](data)
    except declared:
        pass


@settings(max_examples=1000, deadline=None)
@given(
    cmd=st.integers(1, 3),
    atyp=st.sampled_from([1, 3, 4]),
    address=st.binary(max_size=300),
    port=st.binary(min_size=2, max_size=2),
)
def test_nearValidRequestsNeverEscapeTheErrorTypes(
    cmd: int, atyp: int, address: bytes, port: bytes
) -> None:
    """Requests with the right VER, CMD and ATYP raise nothing undeclared."""
    raw = request(5, cmd, 0, atyp, address + port)
    try:
        parsed = parseRequest5(raw)
    except SOCKS5ProtocolError:
        return
    if parsed is None:
        return
    value, used = parsed
    assert used <= min(len(raw), MAX_REQUEST5_SIZE)
    assert (
        encodeRequest5(value.command, value.port, value.address, value.name)
        == raw[:used]
    )


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=400))
def test_anyDatagramParsesOrIsDropped(data: bytes) -> None:
    """Any datagram parses to a value that re-encodes to it, or is dropped."""
    try:
        value = parseDatagram(data)
    except BadDatagram:
        return
    again = encodeDatagram(
        value.data, value.port, value.address, value.name, value.fragment
    )
    assert again == data


# -- the fuzz oracles -------------------------------------------------------------

ORACLES: dict[str, Callable[[bytes, random.Random], str]] = {
    "greeting": checkGreeting,
    "auth": checkCredentials,
    "request": checkRequest5,
    "reply": checkReply5,
}


def test_fuzzSeedsAreCleanOnTheirOwn() -> None:
    """
    The SOCKS5 fuzz targets' seeds keep every contract (a sanity check of
    the oracles), and the targets are registered for C{python -m fuzz}.
    """
    rng = random.Random(1)
    for target in SOCKS5_TARGETS:
        assert TARGETS[target.name] is target
        for seed in target.seeds:
            target.check(seed[: target.maxSize], rng)


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID, ids=VALID_IDS)
def test_fuzzOraclesAcceptEveryValidMessage(
    kind: str, raw: bytes, expected: object
) -> None:
    """Every valid message of the tables passes its fuzz oracle, with trailing bytes."""
    rng = random.Random(2)
    assert not ORACLES[kind](raw, rng).startswith("error")
    assert ORACLES[kind](raw + b"\x05", rng).endswith("+trailing")


@pytest.mark.parametrize(("raw", "expected"), DATAGRAMS)
def test_fuzzOracleAcceptsEveryValidDatagram(raw: bytes, expected: Datagram) -> None:
    """Every valid datagram of the table passes the UDP oracle."""
    assert checkDatagram(raw, random.Random(3)).startswith("datagram")


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(
    kind=st.sampled_from(sorted(ORACLES)),
    data=st.binary(max_size=600),
    rng=st.randoms(use_true_random=False),
)
def test_fuzzOraclesHoldOnAnyBytesAnyChunking(
    kind: str, data: bytes, rng: random.Random
) -> None:
    """
    Any bytes in any chunks: the incremental parser agrees with the parse
    function, only the declared error escapes, no cap is crossed.
    """
    ORACLES[kind](data, rng)


@st.composite
def nearRequests5(draw: st.DrawFn) -> bytes:
    """Requests with a plausible header and anything after it."""
    head = draw(st.sampled_from([b"\x05\x01\x00", b"\x05\x02\x00", b"\x05\x03\x00"]))
    atyp = draw(st.sampled_from([b"\x01", b"\x03", b"\x04"]))
    length = draw(st.sampled_from([b"", b"\x00", b"\x01", b"\x0b", b"\xff"]))
    name = draw(
        st.one_of(
            st.binary(max_size=270),
            st.text("abc.-_:0123456789", max_size=270).map(str.encode),
        )
    )
    return head + atyp + length + name


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(data=nearRequests5(), rng=st.randoms(use_true_random=False))
def test_fuzzOracleHoldsOnNearValidRequests(data: bytes, rng: random.Random) -> None:
    """Near-valid requests (right VER, CMD, RSV and ATYP) keep every contract."""
    checkRequest5(data, rng)
