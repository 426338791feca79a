"""
Tests for RFC 1413 ident: the sans-IO response parser
(twisted_socks.wire._identparse) and the resolvers (twisted_socks.ident._ident).

The resolver is tested twice: synchronously on a L{MemoryReactorClock}, for
exact limits, timers and cancellation, and against small blocking identds
on loopback, for what only real sockets show (bind address, timeouts, resets,
concurrency). Every socket operation and every lookup has a time bound.
"""

from __future__ import annotations

import ast
import encodings
import encodings.aliases
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

import twisted_socks.wire._identparse
from tests._support import eventually
from twisted_socks.ident._ident import (
    FakeIdentResolver,
    NullIdentResolver,
    RFC1413Resolver,
)
from twisted_socks.interfaces import IIdentResolver
from twisted_socks.testing import HalfCloseableStringTransport
from twisted_socks.wire._identparse import (
    MAX_RESPONSE,
    IdentAnswer,
    IdentError,
    IdentErrorReply,
    IdentProtocolError,
    IdentTimeout,
    IdentUnreachable,
    identQuery,
    parseIdentResponse,
)

T = TypeVar("T")

#: The ports every test asks about: the client's source port, then ours.
CLIENT_PORT = 5555
SERVER_PORT = 1080
QUERY = b"5555 , 1080\r\n"


def parse(line: bytes) -> IdentAnswer:
    """Parse C{line} as the answer about L{CLIENT_PORT}, L{SERVER_PORT}."""
    return parseIdentResponse(line, CLIENT_PORT, SERVER_PORT)


# --- the query -------------------------------------------------------------


def test_queryPutsClientPortFirst() -> None:
    """
    The port on the host asked (the client's source port) comes first, our
    own port second, as RFC 1413 and oidentd's logs show.
    """
    assert identQuery(5555, 1080) == QUERY
    assert identQuery(65535, 1) == b"65535 , 1\r\n"


@pytest.mark.parametrize(("clientPort", "serverPort"), [(0, 1080), (5555, 65536)])
def test_queryRefusesImpossiblePorts(clientPort: int, serverPort: int) -> None:
    """No connection has port 0 or above 65535: asking is the caller's bug."""
    with pytest.raises(ValueError, match=r"not in 1\.\.65535"):
        identQuery(clientPort, serverPort)


# --- the parser: answers ---------------------------------------------------

#: Answers of every shape, with what each must parse to.
ANSWERS = [
    (
        b"5555 , 1080 : USERID : UNIX : alice",
        IdentAnswer("alice", "UNIX", None),
    ),
    # oidentd 2.5.0: no spaces anywhere.
    (b"5555,1080:USERID:UNIX:root", IdentAnswer("root", "UNIX", None)),
    (
        b"5555\t,\t1080\t:\tUSERID\t:\tUNIX\t:\talice\t",
        IdentAnswer("alice", "UNIX", None),
    ),
    (b" 5555,1080 :USERID:  UNIX:bob  ", IdentAnswer("bob", "UNIX", None)),
    (
        b"5555 , 1080 : USERID : UNIX , UTF-8 : j\xc3\xbcrgen",
        IdentAnswer("j\u00fcrgen", "UNIX", "UTF-8"),
    ),
    (
        b"5555,1080:USERID:UNIX,US-ASCII:carol",
        IdentAnswer("carol", "UNIX", "US-ASCII"),
    ),
    (
        b"5555,1080:USERID:UNIX , ISO-8859-1 :j\xfcrgen",
        IdentAnswer("j\u00fcrgen", "UNIX", "ISO-8859-1"),
    ),
    # A charset Python does not know: latin-1, which never fails.
    (
        b"5555,1080:USERID:UNIX,X-MADE-UP:j\xfcrgen",
        IdentAnswer("j\u00fcrgen", "UNIX", "X-MADE-UP"),
    ),
    # No charset but not UTF-8 either: latin-1 again.
    (b"5555,1080:USERID:UNIX:j\xfcrgen", IdentAnswer("j\u00fcrgen", "UNIX", None)),
    # Not a text encoding at all.
    (b"5555,1080:USERID:UNIX,hex:6162", IdentAnswer("6162", "UNIX", "hex")),
    # An escape codec would turn "\n" into a line break: refused, latin-1.
    (
        b"5555,1080:USERID:OTHER,unicode_escape:a\\nb",
        IdentAnswer("a\\nb", "OTHER", "unicode_escape"),
    ),
    # The user-id is everything after the third colon, inner blanks kept.
    (
        b"5555 , 1080 : USERID : OTHER :  a user: with : colons  ",
        IdentAnswer("a user: with : colons", "OTHER", None),
    ),
    (b"5555,1080:USERID:UNIX::::", IdentAnswer(":::", "UNIX", None)),
    # Keywords in any case; the opsys is reported as sent.
    (b"5555,1080:userid:unix:dave", IdentAnswer("dave", "unix", None)),
    (b"5555,1080:UserId:UNIX:erin", IdentAnswer("erin", "UNIX", None)),
    # Leading zeros still name the same port.
    (b"05555,01080:USERID:UNIX:fred", IdentAnswer("fred", "UNIX", None)),
]


@pytest.mark.parametrize(("line", "expected"), ANSWERS)
def test_answersParse(line: bytes, expected: IdentAnswer) -> None:
    """Every answer form, spaced or not, parses to user, opsys and charset."""
    assert parse(line) == expected


def test_answerOfExactlyTheLimitParses() -> None:
    """A line of L{MAX_RESPONSE} bytes is still an answer."""
    head = b"5555,1080:USERID:UNIX:"
    line = head + b"u" * (MAX_RESPONSE - len(head))
    assert parse(line).user == "u" * (MAX_RESPONSE - len(head))


@pytest.mark.parametrize(
    "token", ["INVALID-PORT", "NO-USER", "HIDDEN-USER", "UNKNOWN-ERROR", "X-SECRET"]
)
@pytest.mark.parametrize(
    "template",
    [b"5555 , 1080 : ERROR : %s", b"5555,1080:ERROR:%s", b"5555,1080:error:\t%s  "],
)
def test_errorRepliesRaiseWithTheirToken(template: bytes, token: str) -> None:
    """
    C{ERROR} answers, standard or private (C{X...}) token, spaced or not,
    raise L{IdentErrorReply} carrying the token without its blanks.
    """
    with pytest.raises(IdentErrorReply) as caught:
        parse(template % token.encode())
    assert caught.value.token == token


# --- the parser: malformed answers -----------------------------------------

#: Malformed answers, with part of the message each must raise.
MALFORMED = [
    (b"", "too few fields"),
    (b"5555,1080", "too few fields"),
    (b"5555,1080:USERID", "too few fields"),
    (b"5555,1080:USERID:UNIX", "without a user-id"),
    (b"5555,1080:USERID:UNIX:", "empty user-id"),
    (b"5555,1080:USERID:UNIX: \t ", "empty user-id"),
    (b"5555,1080:USERID::bob", "empty operating system"),
    (b"5555,1080:USERID: , UTF-8:bob", "empty operating system"),
    (b"5555,1080:USERID:UNIX,:bob", "empty character set"),
    (b"5555,1080:USERID:UN\xc3\x8fX:bob", "not ASCII"),
    (b"5555,1080:ERROR:", "without an error token"),
    (b"5555,1080:ERROR: \t", "without an error token"),
    (b"5555,1080::UNIX:bob", "empty response type"),
    (b"5555,1080:HELLO:UNIX:bob", "unknown response type"),
    (b"5555,1080:US\xffERID:UNIX:bob", "not ASCII"),
    (b"5556,1080:USERID:UNIX:bob", "not the 5555, 1080"),
    (b"1080,5555:USERID:UNIX:bob", "not the 5555, 1080"),
    (b"5555,1081:ERROR:NO-USER", "not the 5555, 1080"),
    (b"5555:USERID:UNIX:bob", "bad port pair"),
    (b"5555,1080,1:USERID:UNIX:bob", "bad port pair"),
    (b",1080:USERID:UNIX:bob", "bad port"),
    (b"abc,1080:USERID:UNIX:bob", "bad port"),
    (b"-5555,1080:USERID:UNIX:bob", "bad port"),
    (b"5555,+1080:USERID:UNIX:bob", "bad port"),
    (b"5555,1080 1:USERID:UNIX:bob", "bad port"),
    (b"5555,0001080:USERID:UNIX:bob", "bad port"),
    (b"5555," + b"9" * 500 + b":USERID:UNIX:bob", "bad port"),
    # A non-ASCII digit (ARABIC-INDIC FIVE) is not a port number.
    (b"555\xd9\xa5,1080:USERID:UNIX:bob", "bad port"),
    (b"5555,1080:USERID:UNIX:bo\0b", "NUL"),
    (b"5555,1080:USERID:UNIX:bo\rb", "CR"),
    (b"5555,1080:USERID:UNIX:bob\r", "CR"),
    (b"5555,1080:USERID:UNIX:bo\nb", "LF"),
    (b"5555,1080:USERID:UNIX:" + b"u" * MAX_RESPONSE, "longer than 1000"),
]


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_malformedAnswersRaiseProtocolError(line: bytes, message: str) -> None:
    """Each kind of garbage raises L{IdentProtocolError} saying what was wrong."""
    with pytest.raises(IdentProtocolError, match=message):
        parse(line)


@settings(max_examples=1000)
@given(st.binary(max_size=MAX_RESPONSE + 10))
def test_arbitraryBytesGiveAnswerOrIdentError(line: bytes) -> None:
    """No input makes the parser raise anything but an L{IdentError}."""
    try:
        answer = parse(line)
    except IdentError:
        return
    assert isinstance(answer, IdentAnswer)


#: Character sets to try: every name Python knows, and a few it does not.
CHARSETS = sorted({*encodings.aliases.aliases, *encodings.aliases.aliases.values()})


def field(*choices: bytes) -> st.SearchStrategy[bytes]:
    """One of C{choices}, or a few arbitrary bytes."""
    return st.one_of(st.sampled_from(choices), st.binary(max_size=6))


def blanks() -> st.SearchStrategy[bytes]:
    """Optional whitespace around a separator."""
    return st.sampled_from([b"", b" ", b"\t", b" \t "])


@st.composite
def nearAnswers(draw: st.DrawFn) -> bytes:
    """Lines shaped like answers, so the deep branches are explored too."""
    charset = draw(
        st.one_of(
            st.just(b""),
            st.sampled_from(CHARSETS).map(lambda name: b"," + name.encode()),
            st.binary(max_size=8),
        )
    )
    parts = [
        draw(field(b"5555", b"05555", b"5556", b"")),
        draw(blanks()),
        draw(field(b",", b",,", b"")),
        draw(blanks()),
        draw(field(b"1080", b"1081")),
        draw(blanks()),
        b":",
        draw(field(b"USERID", b"userid", b"ERROR", b"OTHER")),
        b":",
        draw(field(b"UNIX", b"OTHER", b"")),
        charset,
        draw(field(b":", b"", b"::")),
        draw(st.binary(max_size=40)),
    ]
    return b"".join(parts)


@settings(max_examples=1000)
@given(nearAnswers())
def test_nearAnswersGiveSaneAnswerOrIdentError(line: bytes) -> None:
    """
    Almost-valid lines, with every charset name Python knows, give an
    L{IdentError} or an answer whose user is non-empty, has no surrounding
    blanks from the wire and holds no NUL, CR or LF.
    """
    try:
        answer = parse(line)
    except IdentError:
        return
    assert answer.user
    assert not {"\0", "\r", "\n"} & set(answer.user)
    assert answer.opsys == answer.opsys.strip(" \t") != ""


@pytest.mark.parametrize(
    "user", [b"a", b"j\xfcrgen", b"\\x00", b"\\n", b"+AAo-", b"\xff\xfe\n\x00", b"\\u"]
)
def test_everyKnownCharsetDecodesSafely(user: bytes) -> None:
    """
    With each charset name the standard library knows (text codec or not),
    a user-id decodes to a non-empty name without NUL, CR or LF, or the line
    raises an L{IdentError}: nothing else.
    """
    for charset in CHARSETS:
        line = b"5555,1080:USERID:UNIX," + charset.encode() + b":" + user
        try:
            answer = parse(line)
        except IdentError:
            continue
        assert answer.user and not {"\0", "\r", "\n"} & set(answer.user), charset


def test_charsetsWithoutAliasesAreKnown() -> None:
    """Codecs with no alias (KOI8-U, for one) are used when named."""
    answer = parse(b"5555,1080:USERID:UNIX,KOI8-U:\xa4")
    assert answer.user == "\u0454"
    answer = parse(b"5555,1080:USERID:UNIX,cp874:\xa1")
    assert answer.user == "\u0e01"


def test_unknownCharsetNamesAreNeverLookedUp() -> None:
    """
    Python's codec registry caches every name it is asked about, unknown
    ones too; names an identd makes up must not reach it, or each lookup
    would leave a little memory behind for good.
    """
    before = len(encodings._cache)  # type: ignore[attr-defined]
    for i in range(200):
        answer = parse(b"5555,1080:USERID:UNIX,X-MADE-UP-%d:j\xfcrgen" % i)
        assert answer.user == "j\u00fcrgen"
    assert len(encodings._cache) == before  # type: ignore[attr-defined]


def test_parserImportsNothingFromTwisted() -> None:
    """The response parser is sans-IO: it runs without Twisted installed."""
    source = Path(twisted_socks.wire._identparse.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert not [n for n in names if n.split(".")[0] in ("twisted", "zope")]


# --- the resolver, on a memory reactor --------------------------------------


def outcome(deferred: Deferred[T]) -> list[T | Failure]:
    """Collect what C{deferred} fires with (empty while it has not)."""
    results: list[T | Failure] = []
    deferred.addBoth(results.append)
    return results


def failureOf(deferred: Deferred[Any]) -> Failure:
    """The failure C{deferred} has already failed with."""
    results = outcome(deferred)
    assert len(results) == 1 and isinstance(results[0], Failure), results
    return results[0]


class MemoryLookup:
    """One lookup by an L{RFC1413Resolver} on a L{MemoryReactorClock}."""

    def __init__(
        self,
        client: tuple[str, int] = ("192.0.2.7", CLIENT_PORT),
        server: tuple[str, int] = ("198.51.100.1", SERVER_PORT),
        timeout: float = 10,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.resolver = RFC1413Resolver(self.clock, timeout=timeout)
        self.deferred = self.resolver.lookupAnswer(client, server)
        self.results = outcome(self.deferred)
        self.transport = HalfCloseableStringTransport()
        self.protocol: IProtocol | None = None

    @property
    def attempt(self) -> tuple[Any, ...]:
        """The C{connectTCP} call: host, port, factory, timeout, bindAddress."""
        [attempt] = self.clock.tcpClients
        return attempt

    def connect(self) -> None:
        """Complete the connection to a string transport."""
        host, port, factory = self.attempt[:3]
        kind = IPv6Address if ":" in host else IPv4Address
        self.protocol = factory.buildProtocol(kind("TCP", host, port))
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def receive(self, data: bytes) -> None:
        """Deliver C{data} from the identd."""
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def error(self) -> Failure:
        """The lookup's failure."""
        [result] = self.results
        assert isinstance(result, Failure), result
        return result


def test_lookupConnectsToClientsIdentdFromServerAddress() -> None:
    """
    The identd on the client's host is asked, on port 113, from the address
    the client connected to, with the endpoint's own timeout later than ours.
    """
    lookup = MemoryLookup()
    host, port, _, timeout, bindAddress = lookup.attempt
    assert (host, port, bindAddress) == ("192.0.2.7", 113, ("198.51.100.1", 0))
    assert timeout > 10
    lookup.connect()
    assert lookup.transport.value() == QUERY


@pytest.mark.parametrize(
    ("client", "server", "host", "bindAddress"),
    [
        ("2001:db8::7", "2001:db8::1", "2001:db8::7", ("2001:db8::1", 0)),
        ("fe80::7%lo", "fe80::1%lo", "fe80::7%lo", ("fe80::1%lo", 0)),
        # A dual-stack listener sees IPv4 clients as mapped addresses.
        ("::ffff:192.0.2.7", "::ffff:198.51.100.1", "192.0.2.7", ("198.51.100.1", 0)),
        # No address of ours in the client's family: the kernel chooses.
        ("192.0.2.7", "2001:db8::1", "192.0.2.7", None),
        ("192.0.2.7", "not-an-address", "192.0.2.7", None),
    ],
)
def test_lookupPicksFamilyAndBindAddress(
    client: str, server: str, host: str, bindAddress: tuple[str, int] | None
) -> None:
    """IPv6, scoped, IPv4-mapped and mixed-family addresses connect sensibly."""
    lookup = MemoryLookup((client, CLIENT_PORT), (server, SERVER_PORT))
    assert lookup.attempt[0] == host
    assert lookup.attempt[4] == bindAddress


def test_lookupOfNonAddressFailsAtOnce() -> None:
    """A client host that is not an IP literal is never looked up as a name."""
    lookup = MemoryLookup(client=("example.com", CLIENT_PORT))
    assert lookup.error().check(IdentUnreachable)
    assert lookup.clock.tcpClients == []
    assert lookup.clock.getDelayedCalls() == []


def test_answerOneByteAtATime() -> None:
    """
    An answer trickling in byte by byte gives the same result as one chunk;
    the connection is then closed politely and no timer is left.
    """
    lookup = MemoryLookup()
    lookup.connect()
    for i, octet in enumerate(b"5555,1080:USERID:UNIX:alice\r\n"):
        assert lookup.results == [], i
        lookup.receive(bytes([octet]))
    assert lookup.results == [IdentAnswer("alice", "UNIX", None)]
    assert lookup.transport.disconnecting and not lookup.transport.aborted
    assert lookup.clock.getDelayedCalls() == []


def test_bareLineFeedAndTrailingBytes() -> None:
    """A bare LF ends the line; anything after the line is ignored."""
    lookup = MemoryLookup()
    lookup.connect()
    lookup.receive(b"5555,1080:USERID:UNIX:alice\nGARBAGE\r\n")
    lookup.receive(b"more garbage")
    assert lookup.results == [IdentAnswer("alice", "UNIX", None)]


def test_lookupFiresWithTheUserName() -> None:
    """L{RFC1413Resolver.lookup} gives just the user-id."""
    clock = MemoryReactorClock()
    deferred = RFC1413Resolver(clock).lookup(("192.0.2.7", 5555), ("192.0.2.1", 1080))
    results = outcome(deferred)
    factory = clock.tcpClients[0][2]
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 113))
    assert protocol is not None
    protocol.makeConnection(HalfCloseableStringTransport())
    protocol.dataReceived(b"5555 , 1080 : USERID : UNIX : alice\r\n")
    assert results == ["alice"]


def test_lineFillingTheCapIsAccepted() -> None:
    """A line whose end-of-line is the L{MAX_RESPONSE}th byte is answered."""
    lookup = MemoryLookup()
    lookup.connect()
    head = b"5555,1080:USERID:UNIX:"
    lookup.receive(head + b"u" * (MAX_RESPONSE - len(head) - 2) + b"\r\n")
    [answer] = lookup.results
    assert isinstance(answer, IdentAnswer)


def test_noEndOfLineInTheCapAbortsAtOnce() -> None:
    """
    L{MAX_RESPONSE} bytes without an end of line fail the lookup the moment
    the last one arrives, and the connection is aborted.
    """
    lookup = MemoryLookup()
    lookup.connect()
    lookup.receive(b"5555,1080:USERID:UNIX:")
    lookup.receive(b"u" * (MAX_RESPONSE - 1 - len(b"5555,1080:USERID:UNIX:")))
    assert lookup.results == []
    lookup.receive(b"u\r\n")
    assert lookup.error().check(IdentProtocolError)
    assert "no end of line in the first 1000 bytes" in str(lookup.error().value)
    assert lookup.transport.aborted
    assert lookup.clock.getDelayedCalls() == []


def test_malformedAnswerAbortsTheConnection() -> None:
    """A garbled line fails the lookup and drops the connection."""
    lookup = MemoryLookup()
    lookup.connect()
    lookup.receive(b"5555,1080:USERID:UNIX:\r\n")
    assert lookup.error().check(IdentProtocolError)
    assert lookup.transport.aborted


def test_errorAnswerFailsWithItsToken() -> None:
    """An C{ERROR} answer fails the lookup with L{IdentErrorReply}."""
    lookup = MemoryLookup()
    lookup.connect()
    lookup.receive(b"5555,1080:ERROR:HIDDEN-USER\r\n")
    error = lookup.error().value
    assert isinstance(error, IdentErrorReply)
    assert error.token == "HIDDEN-USER"


@pytest.mark.parametrize("partial", [b"", b"5555,1080:USERID:UNIX:root"])
def test_closeBeforeEndOfLineIsProtocolError(partial: bytes) -> None:
    """
    A close before the end of line is no answer, even after a plausible
    line: it may have been cut short ("root" of "rootkit").
    """
    lookup = MemoryLookup()
    lookup.connect()
    lookup.receive(partial)
    assert lookup.protocol is not None
    lookup.protocol.connectionLost(Failure(ConnectionDone()))
    error = lookup.error()
    assert error.check(IdentProtocolError)
    assert "closed before answering" in str(error.value)
    assert lookup.clock.getDelayedCalls() == []


def test_refusedConnectionIsUnreachable() -> None:
    """A failed connection attempt fails the lookup with L{IdentUnreachable}."""
    lookup = MemoryLookup()
    factory = lookup.attempt[2]
    factory.clientConnectionFailed(
        lookup.clock.connectors[0], Failure(ConnectionRefusedError())
    )
    assert lookup.error().check(IdentUnreachable)
    assert lookup.clock.getDelayedCalls() == []


def test_endpointConnectTimeoutIsTimeout() -> None:
    """Should the connect timeout ever fire, it counts as L{IdentTimeout}."""
    lookup = MemoryLookup()
    factory = lookup.attempt[2]
    factory.clientConnectionFailed(
        lookup.clock.connectors[0], Failure(ConnectTimeoutError())
    )
    assert lookup.error().check(IdentTimeout)


def test_deadlineWhileConnectingStopsConnecting() -> None:
    """
    The deadline counts from the call: if the connection is not even up by
    then, the attempt is stopped and the lookup fails with L{IdentTimeout}.
    """
    lookup = MemoryLookup(timeout=3)
    lookup.clock.advance(2.9)
    assert lookup.results == []
    lookup.clock.advance(0.1)
    assert lookup.error().check(IdentTimeout)
    assert lookup.clock.connectors[0].stoppedConnecting
    assert lookup.clock.getDelayedCalls() == []


def test_deadlineCoversConnectAndAnswer() -> None:
    """
    Time spent connecting counts against the same deadline as the answer,
    and when it passes the connection is aborted.
    """
    lookup = MemoryLookup(timeout=3)
    lookup.clock.advance(2)
    lookup.connect()
    lookup.receive(b"5555,1080:USER")
    lookup.clock.advance(0.9)
    assert lookup.results == []
    lookup.clock.advance(0.1)
    assert lookup.error().check(IdentTimeout)
    assert lookup.transport.aborted
    assert lookup.clock.getDelayedCalls() == []


def test_cancelWhileConnectingStopsTheAttempt() -> None:
    """Cancelling before the connection is up stops connecting and the timer."""
    lookup = MemoryLookup()
    lookup.deferred.cancel()
    assert lookup.error().check(CancelledError)
    assert lookup.clock.connectors[0].stoppedConnecting
    assert lookup.clock.getDelayedCalls() == []


def test_cancelWhileWaitingAbortsTheConnection() -> None:
    """Cancelling once connected aborts the connection; late data is ignored."""
    lookup = MemoryLookup()
    lookup.connect()
    lookup.deferred.cancel()
    assert lookup.error().check(CancelledError)
    assert lookup.transport.aborted
    assert lookup.clock.getDelayedCalls() == []
    lookup.receive(b"5555,1080:USERID:UNIX:alice\r\n")
    assert lookup.protocol is not None
    lookup.protocol.connectionLost(Failure(ConnectionDone()))
    assert len(lookup.results) == 1


def test_resolversProvideTheInterface() -> None:
    """All three resolvers provide L{IIdentResolver}."""
    verifyObject(IIdentResolver, RFC1413Resolver(MemoryReactorClock()))
    verifyObject(IIdentResolver, NullIdentResolver())
    verifyObject(IIdentResolver, FakeIdentResolver())


def test_nullResolverFailsAtOnce() -> None:
    """With ident off every lookup fails at once, asking nobody."""
    error = failureOf(NullIdentResolver().lookup(("192.0.2.7", 5555), ("::1", 1)))
    assert error.check(IdentUnreachable)
    assert str(error.value) == "ident lookups are disabled"


def test_fakeResolverAnswersFromItsTable() -> None:
    """
    The fake answers host-and-port entries before host entries, fails with
    error entries and records every lookup.
    """
    refusal = IdentErrorReply("NO-USER")
    fake = FakeIdentResolver(
        {"192.0.2.7": "anyport", ("192.0.2.7", 5555): "alice", "192.0.2.8": refusal}
    )
    server = ("192.0.2.1", 1080)
    assert outcome(fake.lookup(("192.0.2.7", 5555), server)) == ["alice"]
    assert outcome(fake.lookup(("192.0.2.7", 6666), server)) == ["anyport"]
    assert failureOf(fake.lookup(("192.0.2.8", 1), server)).value is refusal
    assert fake.lookups == [
        (("192.0.2.7", 5555), server),
        (("192.0.2.7", 6666), server),
        (("192.0.2.8", 1), server),
    ]
    assert fake.pending == []


def test_fakeResolverKeepsUnknownLookupsPending() -> None:
    """
    Lookups the table does not cover wait for the test to fire them;
    a cancelled one leaves L{FakeIdentResolver.pending}.
    """
    fake = FakeIdentResolver()
    first = fake.lookup(("192.0.2.7", 5555), ("192.0.2.1", 1080))
    second = fake.lookup(("192.0.2.9", 7777), ("192.0.2.1", 1080))
    results = outcome(first)
    assert [(c, s) for c, s, _ in fake.pending] == fake.lookups
    client, server, deferred = fake.pending[0]
    assert (client, server) == (("192.0.2.7", 5555), ("192.0.2.1", 1080))
    deferred.callback("late")
    assert results == ["late"]
    second.cancel()
    assert failureOf(second).check(CancelledError)
    assert [c for c, _, _ in fake.pending] == [("192.0.2.7", 5555)]


# --- the resolver, on loopback ----------------------------------------------


def canBind(host: str) -> bool:
    """Whether this host has C{host} (e.g. C{::1}, C{127.0.0.2}) to bind to."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def readLine(conn: socket.socket) -> bytes:
    """Read the query line (bounded: a query is short)."""
    data = b""
    while b"\n" not in data and len(data) < 100:
        chunk = conn.recv(100)
        if not chunk:
            break
        data += chunk
    return data


def peerClosed(conn: socket.socket, timeout: float) -> bool:
    """
    Wait up to C{timeout} for the peer to close (FIN or RST); data it sends
    meanwhile is discarded.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([conn], [], [], min(left, 0.05))
        if readable:
            try:
                if not conn.recv(4096):
                    return True
            except OSError:
                return True
    return False


Handler = Callable[["Identd", socket.socket], None]


class Identd:
    """
    A blocking identd on loopback: a thread accepts, and a thread per
    connection reads the query and runs C{handler}.

    @ivar queries: the query bytes each connection sent.
    @ivar peers: the address each connection came from.
    @ivar closes: how many connections the lookup side closed.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(128)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.handler = handler
        self.queries: list[bytes] = []
        self.peers: list[str] = []
        self.closes = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            thread = threading.Thread(target=self._serve, args=(conn, peer[0]))
            thread.daemon = True
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        with conn:
            try:
                query = readLine(conn)
                with self._lock:
                    self.peers.append(peer)
                    self.queries.append(query)
                self.handler(self, conn)
            except OSError:
                pass

    def waitForClose(self, conn: socket.socket, timeout: float = 15) -> None:
        """Hold the connection, answering nothing, until the lookup closes it."""
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if peerClosed(conn, 0.1):
                with self._lock:
                    self.closes += 1
                return

    def stop(self) -> None:
        """Stop accepting, release held connections and join every thread."""
        self.stopping.set()
        self._acceptor.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


def answering(answer: bytes) -> Handler:
    """A handler that sends C{answer} and closes."""

    def handler(identd: Identd, conn: socket.socket) -> None:
        conn.sendall(answer)

    return handler


def silent(identd: Identd, conn: socket.socket) -> None:
    """A handler that never answers and waits for the lookup to give up."""
    identd.waitForClose(conn)


@pytest.fixture
def identds() -> Iterator[Callable[..., Identd]]:
    """Start L{Identd}s that are stopped after the test."""
    started: list[Identd] = []

    def start(handler: Handler, host: str = "127.0.0.1") -> Identd:
        identd = Identd(handler, host)
        started.append(identd)
        return identd

    yield start
    for identd in started:
        identd.stop()


def resolverFor(identd: Identd, timeout: float = 5) -> RFC1413Resolver:
    """A resolver asking C{identd} (instead of port 113), on the test reactor."""
    return RFC1413Resolver(reactor, port=identd.port, timeout=timeout)


def ignoreCancel(deferred: Deferred[Any]) -> None:
    """Swallow the CancelledError of a lookup the test cancels on purpose."""

    def trap(reason: Failure) -> None:
        reason.trap(CancelledError)

    deferred.addErrback(trap)


@pytest_twisted.ensureDeferred
async def test_loopbackAnswerWithSpaces(identds: Callable[..., Identd]) -> None:
    """
    A normal answer: the identd receives exactly the RFC query, from the
    server address given, and the lookup fires with the user name.
    """
    identd = identds(answering(b"5555 , 1080 : USERID : UNIX , UTF-8 : alice\r\n"))
    user = await resolverFor(identd).lookup(
        ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
    )
    assert user == "alice"
    assert identd.queries == [QUERY]
    assert identd.peers == ["127.0.0.1"]


@pytest.mark.skipif(not canBind("127.0.0.2"), reason="no 127.0.0.2 on this host")
@pytest_twisted.ensureDeferred
async def test_loopbackQueryComesFromServerAddress(
    identds: Callable[..., Identd],
) -> None:
    """
    The query leaves from the server's address of the connection (here
    127.0.0.2, which the kernel would never pick by itself to reach
    127.0.0.1), so that a multi-homed identd can match the connection.
    """
    identd = identds(answering(b"5555,1080:USERID:UNIX:alice\r\n"))
    answer = await resolverFor(identd).lookupAnswer(
        ("127.0.0.1", CLIENT_PORT), ("127.0.0.2", SERVER_PORT)
    )
    assert answer == IdentAnswer("alice", "UNIX", None)
    assert identd.peers == ["127.0.0.2"]


@pytest_twisted.ensureDeferred
async def test_loopbackOidentdStyleAnswer(identds: Callable[..., Identd]) -> None:
    """oidentd's answer, with no spaces at all, gives the user name."""
    identd = identds(answering(b"5555,1080:USERID:UNIX:root\r\n"))
    user = await resolverFor(identd).lookup(
        ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
    )
    assert user == "root"


@pytest_twisted.ensureDeferred
async def test_loopbackErrorAnswer(identds: Callable[..., Identd]) -> None:
    """An C{ERROR} answer fails the lookup with its token."""
    identd = identds(answering(b"5555,1080:ERROR:NO-USER\r\n"))
    with pytest.raises(IdentErrorReply) as caught:
        await resolverFor(identd).lookup(
            ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
        )
    assert caught.value.token == "NO-USER"


@pytest_twisted.ensureDeferred
async def test_loopbackSilentIdentdTimesOut(identds: Callable[..., Identd]) -> None:
    """
    An identd that accepts and never answers fails the lookup with
    L{IdentTimeout} at the deadline, and the connection is closed.
    """
    identd = identds(silent)
    started = time.monotonic()
    with pytest.raises(IdentTimeout):
        await resolverFor(identd, timeout=1).lookup(
            ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
        )
    elapsed = time.monotonic() - started
    # Loose above: it proves the deadline fired, not how fast a shared
    # machine is.
    assert 0.5 <= elapsed < 4, elapsed
    await eventually(lambda: identd.closes == 1)


@pytest_twisted.ensureDeferred
async def test_loopbackEndlessLineStopsAtTheCap(
    identds: Callable[..., Identd],
) -> None:
    """
    An identd sending 2000 bytes with no end of line is cut off once
    L{MAX_RESPONSE} bytes have come: the lookup fails with
    L{IdentProtocolError} and the identd sees the close before it can send
    the rest.
    """
    sentAtClose: list[int] = []

    def flood(identd: Identd, conn: socket.socket) -> None:
        sent = 0
        # 600 bytes must not be enough to be cut off; 1000 must be.
        for size, wait in ((600, 0.2), (400, 5.0), (1000, 5.0)):
            conn.sendall(b"x" * size)
            sent += size
            if peerClosed(conn, wait):
                break
        sentAtClose.append(sent)

    identd = identds(flood)
    with pytest.raises(IdentProtocolError, match="no end of line"):
        await resolverFor(identd).lookup(
            ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
        )
    await eventually(lambda: sentAtClose != [])
    assert sentAtClose == [MAX_RESPONSE]


@pytest_twisted.ensureDeferred
async def test_loopbackCloseWithoutAnswer(identds: Callable[..., Identd]) -> None:
    """An identd that reads the query and closes gives L{IdentProtocolError}."""
    identd = identds(answering(b""))
    with pytest.raises(IdentProtocolError, match="closed before answering"):
        await resolverFor(identd).lookup(
            ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
        )


@pytest_twisted.ensureDeferred
async def test_loopbackNoIdentdIsUnreachable() -> None:
    """
    A port with nothing listening (held bound so nobody else takes it)
    refuses the connection: L{IdentUnreachable}, quickly.
    """
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        resolver = RFC1413Resolver(reactor, port=port, timeout=5)
        started = time.monotonic()
        with pytest.raises(IdentUnreachable):
            await resolver.lookup(("127.0.0.1", CLIENT_PORT), ("127.0.0.1", 1080))
        # Well under the 5 s timeout: the refusal ended it, not the deadline.
        assert time.monotonic() - started < 4


@pytest_twisted.ensureDeferred
async def test_loopbackCancelClosesAndLeavesNoTimer(
    identds: Callable[..., Identd],
) -> None:
    """
    Cancelling a lookup waiting for its answer closes the connection (the
    identd sees it) and leaves no pending call on the reactor.
    """
    identd = identds(silent)
    before = set(reactor.getDelayedCalls())
    deferred = resolverFor(identd).lookup(
        ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
    )
    await eventually(lambda: identd.queries == [QUERY])
    assert set(reactor.getDelayedCalls()) - before, "no deadline was set"
    deferred.cancel()
    with pytest.raises(CancelledError):
        await deferred
    await eventually(lambda: identd.closes == 1)
    await eventually(lambda: not set(reactor.getDelayedCalls()) - before)


@pytest_twisted.ensureDeferred
async def test_loopbackSlowLookupsDoNotBlockFastOne(
    identds: Callable[..., Identd],
) -> None:
    """
    With 50 lookups hanging on a slow identd, a lookup to a fast identd is
    answered at once; the slow ones are still pending and close when
    cancelled.
    """
    slow = identds(silent)
    fast = identds(answering(b"5555,1080:USERID:UNIX:quick\r\n"))
    slowResolver = resolverFor(slow, timeout=10)
    hanging = [
        slowResolver.lookup(("127.0.0.1", 20000 + i), ("127.0.0.1", SERVER_PORT))
        for i in range(50)
    ]
    for deferred in hanging:
        ignoreCancel(deferred)
    await eventually(lambda: len(slow.queries) == 50)
    started = time.monotonic()
    user = await resolverFor(fast).lookup(
        ("127.0.0.1", CLIENT_PORT), ("127.0.0.1", SERVER_PORT)
    )
    assert user == "quick"
    # Well under the slow lookups' 10 s deadline: they did not hold it up.
    assert time.monotonic() - started < 5
    assert not any(deferred.called for deferred in hanging)
    assert sorted(slow.queries) == sorted(
        identQuery(20000 + i, SERVER_PORT) for i in range(50)
    )
    for deferred in hanging:
        deferred.cancel()
    await eventually(lambda: slow.closes == 50)


@pytest.mark.skipif(not canBind("::1"), reason="no IPv6 loopback on this host")
@pytest_twisted.ensureDeferred
async def test_loopbackIPv6(identds: Callable[..., Identd]) -> None:
    """A lookup over IPv6 asks the identd on ::1, from ::1."""
    identd = identds(answering(b"5555 , 1080 : USERID : UNIX : six\r\n"), "::1")
    user = await resolverFor(identd).lookup(("::1", CLIENT_PORT), ("::1", SERVER_PORT))
    assert user == "six"
    assert identd.queries == [QUERY]
    assert identd.peers == ["::1"]
