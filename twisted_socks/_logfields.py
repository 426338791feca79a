"""
Make client-controlled text safe to log.

A USERID or a SOCKS4A hostname comes off the wire and goes into a log line;
with a CR, LF or terminal escape in it, a client could forge log records or
rewrite an administrator's terminal. Every such field goes through
L{escapeField} first.
"""

from __future__ import annotations

__all__ = ["MAX_FIELD_LENGTH", "escapeField", "escapeLines", "hostPort"]

#: Longest logged field, in input bytes; the rest is summarised.
MAX_FIELD_LENGTH = 255

_SAFE = {i: chr(i) for i in range(0x20, 0x7F)}
_SAFE[ord("\\")] = "\\\\"
_ESCAPES = [_SAFE.get(i, f"\\x{i:02x}") for i in range(256)]


def escapeField(value: str | bytes, cap: int = MAX_FIELD_LENGTH) -> str:
    """
    Render C{value} as printable ASCII on one line.

    Bytes outside 0x20-0x7E become C{\\xNN} and a backslash becomes C{\\\\},
    so the output is unambiguous; text is first encoded as UTF-8 (lone
    surrogates from undecodable input are restored to their original bytes).
    More than C{cap} input bytes are cut, with a note of how many were dropped.
    """
    if len(value) <= cap and value.isascii():
        # The common case (an address, a user name, a host name) needs no
        # escaping; checked in C instead of a Python loop over every byte.
        # (For ASCII, isprintable() is exactly 0x20-0x7E.)
        text = value if isinstance(value, str) else value.decode("ascii")
        if text.isprintable() and "\\" not in text:
            return text
    raw = (
        value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    )
    head = "".join([_ESCAPES[b] for b in raw[:cap]])
    if len(raw) > cap:
        head += f"...[{len(raw) - cap} more bytes]"
    return head


def hostPort(host: str | bytes, port: int) -> str:
    """
    C{host:port} for a log line or a message: the host through
    L{escapeField}, and in brackets when it holds a colon (an IPv6
    literal), so that the port stays unambiguous: C{[::1]:80}.
    """
    text = escapeField(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def escapeLines(text: str) -> str:
    """
    C{text} with each line (split at LF) that holds anything unprintable
    passed through L{escapeField}, whole; printable lines are left as they
    are, so fields escaped already are not escaped twice.

    The log observers' last line of defence: a traceback whose exception
    message quotes a client's text, or a line from code that forgot
    L{escapeField}, still cannot put a terminal escape or a CR in the log.
    """
    if text.isprintable():
        return text
    return "\n".join(
        line if line.isprintable() else escapeField(line, cap=4 * len(line))
        for line in text.split("\n")
    )
