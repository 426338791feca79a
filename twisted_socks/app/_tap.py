"""
The command line of C{twistd -n socks ...} (and of the lean launcher,
C{twisted-socks}, L{twisted_socks.app._serve}, and of each worker process):
L{Options} parses it into a L{ServerConfig} (L{twisted_socks.app._config}), and
L{makeService}, twistd's entry point, hands that to the composition root
(L{twisted_socks.app._compose}).

This is application code, so unlike the library modules it may use the
global reactor, which twistd (or the launcher) has installed before it
calls us: this is the one module that names it (L{installedReactor}).

Importing this module imports neither the reactor nor Twisted's endpoints
(and through them the TLS stack): the launcher parses the options once
before it decides whether to keep TLS out of the process, so everything
heavy is imported where it is used.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.python import usage

from ._config import MAX_WORKERS, checked, configFromOptions, identMode
from ._configtypes import ServerConfig

if TYPE_CHECKING:
    from ._workerspec import WorkerSpec

__all__ = [
    "MAX_WORKERS",
    "Options",
    "installedReactor",
    "makeService",
    "projectVersion",
    "versionLine",
]

_INF = float("inf")


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
        from .. import __version__

        return __version__


def versionLine() -> str:
    """What C{--version} prints: ours first, then what we run on."""
    import twisted

    return (
        f"twisted-socks {projectVersion()} (Twisted {twisted.__version__}, "
        f"Python {sys.version.split()[0]})"
    )


class Options(usage.Options):
    """Command-line options of C{twistd socks} (and of the launcher)."""

    synopsis = "[options]"
    #: How messages name the command (the launcher's subclass changes it).
    programName = "twistd socks"
    longdesc = (
        "A SOCKS4/SOCKS4A/SOCKS5 proxy (twisted-socks). Without rules only clients on "
        "loopback or a UNIX socket are served; it is never an open proxy."
    )

    optFlags: list[list[Any]] = [
        [
            "status-insecure",
            None,
            "Serve --status without a token even off loopback: anyone who "
            "reaches it sees every session.",
        ],
        [
            "users-strict-reload",
            None,
            "On SIGHUP, cut the live sessions of users the reload of --users "
            "removed or whose password changed (without it, they continue). "
            "Needs --users.",
        ],
    ]

    optParameters: list[list[Any]] = [
        [
            "port",
            "p",
            1080,
            "TCP port to listen on, with --interface.",
            checked("port", int, 0, 65535, "a port number 0..65535"),
        ],
        ["interface", "i", "127.0.0.1", "Address to listen on, with --port."],
        [
            "negotiate-timeout",
            None,
            30.0,
            "Seconds a client has to send its whole request.",
            checked("negotiate-timeout", float, 0, _INF, "a number of seconds"),
        ],
        [
            "connect-timeout",
            None,
            30.0,
            "Seconds to resolve and connect to the destination.",
            checked("connect-timeout", float, 0, _INF, "a number of seconds"),
        ],
        [
            "idle-timeout",
            None,
            120.0,
            "Close a tunnel idle this many seconds both ways (0 = never).",
            checked("idle-timeout", float, 0, _INF, "a number of seconds"),
        ],
        [
            "rules",
            "r",
            None,
            "Rules file (sockd.conf format); SIGHUP reloads it. "
            "Default: loopback clients only.",
        ],
        [
            "routes",
            None,
            None,
            "Routes file (the client routing file's grammar, docs/routing.md): "
            "destinations reached through upstream SOCKS servers, with "
            "failover; no match goes direct. SIGHUP reloads it.",
        ],
        [
            "protocols",
            None,
            "socks4,socks5",
            "SOCKS versions served on every listener, comma-separated: "
            "socks4 (SOCKS4 and 4A), socks5, or both; a client of another "
            "is refused (SOCKS4 gets 91, SOCKS5 05 FF).",
        ],
        [
            "users",
            None,
            None,
            "Password file (name:bcrypt-hash lines, as htpasswd -B writes; "
            "python -m twisted_socks passwd FILE NAME adds a user): SOCKS5 "
            "clients must log in with username/password, and SOCKS4 "
            "requests, which cannot, get 91 unless a rule says auth=none. "
            "SIGHUP reloads it.",
        ],
        [
            "auth-failures",
            None,
            None,
            "Failed logins one client address may make, as N/SECONDS "
            "(default 10/60); beyond, it gets 05 FF until the window passes. "
            "Needs --users.",
        ],
        [
            "max-rule-commands",
            None,
            16,
            "Rule commands (: command in the rules file) running at once, per "
            "process; more are dropped and counted in the log.",
            checked("max-rule-commands", int, 1, _INF, "a whole number, 1 or more"),
        ],
        [
            "ident",
            None,
            "off",
            "Ask the client's identd (RFC 1413): off, lenient (no identd is "
            "allowed; another user gets 93) or strict (no identd gets 92). "
            "A rule's ?= overrides it.",
            identMode,
        ],
        [
            "ident-timeout",
            None,
            10.0,
            "Seconds to wait for the client's identd.",
            checked(
                "ident-timeout", float, 0.001, _INF, "a positive number of seconds"
            ),
        ],
        [
            "ident-port",
            None,
            113,
            "Port of the client's identd (113; another for tests).",
            checked("ident-port", int, 1, 65535, "a port number 1..65535"),
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
            checked("bind-timeout", float, 0.001, _INF, "a positive number"),
        ],
        [
            "max-binds-per-client",
            None,
            4,
            "Concurrent BIND listeners per client address.",
            checked("max-binds-per-client", int, 1, _INF, "a whole number, 1 or more"),
        ],
        [
            "udp-address",
            None,
            None,
            "Address SOCKS5 UDP ASSOCIATE grants name as the relay's, for a "
            "server behind NAT (default: the address the client reached).",
        ],
        [
            "udp-idle-timeout",
            None,
            120.0,
            "Seconds a UDP association may relay no datagram before it ends "
            "(0: never).",
            checked("udp-idle-timeout", float, 0, _INF, "0 or a positive number"),
        ],
        [
            "max-udp-per-client",
            None,
            8,
            "Concurrent UDP associations per client address.",
            checked("max-udp-per-client", int, 1, _INF, "a whole number, 1 or more"),
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
            checked("shutdown-grace", float, 0, _INF, "a number of seconds"),
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
            checked("name-cache-ttl", float, 0, 86400, "0 to 86400 seconds"),
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
            checked("max-connections-per-client", int, 0, _INF, "a whole number"),
        ],
        [
            "ipv6-client-prefix",
            None,
            64,
            "Per-client limits count an IPv6 client by this many leading bits "
            "of its address (64: one /64 is one client; 128: each address).",
            checked("ipv6-client-prefix", int, 1, 128, "a prefix length 1..128"),
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
            checked("max-connections", int, 1, _INF, "a whole number, 1 or more"),
        ],
        [
            "workers",
            None,
            1,
            "Worker processes sharing the listening sockets, to use several "
            "cores (1 = this process serves; see the workers documentation "
            "for how limits and --status aggregate).",
            checked("workers", int, 1, MAX_WORKERS, f"a whole number 1..{MAX_WORKERS}"),
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
        #: The options checked together: set once they are parsed.
        self.config: ServerConfig

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
        """Check the options together into L{config}."""
        self.argumentsRead = True
        self.config = configFromOptions(
            self,
            installedReactor(),
            programName=self.programName,
            argv=self.argv,
            worker=self.worker,
        )
        # The server's limits, where they were always read.
        self["limits"] = self.config.limits


def installedReactor() -> Any:
    """The global reactor (installing the default one if none is yet)."""
    from twisted.internet import reactor

    return reactor


def makeService(options: Options) -> service.IService:
    """
    Build the server from parsed options (twistd's entry point): this
    process serving, or with C{--workers} above 1 a supervisor of worker
    processes that serve.
    """
    from ._compose import buildService

    # twistd's own options (--logfile, --nodaemon, --syslog) are the
    # parent's; the launcher (and so every worker) has none.
    return buildService(
        options.config, installedReactor(), getattr(options, "parent", None)
    )
