"""
C{python -m twisted_socks sessions URL}: print a running server's session
table in a terminal, read from its status endpoint (C{twistd socks
--status}).

Also home of the human-readable formatting (bytes, durations) that the
status page shares, because this module is deliberately free of Twisted: it
is a small client that runs anywhere Python does.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

__all__ = ["fetchSessions", "formatTable", "humanBytes", "humanSeconds", "main"]

#: The largest answer read from a status endpoint; a session is a few hundred
#: bytes of JSON, so this is far beyond any real server's table.
MAX_ANSWER = 64 << 20

#: Cells wider than this are cut (unless C{--wide}): a 255-byte host name
#: should not push every other column off the screen.
MAX_CELL = 40

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def humanBytes(count: int) -> str:
    """C{count} bytes for people: C{512 B}, C{1.5 KiB}, C{3.2 GiB}."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1023.95 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def protocolText(version: object, auth: object) -> str:
    """
    A session's protocol for people: C{socks4}, C{socks5/none},
    C{socks5/password} (the SOCKS5 authentication method after the slash;
    none before one is chosen), or C{-} if the client named no version.
    """
    if version not in (4, 5):
        return "-"
    name = f"socks{version}"
    return f"{name}/{auth}" if isinstance(auth, str) else name


def humanSeconds(seconds: float) -> str:
    """A duration for people: C{0.4 s}, C{42 s}, C{3 min 5 s}, C{2 h 1 min}."""
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


class FetchError(Exception):
    """The status endpoint could not be read, or its answer made no sense."""


def sessionsURL(base: str) -> str:
    """
    The C{/sessions} address for a status endpoint given as C{base}: a base
    URL (C{http://127.0.0.1:9180}), the C{/sessions} URL itself, or a bare
    C{host:port}.

    @raise FetchError: for anything but an http(s) URL with a host.
    """
    if "://" not in base:
        base = "http://" + base
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchError(f"not an http:// or https:// URL: {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/sessions"):
        path += "/sessions"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def fetchSessions(
    url: str, timeout: float = 5.0, token: str | None = None
) -> dict[str, Any]:
    """
    Read the session table from a status endpoint (see L{sessionsURL}).

    @param token: the status page's token (C{--status-auth}), sent as a
        bearer token.

    @return: the decoded answer: C{sessions} (a list of session dicts), and
        C{now} and C{counters} when the server sends them.
    @raise FetchError: with a one-line explanation, whatever went wrong.
    """
    target = sessionsURL(url)
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        target, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as e:
        hint = ""
        if e.code == 401:
            hint = " (the page needs its token: --token-file FILE)"
        raise FetchError(
            f"cannot read {target}: HTTP {e.code} {e.reason}{hint}"
        ) from None
    except urllib.error.URLError as e:
        raise FetchError(f"cannot read {target}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, bad status lines
        raise FetchError(f"cannot read {target}: {e or type(e).__name__}") from None
    if len(body) > MAX_ANSWER:
        raise FetchError(f"cannot read {target}: answer larger than {MAX_ANSWER} bytes")
    try:
        answer = json.loads(body)
    except ValueError:
        raise FetchError(f"cannot read {target}: the answer is not JSON") from None
    if isinstance(answer, list):
        answer = {"sessions": answer}
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("sessions"), list)
        or not all(isinstance(s, dict) for s in answer["sessions"])
    ):
        raise FetchError(f"cannot read {target}: the answer has no session list")
    return answer


def _printable(value: object) -> str:
    """
    C{value} as text safe for a terminal: the server escapes what clients
    send, but this command may be pointed at anything.
    """
    text = "-" if value is None or value == "" else str(value)
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else "?"
        for c in text
    )


def _cut(text: str, width: int | None) -> str:
    if width is None or len(text) <= width:
        return text
    return text[: width - 3] + "..."


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


#: The table's columns: heading, how to get the cell from a session (and the
#: answer's C{now}), and whether it is right-aligned.
_COLUMNS: list[tuple[str, Callable[[dict[str, Any], float | None], str], bool]] = [
    ("ID", lambda s, now: _printable(s.get("id")), True),
    ("CLIENT", lambda s, now: _printable(s.get("client")), False),
    (
        "USER",
        lambda s, now: (
            _printable(s.get("user"))
            + (
                f" (ident {_printable(s['identUser'])})"
                if s.get("identUser") not in (None, s.get("user"))
                else ""
            )
        ),
        False,
    ),
    (
        "PROTO",
        lambda s, now: _printable(protocolText(s.get("version"), s.get("auth"))),
        False,
    ),
    ("CMD", lambda s, now: _printable(s.get("command")), False),
    ("DESTINATION", lambda s, now: _printable(s.get("destination")), False),
    ("RESOLVED", lambda s, now: _printable(s.get("resolved")), False),
    ("STATE", lambda s, now: _printable(s.get("state")), False),
    (
        "AGE",
        lambda s, now: (
            humanSeconds(now - _number(s.get("started"))) if now is not None else "-"
        ),
        True,
    ),
    ("UP", lambda s, now: humanBytes(int(_number(s.get("bytesUp")))), True),
    ("DOWN", lambda s, now: humanBytes(int(_number(s.get("bytesDown")))), True),
    ("IDLE", lambda s, now: humanSeconds(_number(s.get("idle"))), True),
    ("RULE", lambda s, now: _printable(s.get("rule")), False),
]


def formatTable(
    sessions: Sequence[dict[str, Any]],
    now: float | None = None,
    maxCell: int | None = MAX_CELL,
) -> str:
    """
    The sessions as an aligned text table (without a trailing newline).

    @param now: the server's clock, for the age column.
    @param maxCell: cut longer cells to this width; L{None}: never cut.
    """
    rows = [[heading for heading, _, _ in _COLUMNS]]
    for session in sessions:
        rows.append([_cut(cell(session, now), maxCell) for _, cell, _ in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, (_, _, right) in zip(row, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _summaryLine(answer: dict[str, Any]) -> str | None:
    """One line of the server's main counters, if it sent them."""
    counters = answer.get("counters")
    if not isinstance(counters, dict):
        return None
    byState = counters.get("activeByState")
    states = ""
    if isinstance(byState, dict):
        busy = [f"{n} {_printable(k)}" for k, n in byState.items() if n]
        states = f" ({', '.join(busy)})" if busy else ""

    def count(name: str) -> int:
        return int(_number(counters.get(name)))

    return (
        f"{count('active')} active{states}; since start: "
        f"{count('sessionsEnded')} ended, {count('granted')} granted, "
        f"{count('rejected')} refused; {humanBytes(count('bytesUp'))} up, "
        f"{humanBytes(count('bytesDown'))} down"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_socks sessions",
        description=(
            "Print the sessions of a running twisted-socks server, read from "
            "its status endpoint (twistd socks --status ...). Exit status: 0 "
            "printed, 1 the endpoint could not be read."
        ),
    )
    parser.add_argument("url", help="the status endpoint, e.g. http://127.0.0.1:9180")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the answer (default 5)",
    )
    parser.add_argument(
        "--token-file",
        help="file holding the status page's token (the server's --status-auth)",
    )
    parser.add_argument("--wide", action="store_true", help="never cut long cells")
    parser.add_argument(
        "--json", action="store_true", help="print the answer as JSON instead"
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command; return the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = _parser().parse_args(argv)
    token = None
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="ascii") as f:
                token = f.readline().strip()
        except (OSError, ValueError) as e:
            print(
                f"twisted_socks sessions: cannot read {args.token_file}: {e}",
                file=err,
            )
            return 1
    try:
        answer = fetchSessions(args.url, args.timeout, token)
    except FetchError as e:
        print(f"twisted_socks sessions: {e}", file=err)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True), file=out)
        return 0
    sessions = answer["sessions"]
    now = answer.get("now")
    now = float(now) if isinstance(now, int | float) else None
    if sessions:
        print(formatTable(sessions, now, None if args.wide else MAX_CELL), file=out)
    else:
        print("no sessions", file=out)
    summary = _summaryLine(answer)
    if summary is not None:
        print(summary, file=out)
    return 0
