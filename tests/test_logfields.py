"""
L{escapeField}: its fast path for plain text agrees with the byte-by-byte
rule; L{escapeLines} and L{hostPort}, built on it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from twisted_socks._logfields import (
    _ESCAPES,
    MAX_FIELD_LENGTH,
    escapeField,
    escapeLines,
    hostPort,
)


def reference(value: str | bytes, cap: int = MAX_FIELD_LENGTH) -> str:
    """The rule, spelled out: every input byte escaped on its own."""
    raw = (
        value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    )
    text = "".join(_ESCAPES[b] for b in raw[:cap])
    if len(raw) > cap:
        text += f"...[{len(raw) - cap} more bytes]"
    return text


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_escapeFieldMatchesTheRule(value: str | bytes) -> None:
    """Any bytes or text escapes exactly as the byte-by-byte rule says."""
    assert escapeField(value) == reference(value)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printableAsciiIsUnchanged(value: str) -> None:
    """Printable ASCII without a backslash (or cap) comes back as it is."""
    expected = value.replace("\\", "\\\\")
    if len(value) > MAX_FIELD_LENGTH:
        expected = reference(value)
    assert escapeField(value) == expected


def test_controlAndBackslashAreEscaped() -> None:
    """A CR, LF, ESC, DEL and backslash never reach the log as themselves."""
    assert escapeField("a\r\nb\x1b[2J\x7f\\") == "a\\x0d\\x0ab\\x1b[2J\\x7f\\\\"
    assert escapeField(b"root\n") == "root\\x0a"


@given(st.text(max_size=600))
def test_escapeLinesLeavesOnlyPrintableLines(value: str) -> None:
    """
    Whatever the text, every line L{escapeLines} returns is printable; a
    printable line is unchanged and an unprintable one is escaped whole
    (not cut).
    """
    escaped = escapeLines(value)
    lines = value.split("\n")
    assert escaped.split("\n") == [
        line if line.isprintable() else reference(line, cap=len(line) * 4)
        for line in lines
    ]
    assert all(line.isprintable() for line in escaped.split("\n"))


def test_hostPortBracketsIPv6AndEscapes() -> None:
    """IPv6 literals are bracketed; names and IPv4 are not; all escaped."""
    assert hostPort("::1", 80) == "[::1]:80"
    assert hostPort("fe80::1%eth0", 22) == "[fe80::1%eth0]:22"
    assert hostPort("192.0.2.1", 443) == "192.0.2.1:443"
    assert hostPort("example.com", 1) == "example.com:1"
    assert hostPort("a\x1b:b", 2) == "[a\\x1b:b]:2"
    assert hostPort("\x1b[2J", 3) == "\\x1b[2J:3"
