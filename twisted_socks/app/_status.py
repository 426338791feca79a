"""
The status endpoint (C{twistd socks --status ENDPOINT}), with twisted.web
(the page's HTML is L{twisted_socks.app._statuspage}'s):

  - C{/}: a small HTML page, the live session table and the main counters,
    refreshing itself every two seconds;
  - C{/sessions}: the same as JSON, for scripts and for
    C{python -m twisted_socks sessions URL};
  - C{/metrics}: every counter in the Prometheus text format.

The session table names every client, user and destination.  Nothing is
served unless the administrator gives an endpoint; on loopback
(C{--status 9180} means C{tcp:9180:interface=127.0.0.1}) or a UNIX socket
no credential is asked, anywhere else a token is (C{--status-auth}, see
L{twisted_socks.app._statusauth}) unless C{--status-insecure} says otherwise.
As a browser could be made to read a loopback page through DNS rebinding,
requests naming any host but an IP address or C{localhost} are refused
unless the name is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from ._metrics import ServerMetrics
from ._statusauth import StatusToken
from ._statuspage import COMMON_HEADERS, CSP, REFRESH_SECONDS, renderPage
from ._upstreammetrics import upstreamRows

if TYPE_CHECKING:
    from ..server._factory import SOCKSv4ServerFactory

__all__ = [
    "REFRESH_SECONDS",
    "GuardedRoot",
    "MetricsResource",
    "QuietSite",
    "SessionsResource",
    "StatusPage",
    "StatusResource",
    "StatusService",
    "makeStatusService",
    "makeStatusSite",
    "renderPage",
    "requestHeader",
]

_log = Logger(namespace="twisted_socks.status")


def requestHeader(request: Request, name: bytes) -> str | None:
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
        for name, value in COMMON_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", contentType)


class StatusPage(_LiveResource):
    """C{/}: the HTML page, readable at a glance."""

    def render_GET(self, request: Request) -> bytes:
        """Render the counters and the session table."""
        sessions = self._factory.sessions()
        summary = self._metrics.summary(sessions)
        self._headers(request, b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", CSP)
        now = self._now()
        upstreams = upstreamRows(getattr(self._factory, "router", None), now)
        page = renderPage(sessions, summary, now, upstreams=upstreams)
        return page.encode("utf-8")


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
        encoder, contentType = choose_encoder(requestHeader(request, b"accept") or "")
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
        for name, value in COMMON_HEADERS.items():
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
        host = requestHeader(request, b"host")
        if host is not None and not self._hostAllowed(host):
            return pages.forbidden(
                "Forbidden host",
                "This status page answers only to its IP address or "
                "localhost (protection against DNS rebinding).",
            )
        if self._token is not None and not self._token.allows(
            requestHeader(request, b"authorization")
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


class QuietSite(Site):
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
    return QuietSite(StatusResource(factory, metrics, allowedHosts, token))


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
