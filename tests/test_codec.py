"""Tests for the sans-IO SOCKS4/4A codec (twisted_socks.wire._socks4)."""

from __future__ import annotations

import itertools
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_socks import (
    Command,
    EmptyHostname,
    HostnameTooLong,
    InvalidHostname,
    ReplyCode,
    Request,
    RequestParser,
    SOCKSProtocolError,
    UnknownCommand,
    UnsupportedVersion,
    UserIdTooLong,
    ZeroAddress,
    ZeroPort,
    encodeReply,
    encodeRequest,
    parseRequest,
)
from twisted_socks.wire._socks4 import MAX_REQUEST_SIZE

V4 = IPv4Address("192.0.2.7")

#: Valid requests of every shape, with the Request each must parse to.
VALID = [
    (
        encodeRequest(Command.CONNECT, 80, address=V4),
        Request(Command.CONNECT, 80, V4, None, b""),
    ),
    (
        encodeRequest(Command.CONNECT, 443, address=V4, userid=b"alice"),
        Request(Command.CONNECT, 443, V4, None, b"alice"),
    ),
    (
        encodeRequest(Command.CONNECT, 80, hostname="example.com"),
        Request(Command.CONNECT, 80, None, "example.com", b""),
    ),
    (
        encodeRequest(Command.CONNECT, 80, hostname="example.com", userid=b"bob"),
        Request(Command.CONNECT, 80, None, "example.com", b"bob"),
    ),
    (
        encodeRequest(Command.BIND, 21, address=V4, userid=b"carol"),
        Request(Command.BIND, 21, V4, None, b"carol"),
    ),
    (
        encodeRequest(Command.BIND, 21, hostname="ftp.example.com"),
        Request(Command.BIND, 21, None, "ftp.example.com", b""),
    ),
    (
        encodeRequest(Command.CONNECT, 65535, address=V4, userid=b"u" * 255),
        Request(Command.CONNECT, 65535, V4, None, b"u" * 255),
    ),
    (
        encodeRequest(Command.CONNECT, 1, hostname="h" * 255, userid=b"u" * 255),
        Request(Command.CONNECT, 1, None, "h" * 255, b"u" * 255),
    ),
    (
        # 4A with a last DSTIP byte other than 1 (the spec allows any x != 0).
        b"\x04\x01\x00\x50\x00\x00\x00\xff\x00example.org\x00",
        Request(Command.CONNECT, 80, None, "example.org", b""),
    ),
    (
        # BIND's DSTPORT is only informative: port 0 is allowed there.
        encodeRequest(Command.BIND, 0, address=V4),
        Request(Command.BIND, 0, V4, None, b""),
    ),
    (
        # A USERID is any bytes but NUL, including non-UTF-8.
        encodeRequest(Command.CONNECT, 80, address=V4, userid=b"\xff\xfe"),
        Request(Command.CONNECT, 80, V4, None, b"\xff\xfe"),
    ),
    (
        encodeRequest(Command.CONNECT, 8080, hostname="::1"),
        Request(Command.CONNECT, 8080, None, "::1", b""),
    ),
]


def header(vn: int = 4, cd: int = 1, port: int = 80, ip: bytes = V4.packed) -> bytes:
    """A request header with any field set to anything."""
    return struct.pack("!BBH4s", vn, cd, port, ip)


FOURA = b"\0\0\0\1"

#: Malformed requests and the error each must raise.
MALFORMED: list[tuple[str, bytes, type[SOCKSProtocolError]]] = [
    ("version 0", header(vn=0) + b"\0", UnsupportedVersion),
    ("version 5", header(vn=5) + b"\0", UnsupportedVersion),
    ("version 0xff", b"\xff", UnsupportedVersion),
    ("SOCKS5 greeting", b"\x05\x01\x00", UnsupportedVersion),
    ("SOCKS5 greeting, two methods", b"\x05\x02\x00\x02", UnsupportedVersion),
    ("HTTP request line", b"GET / HTTP/1.0\r\n\r\n", UnsupportedVersion),
    ("HTTP CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", UnsupportedVersion),
    ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01", UnsupportedVersion),
    ("command 0", header(cd=0) + b"\0", UnknownCommand),
    ("command 3 (UDP associate)", header(cd=3) + b"\0", UnknownCommand),
    ("command 0xf0 (Tor RESOLVE)", header(cd=0xF0) + b"\0", UnknownCommand),
    ("command 0xff", header(cd=0xFF) + b"\0", UnknownCommand),
    ("DSTIP 0.0.0.0", header(ip=b"\0\0\0\0") + b"\0", ZeroAddress),
    ("DSTIP 0.0.0.0 with a name", header(ip=b"\0\0\0\0") + b"\0x\0", ZeroAddress),
    ("CONNECT to port 0", header(port=0) + b"\0", ZeroPort),
    ("4A CONNECT to port 0", header(port=0, ip=FOURA) + b"\0a.example\0", ZeroPort),
    ("USERID 256 bytes", header() + b"u" * 256 + b"\0", UserIdTooLong),
    ("USERID 4 KiB, no NUL", header() + b"u" * 4096, UserIdTooLong),
    ("USERID 1 MiB, no NUL", header() + b"u" * (1 << 20), UserIdTooLong),
    ("4A USERID 256 bytes", header(ip=FOURA) + b"u" * 256 + b"\0h\0", UserIdTooLong),
    ("empty hostname", header(ip=FOURA) + b"\0\0", EmptyHostname),
    ("empty hostname after USERID", header(ip=FOURA) + b"bob\0\0", EmptyHostname),
    (
        "hostname 256 bytes",
        header(ip=FOURA) + b"\0" + b"h" * 256 + b"\0",
        HostnameTooLong,
    ),
    (
        "hostname 10 KiB, no NUL",
        header(ip=FOURA) + b"\0" + b"h" * 10240,
        HostnameTooLong,
    ),
    ("hostname with CR LF", header(ip=FOURA) + b"\0a\r\nb\0", InvalidHostname),
    ("hostname with ESC", header(ip=FOURA) + b"\0a\x1b[31mb\0", InvalidHostname),
    ("hostname with space", header(ip=FOURA) + b"\0a b\0", InvalidHostname),
    (
        "hostname with high-bit byte",
        header(ip=FOURA) + b"\0caf\xe9.fr\0",
        InvalidHostname,
    ),
    ("hostname with slash", header(ip=FOURA) + b"\0a/b\0", InvalidHostname),
    ("hostname with brackets", header(ip=FOURA) + b"\0[::1]\0", InvalidHostname),
    ("unterminated bad hostname", header(ip=FOURA) + b"\0\x07", InvalidHostname),
    ("hostname with DEL", header(ip=FOURA) + b"\0a\x7fb\0", InvalidHostname),
]


def test_malformedTableIsLargeEnough() -> None:
    """The issue asks for a table of at least 30 malformed requests."""
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_validRequestParsesWhole(raw: bytes, expected: Request) -> None:
    """A complete request parses to the expected value and consumes itself."""
    assert parseRequest(raw) == (expected, len(raw))


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_everyStrictPrefixNeedsMore(raw: bytes, expected: Request) -> None:
    """Every strict prefix of a valid request is "need more", never an error."""
    for end in range(len(raw)):
        assert parseRequest(raw[:end]) is None, end


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_byteByByteParsesSameAsWhole(raw: bytes, expected: Request) -> None:
    """Feeding one byte at a time yields the request on the last byte only."""
    parser = RequestParser()
    for i in range(len(raw) - 1):
        assert parser.feed(raw[i : i + 1]) is None
        assert parser.request is None
    assert parser.feed(raw[-1:]) == expected
    assert parser.trailingData == b""


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_trailingDataIsKeptNotParsed(raw: bytes, expected: Request) -> None:
    """Bytes after the request (even another request) are stream data."""
    trailing = b"GET / HTTP/1.1\r\n" + raw
    parser = RequestParser()
    assert parser.feed(raw + trailing) == expected
    assert parser.trailingData == trailing
    with pytest.raises(ValueError):
        parser.feed(b"more")


@pytest.mark.parametrize(
    ("name", "raw", "error"), MALFORMED, ids=[name for name, _, _ in MALFORMED]
)
def test_malformedRaisesItsError(
    name: str, raw: bytes, error: type[SOCKSProtocolError]
) -> None:
    """Each malformed request raises its specific, declared error."""
    with pytest.raises(error):
        parseRequest(raw)


@pytest.mark.parametrize(
    ("name", "raw", "error"), MALFORMED, ids=[name for name, _, _ in MALFORMED]
)
def test_malformedIsDetectedWithinTheCap(
    name: str, raw: bytes, error: type[SOCKSProtocolError]
) -> None:
    """
    Fed byte by byte, every malformed request fails before the parser holds
    more than the largest valid request: nothing is buffered without bound.
    """
    parser = RequestParser()
    with pytest.raises(error):
        for i in range(len(raw)):
            parser.feed(raw[i : i + 1])
            assert parser.bufferedSize <= MAX_REQUEST_SIZE
    assert parser.bufferedSize <= MAX_REQUEST_SIZE + 1


def test_versionErrorsSendNoReply() -> None:
    """
    A peer that does not speak SOCKS4 gets no SOCKS4 reply; every other
    error gets 91.
    """
    assert UnsupportedVersion.replyCode is None
    for error in (UnknownCommand, ZeroAddress, UserIdTooLong, EmptyHostname):
        assert error.replyCode is ReplyCode.REJECTED


def test_garbageIsRejectedAtTheFirstByte() -> None:
    """A wrong version is an error as soon as one byte arrived."""
    with pytest.raises(UnsupportedVersion):
        parseRequest(b"G")
    with pytest.raises(UnknownCommand):
        parseRequest(b"\x04\x09")


def test_userAsTextIsLossless() -> None:
    """Request.user decodes UTF-8 and keeps undecodable bytes as surrogates."""
    request = Request(Command.CONNECT, 1, V4, None, "jos\u00e9".encode() + b"\xff")
    assert request.user == "jos\u00e9\udcff"
    assert request.user.encode("utf-8", "surrogateescape") == request.userid


def test_encodeReply() -> None:
    """Replies are 8 bytes, VN 0, the code, then port and address."""
    assert encodeReply(ReplyCode.GRANTED) == b"\x00\x5a" + b"\0" * 6
    assert encodeReply(ReplyCode.REJECTED) == b"\x00\x5b" + b"\0" * 6
    assert encodeReply(ReplyCode.NO_IDENTD)[1] == 92
    assert encodeReply(ReplyCode.IDENT_MISMATCH)[1] == 93
    assert (
        encodeReply(ReplyCode.GRANTED, 0x1234, IPv4Address("10.1.2.3"))
        == b"\x00\x5a\x12\x34\x0a\x01\x02\x03"
    )


def test_encodeReplyRejectsLocalMisuse() -> None:
    """A bad port or code is the caller's bug: ValueError, not a protocol error."""
    with pytest.raises(ValueError):
        encodeReply(ReplyCode.GRANTED, 70000)
    with pytest.raises(ValueError):
        encodeReply(17)  # type: ignore[arg-type]


def test_encodeRequestRejectsLocalMisuse() -> None:
    """encodeRequest refuses requests it could not send correctly."""
    with pytest.raises(ValueError):
        encodeRequest(Command.CONNECT, 80)
    with pytest.raises(ValueError):
        encodeRequest(Command.CONNECT, 80, address=V4, hostname="x")
    with pytest.raises(ValueError):
        encodeRequest(Command.CONNECT, 80, address=V4, userid=b"a\0b")
    with pytest.raises(ValueError):
        encodeRequest(Command.CONNECT, 80, hostname="h" * 256)


def test_encodeRequestSendsIdnAsALabels() -> None:
    """A non-ASCII name goes on the wire IDNA-encoded, as PySocks does."""
    raw = encodeRequest(Command.CONNECT, 80, hostname="b\u00fccher.example")
    request, _ = parseRequest(raw) or (None, 0)
    assert request is not None
    assert request.hostname == "xn--bcher-kva.example"


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(0, len(VALID) - 1),
    cuts=st.lists(st.integers(0, 600), max_size=12),
    trailing=st.binary(max_size=40),
)
def test_anyChunkingParsesTheSame(index: int, cuts: list[int], trailing: bytes) -> None:
    """However TCP splits request + trailing bytes, the result is the same."""
    raw, expected = VALID[index]
    stream = raw + trailing
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    parser = RequestParser()
    result = None
    consumed = 0
    for start, end in itertools.pairwise(points):
        result = parser.feed(stream[start:end])
        consumed = end
        if result is not None:
            break
    assert result == expected
    assert parser.trailingData + stream[consumed:] == trailing


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=700))
def test_noInputRaisesAnUndeclaredError(data: bytes) -> None:
    """Arbitrary bytes only ever yield need-more, a request, or a protocol error."""
    try:
        parseRequest(data)
    except SOCKSProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(
    cd=st.sampled_from([1, 2]),
    port=st.integers(0, 65535),
    ip=st.binary(min_size=4, max_size=4),
    userid=st.binary(max_size=300),
    name=st.binary(max_size=300),
)
def test_structuredInputsNeverEscapeTheErrorTypes(
    cd: int, port: int, ip: bytes, userid: bytes, name: bytes
) -> None:
    """Near-valid requests (right VN and CD) never raise anything undeclared."""
    raw = header(4, cd, port, ip) + userid + b"\0" + name + b"\0"
    try:
        parsed = parseRequest(raw)
    except SOCKSProtocolError:
        return
    assert parsed is not None
    request, used = parsed
    assert used <= len(raw)
    assert len(request.userid) <= 255
    if request.hostname is not None:
        assert 1 <= len(request.hostname) <= 255
