"""
The fuzz targets and a small deterministic, optionally coverage-guided,
mutation fuzzer.

Each L{Target} has seeds (valid inputs and known-bad ones), a dictionary of
tokens its grammar uses, and an oracle, L{Target.check}, that runs the
parser on one input and raises L{Escaped} when the parser breaks its
contract:

  - only the declared error types may escape (the codec:
    L{SOCKSProtocolError}; the ident parser: L{IdentError}; the rules
    grammar: L{RulesError}; the SOCKS5 server-side parsers:
    L{SOCKS5ProtocolError}; the SOCKS5 client's reply parser:
    L{MalformedReply5}); anything else is a finding, and so is a
    warning (the fuzzer turns warnings into errors);
  - no input makes a parser hold more than its cap (the request parser:
    L{MAX_REQUEST_SIZE} bytes while it waits for more; the ident line reader:
    L{MAX_RESPONSE} bytes; the rules grammar: lines of 1023 characters);
  - what a parser accepts is well-formed (a request re-encodes to the bytes
    it came from; an ident user-id has no NUL, CR or LF; every rule of a
    parsed file can judge a request), and splitting the input differently
    does not change the outcome.

The fuzzer (L{fuzz}) mutates inputs from a growing corpus.  With
C{coverage=True} an input joins the corpus when it makes the parser modules
execute a pair of consecutive lines not seen before (recorded with
C{sys.settrace}, so several times slower) or gives a new outcome; without
it, only when it gives an outcome (the shape of a parse result or of an
error message) not seen before.
Everything is driven by one C{random.Random(seed)}: the same seed and count
give the same inputs.
"""

from __future__ import annotations

import itertools
import random
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from types import FrameType
from typing import Any

import twisted_socks.ident._ident
import twisted_socks.policy._evaluators
import twisted_socks.policy._fields
import twisted_socks.policy._patterns
import twisted_socks.policy._percent
import twisted_socks.policy._rules
import twisted_socks.policy._ruleset
import twisted_socks.policy._shellquote
import twisted_socks.wire._identparse
import twisted_socks.wire._incremental
import twisted_socks.wire._socks4
import twisted_socks.wire._socks5
import twisted_socks.wire._socks5client
import twisted_socks.wire._socks5udp
import twisted_socks.wire._userpass
from twisted_socks.ident._ident import _IdentProtocol
from twisted_socks.policy._policy import AccessRequest, Decision
from twisted_socks.policy._rules import MAX_LINE_LENGTH, RulesError, RuleSet, parseRules
from twisted_socks.wire._identparse import (
    MAX_RESPONSE,
    IdentAnswer,
    IdentError,
    _encodingFor,
    parseIdentResponse,
)
from twisted_socks.wire._incremental import IncrementalParser
from twisted_socks.wire._socks4 import (
    MAX_HOSTNAME_LENGTH,
    MAX_REQUEST_SIZE,
    MAX_USERID_LENGTH,
    Command,
    Request,
    RequestParser,
    SOCKSProtocolError,
    encodeRequest,
    parseRequest,
)
from twisted_socks.wire._socks5 import (
    MAX_GREETING_SIZE,
    MAX_REQUEST5_SIZE,
    Command5,
    Greeting,
    GreetingParser,
    ReplyCode5,
    Request5,
    RequestParser5,
    SOCKS5ProtocolError,
    encodeGreeting,
    encodeReply5,
    encodeRequest5,
    parseGreeting,
    parseRequest5,
)
from twisted_socks.wire._socks5client import (
    MAX_REPLY5_SIZE,
    MalformedReply5,
    Reply5,
    ReplyParser5,
    parseReply5,
)
from twisted_socks.wire._socks5udp import (
    MAX_DATAGRAM_HEADER_SIZE,
    BadDatagram,
    encodeDatagram,
    parseDatagram,
)
from twisted_socks.wire._userpass import (
    MAX_CREDENTIALS_SIZE,
    Credentials,
    CredentialsParser,
    encodeAuthRequest,
    parseCredentials,
)

__all__ = [
    "CODEC",
    "IDENT",
    "RULES",
    "SOCKS5_AUTH",
    "SOCKS5_GREETING",
    "SOCKS5_REPLY",
    "SOCKS5_REQUEST",
    "SOCKS5_TARGETS",
    "SOCKS5_UDP",
    "TARGETS",
    "Escaped",
    "Finding",
    "Report",
    "Target",
    "fuzz",
    "mutate",
]

ROOT = Path(__file__).resolve().parent.parent

#: The kind of an error, for outcome labels: its message up to the first
#: quoted value or parenthesis (digits are replaced too, see the callers).
_ERROR_KIND = re.compile(r"^[^'\"(0-9]*")


class Escaped(Exception):
    """A parser broke its contract on an input (see the module docstring)."""


@dataclass
class Finding:
    """
    One input that broke a contract.

    @ivar key: what went wrong and where (exception type and the innermost
        frame in the project), to tell distinct bugs apart.
    @ivar data: the input.
    @ivar detail: the exception and its traceback.
    """

    key: str
    data: bytes
    detail: str


@dataclass
class Target:
    """
    A parser under test.

    @ivar name: short name (C{codec}, C{ident}, C{rules}).
    @ivar seeds: the inputs the corpus starts with.
    @ivar dictionary: tokens of the input language, spliced in by mutations.
    @ivar maxSize: inputs are cut to this length (a little beyond the cap,
        so the cap itself is exercised).
    @ivar check: the oracle: runs the parser on an input and returns an
        outcome label, or raises L{Escaped}.
    @ivar modules: the source files whose coverage guides the fuzzer.
    """

    name: str
    seeds: list[bytes]
    dictionary: list[bytes]
    maxSize: int
    check: Callable[[bytes, random.Random], str]
    modules: list[str]


# -- mutations ------------------------------------------------------------------

_INTERESTING_BYTES = [0, 1, 2, 3, 4, 5, 9, 10, 13, 27, 32, 0x7F, 0x80, 0xFF]


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut C{data} at a few random places (TCP may deliver any chunking)."""
    if not data:
        return [b""]
    cuts = sorted({rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))})
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def mutate(
    rng: random.Random, data: bytes, corpus: list[bytes], dictionary: list[bytes]
) -> bytes:
    """
    Apply one to four random edits to C{data}: byte flips and sets, inserts
    and deletions, duplicated or repeated ranges, dictionary tokens,
    whitespace-separated token swaps, and splices with another corpus entry.
    """
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        size = len(out)
        choice = rng.randrange(12)
        position = rng.randrange(size + 1)
        if choice == 0 and size:
            index = rng.randrange(size)
            out[index] ^= 1 << rng.randrange(8)
        elif choice == 1 and size:
            out[rng.randrange(size)] = rng.choice(_INTERESTING_BYTES)
        elif choice == 2 and size:
            out[rng.randrange(size)] = rng.randrange(256)
        elif choice == 3:
            out[position:position] = bytes(
                rng.randrange(256) for _ in range(rng.randint(1, 8))
            )
        elif choice == 4 and size:
            end = min(size, position + rng.randint(1, 16))
            del out[position:end]
        elif choice == 5 and size:
            start = rng.randrange(size)
            end = min(size, start + rng.randint(1, 32))
            out[position:position] = out[start:end]
        elif choice == 6:
            token = rng.choice(dictionary)
            out[position:position] = token
        elif choice == 7 and size:
            # Overwrite with a token instead of inserting it.
            token = rng.choice(dictionary)
            out[position : position + len(token)] = token
        elif choice == 8:
            words = bytes(out).split(b" ")
            index = rng.randrange(len(words))
            action = rng.randrange(3)
            if action == 0:
                words[index] = rng.choice(dictionary)
            elif action == 1:
                words.insert(index, rng.choice(dictionary))
            elif len(words) > 1:
                del words[index]
            out = bytearray(b" ".join(words))
        elif choice == 9 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[:position] + bytearray(other[cut:])
        elif choice == 10 and size:
            # A long run: what a cap must stop.
            start = rng.randrange(size)
            piece = out[start : start + rng.randint(1, 4)] or b"x"
            out[position:position] = piece * rng.randint(16, 300)
        elif choice == 11 and size:
            del out[rng.randrange(size) :]
    return bytes(out)


# -- coverage -------------------------------------------------------------------


class _LinePairs:
    """Record (file, previous line, line) triples executed in some files."""

    def __init__(self, files: list[str]) -> None:
        self.files = frozenset(files)
        self.pairs: set[tuple[str, int, int]] = set()
        self._last: dict[int, int] = {}

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in self.files:
            self._last[id(frame)] = -1
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            key = id(frame)
            line = frame.f_lineno
            self.pairs.add((frame.f_code.co_filename, self._last.get(key, -1), line))
            self._last[key] = line
        elif event == "return":
            self._last.pop(id(frame), None)
        return self._local

    def __enter__(self) -> _LinePairs:
        self.pairs = set()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)
        self._last.clear()


# -- the fuzzer -----------------------------------------------------------------


@dataclass
class Report:
    """
    What one run of L{fuzz} did.

    @ivar target: the target's name.
    @ivar seed: the random seed.
    @ivar inputs: inputs tried (seeds included).
    @ivar seconds: wall-clock time of the run.
    @ivar outcomes: outcome label to count.
    @ivar corpus: inputs kept as interesting at the end.
    @ivar coveragePairs: line pairs seen (coverage-guided runs only).
    @ivar findings: the first input for each distinct contract violation.
    @ivar violations: how many inputs violated a contract, in all.
    """

    target: str
    seed: int
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    corpus: int = 0
    coveragePairs: int = 0
    findings: dict[str, Finding] = field(default_factory=dict)
    violations: int = 0

    def asDict(self) -> dict[str, Any]:
        """The report as JSON-serialisable values (inputs shown as repr)."""
        return {
            "target": self.target,
            "seed": self.seed,
            "inputs": self.inputs,
            "seconds": round(self.seconds, 2),
            "inputsPerSecond": round(self.inputs / self.seconds) if self.seconds else 0,
            "distinctOutcomes": len(self.outcomes),
            "corpus": self.corpus,
            "coveragePairs": self.coveragePairs,
            "violations": self.violations,
            "findings": [
                {"key": f.key, "input": repr(f.data[:300]), "detail": f.detail}
                for f in self.findings.values()
            ],
        }


#: The corpus is capped so a long run stays fast; later entries replace
#: random old ones (seeds stay).
MAX_CORPUS = 4000


def _findingKey(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "twisted_socks" in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    location = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    if isinstance(error, Escaped):
        # The message says which contract; keep it short and stable.
        return f"Escaped: {str(error).split(':', 1)[0]}"
    return f"{type(error).__name__} at {location}"


def fuzz(
    target: Target,
    inputs: int,
    seed: int = 0,
    coverage: bool = False,
    progress: Callable[[Report], None] | None = None,
    progressEvery: int = 100_000,
    corpus: list[bytes] | None = None,
) -> Report:
    """
    Run C{target} on C{inputs} inputs: its seeds, then mutants.

    @param coverage: guide by line-pair coverage of the target's modules.
    @param progress: called with the report so far every C{progressEvery}
        inputs.
    @param corpus: a corpus to continue from (it starts with the target's
        seeds; an earlier run's entries follow); grown in place.
    """
    rng = random.Random(seed)
    report = Report(target.name, seed)
    seeds = [s[: target.maxSize] for s in target.seeds]
    if corpus is None:
        corpus = []
    if not corpus:
        corpus.extend(seeds)
    tracer = _LinePairs(target.modules) if coverage else None
    seen: set[tuple[str, int, int]] = set()
    started = time.monotonic()
    with warnings.catch_warnings():
        # A parser must not warn about what a peer sent, either: a warning
        # is an exception under -W error (and under this project's pytest
        # configuration), and a deprecation warns of a behaviour to come.
        warnings.simplefilter("error")
        _loop(
            target,
            inputs,
            rng,
            report,
            seeds,
            corpus,
            tracer,
            seen,
            started,
            progress,
            progressEvery,
        )
    report.seconds = time.monotonic() - started
    report.corpus = len(corpus)
    report.coveragePairs = len(seen)
    return report


def _loop(
    target: Target,
    inputs: int,
    rng: random.Random,
    report: Report,
    seeds: list[bytes],
    corpus: list[bytes],
    tracer: _LinePairs | None,
    seen: set[tuple[str, int, int]],
    started: float,
    progress: Callable[[Report], None] | None,
    progressEvery: int,
) -> None:
    for count in range(inputs):
        if count < len(seeds):
            data = seeds[count]
        elif rng.randrange(50) == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            data = mutate(rng, rng.choice(corpus), corpus, target.dictionary)
            data = data[: target.maxSize]
        checkRng = random.Random(rng.getrandbits(32))
        try:
            if tracer is not None:
                with tracer:
                    label = target.check(data, checkRng)
                new = tracer.pairs - seen
                interesting = bool(new) or label not in report.outcomes
                seen.update(new)
            else:
                label = target.check(data, checkRng)
                interesting = label not in report.outcomes
        except Exception as error:
            report.violations += 1
            key = _findingKey(error)
            if key not in report.findings:
                detail = "".join(traceback.format_exception(error)[-6:])
                report.findings[key] = Finding(key, data, detail)
            label = f"VIOLATION {key}"
            interesting = False
        report.outcomes[label] += 1
        if interesting and count >= len(seeds):
            if len(corpus) < MAX_CORPUS:
                corpus.append(data)
            else:
                corpus[rng.randrange(len(seeds), MAX_CORPUS)] = data
        report.inputs = count + 1
        if progress is not None and report.inputs % progressEvery == 0:
            report.seconds = time.monotonic() - started
            report.corpus = len(corpus)
            report.coveragePairs = len(seen)
            progress(report)


# -- the SOCKS4/4A request codec ------------------------------------------------

_V4 = IPv4Address("192.0.2.7")
_FOURA = b"\0\0\0\1"


def _header(vn: int = 4, cd: int = 1, port: int = 80, ip: bytes = _V4.packed) -> bytes:
    return bytes([vn, cd]) + port.to_bytes(2, "big") + ip


_CODEC_SEEDS = [
    encodeRequest(Command.CONNECT, 80, address=_V4),
    encodeRequest(Command.CONNECT, 443, address=_V4, userid=b"alice"),
    encodeRequest(Command.CONNECT, 80, hostname="example.com"),
    encodeRequest(Command.CONNECT, 80, hostname="example.com", userid=b"bob"),
    encodeRequest(Command.BIND, 21, address=_V4, userid=b"carol"),
    encodeRequest(Command.BIND, 21, hostname="ftp.example.com"),
    encodeRequest(Command.BIND, 0, address=_V4),
    encodeRequest(Command.CONNECT, 65535, address=_V4, userid=b"u" * 255),
    encodeRequest(Command.CONNECT, 1, hostname="h" * 255, userid=b"u" * 255),
    encodeRequest(Command.CONNECT, 8080, hostname="::1"),
    encodeRequest(Command.CONNECT, 80, address=_V4, userid=b"\xff\xfe\r\n\x1b[31m"),
    encodeRequest(Command.CONNECT, 80, address=_V4) + b"GET / HTTP/1.0\r\n\r\n",
    b"\x04\x01\x00\x50\x00\x00\x00\xff\x00example.org\x00",
    _header(ip=b"\0\0\0\0") + b"\0",
    _header(port=0) + b"\0",
    _header(ip=_FOURA) + b"\0\0",
    _header(ip=_FOURA) + b"\0" + b"h" * 300,
    _header() + b"u" * 300,
    _header(ip=_FOURA) + b"\0a\r\nb\0",
    _header(cd=3) + b"\0",
    b"\x05\x01\x00",
    b"GET / HTTP/1.0\r\n\r\n",
    b"",
]

_CODEC_DICTIONARY = [
    b"\0",
    b"\x04",
    b"\x04\x01",
    b"\x04\x02",
    b"\0\0\0\x01",
    b"\0\0\0\0",
    b"\0\x50",
    b"\0\0",
    b"localhost",
    b"127.0.0.1",
    b"0x7f000001",
    b"::ffff:127.0.0.1",
    b".",
    b":",
    b"-",
    b"u" * 255,
    b"h" * 254,
]

_HOSTNAME_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:"
)


def _checkParsedRequest(data: bytes, request: Request, used: int) -> None:
    """A request the parser accepted is well-formed and is C{data[:used]}."""
    if not 8 < used <= len(data) or used > MAX_REQUEST_SIZE:
        raise Escaped(f"bad length: used {used} of {len(data)}")
    if request.command not in (Command.CONNECT, Command.BIND):
        raise Escaped(f"bad command: {request.command!r}")
    if b"\0" in request.userid or len(request.userid) > MAX_USERID_LENGTH:
        raise Escaped(f"bad USERID: {request.userid!r}")
    if request.port != int.from_bytes(data[2:4], "big"):
        raise Escaped(f"bad port: {request.port}")
    if request.port == 0 and request.command is Command.CONNECT:
        raise Escaped("accepted: CONNECT to port 0")
    if request.hostname is not None:
        name = request.hostname.encode("ascii")
        if not 1 <= len(name) <= MAX_HOSTNAME_LENGTH or not _HOSTNAME_BYTES.issuperset(
            name
        ):
            raise Escaped(f"bad hostname: {name!r}")
        if request.address is not None or data[4:7] != b"\0\0\0" or data[7] == 0:
            raise Escaped("bad 4A: DSTIP")
        again = encodeRequest(
            request.command,
            request.port,
            hostname=request.hostname,
            userid=request.userid,
        )
        if again[:7] + again[8:] != data[:7] + data[8:used]:
            raise Escaped("bad 4A: re-encoding differs")
    else:
        if request.address is None or request.address == IPv4Address(0):
            raise Escaped(f"accepted: DSTIP {request.address}")
        again = encodeRequest(
            request.command,
            request.port,
            address=request.address,
            userid=request.userid,
        )
        if again != data[:used]:
            raise Escaped("bad v4: re-encoding differs")


def checkRequest(data: bytes, rng: random.Random) -> str:
    """
    The codec's oracle: C{parseRequest} on the whole input, and a
    L{RequestParser} fed it in random chunks, must agree; only
    L{SOCKSProtocolError} may escape; the parser never holds more than
    L{MAX_REQUEST_SIZE} bytes while it waits for more.
    """
    whole: Any
    try:
        parsed = parseRequest(data)
    except SOCKSProtocolError as e:
        whole = type(e)
        label = f"error {type(e).__name__}"
    else:
        if parsed is None:
            whole = None
            label = "need more"
        else:
            request, used = parsed
            _checkParsedRequest(data, request, used)
            whole = parsed
            kind = "4A" if request.isSOCKS4A else "4"
            trailing = "+trailing" if used < len(data) else ""
            label = f"request {kind} {request.command.name}{trailing}"

    parser = RequestParser()
    fed = 0
    chunked: Any = None
    for chunk in _split(data, rng):
        try:
            result = parser.feed(chunk)
        except SOCKSProtocolError as e:
            # The chunk that tipped it over is held once, briefly: the
            # server closes the session on the spot.
            if parser.bufferedSize > MAX_REQUEST_SIZE + len(chunk):
                raise Escaped(
                    f"over the cap: holds {parser.bufferedSize} bytes after an error"
                ) from None
            chunked = type(e)
            break
        fed += len(chunk)
        if result is not None:
            chunked = (result, fed - len(parser.trailingData))
            break
        if parser.bufferedSize > MAX_REQUEST_SIZE:
            raise Escaped(f"over the cap: holds {parser.bufferedSize} bytes")
    if chunked != whole:
        raise Escaped(f"chunking changed the outcome: {chunked!r} != {whole!r}")
    return label


# -- the ident response parser --------------------------------------------------

_CLIENT_PORT, _SERVER_PORT = 5555, 1080

_IDENT_SEEDS = [
    b"5555,1080:USERID:UNIX:bob",
    b"5555 , 1080 : USERID : UNIX , UTF-8 : stjohns",
    b"5555,1080:USERID:OTHER:opaque:id with spaces",
    b"5555,1080:USERID:UNIX,ISO-8859-1:j\xfcrgen",
    b"5555,1080:USERID:UNIX,utf-16:\xff\xfeb\x00o\x00b\x00",
    b"5555,1080:USERID:UNIX,unicode_escape:\\x00\\n",
    b"5555,1080:USERID:UNIX,utf-7:+AAo-",
    b"5555,1080:USERID:UNIX,punycode:bcher-kva",
    b"5555,1080:USERID:UNIX,idna:xn--bcher-kva",
    b"5555,1080:USERID:UNIX,hex:626f62",
    b"5555,1080:ERROR:NO-USER",
    b"5555,1080:ERROR:HIDDEN-USER",
    b"5555,1080:ERROR:XPRIVATE token",
    b"5556,1080:USERID:UNIX:bob",
    b"5555,1080:USERID:UNIX:" + b"u" * 990,
    b"5555,1080:USERID:UNIX:bo\rb",
    b"5555," + b"9" * 50 + b":USERID:UNIX:bob",
    b"",
]

_IDENT_DICTIONARY = [
    b"5555",
    b"1080",
    b",",
    b":",
    b" ",
    b"\t",
    b"USERID",
    b"ERROR",
    b"UNIX",
    b"OTHER",
    b"UTF-8",
    b",utf-16",
    b",utf-32-be",
    b",unicode_escape",
    b",raw_unicode_escape",
    b",utf-7",
    b",punycode",
    b",idna",
    b",hex",
    b",base64",
    b",zlib",
    b",rot13",
    b",mbcs",
    b",cp037",
    b",undefined",
    b",charmap",
    b",shift_jis",
    b",utf_8_sig",
    b"\\x",
    b"\\u00",
    b"\\N{",
    b"+AA",
    b"xn--",
    b"\r\n",
    b"\0",
    b"\xff\xfe",
    b"\xc3",
]


class _StubLookup:
    """Stands in for the ident lookup behind L{_IdentProtocol}."""

    query = b""

    def __init__(self) -> None:
        self.finished = False
        self.outcome: object = None

    def connected(self, protocol: object) -> None:
        pass

    def parse(self, line: bytes) -> IdentAnswer:
        return parseIdentResponse(line, _CLIENT_PORT, _SERVER_PORT)

    def failed(self, error: Exception) -> None:
        if not self.finished:
            self.finished = True
            self.outcome = error

    def answered(self, answer: IdentAnswer) -> None:
        if not self.finished:
            self.finished = True
            self.outcome = answer


def _checkAnswer(data: bytes, answer: IdentAnswer) -> None:
    if len(data) > MAX_RESPONSE:
        raise Escaped(f"accepted: a line of {len(data)} bytes")
    if not isinstance(answer.user, str) or not answer.user:
        raise Escaped(f"accepted: user {answer.user!r}")
    if {"\0", "\r", "\n"} & set(answer.user):
        raise Escaped(f"accepted: NUL, CR or LF in user {answer.user!r}")
    if not answer.opsys or answer.opsys != answer.opsys.strip(" \t"):
        raise Escaped(f"accepted: opsys {answer.opsys!r}")
    if not answer.opsys.isascii() or (
        answer.charset is not None and not (answer.charset and answer.charset.isascii())
    ):
        raise Escaped(f"accepted: opsys/charset {answer.opsys!r} {answer.charset!r}")


def checkIdent(data: bytes, rng: random.Random) -> str:
    """
    The ident oracle: C{parseIdentResponse} gives an L{IdentAnswer} or an
    L{IdentError} and nothing else; the line reader in front of it
    (C{_IdentProtocol}, fed the line and CRLF in random chunks) never holds
    more than L{MAX_RESPONSE} bytes and settles the lookup exactly as the
    parser does.
    """
    try:
        answer = parseIdentResponse(data, _CLIENT_PORT, _SERVER_PORT)
    except IdentError as e:
        whole: object = type(e)
        # The message up to the first quoted value (the ERROR token of an
        # IdentErrorReply is the identd's own text: not part of the label).
        kind = _ERROR_KIND.match(str(e).split(" : ", 1)[0])
        label = f"error {type(e).__name__} {kind.group() if kind else ''}"
    else:
        _checkAnswer(data, answer)
        whole = answer
        codec = _encodingFor(answer.charset)
        label = f"answer {'OTHER' if answer.opsys == 'OTHER' else 'opsys'} {codec}"

    lookup = _StubLookup()
    protocol = _IdentProtocol(lookup)  # type: ignore[arg-type]
    for chunk in _split(data + b"\r\n", rng):
        protocol.dataReceived(chunk)
        if len(protocol._buffer) > MAX_RESPONSE:
            raise Escaped(f"over the cap: the reader holds {len(protocol._buffer)}")
    outcome = lookup.outcome
    if b"\n" not in data and b"\r" not in data and len(data) + 2 <= MAX_RESPONSE:
        # The reader hands the parser exactly this line.
        got = type(outcome) if isinstance(outcome, Exception) else outcome
        if got != whole:
            raise Escaped(f"the reader disagrees: {got!r} != {whole!r}")
    elif outcome is not None and not isinstance(outcome, (IdentAnswer, IdentError)):
        raise Escaped(f"the reader settled with {outcome!r}")
    return label


# -- the rules grammar ----------------------------------------------------------


def _readUserFile(path: str) -> list[str]:
    """Fuzzed files never read the disk: a few names, or a read error."""
    if "missing" in path:
        raise FileNotFoundError(2, "No such file or directory", path)
    return ["alice", "bob"]


def _rulesSeeds() -> list[bytes]:
    seeds = [
        b"allow 0/0",
        b"deny 0/0 127.0.0.0/8\nallow 0/0\n",
        b"deny 0.0.0.0 0.0.0.0 127.0.0.0 255.0.0.0",
        b'deny 0/0 .ads.example : logger -t socks "%u@%a asked for %Z"',
        b"permit ?=I *=alice,bob 10.1.0.0 255.255.0.0",
        b"permit cmd=bind 10.0.0.0/8 192.0.2.21 255.255.255.255 eq ftp",
        b"allow cmd=connect 10.0.0.0/8 0/0 eq https",
        b"allow cmd=connect,bind fd00::/8 0/0 range 1024 65535",
        b"allow 10.0.0.0/8 www.example.com neq 25",
        b"allow *=./staff.users 172.16.0.0 255.240.0.0 198.51.100.0/24 lt 1024",
        b"allow 192.168.2.0/24 0/0 gt 1023 : echo %u %a",
        b"allow ::1/128 fd00::/8 :echo %u: done",
        b"permit c 140.113.*.*",
        b"deny b *.*.*.* eq 21",
        b"allow 192.168.1.0 255.255.255.0 0/0 ge 8000",
        b"allow 192.168.1.0 255.255.255.0 0/0 le 22",
        b'#NO_IDENTD: logger -t socks "no identd on %a for %u"',
        b"#BAD_ID: echo ident %U is not %u\nallow ?=i 0/0\n",
        b"allow 0/0 : mail -s 'SOCKS: %u@%A' root",
        b"allow 0/0 : echo `%u`",
        b"allow *=/missing/users 0/0",
        b"allow 0/0 0/0 eq \xc2\xb2",
        b"allow 0/0 " + b"x" * 1030,
        b"# a comment\r\n\r\nallow 0/0 # trailing\r\n",
    ]
    example = ROOT / "examples" / "rules.conf"
    if example.exists():
        seeds.append(example.read_bytes())
    return seeds


_RULES_DICTIONARY = [
    b"allow",
    b"permit",
    b"deny",
    b"0/0",
    b"0.0.0.0",
    b"255.255.255.0",
    b"10.0.0.0/8",
    b"::1/128",
    b"fd00::/8",
    b"::ffff:0:0/96",
    b"140.*.*.*",
    b"*.*.*.*",
    b".example.com",
    b"www.example.com",
    b"?=i",
    b"?=I",
    b"?=n",
    b"*=alice,bob",
    b"*=/missing/u",
    b"*=./staff",
    b"cmd=connect",
    b"cmd=bind",
    b"c",
    b"b",
    b"eq",
    b"neq",
    b"lt",
    b"le",
    b"gt",
    b"ge",
    b"=",
    b"!=",
    b"<",
    b">=",
    b"range",
    b"80",
    b"65535",
    b"65536",
    b"http",
    b"ftp",
    b":",
    b"::",
    b"#",
    b"#NO_IDENTD:",
    b"#BAD_ID:",
    b"%u",
    b"%A",
    b"%%",
    b"'",
    b'"',
    b"`",
    b"$(",
    b"\\",
    b";",
    b"\n",
    b"\r\n",
    b"\t",
    b"\0",
    b"\xff",
    b"\xc2\xb2",
    b"\xe2\x80\xa8",
    b"\x1c",
    b"\x85",
]

#: Requests every parsed rule set must be able to judge.
_PROBES = [
    AccessRequest(
        client=ip_address("10.1.2.3"),
        clientPort=40000,
        command=Command.CONNECT,
        user="alice",
        port=443,
        hostname=None,
        address=ip_address("93.184.215.14"),
    ),
    AccessRequest(
        client=ip_address("fd00::5"),
        clientPort=40000,
        command=Command.BIND,
        user="\udcff",
        port=21,
        hostname="ftp.example.com",
        address=None,
    ),
    AccessRequest(
        client=None,
        clientPort=0,
        command=Command.CONNECT,
        user="",
        port=1,
        hostname="www.example.com",
        address=ip_address("::1"),
    ),
]


def checkRules(data: bytes, rng: random.Random) -> str:
    """
    The rules oracle: the bytes are read as C{loadRules} reads a file
    (UTF-8, undecodable bytes kept as surrogates), and C{parseRules} gives a
    L{RuleSet} or raises L{RulesError}, nothing else; every rule of a parsed
    file has a port range within 0..65535 and a line within the cap, and
    the rule set judges a few requests without raising.
    """
    text = data.decode("utf-8", "surrogateescape")
    try:
        rules = parseRules(text, "fuzz.rules", readUserFile=_readUserFile)
    except RulesError as e:
        kind = _ERROR_KIND.match(e.message)
        return "error " + (kind.group() if kind else "")
    if not isinstance(rules, RuleSet):
        raise Escaped(f"parseRules returned {rules!r}")
    for rule in rules.rules:
        if len(rule.text) > MAX_LINE_LENGTH:
            raise Escaped(f"accepted: a rule of {len(rule.text)} characters")
        port = rule.port
        if port is not None:
            # "lt 0" and "gt 65535" are empty ranges that match nothing;
            # any other range must lie within the port space.
            empty = port.low == port.high + 1 and 0 <= port.low <= 65536
            if not empty and not 0 <= port.low <= port.high <= 65535:
                raise Escaped(f"port range {port.low}..{port.high}")
    for probe in _PROBES:
        decision = rules.decide(probe)
        if not isinstance(decision, Decision):
            raise Escaped(f"decide returned {decision!r}")
    return f"rules {min(len(rules.rules), 5)}"


def _sources(*modules: Any) -> list[str]:
    return [module.__file__ for module in modules]


#: The three targets.
CODEC = Target(
    "codec",
    _CODEC_SEEDS,
    _CODEC_DICTIONARY,
    MAX_REQUEST_SIZE + 64,
    checkRequest,
    _sources(twisted_socks.wire._socks4),
)
IDENT = Target(
    "ident",
    _IDENT_SEEDS,
    _IDENT_DICTIONARY,
    MAX_RESPONSE + 16,
    checkIdent,
    _sources(twisted_socks.wire._identparse, twisted_socks.ident._ident),
)
RULES = Target(
    "rules",
    _rulesSeeds(),
    _RULES_DICTIONARY,
    4096,
    checkRules,
    # The rules grammar and its fields, patterns and decisions; the %-token
    # expansion with its quoting scan and list of evaluating commands.
    _sources(
        twisted_socks.policy._rules,
        twisted_socks.policy._fields,
        twisted_socks.policy._patterns,
        twisted_socks.policy._ruleset,
        twisted_socks.policy._percent,
        twisted_socks.policy._shellquote,
        twisted_socks.policy._evaluators,
    ),
)
TARGETS = {target.name: target for target in (CODEC, IDENT, RULES)}


# -- SOCKS5 (RFC 1928) and RFC 1929 ---------------------------------------------
#
# One oracle shape for the four stream parsers: the parse function on the
# whole input and an IncrementalParser fed it in random chunks must agree;
# only the declared error may escape; the parser never holds more than the
# longest valid message while it waits for more; what is accepted
# re-encodes to the bytes it came from.  The UDP header is parsed whole (a
# datagram is one message), so its oracle has no chunking.


def _size(n: int) -> str:
    """A length, in the buckets that matter to one-octet length fields."""
    if n <= 1:
        return str(n)
    return "2-15" if n < 16 else ("16-254" if n < 255 else "255+")


def _checkStream(
    data: bytes,
    rng: random.Random,
    parse: Callable[[bytes], Any],
    makeParser: Callable[[], IncrementalParser[Any]],
    cap: int,
    declared: type[Exception],
    accepted: Callable[[bytes, Any, int], str],
) -> str:
    whole: Any
    try:
        parsed = parse(data)
    except declared as e:
        whole = type(e)
        kind = _ERROR_KIND.match(str(e))
        label = f"error {type(e).__name__} {kind.group() if kind else ''}"
    else:
        if parsed is None:
            whole = None
            label = "need more"
        else:
            value, used = parsed
            if not 0 < used <= min(len(data), cap):
                raise Escaped(f"bad length: used {used} of {len(data)}")
            whole = parsed
            label = accepted(data, value, used)
            label += "+trailing" if used < len(data) else ""

    parser = makeParser()
    fed = 0
    chunked: Any = None
    for chunk in _split(data, rng):
        try:
            result = parser.feed(chunk)
        except declared as e:
            if parser.bufferedSize > cap + len(chunk):
                raise Escaped(
                    f"over the cap: holds {parser.bufferedSize} bytes after an error"
                ) from None
            chunked = type(e)
            break
        fed += len(chunk)
        if result is not None:
            chunked = (result, fed - len(parser.trailingData))
            break
        if parser.bufferedSize > cap:
            raise Escaped(f"over the cap: holds {parser.bufferedSize} bytes")
    if chunked != whole:
        raise Escaped(f"chunking changed the outcome: {chunked!r} != {whole!r}")
    return label


def _acceptedGreeting(data: bytes, greeting: Greeting, used: int) -> str:
    if not 1 <= len(greeting.methods) <= 255 or used != 2 + len(greeting.methods):
        raise Escaped(f"bad greeting: {len(greeting.methods)} methods in {used}")
    if encodeGreeting(greeting.methods) != data[:used]:
        raise Escaped("bad greeting: re-encoding differs")
    offers = "".join(f" {m:02x}" for m in (0, 2) if greeting.offers(m))
    return f"greeting {_size(len(greeting.methods))}{offers}"


def checkGreeting(data: bytes, rng: random.Random) -> str:
    """
    The greeting's oracle: L{parseGreeting} and a L{GreetingParser} fed in
    random chunks agree; only L{SOCKS5ProtocolError} escapes; at most
    L{MAX_GREETING_SIZE} bytes held; a greeting re-encodes to its bytes.
    """
    return _checkStream(
        data,
        rng,
        parseGreeting,
        GreetingParser,
        MAX_GREETING_SIZE,
        SOCKS5ProtocolError,
        _acceptedGreeting,
    )


def _acceptedCredentials(data: bytes, credentials: Credentials, used: int) -> str:
    name, password = credentials.username, credentials.password
    if not (1 <= len(name) <= 255 and 1 <= len(password) <= 255):
        raise Escaped(f"bad credentials: lengths {len(name)}, {len(password)}")
    if encodeAuthRequest(name, password) != data[:used]:
        raise Escaped("bad credentials: re-encoding differs")
    if repr(credentials) != f"Credentials(username={name!r})":
        raise Escaped("the password shows in repr")
    return f"credentials {_size(len(name))} {_size(len(password))}"


def checkCredentials(data: bytes, rng: random.Random) -> str:
    """
    The RFC 1929 oracle: L{parseCredentials} and a L{CredentialsParser}
    agree; only L{SOCKS5ProtocolError} escapes; at most
    L{MAX_CREDENTIALS_SIZE} bytes held; credentials re-encode to their
    bytes, and C{repr} never shows the password.
    """
    return _checkStream(
        data,
        rng,
        parseCredentials,
        CredentialsParser,
        MAX_CREDENTIALS_SIZE,
        SOCKS5ProtocolError,
        _acceptedCredentials,
    )


def _checkName(name: str | None) -> None:
    if name is not None:
        raw = name.encode("ascii")
        if not 1 <= len(raw) <= 255 or not _HOSTNAME_BYTES.issuperset(raw):
            raise Escaped(f"bad name: {raw!r}")


def _acceptedRequest(data: bytes, request: Request5, used: int) -> str:
    _checkName(request.name)
    if request.command is Command5.CONNECT:
        if request.port == 0:
            raise Escaped("accepted: CONNECT to port 0")
        if request.address is not None and not int(request.address):
            raise Escaped(f"accepted: CONNECT to {request.address}")
    again = encodeRequest5(request.command, request.port, request.address, request.name)
    if again != data[:used]:
        raise Escaped("bad request: re-encoding differs")
    return f"request {request.command.name} {request.addressType.name}"


def checkRequest5(data: bytes, rng: random.Random) -> str:
    """
    The SOCKS5 request's oracle: L{parseRequest5} and a L{RequestParser5}
    agree; only L{SOCKS5ProtocolError} escapes; at most
    L{MAX_REQUEST5_SIZE} bytes held; a request re-encodes to its bytes and
    never CONNECTs to port 0 or to an all-zeros address.
    """
    return _checkStream(
        data,
        rng,
        parseRequest5,
        RequestParser5,
        MAX_REQUEST5_SIZE,
        SOCKS5ProtocolError,
        _acceptedRequest,
    )


def _acceptedReply(data: bytes, reply: Reply5, used: int) -> str:
    _checkName(reply.name)
    again = encodeReply5(reply.code, reply.port, reply.address, reply.name)
    # RSV is not judged on the client side, so it is not kept either.
    if again[:2] + again[3:] != data[:2] + data[3:used]:
        raise Escaped("bad reply: re-encoding differs")
    return f"reply {reply.code.name} {reply.addressType.name}"


def checkReply5(data: bytes, rng: random.Random) -> str:
    """
    The client's reply oracle: L{parseReply5} and a L{ReplyParser5} agree;
    only L{MalformedReply5} escapes; at most L{MAX_REPLY5_SIZE} bytes held;
    a reply re-encodes to its bytes (RSV aside).
    """
    return _checkStream(
        data,
        rng,
        parseReply5,
        ReplyParser5,
        MAX_REPLY5_SIZE,
        MalformedReply5,
        _acceptedReply,
    )


def checkDatagram(data: bytes, rng: random.Random) -> str:
    """
    The UDP header's oracle: L{parseDatagram} gives a L{Datagram} or raises
    L{BadDatagram}, nothing else; a datagram's header is at most
    L{MAX_DATAGRAM_HEADER_SIZE} bytes, its destination is never port 0 or
    all zeros, and it re-encodes to the bytes it came from.
    """
    try:
        datagram = parseDatagram(data)
    except BadDatagram as e:
        kind = _ERROR_KIND.match(str(e))
        return f"error BadDatagram {kind.group() if kind else ''}"
    _checkName(datagram.name)
    if len(data) - len(datagram.data) > MAX_DATAGRAM_HEADER_SIZE:
        raise Escaped(f"header of {len(data) - len(datagram.data)} bytes")
    if datagram.port == 0 or (
        datagram.address is not None and not int(datagram.address)
    ):
        raise Escaped(f"accepted: {datagram.destination}:{datagram.port}")
    again = encodeDatagram(
        datagram.data,
        datagram.port,
        datagram.address,
        datagram.name,
        datagram.fragment,
    )
    if again != data:
        raise Escaped("bad datagram: re-encoding differs")
    fragment = "fragment" if datagram.isFragment else "whole"
    return (
        f"datagram {datagram.addressType.name} {fragment} {_size(len(datagram.data))}"
    )


_V6 = IPv6Address("2001:db8::7")
_NAME80 = b"\x03\x0bexample.com\x00\x50"

_GREETING_SEEDS = [
    b"\x05\x01\x00",
    b"\x05\x01\x02",
    b"\x05\x02\x00\x02",
    b"\x05\x03\x00\x01\x02",
    b"\x05\x02\x80\xfe",
    bytes([5, 255, *range(255)]),
    b"\x05\x01\x00\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x50",
    b"\x05\x02\x00\x02\x01\x05alice\x06s3cret",
    b"\x05\x00",
    b"\x05\xff\x00",
    b"\x04\x01\x00\x50\xc0\x00\x02\x07\x00",
    b"GET / HTTP/1.0\r\n\r\n",
    b"",
]

_AUTH_SEEDS = [
    encodeAuthRequest(b"alice", b"s3cret"),
    encodeAuthRequest(b"a", b"b"),
    encodeAuthRequest(b"alice", b"s3cr:t@%"),
    encodeAuthRequest(b"a:b", b"\0\r\n"),
    encodeAuthRequest("jos\u00e9".encode(), b"\xff\xfe"),
    encodeAuthRequest(b"u" * 255, b"p" * 255),
    encodeAuthRequest(b"bob", b"pw") + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
    b"\x05\x05alice\x01p",
    b"\x01\x00\x01p",
    b"\x01\x05alice\x00",
    b"\x01\xff" + b"u" * 300,
    b"",
]

_REQUEST5_SEEDS = [
    encodeRequest5(Command5.CONNECT, 80, _V4),
    encodeRequest5(Command5.CONNECT, 443, _V6),
    encodeRequest5(Command5.CONNECT, 443, IPv6Address("::ffff:192.0.2.7")),
    encodeRequest5(Command5.CONNECT, 80, name="example.com"),
    encodeRequest5(Command5.CONNECT, 65535, name="h" * 255),
    encodeRequest5(Command5.CONNECT, 8080, name="::1"),
    encodeRequest5(Command5.BIND, 21, _V4),
    encodeRequest5(Command5.BIND, 0, IPv4Address(0)),
    encodeRequest5(Command5.UDP_ASSOCIATE, 0),
    encodeRequest5(Command5.UDP_ASSOCIATE, 40000, name="0"),
    encodeRequest5(Command5.CONNECT, 80, _V4) + b"GET / HTTP/1.0\r\n\r\n",
    b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x50",
    b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x00",
    b"\x05\x01\x00\x03\x00\x00\x50",
    b"\x05\x01\x00\x03\x04a\r\nb\x00\x50",
    b"\x05\x09\x00\x01",
    b"\x05\xf0\x00" + _NAME80,
    b"\x05\x01\x01\x01",
    b"\x05\x01\x00\x05",
    b"\x04\x01\x00\x50\xc0\x00\x02\x07\x00",
    b"",
]

_REPLY5_SEEDS = [
    encodeReply5(ReplyCode5.SUCCEEDED, 54321, IPv4Address("127.0.0.1")),
    encodeReply5(ReplyCode5.SUCCEEDED, 40000, _V6),
    encodeReply5(ReplyCode5.HOST_UNREACHABLE, 80, name="nonexistent.invalid"),
    encodeReply5(ReplyCode5.COMMAND_NOT_SUPPORTED),
    encodeReply5(ReplyCode5.SUCCEEDED, 1, name="x" * 255),
    encodeReply5(ReplyCode5.SUCCEEDED, 40000, _V4)
    + encodeReply5(ReplyCode5.SUCCEEDED, 59480, _V4)
    + b"data",
    b"\x05\x02\x07\x01\x00\x00\x00\x00\x00\x00",
    b"\x05\x09\x00\x01",
    b"\x05\xf0\x00\x01",
    b"\x05\x00\x00\x03\x00",
    b"\x00\x5a\x00\x50\x7f\x00\x00\x01",
    b"HTTP/1.1 400 Bad Request\r\n",
    b"",
]

_DATAGRAM_SEEDS = [
    encodeDatagram(b"query", 53, IPv4Address("8.8.8.8")),
    encodeDatagram(b"", 53, _V6),
    encodeDatagram(b"\0" * 64, 443, name="dns.example"),
    encodeDatagram(b"frag", 53, _V4, fragment=1),
    encodeDatagram(b"x", 65535, name="h" * 255),
    b"\0\0\0\x01\x00\x00\x00\x00\x00\x35x",
    b"\0\0\0\x01\x08\x08\x08\x08\x00\x00x",
    b"\0\x01\0\x01\x08\x08\x08\x08\x00\x35x",
    b"\0\0\0\x03\x00\x00\x35",
    b"\0\0\0\x04" + b"\0" * 15,
    b"",
]

_SOCKS5_DICTIONARY = [
    b"\0",
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\xff",
    b"\x05\x01\x00",
    b"\x05\x02\x00\x02",
    b"\x01\x05alice\x06s3cret",
    b"\x05\x01\x00\x01",
    b"\x05\x02\x00\x04",
    b"\x05\x03\x00\x03",
    b"\x05\x00\x00\x01",
    b"\0\0\0\x01",
    b"\0\0\0\x03",
    b"\0\0\0\x04",
    b"\0\0\0\0",
    b"\0" * 16,
    _V6.packed,
    b"\x7f\x00\x00\x01",
    b"\x0bexample.com",
    b"\xffh",
    b"\0\x50",
    b"\0\0",
    b"localhost",
    b"::1",
    b"xn--",
    b":",
    b".",
    b"-",
    b"h" * 254,
    b"\r\n",
]

#: The SOCKS5 targets: the server's three stream parsers, the UDP header
#: and the client's reply parser.
SOCKS5_GREETING = Target(
    "socks5-greeting",
    _GREETING_SEEDS,
    _SOCKS5_DICTIONARY,
    MAX_GREETING_SIZE + 64,
    checkGreeting,
    _sources(twisted_socks.wire._socks5, twisted_socks.wire._incremental),
)
SOCKS5_AUTH = Target(
    "socks5-auth",
    _AUTH_SEEDS,
    _SOCKS5_DICTIONARY,
    MAX_CREDENTIALS_SIZE + 64,
    checkCredentials,
    _sources(twisted_socks.wire._userpass, twisted_socks.wire._incremental),
)
SOCKS5_REQUEST = Target(
    "socks5-request",
    _REQUEST5_SEEDS,
    _SOCKS5_DICTIONARY,
    MAX_REQUEST5_SIZE + 64,
    checkRequest5,
    _sources(twisted_socks.wire._socks5, twisted_socks.wire._incremental),
)
SOCKS5_UDP = Target(
    "socks5-udp",
    _DATAGRAM_SEEDS,
    _SOCKS5_DICTIONARY,
    MAX_DATAGRAM_HEADER_SIZE + 64,
    checkDatagram,
    _sources(twisted_socks.wire._socks5udp, twisted_socks.wire._socks5),
)
SOCKS5_REPLY = Target(
    "socks5-reply",
    _REPLY5_SEEDS,
    _SOCKS5_DICTIONARY,
    MAX_REPLY5_SIZE + 64,
    checkReply5,
    _sources(twisted_socks.wire._socks5client, twisted_socks.wire._socks5),
)
SOCKS5_TARGETS = (
    SOCKS5_GREETING,
    SOCKS5_AUTH,
    SOCKS5_REQUEST,
    SOCKS5_UDP,
    SOCKS5_REPLY,
)
TARGETS.update((target.name, target) for target in SOCKS5_TARGETS)
