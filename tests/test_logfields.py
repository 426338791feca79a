"""L{escapeField}: its fast path for plain text agrees with the byte-by-byte rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from twisted_socks._logfields import _ESCAPES, MAX_FIELD_LENGTH, escapeField


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
