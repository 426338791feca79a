"""
The status endpoint (C{twistd socks --status ENDPOINT}), with twisted.web:

  - C{/}: a small HTML page, the live session table and the main counters,
    refreshing itself every two seconds;
  - C{/sessions}: the same as JSON, for scripts and for
    C{python -m twisted_socks sessions URL};
  - C{/metrics}: every counter in the Prometheus text format.

The session table names every client, user and destination.  Nothing is
served unless the administrator gives an endpoint; on loopback
(C{--status 9180} means C{tcp:9180:interface=127.0.0.1}) or a UNIX socket
no credential is asked, anywhere else a token is (C{--status-auth}, see
L{twisted_socks._statusauth}) unless C{--status-insecure} says otherwise.
As a browser could be made to read a loopback page through DNS rebinding,
requests naming any host but an IP address or C{localhost} are refused
unless the name is allowed.
"""

from __future__ import annotations

import html
import json
import time
from base64 import b64encode
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from hashlib import sha256
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from ._metrics import CounterSummary, ServerMetrics, stateLabel
from ._sessionscli import humanBytes, humanSeconds
from ._statusauth import StatusToken

if TYPE_CHECKING:
    from ._server import SessionInfo, SOCKSv4ServerFactory

__all__ = [
    "REFRESH_SECONDS",
    "GuardedRoot",
    "MetricsResource",
    "SessionsResource",
    "StatusPage",
    "StatusResource",
    "makeStatusService",
    "makeStatusSite",
    "renderPage",
]

_log = Logger(namespace="twisted_socks.status")

#: How often the page reloads its table.
REFRESH_SECONDS = 2

# Headers on every answer: nothing is cached (it is live data) and nothing
# may frame or sniff it.
_COMMON_HEADERS = {
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
.state-waiting { background: #dce8ff; }
.state-closed { background: #eee; color: #666; }
.ident { color: #666; font-size: .85em; }
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


# Only this page's own inline style and script may run, and it may only
# talk to its own origin.
_CSP = (
    f"default-src 'none'; style-src {_cspHash(_STYLE)}; "
    f"script-src {_cspHash(_SCRIPT)}; connect-src 'self'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).encode("ascii")

_COLUMNS = (
    ("id", True),
    ("client", False),
    ("user", False),
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
    cells = [
        f'<td class="num">{info.id}</td>',
        f'<td class="text" title="{_e(info.client)}">{_e(info.client)}</td>',
        f'<td class="text">{user}</td>',
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
        f'<td class="text">{_e(info.rule)}</td>',
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
) -> str:
    """
    The status page's HTML: counters and session table as of C{now}.

    @param workers: for a server with worker processes (C{--workers}), the
        worker number of each session, shown in a column of its own.
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
</main>
<footer>Refreshes every {REFRESH_SECONDS} s.
As JSON: <a href="sessions">sessions</a>;
for Prometheus: <a href="metrics">metrics</a>.</footer>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _header(request: Request, name: bytes) -> str | None:
    """A request header as text (HTTP headers are Latin-1), if present."""
    value = request.getHeader(name)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


class _LiveResource(Resource):
    """A leaf that renders the live state of one server."""

    isLeaf = True

    def __init__(self, factory: SOCKSv4ServerFactory, metrics: ServerMetrics) -> None:
        super().__init__()
        self._factory = factory
        self._metrics = metrics

    def _now(self) -> float:
        return float(self._factory.reactor.seconds())

    def _headers(self, request: Request, contentType: bytes) -> None:
        for name, value in _COMMON_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", contentType)


class StatusPage(_LiveResource):
    """C{/}: the HTML page, readable at a glance."""

    def render_GET(self, request: Request) -> bytes:
        """Render the counters and the session table."""
        sessions = self._factory.sessions()
        summary = self._metrics.summary(sessions)
        self._headers(request, b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", _CSP)
        return renderPage(sessions, summary, self._now()).encode("utf-8")


class SessionsResource(_LiveResource):
    """
    C{/sessions}: JSON, an object with C{now} (the server's clock),
    C{sessions} (one object per live session, the fields of
    L{SessionInfo}, oldest first) and C{counters} (L{CounterSummary}).
    """

    def render_GET(self, request: Request) -> bytes:
        """Render the session table as JSON."""
        sessions = self._factory.sessions()
        answer = {
            "now": self._now(),
            "sessions": [asdict(info) for info in sessions],
            "counters": self._metrics.summary(sessions).asDict(),
        }
        self._headers(request, b"application/json")
        return json.dumps(answer, indent=1).encode("ascii") + b"\n"


class MetricsResource(_LiveResource):
    """
    C{/metrics}: the registry of a L{ServerMetrics} in the Prometheus text
    format (OpenMetrics if the scraper asks for it).
    """

    def render_GET(self, request: Request) -> bytes:
        """Render every metric, in the format the scraper accepts."""
        encoder, contentType = choose_encoder(_header(request, b"accept") or "")
        body = encoder(self._metrics.registry)
        self._headers(request, contentType.encode("ascii"))
        return body


class _Unauthorized(Resource):
    """
    401 for a request without the status token: it offers both ways to
    present it (a bearer token for scripts and Prometheus, basic
    authentication, whose password is the token, for browsers).
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        """Answer 401 with the challenges."""
        request.setResponseCode(401)
        for name, value in _COMMON_HEADERS.items():
            request.setHeader(name, value)
        request.responseHeaders.setRawHeaders(
            b"www-authenticate",
            [
                b'Bearer realm="twisted-socks status"',
                b'Basic realm="twisted-socks status", charset="UTF-8"',
            ],
        )
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"401 Unauthorized: this status page needs its token\n"


class GuardedRoot(Resource):
    """
    The root of a status site: its children, each refused (403) if the
    request's C{Host} is neither an IP address, C{localhost}, nor one of
    C{allowedHosts}, and (401) if a C{token} is required and the request
    does not present it.
    """

    def __init__(
        self, allowedHosts: Iterable[str] = (), token: StatusToken | None = None
    ) -> None:
        super().__init__()
        self._allowedHosts = frozenset(h.lower() for h in allowedHosts)
        self._token = token

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        """Check the C{Host} header and the token, then find the page."""
        host = _header(request, b"host")
        if host is not None and not self._hostAllowed(host):
            return pages.forbidden(
                "Forbidden host",
                "This status page answers only to its IP address or "
                "localhost (protection against DNS rebinding).",
            )
        if self._token is not None and not self._token.allows(
            _header(request, b"authorization")
        ):
            return _Unauthorized()
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Anything else is not found (with an escaped page)."""
        return pages.notFound()

    def _hostAllowed(self, header: str) -> bool:
        host = header.strip().lower()
        if host.startswith("["):  # [v6]:port
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if host == "localhost" or host in self._allowedHosts:
            return True
        try:
            ip_address(host)
        except ValueError:
            return False
        return True


class StatusResource(GuardedRoot):
    """
    The root of the status site: C{/}, C{/sessions} and C{/metrics}, each
    refused (403) if the request's C{Host} is neither an IP address,
    C{localhost}, nor one of C{allowedHosts}, and (401) without C{token}
    when one is given.
    """

    def __init__(
        self,
        factory: SOCKSv4ServerFactory,
        metrics: ServerMetrics,
        allowedHosts: Iterable[str] = (),
        token: StatusToken | None = None,
    ) -> None:
        super().__init__(allowedHosts, token)
        self.putChild(b"", StatusPage(factory, metrics))
        self.putChild(b"sessions", SessionsResource(factory, metrics))
        self.putChild(b"metrics", MetricsResource(factory, metrics))


class _QuietSite(Site):
    """A site that does not log each request: the page polls every 2 s."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        """Log nothing."""


def makeStatusSite(
    factory: SOCKSv4ServerFactory,
    metrics: ServerMetrics,
    allowedHosts: Iterable[str] = (),
    token: StatusToken | None = None,
) -> Site:
    """
    The status site of a server.

    @param factory: the server whose sessions are shown.
    @param metrics: its C{metrics} collaborator (watching C{factory}).
    @param allowedHosts: host names (besides IP addresses and
        C{localhost}) the site answers to in the C{Host} header.
    @param token: if given, every request must present it (401 otherwise).
    """
    return _QuietSite(StatusResource(factory, metrics, allowedHosts, token))


class StatusService(StreamServerEndpointService):
    """
    Serves a status site on an endpoint; says where it listens, and warns
    when that is not loopback and the page has no authentication.
    """

    def __init__(
        self, description: str, endpoint: Any, site: Site, authenticated: bool = False
    ) -> None:
        super().__init__(endpoint, site)
        self.description = description
        self.authenticated = authenticated
        # A port in use stops start-up with CannotListenError rather than a
        # log line nobody reads.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """Listen (before twistd drops privileges)."""
        super().privilegedStartService()
        if self._waitingForPort is not None:
            self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        address = port.getHost()
        host = getattr(address, "host", None)
        if isinstance(host, str):
            shown = f"[{host}]" if ":" in host else host
            _log.info(
                "status page on http://{host}:{port}/ ({description})",
                host=shown,
                port=address.port,
                description=self.description,
            )
            try:
                loopback = ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if self.authenticated:
                _log.info("the status page requires its token (--status-auth)")
            elif not loopback:
                _log.warn(
                    "the status page on {description} is not on loopback and "
                    "has no authentication: anyone who reaches it sees every "
                    "session",
                    description=self.description,
                )
        else:
            _log.info(
                "status page on {address} ({description})",
                address=address,
                description=self.description,
            )
        return port


def makeStatusService(
    reactor: Any,
    description: str,
    factory: SOCKSv4ServerFactory,
    metrics: ServerMetrics,
    allowedHosts: Iterable[str] = (),
    token: StatusToken | None = None,
) -> StatusService:
    """
    A service serving the status site of C{factory} on the server endpoint
    C{description} (e.g. C{tcp:9180:interface=127.0.0.1}).

    @param token: if given, every request must present it (401 otherwise):
        give one whenever the endpoint is reachable from other hosts.
    @raise ValueError: for a bad endpoint description (as
        L{serverFromString} raises it, or a C{TypeError}/C{KeyError}).
    """
    endpoint = serverFromString(reactor, description)
    return StatusService(
        description,
        endpoint,
        makeStatusSite(factory, metrics, allowedHosts, token),
        authenticated=token is not None,
    )
