"""
The status page's HTML (L{twisted_socks.app._status} serves it): the counters
and the live session table, every value escaped, with the small inline
script that refreshes it and the content security policy that lets only
that script and style run.  Rendering only: it sees no request.
"""

from __future__ import annotations

import html
import time
from base64 import b64encode
from collections.abc import Iterable, Sequence
from hashlib import sha256
from typing import TYPE_CHECKING

from ._metrics import stateLabel
from ._sessionscli import humanBytes, humanSeconds, protocolText

if TYPE_CHECKING:
    from ..server._factory import SessionInfo
    from ._metrics import CounterSummary
    from ._upstreammetrics import UpstreamRow

__all__ = ["COMMON_HEADERS", "CSP", "REFRESH_SECONDS", "renderPage"]

#: How often the page reloads its table.
REFRESH_SECONDS = 2

#: Headers on every answer: nothing is cached (it is live data) and nothing
#: may frame or sniff it.
COMMON_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1a1a1a;
       background: #fafafa; }
header { display: flex; align-items: baseline; gap: 1em; }
h1 { font-size: 1.4em; margin: 0 0 .6em; }
#conn.error { color: #b00020; font-weight: bold; }
.asof { color: #666; margin: 0 0 .8em; }
.counters { display: flex; flex-wrap: wrap; gap: .6em; margin-bottom: 1em; }
.counter { background: #fff; border: 1px solid #ddd; border-radius: 6px;
           padding: .4em .8em; min-width: 6em; }
.counter .value { display: block; font-size: 1.5em; font-weight: 600; }
.counter .label { color: #555; font-size: .85em; }
.counter .detail { color: #777; font-size: .8em; display: block; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3em .6em; text-align: left;
         white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 22em; overflow: hidden; text-overflow: ellipsis; }
td.empty { color: #777; text-align: center; padding: 1em; }
.state { border-radius: 4px; padding: 0 .4em; font-size: .9em; }
.state-relaying { background: #d7f5dd; }
.state-negotiating, .state-resolving, .state-connecting { background: #fff2c4; }
.state-waiting, .state-associated { background: #dce8ff; }
.state-closed { background: #eee; color: #666; }
.ident, .route { color: #666; font-size: .85em; }
footer { margin-top: 1em; color: #666; font-size: .85em; }
"""

# The page replaces its live part with a fresh copy of itself: one renderer
# (the server's, which escapes everything), no client-side formatting, and
# the text is only ever parsed as HTML by the browser's DOMParser, which does
# not run scripts.
_SCRIPT = f"""
(function () {{
  "use strict";
  var conn = document.getElementById("conn");
  function refresh() {{
    fetch(window.location.href, {{cache: "no-store"}})
      .then(function (response) {{
        if (!response.ok) {{ throw new Error("HTTP " + response.status); }}
        return response.text();
      }})
      .then(function (text) {{
        var page = new DOMParser().parseFromString(text, "text/html");
        var fresh = page.getElementById("live");
        if (!fresh) {{ throw new Error("not a status page"); }}
        document.getElementById("live").replaceWith(document.adoptNode(fresh));
        conn.textContent = "";
        conn.className = "";
      }})
      .catch(function (error) {{
        conn.textContent = "server unreachable (" + error.message + "), retrying";
        conn.className = "error";
      }})
      .finally(function () {{ window.setTimeout(refresh, {REFRESH_SECONDS * 1000}); }});
  }}
  window.setTimeout(refresh, {REFRESH_SECONDS * 1000});
}})();
"""


def _cspHash(text: str) -> str:
    return "'sha256-" + b64encode(sha256(text.encode("utf-8")).digest()).decode() + "'"


#: The content security policy: only this page's own inline style and
#: script may run, and it may only talk to its own origin.
CSP = (
    f"default-src 'none'; style-src {_cspHash(_STYLE)}; "
    f"script-src {_cspHash(_SCRIPT)}; connect-src 'self'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).encode("ascii")

_COLUMNS = (
    ("id", True),
    ("client", False),
    ("user", False),
    ("protocol", False),
    ("command", False),
    ("destination", False),
    ("resolved", False),
    ("state", False),
    ("age", True),
    ("up", True),
    ("down", True),
    ("idle", True),
    ("rule", False),
)


def _e(value: object) -> str:
    """HTML-escape C{value} (an absent value is shown as a dash)."""
    if value is None or value == "":
        return "&ndash;"
    return html.escape(str(value), quote=True)


def _counter(label: str, value: str, detail: str = "") -> str:
    extra = f'<span class="detail">{_e(detail)}</span>' if detail else ""
    return (
        f'<div class="counter"><span class="value">{_e(value)}</span>'
        f'<span class="label">{_e(label)}</span>{extra}</div>'
    )


def _counters(summary: CounterSummary) -> str:
    busy = [f"{n} {state}" for state, n in summary.activeByState.items() if n]
    mean = (
        f"{summary.handshakeSecondsTotal / summary.handshakes * 1000:.1f} ms"
        if summary.handshakes
        else "-"
    )
    return "".join(
        [
            _counter("active sessions", str(summary.active), ", ".join(busy)),
            _counter("sessions started", str(summary.sessionsStarted)),
            _counter(
                "sessions ended",
                str(summary.sessionsEnded),
                f"{summary.granted} granted",
            ),
            _counter("refused", str(summary.rejected)),
            _counter(
                "relayed up", humanBytes(summary.bytesUp), f"{summary.bytesUp} bytes"
            ),
            _counter(
                "relayed down",
                humanBytes(summary.bytesDown),
                f"{summary.bytesDown} bytes",
            ),
            _counter(
                "DNS lookups",
                str(summary.dnsLookups),
                f"{summary.dnsFailures} failed",
            ),
            _counter(
                "ident lookups",
                str(summary.identLookups),
                f"{summary.identMatches} matched",
            ),
            _counter("mean handshake", mean, f"{summary.handshakes} handshakes"),
        ]
    )


def _row(info: SessionInfo, now: float, worker: int | None = None) -> str:
    state = stateLabel(info.state)
    user = _e(info.user)
    if info.identUser is not None and info.identUser != info.user:
        user += f' <span class="ident">ident {_e(info.identUser)}</span>'
    rule = _e(info.rule)
    if info.route is not None:
        # Under the rule that allowed it, the route (--routes) it took.
        via = f" via {_e(info.upstream)}" if info.upstream else ""
        rule += f' <span class="route">route {_e(info.route)}{via}</span>'
    cells = [
        f'<td class="num">{info.id}</td>',
        f'<td class="text" title="{_e(info.client)}">{_e(info.client)}</td>',
        f'<td class="text">{user}</td>',
        f"<td>{_e(protocolText(info.version, info.auth))}</td>",
        f"<td>{_e(info.command)}</td>",
        f'<td class="text" title="{_e(info.destination)}">{_e(info.destination)}</td>',
        f'<td class="text">{_e(info.resolved)}</td>',
        f'<td><span class="state state-{state}">{_e(info.state)}</span></td>',
        f'<td class="num">{_e(humanSeconds(now - info.started))}</td>',
        f'<td class="num" title="{info.bytesUp} bytes">'
        f"{_e(humanBytes(info.bytesUp))}</td>",
        f'<td class="num" title="{info.bytesDown} bytes">'
        f"{_e(humanBytes(info.bytesDown))}</td>",
        f'<td class="num">{_e(humanSeconds(info.idle))}</td>',
        f'<td class="text">{rule}</td>',
    ]
    if worker is None:
        return (
            f'<tr id="session-{info.id}" data-session="{info.id}" '
            f'data-state="{state}">{"".join(cells)}</tr>'
        )
    # Session numbers are per worker process: the row's id needs both.
    cells.insert(1, f'<td class="num">{worker}</td>')
    return (
        f'<tr id="session-{worker}-{info.id}" data-session="{info.id}" '
        f'data-worker="{worker}" data-state="{state}">{"".join(cells)}</tr>'
    )


def renderPage(
    sessions: list[SessionInfo],
    summary: CounterSummary,
    now: float,
    workers: Sequence[int] | None = None,
    upstreams: Sequence[UpstreamRow] = (),
) -> str:
    """
    The status page's HTML: counters and session table as of C{now}.

    @param workers: for a server with worker processes (C{--workers}), the
        worker number of each session, shown in a column of its own.
    @param upstreams: the upstream SOCKS servers of C{--routes}: each one's
        name (no password), state (C{up}, or when its bad mark expires;
        with workers, in how many) and sessions carried; shown in a table
        of their own when there are any.
    """
    columns = list(_COLUMNS)
    if workers is not None:
        columns.insert(1, ("worker", True))
    heads = "".join(
        f'<th class="num">{name}</th>' if right else f"<th>{name}</th>"
        for name, right in columns
    )
    shownWorkers: Iterable[int | None] = (
        workers if workers is not None else [None] * len(sessions)
    )
    rows = "".join(
        _row(info, now, worker)
        for info, worker in zip(sessions, shownWorkers, strict=True)
    ) or (f'<tr><td class="empty" colspan="{len(columns)}">no sessions</td></tr>')
    asof = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    upstreamTable = ""
    if upstreams:
        upstreamRows = "".join(
            f'<tr><td class="text">{_e(row.name)}</td>'
            f'<td class="text">{_e(row.state)}</td>'
            f'<td class="num">{row.sessions}</td></tr>'
            for row in upstreams
        )
        upstreamTable = (
            '<table id="upstreams"><thead><tr><th>upstream</th><th>state</th>'
            f'<th class="num">sessions</th></tr></thead><tbody>{upstreamRows}'
            "</tbody></table>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>twisted-socks status</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<header><h1>twisted-socks</h1><span id="conn"></span></header>
<main id="live">
<p class="asof">as of {_e(asof)}</p>
<section class="counters">{_counters(summary)}</section>
<table id="sessions">
<thead><tr>{heads}</tr></thead>
<tbody>{rows}</tbody>
</table>
{upstreamTable}
</main>
<footer>Refreshes every {REFRESH_SECONDS} s.
As JSON: <a href="sessions">sessions</a>;
for Prometheus: <a href="metrics">metrics</a>.</footer>
<script>{_SCRIPT}</script>
</body>
</html>
"""
