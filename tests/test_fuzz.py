"""
Fuzzing the three parsers that read untrusted input, on a fixed budget.

The fuzzer and its oracles live in C{fuzz/targets.py} (see there for what
each oracle checks); C{python -m fuzz} runs the same code for millions of
inputs.  Here every parser gets, with fixed seeds so that a failure is
reproducible:

  - 50,000 mutated inputs, each kept when it gives a new outcome;
  - 5,000 inputs guided by line-pair coverage of the parser modules;
  - Hypothesis property tests (derandomized) on arbitrary bytes and on
    near-valid inputs.

Only the declared errors may escape (the codec: L{SOCKSProtocolError}; the
ident parser: L{IdentError}; the rules grammar: L{RulesError}) and no parser
holds more than its cap.  Inputs the fuzzer found that broke a contract are
kept below as regression tests.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import (
    _RULES_DICTIONARY,
    CODEC,
    IDENT,
    RULES,
    TARGETS,
    Report,
    Target,
    checkIdent,
    checkRequest,
    checkRules,
    fuzz,
)
from tests.test_ident import nearAnswers
from twisted_socks import (
    IdentError,
    RulesError,
    loadRules,
    parseIdentResponse,
    parseRules,
)

#: The seed of every budgeted run: a failure here is reproduced with
#: C{fuzz(TARGETS[name], inputs, SEED)}.
SEED = 20261121
MUTATION_BUDGET = 50_000
COVERAGE_BUDGET = 5_000

#: A Hypothesis profile for these tests: deterministic, no example database.
FIXED = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def describe(report: Report) -> str:
    """The findings of a run, for an assertion message."""
    return "\n\n".join(
        f"{f.key}: input {f.data[:200]!r}\n{f.detail}" for f in report.findings.values()
    )


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutationBudgetFindsNoViolation(name: str) -> None:
    """
    50,000 mutated inputs (seeds of valid and invalid inputs, then edits,
    splices, dictionary tokens and long runs) break no contract.
    """
    target = TARGETS[name]
    report = fuzz(target, MUTATION_BUDGET, SEED)
    assert report.inputs == MUTATION_BUDGET
    assert report.violations == 0, describe(report)
    # The run explored: several distinct outcomes, valid ones among them.
    assert len(report.outcomes) >= 10, report.outcomes
    assert any(not label.startswith("error") for label in report.outcomes)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_coverageGuidedBudgetFindsNoViolation(name: str) -> None:
    """5,000 inputs guided by line-pair coverage break no contract."""
    target = TARGETS[name]
    report = fuzz(target, COVERAGE_BUDGET, SEED, coverage=True)
    assert report.inputs == COVERAGE_BUDGET
    assert report.coveragePairs > 0
    assert report.violations == 0, describe(report)


def test_theFuzzerIsDeterministic() -> None:
    """The same seed and budget give the same inputs and outcomes."""
    first = fuzz(CODEC, 2000, SEED)
    second = fuzz(CODEC, 2000, SEED)
    assert first.outcomes == second.outcomes
    assert first.corpus == second.corpus


def test_theOraclesCatchWhatTheyClaim() -> None:
    """
    The fuzzer reports an undeclared exception and a cap violation: a
    target whose parser misbehaves on purpose yields findings.
    """

    def broken(data: bytes, rng: random.Random) -> str:
        if b"\0" in data:
            raise KeyError("undeclared")
        return "ok"

    target = Target("broken", [b"abc", b"a\0c"], [b"\0"], 16, broken, [])
    report = fuzz(target, 200, SEED)
    assert report.violations > 0
    assert [key.split(" at ")[0] for key in report.findings] == ["KeyError"]


# -- Hypothesis -------------------------------------------------------------------


@FIXED
@given(data=st.binary(max_size=600), rng=st.randoms(use_true_random=False))
def test_codecPropertyAnyBytesAnyChunking(data: bytes, rng: random.Random) -> None:
    """
    Any bytes, delivered in any chunks: the same outcome as parsed whole,
    only L{SOCKSProtocolError} escapes, and the parser never holds more than
    L{MAX_REQUEST_SIZE} bytes while it waits for more.
    """
    checkRequest(data, rng)


@st.composite
def nearRequests(draw: st.DrawFn) -> bytes:
    """Requests with the right version and command and anything after."""
    command = draw(st.sampled_from([b"\x01", b"\x02"]))
    port = draw(st.sampled_from([b"\0\0", b"\0\x50", b"\xff\xff"]))
    address = draw(
        st.sampled_from([b"\0\0\0\1", b"\0\0\0\xff", b"\0\0\0\0", b"\xc0\0\2\7"])
    )
    userid = draw(st.binary(max_size=270))
    name = draw(
        st.one_of(
            st.binary(max_size=270),
            st.text("abc.-_:0123456789", max_size=270).map(str.encode),
        )
    )
    tail = draw(st.sampled_from([b"", b"\0", b"\0trailing"]))
    return b"\x04" + command + port + address + userid + b"\0" + name + tail


@FIXED
@given(data=nearRequests(), rng=st.randoms(use_true_random=False))
def test_codecPropertyNearValidRequests(data: bytes, rng: random.Random) -> None:
    """Near-valid requests (VN 4, a known command) keep every contract too."""
    checkRequest(data, rng)


@FIXED
@given(data=st.binary(max_size=1010), rng=st.randoms(use_true_random=False))
def test_identPropertyAnyBytes(data: bytes, rng: random.Random) -> None:
    """
    Any line gives an answer or an L{IdentError}; the line reader holds at
    most L{MAX_RESPONSE} bytes and agrees with the parser.
    """
    checkIdent(data, rng)


@FIXED
@given(data=nearAnswers(), rng=st.randoms(use_true_random=False))
def test_identPropertyNearAnswers(data: bytes, rng: random.Random) -> None:
    """Almost-valid answers, with every charset Python knows, likewise."""
    checkIdent(data, rng)


@st.composite
def nearRules(draw: st.DrawFn) -> bytes:
    """Rules files made of the grammar's own tokens and a few odd bytes."""
    token = st.one_of(
        st.sampled_from(_RULES_DICTIONARY),
        st.binary(min_size=1, max_size=6),
        st.integers(0, 70000).map(lambda n: str(n).encode()),
    )
    line = st.lists(token, max_size=10).map(b" ".join)
    return b"\n".join(draw(st.lists(line, min_size=1, max_size=6)))


@FIXED
@given(data=nearRules(), rng=st.randoms(use_true_random=False))
def test_rulesPropertyTokenSoup(data: bytes, rng: random.Random) -> None:
    """
    Any file of grammar tokens (read as C{loadRules} reads files) gives a
    rule set that can judge requests, or a L{RulesError}: nothing else.
    """
    checkRules(data, rng)


# -- what the fuzzer found -----------------------------------------------------------

#: Rules lines on which the grammar raised something other than
#: L{RulesError}, minimised from the fuzzer's findings, and the error the
#: message must name.
FOUND_RULES = [
    # socket.getservbyname raises ValueError for an embedded NUL ...
    ("allow 0/0 0/0 eq a\0b", "bad port"),
    ("allow 0/0 0/0 range 1 \0", "bad port"),
    # ... and UnicodeEncodeError for a byte that is not UTF-8 (loadRules
    # reads files with surrogateescape, so it arrives as a lone surrogate).
    ("allow 0/0 0/0 eq \udcff", "bad port"),
    ("allow 0/0 0/0 gt 1\udce7", "bad port"),
    # IPv4Address refuses leading zeros that the mask check lets through.
    ("allow 10.0.0.0 255.255.255.00", "bad mask"),
    ("allow 10.0.0.0 255.0255.0.0", "bad mask"),
    ("permit 0/0 192.0.2.0 255.255.255.000", "bad mask"),
]


@pytest.mark.parametrize(("line", "message"), FOUND_RULES)
def test_foundRulesInputsRaiseRulesError(line: str, message: str) -> None:
    """
    Each input the fuzzer found is refused with a L{RulesError} naming the
    line and the field, as every other invalid file is, so twistd's start-up
    check, the rule tester and SIGHUP reload report it in one line.
    """
    with pytest.raises(RulesError, match=message) as caught:
        parseRules(line + "\n", "found.conf")
    assert caught.value.line == 1


def test_undecodableRulesFileIsARulesError(tmp_path: Path) -> None:
    """
    A rules file with a byte that is not UTF-8 in a port field, read from
    disk as twistd reads it, gives a L{RulesError}, not a traceback.
    """
    path = tmp_path / "rules.conf"
    path.write_bytes(b"allow 0/0\nallow 0/0 0/0 eq http\xff\n")
    with pytest.raises(RulesError) as caught:
        loadRules(str(path))
    assert caught.value.line == 2


#: Ident answers on which the parser emitted a warning: with C{-W error}
#: (or this project's pytest configuration) the warning escapes as an
#: exception that is not an L{IdentError}.
FOUND_IDENT = [
    b"5555,1080:USERID:UNIX,unicode_escape:\\q",
    b"5555,1080:USERID:UNIX,unicode-escape:bob\\8",
]


@pytest.mark.parametrize("line", FOUND_IDENT)
def test_foundIdentInputsNeitherWarnNorRaise(line: bytes) -> None:
    """
    A user-id in an escape codec with an invalid escape is decoded (or
    refused with an L{IdentError}) without a warning: what a peer sends
    must not depend on the interpreter's warning filters.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            answer = parseIdentResponse(line, 5555, 1080)
        except IdentError:
            return
    assert answer.user and not {"\0", "\r", "\n"} & set(answer.user)


def test_seedsOfEveryTargetAreCleanOnTheirOwn() -> None:
    """The seeds themselves keep every contract (a sanity check of the oracles)."""
    rng = random.Random(SEED)
    for target in (CODEC, IDENT, RULES):
        for seed in target.seeds:
            target.check(seed[: target.maxSize], rng)
    for seed in RULES.seeds:
        RULES.check(seed, rng)
