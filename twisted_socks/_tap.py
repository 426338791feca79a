"""
The server's options and service: C{twistd -n socks ...}, and the same for
the lean launcher (C{twisted-socks}, L{twisted_socks._serve}).

This is application code, so unlike the library modules it may use the
global reactor, which twistd (or the launcher) has installed before it
calls us.

Importing this module imports neither the reactor nor Twisted's endpoints
(and through them the TLS stack): the launcher parses the options once
before it decides whether to keep TLS out of the process, so everything
heavy is imported where it is used.
"""

from __future__ import annotations

import atexit
import signal
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.logfile import LogFile

from ._heap import releaseFreedMemory
from ._policy import IdentMode
from ._rules import RulesError, loadRules
from ._services import (
    ListenService,
    NothingToReload,
    OneLineListenErrors,
    ReloadOnHangup,
    StopOnTerminate,
    TopService,
    logFile,
)

if TYPE_CHECKING:
    from ._server import SOCKSv4ServerFactory
    from ._textlog import TextLinesObserver
    from ._workerspec import WorkerSpec

__all__ = ["Options", "makeService"]

_log = Logger(namespace="twisted_socks.tap")


def _checked(
    name: str, convert: Callable[[str], float], low: float, high: float, what: str
) -> Callable[[str], float]:
    """A coercer that names its option in the error, for one-line messages."""

    def coerce(value: str) -> float:
        try:
            number = convert(value)
        except ValueError:
            number = float("nan")
        if not low <= number <= high:  # also rejects NaN
            raise ValueError(f"--{name} must be {what}, not {value!r}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


_INF = float("inf")

#: --relay: the factory's splice argument for each value.
_RELAYS = {"auto": None, "splice": True, "copy": False}

_IDENT_MODES = {
    "off": IdentMode.OFF,
    "lenient": IdentMode.LENIENT,
    "strict": IdentMode.STRICT,
}


def _identMode(value: str) -> IdentMode:
    try:
        return _IDENT_MODES[value.lower()]
    except KeyError:
        raise ValueError(
            f"--ident must be off, lenient or strict, not {value!r}"
        ) from None


_identMode.coerceDoc = ""  # type: ignore[attr-defined]


def projectVersion() -> str:
    """
    This project's version: from the installed distribution's metadata (what
    pip installed), else, in a checkout that is not installed, the package's
    own C{__version__}.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twisted-socks")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def versionLine() -> str:
    """What C{--version} prints: ours first, then what we run on."""
    import twisted

    return (
        f"twisted-socks {projectVersion()} (Twisted {twisted.__version__}, "
        f"Python {sys.version.split()[0]})"
    )


#: The most worker processes C{--workers} accepts: a typo such as 1000
#: should not fork a thousand servers.
MAX_WORKERS = 256


class Options(usage.Options):
    """Command-line options of C{twistd socks} (and of the launcher)."""

    synopsis = "[options]"
    #: How messages name the command (the launcher's subclass changes it).
    programName = "twistd socks"
    longdesc = (
        "A SOCKS4/SOCKS4A proxy (twisted-socks). Without rules only clients on "
        "loopback or a UNIX socket are served; it is never an open proxy."
    )

    optFlags: list[list[Any]] = [
        [
            "status-insecure",
            None,
            "Serve --status without a token even off loopback: anyone who "
            "reaches it sees every session.",
        ],
    ]

    optParameters: list[list[Any]] = [
        [
            "port",
            "p",
            1080,
            "TCP port to listen on, with --interface.",
            _checked("port", int, 0, 65535, "a port number 0..65535"),
        ],
        ["interface", "i", "127.0.0.1", "Address to listen on, with --port."],
        [
            "negotiate-timeout",
            None,
            30.0,
            "Seconds a client has to send its whole request.",
            _checked("negotiate-timeout", float, 0, _INF, "a number of seconds"),
        ],
        [
            "connect-timeout",
            None,
            30.0,
            "Seconds to resolve and connect to the destination.",
            _checked("connect-timeout", float, 0, _INF, "a number of seconds"),
        ],
        [
            "idle-timeout",
            None,
            120.0,
            "Close a tunnel idle this many seconds both ways (0 = never).",
            _checked("idle-timeout", float, 0, _INF, "a number of seconds"),
        ],
        [
            "rules",
            "r",
            None,
            "Rules file (sockd.conf format); SIGHUP reloads it. "
            "Default: loopback clients only.",
        ],
        [
            "max-rule-commands",
            None,
            16,
            "Rule commands (: command in the rules file) running at once, per "
            "process; more are dropped and counted in the log.",
            _checked("max-rule-commands", int, 1, _INF, "a whole number, 1 or more"),
        ],
        [
            "ident",
            None,
            "off",
            "Ask the client's identd (RFC 1413): off, lenient (no identd is "
            "allowed; another user gets 93) or strict (no identd gets 92). "
            "A rule's ?= overrides it.",
            _identMode,
        ],
        [
            "ident-timeout",
            None,
            10.0,
            "Seconds to wait for the client's identd.",
            _checked(
                "ident-timeout", float, 0.001, _INF, "a positive number of seconds"
            ),
        ],
        [
            "ident-port",
            None,
            113,
            "Port of the client's identd (113; another for tests).",
            _checked("ident-port", int, 1, 65535, "a port number 1..65535"),
        ],
        [
            "bind-address",
            None,
            None,
            "IPv4 address BIND listeners use and announce (default: the "
            "address the client reached).",
        ],
        [
            "bind-timeout",
            None,
            120.0,
            "Seconds a BIND listener waits for its inbound connection.",
            _checked("bind-timeout", float, 0.001, _INF, "a positive number"),
        ],
        [
            "max-binds-per-client",
            None,
            4,
            "Concurrent BIND listeners per client address.",
            _checked("max-binds-per-client", int, 1, _INF, "a whole number, 1 or more"),
        ],
        [
            "status",
            None,
            None,
            "Serve a status page (/ HTML, /sessions JSON, /metrics Prometheus) "
            "on this endpoint: a port number (on 127.0.0.1) or an endpoint "
            "description, e.g. tcp6:9180:interface=\\:\\:1. Anywhere but "
            "loopback or a UNIX socket it needs --status-auth or "
            "--status-insecure.",
        ],
        [
            "status-auth",
            None,
            None,
            "File holding the status page's token (one line, at least 16 "
            "characters, not readable by other users); requests must send it "
            "as a bearer token or as the basic-authentication password.",
        ],
        [
            "outbound-address",
            None,
            None,
            "Local address outbound connections come from (multi-homed "
            "gateways); default: the kernel's choice.",
        ],
        [
            "shutdown-grace",
            None,
            10.0,
            "On SIGTERM, seconds established sessions may take to finish "
            "before they are closed.",
            _checked("shutdown-grace", float, 0, _INF, "a number of seconds"),
        ],
        [
            "log-format",
            None,
            "text",
            "Log format: text, or json (one JSON object per line; session "
            "records carry all their fields).",
        ],
        [
            "name-cache-ttl",
            None,
            30.0,
            "Seconds a SOCKS4A name's addresses are kept for the next request "
            "for it (0: ask the resolver every time).",
            _checked("name-cache-ttl", float, 0, 86400, "0 to 86400 seconds"),
        ],
        [
            "relay",
            None,
            "auto",
            "How tunnels move bytes: auto (in the kernel with splice(2) from "
            "a tunnel's first bulk read, on Linux), splice (from the start), "
            "or copy (through Python, as on other platforms).",
        ],
        [
            "max-connections-per-client",
            None,
            0,
            "Concurrent connections from one client address (0 = no limit).",
            _checked("max-connections-per-client", int, 0, _INF, "a whole number"),
        ],
        [
            "ipv6-client-prefix",
            None,
            64,
            "Per-client limits count an IPv6 client by this many leading bits "
            "of its address (64: one /64 is one client; 128: each address).",
            _checked("ipv6-client-prefix", int, 1, 128, "a prefix length 1..128"),
        ],
        [
            "rate-per-client",
            None,
            None,
            "New connections one client address may open per time, as "
            "N/SECONDS, e.g. 20/1 (default: no limit).",
        ],
        [
            "max-connections",
            None,
            200,
            "Concurrent clients; more get reply 91 and are closed.",
            _checked("max-connections", int, 1, _INF, "a whole number, 1 or more"),
        ],
        [
            "workers",
            None,
            1,
            "Worker processes sharing the listening sockets, to use several "
            "cores (1 = this process serves; see the workers documentation "
            "for how limits and --status aggregate).",
            _checked(
                "workers", int, 1, MAX_WORKERS, f"a whole number 1..{MAX_WORKERS}"
            ),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["proxy-protocol-from"] = []
        self._failed = False
        #: The arguments parsed, as given: the workers of C{--workers} are
        #: started with them.
        self.argv: list[str] = []
        #: Set (before parsing) in a worker process of C{--workers}: its
        #: share of the limits and the listening sockets it inherited.
        self.worker: WorkerSpec | None = None
        #: Whether the arguments were read and their values are being
        #: checked together: an error from then on is about a value (or the
        #: rules file), not the command line's shape.
        self.argumentsRead = False

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse; on an error, remember it so the usage text stays short."""
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        """The full help, or after an error only a pointer to it."""
        if self._failed:
            # twistd prints this and then the error: keep it to one line
            # that says where the full help is.
            return f"({self.programName} --help lists the options)"
        return str(super().getUsage(width))

    def opt_version(self) -> None:
        """Print this project's version and exit (not Twisted's, as usage.Options would)."""  # noqa: E501
        print(versionLine())
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted server endpoint description, e.g. tcp6:1080, unix:/run/socks.sock, systemd:domain=INET:index=0 or haproxy:tcp:1080 (repeatable; replaces --port/--interface)."""  # noqa: E501
        self["listen"].append(description)

    def opt_proxy_protocol_from(self, networks: str) -> None:
        """Addresses or CIDR networks of the proxies that may send PROXY headers to haproxy: listeners; connections from elsewhere are closed unread (repeatable or comma-separated; default: 127.0.0.0/8 and ::1, this host)."""  # noqa: E501
        self["proxy-protocol-from"].append(networks)

    def postOptions(self) -> None:
        """Check the options together and build the server's limits."""
        self.argumentsRead = True
        from twisted.internet import reactor

        from ._server import Limits

        if not self["listen"]:
            interface = self["interface"].replace(":", "\\:")
            self["listen"] = [f"tcp:{self['port']}:interface={interface}"]
        from ._proxyprotocol import DEFAULT_TRUSTED_PROXIES, parseTrustedProxies

        try:
            self["trusted-proxies"] = (
                parseTrustedProxies(self["proxy-protocol-from"])
                or DEFAULT_TRUSTED_PROXIES
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self.worker is not None:
            # A worker listens on the sockets its supervisor passed it; the
            # descriptions were checked there (and a systemd: one could
            # not even be parsed again here: the passed descriptors belong
            # to the supervisor's process ID).
            from ._workers import workerEndpoints

            self["endpoints"] = workerEndpoints(
                self.worker, reactor, self["trusted-proxies"]
            )
        else:
            self["endpoints"] = []
            for description in self["listen"]:
                try:
                    endpoint = _listenEndpoint(
                        reactor, description, self["trusted-proxies"]
                    )
                except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
                    raise usage.UsageError(
                        f"bad --listen description {description!r}: {_endpointError(e)}"
                    ) from None
                self["endpoints"].append((description, endpoint))
        if self["workers"] > 1 and self.worker is None:
            from ._workerspec import checkShareable

            for description in self["listen"]:
                problem = checkShareable(description)
                if problem is not None:
                    raise usage.UsageError(problem)
            if self["max-connections"] < self["workers"]:
                raise usage.UsageError(
                    f"--max-connections ({self['max-connections']}) must be at "
                    f"least --workers ({self['workers']}): each worker gets its "
                    "share"
                )
        rate, window = 0, 1.0
        if self["rate-per-client"] is not None:
            count, _, seconds = self["rate-per-client"].partition("/")
            try:
                rate, window = int(count), float(seconds or "1")
            except ValueError:
                rate = -1
            if rate < 1 or not window > 0:
                raise usage.UsageError(
                    "--rate-per-client must be N/SECONDS (e.g. 20/1), "
                    f"not {self['rate-per-client']!r}"
                )
        maxConnections = self["max-connections"]
        if self.worker is not None:
            maxConnections = self.worker.maxConnections
        try:
            self["limits"] = Limits(
                negotiateTimeout=self["negotiate-timeout"],
                connectTimeout=self["connect-timeout"],
                idleTimeout=self["idle-timeout"],
                maxConnections=maxConnections,
                bindTimeout=self["bind-timeout"],
                maxBindsPerClient=self["max-binds-per-client"],
                maxConnectionsPerClient=self["max-connections-per-client"],
                ratePerClient=rate,
                rateWindow=window,
                ipv6ClientPrefix=self["ipv6-client-prefix"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self._checkStatus(reactor)
        # usage.Options does not pass defaults through their coercers.
        if isinstance(self["ident"], str):
            self["ident"] = _identMode(self["ident"])
        if self["outbound-address"] is not None:
            try:
                ip_address(self["outbound-address"])
            except ValueError:
                raise usage.UsageError(
                    "--outbound-address must be an IP address, "
                    f"not {self['outbound-address']!r}"
                ) from None
        if self["relay"] not in _RELAYS:
            raise usage.UsageError(
                f"--relay must be auto, splice or copy, not {self['relay']!r}"
            )
        if self["relay"] == "splice":
            from .relay._splice import spliceAvailable

            if not spliceAvailable():
                raise usage.UsageError(
                    "--relay splice needs Linux (splice(2)); use auto or copy"
                )
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(
                f"--log-format must be text or json, not {self['log-format']!r}"
            )
        if self["bind-address"] is not None:
            try:
                IPv4Address(self["bind-address"])
            except ValueError:
                raise usage.UsageError(
                    f"--bind-address must be an IPv4 address (SOCKS4 replies "
                    f"carry IPv4 only), not {self['bind-address']!r}"
                ) from None
        if self["rules"] is not None:
            # Loaded now so that an invalid file stops start-up with its
            # file:line message; the running server loads it again.
            try:
                loadRules(self["rules"])
            except RulesError as e:
                raise usage.UsageError(str(e)) from None

    def _checkStatus(self, reactor: Any) -> None:
        """
        Resolve C{--status} (a bare port is loopback) and its credential:
        off loopback, a token (C{--status-auth}) or an explicit
        C{--status-insecure} is required.
        """
        from twisted.internet.endpoints import serverFromString

        from ._statusauth import isLocalEndpoint, loadStatusToken, statusDescription

        self["status-token"] = None
        if self["status"] is None:
            for option in ("status-auth", "status-insecure"):
                if self[option]:
                    raise usage.UsageError(f"--{option} needs --status")
            return
        self["status"] = statusDescription(self["status"])
        if self.worker is not None:
            # Workers serve no status page: their supervisor does.
            return
        try:
            serverFromString(reactor, self["status"])
        except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
            raise usage.UsageError(
                f"bad --status description {self['status']!r}: {_endpointError(e)}"
            ) from None
        if self["status-auth"] is not None:
            if self["status-insecure"]:
                raise usage.UsageError(
                    "give --status-auth or --status-insecure, not both"
                )
            try:
                self["status-token"] = loadStatusToken(self["status-auth"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        elif not self["status-insecure"] and not isLocalEndpoint(self["status"]):
            raise usage.UsageError(
                f"--status {self['status']} is not on loopback or a UNIX socket: "
                "give --status-auth FILE (a token), or --status-insecure to serve "
                "every session to anyone who reaches it"
            )


def _endpointError(error: Exception) -> str:
    """Why an endpoint description could not be parsed, in words."""
    if isinstance(error, IndexError):
        # Twisted's systemd: parser indexes the inherited sockets.
        return "no inherited socket (LISTEN_FDS) has that index"
    return str(error)


def _listenEndpoint(reactor: Any, description: str, trusted: Any) -> Any:
    """
    The endpoint of a C{--listen} description.  Twisted's own C{haproxy:}
    parser would believe a PROXY header from anyone: a C{haproxy:}
    description gets the gate of L{twisted_socks._proxyprotocol} instead,
    around its inner endpoint.
    """
    from twisted.internet.endpoints import serverFromString

    from ._workerspec import HAPROXY, endpointTypes

    if endpointTypes(description)[0] != HAPROXY:
        return serverFromString(reactor, description)
    from ._proxyprotocol import proxyProtocolEndpoint

    inner = description.partition(":")[2]
    return proxyProtocolEndpoint(_listenEndpoint(reactor, inner, trusted), trusted)


def _textObserver(reactor: Any, twistdOptions: Any) -> TextLinesObserver | None:
    """
    twistd's text log, written by the launcher's observer: the lines
    twistd's own C{textFileLogObserver} writes, to the same place, at a
    fraction of its cost (L{twisted_socks._textlog}: with one record per
    session, twistd's observer made C{twistd socks} measurably slower per
    session than the launcher).

    Standard output is flushed within 0.2 s rather than per line (a log
    file is unbuffered either way), and at exit, for the lines twistd logs
    after the reactor has stopped.  A log file is reopened on SIGUSR1, as
    twistd does for its own.

    @return: L{None} where twistd's own choice must stand: C{--syslog}, and
        a daemon told to log to standard output (which twistd refuses).
    """
    if twistdOptions.get("syslog"):
        return None
    if twistdOptions.get("logfile") == "-" and not twistdOptions.get("nodaemon"):
        return None
    from ._textlog import TextLinesObserver

    sink = logFile(twistdOptions)
    if isinstance(sink, LogFile) and not signal.getsignal(signal.SIGUSR1):
        # What twistd's own file observer installs (unless SIGUSR1 is
        # taken), and in the same way: the rotation runs in the reactor.
        rotating = sink

        def rotate(signum: int, frame: Any) -> None:
            reactor.callFromThread(rotating.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    observer = TextLinesObserver(sink, reactor.callLater)
    atexit.register(observer.flush)
    return observer


def _jsonObserver(twistdOptions: Any) -> ILogObserver:
    """A JSON-lines observer writing where twistd's text log would go."""
    from ._jsonlog import JSONLinesObserver

    # JSON lines make no sense in syslog: with --syslog they go to the file
    # twistd would otherwise have used.
    return JSONLinesObserver(logFile(twistdOptions))


class _GracefulShutdown(StopOnTerminate):
    """
    On shutdown (SIGTERM), lets established sessions finish for up to
    C{grace} seconds, then closes the rest. The listeners stop at once:
    their own services stop alongside this one.
    """

    def __init__(
        self, reactor: Any, factory: SOCKSv4ServerFactory, grace: float
    ) -> None:
        super().__init__(reactor)
        self._factory = factory
        self._grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()
        done: Deferred[None] = Deferred()
        deadline = self._reactor.seconds() + self._grace
        if self._factory.activeSessions:
            _log.info(
                "shutting down: {count} sessions have {grace} s to finish",
                count=len(self._factory.activeSessions),
                grace=self._grace,
            )

        def check() -> None:
            sessions = self._factory.activeSessions
            if not sessions:
                done.callback(None)
            elif self._reactor.seconds() >= deadline:
                _log.info(
                    "closing {count} sessions at the deadline", count=len(sessions)
                )
                for session in list(sessions):
                    session.abort("server shutdown")
                # The aborts complete on the reactor's next turn.
                self._reactor.callLater(0, done.callback, None)
            else:
                self._reactor.callLater(0.05, check)

        check()
        return done


def installedReactor() -> Any:
    """The global reactor (installing the default one if none is yet)."""
    from twisted.internet import reactor

    return reactor


def makeService(options: Options) -> service.IService:
    """
    Build the server from parsed options: this process serving, or with
    C{--workers} above 1 a supervisor of worker processes that serve.
    """
    reactor = installedReactor()
    if options["workers"] > 1 and options.worker is None:
        from ._workers import makeSupervisorService

        return makeSupervisorService(reactor, options)
    return _makeServerService(reactor, options)


def _makeServerService(reactor: Any, options: Options) -> TopService:
    """The server of one process (the only one, or one worker)."""
    from ._actions import ShellActionRunner, identFailureHook, shellHook
    from ._connect import TCPConnector
    from ._ident import RFC1413Resolver
    from ._reload import BackgroundReloads, RulesReloader
    from ._server import SOCKSv4ServerFactory

    worker = options.worker
    resolver = RFC1413Resolver(
        reactor, port=options["ident-port"], timeout=options["ident-timeout"]
    )
    outbound = options["outbound-address"]
    # No timer of the connector's own: the session's connect deadline
    # (--connect-timeout) cancels the attempt.
    connector = TCPConnector(
        reactor,
        timeout=None,
        bindAddress=(outbound, 0) if outbound is not None else None,
    )
    # The counters cost memory and a dependency (prometheus_client): only
    # a status page (this process's, or a supervisor's) reads them.
    metrics = None
    wantMetrics = worker.wantsMetrics if worker is not None else options["status"]
    if wantMetrics:
        from ._metrics import ServerMetrics

        metrics = ServerMetrics()
    from ._resolve import ThreadedHostnameResolver

    # Threads of its own, as many as lookups may run: the reactor's pool
    # also runs rule commands' reverse lookups, and a SOCKS4A lookup must
    # never wait behind those for a thread.
    nameResolver: Any = ThreadedHostnameResolver(reactor, options["limits"].maxLookups)
    if options["name-cache-ttl"] > 0:
        from ._namecache import CachingHostnameResolver

        nameResolver = CachingHostnameResolver(
            nameResolver, reactor, ttl=options["name-cache-ttl"]
        )
    factory = SOCKSv4ServerFactory(
        reactor,
        metrics=metrics,
        connector=connector,
        limits=options["limits"],
        identResolver=resolver,
        identMode=options["ident"],
        bindAddress=options["bind-address"],
        splice=_RELAYS[options["relay"]],
        nameResolver=nameResolver,
    )
    if metrics is not None:
        metrics.watch(factory)
    top = TopService()
    if worker is not None:
        from ._workers import addWorkerServices

        addWorkerServices(worker, reactor, top, factory, metrics)
    elif options["status"] is not None and metrics is not None:
        from ._status import makeStatusService

        status = makeStatusService(
            reactor, options["status"], factory, metrics, token=options["status-token"]
        )
        OneLineListenErrors(
            status, options["status"], options.programName
        ).setServiceParent(top)
    # twistd's own options (--logfile, --nodaemon) are the parent's; the
    # launcher (and so every worker) has none, and logs and collects itself.
    twistdOptions = getattr(options, "parent", None)
    if options["log-format"] == "json":
        top.logObserver = _jsonObserver(twistdOptions)
    elif twistdOptions is not None:
        top.logObserver = _textObserver(reactor, twistdOptions)
    if twistdOptions is not None:
        reactor.callWhenRunning(releaseFreedMemory)
    _GracefulShutdown(reactor, factory, options["shutdown-grace"]).setServiceParent(top)
    if options["rules"] is not None:
        runner = ShellActionRunner(reactor, maxRunning=options["max-rule-commands"])
        reloader = RulesReloader(
            factory,
            options["rules"],
            onMatch=shellHook(runner),
            onIdentFailure=identFailureHook(runner),
        )
        try:
            reloader.load()
        except RulesError as e:
            sys.stderr.write(f"{options.programName}: {e}\n")
            sys.exit(1)
        # Parsed in a thread, coalesced: a big file or a storm of SIGHUPs
        # must not stall the tunnels.
        reloads = BackgroundReloads(reactor, reloader)
        ReloadOnHangup(reactor, reloads).setServiceParent(top)
    else:
        # systemd's reload, a habit: SIGHUP must not kill a server that
        # has no rules to reload.
        ReloadOnHangup(reactor, NothingToReload()).setServiceParent(top)
    for description, endpoint in options["endpoints"]:
        ListenService(
            description, endpoint, factory, options.programName
        ).setServiceParent(top)
    return top
