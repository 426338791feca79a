"""
The options of C{twistd socks} (and of the launcher, and of each worker
process) validated once into a frozen L{ServerConfig}
(L{twisted_socks.app._configtypes} holds the values), which the
composition root (L{twisted_socks.app._compose}) builds the server from.

Every option error is a C{usage.UsageError} with a one-line message naming
the option, raised while the options are parsed: twistd and the launcher
print it before anything is started.

Importing this module imports neither the reactor nor Twisted's endpoints
(the launcher parses options before it decides whether to keep TLS out of
the process): the validation imports what it needs when it runs, and is
given the reactor rather than importing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, ip_address
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from ..policy._policy import IdentMode
from ..policy._rules import RulesError, loadRules
from ..server._authfailures import (
    DEFAULT_AUTH_FAILURES,
    parseAuthFailures,
)
from ._configtypes import (
    RELAYS,
    AuthConfig,
    IdentConfig,
    ListenConfig,
    OutboundConfig,
    RulesConfig,
    ServerConfig,
    StatusConfig,
)

if TYPE_CHECKING:
    from ..server._factory import Limits
    from ._workerspec import WorkerSpec

__all__ = [
    "MAX_WORKERS",
    "checked",
    "configFromOptions",
    "identMode",
]

#: The most worker processes C{--workers} accepts: a typo such as 1000
#: should not fork a thousand servers.
MAX_WORKERS = 256

_IDENT_MODES = {
    "off": IdentMode.OFF,
    "lenient": IdentMode.LENIENT,
    "strict": IdentMode.STRICT,
}

#: The exceptions Twisted's endpoint parsers raise for a bad description.
_ENDPOINT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError)


def checked(
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


def identMode(value: str) -> IdentMode:
    """The coercer of C{--ident}: its mode, named in any case."""
    try:
        return _IDENT_MODES[value.lower()]
    except KeyError:
        raise ValueError(
            f"--ident must be off, lenient or strict, not {value!r}"
        ) from None


identMode.coerceDoc = ""  # type: ignore[attr-defined]


#: C{--protocols} names.
_PROTOCOL_NAMES = {"socks4": 4, "socks5": 5}


def configFromOptions(
    options: Mapping[str, Any],
    reactor: Any,
    *,
    programName: str,
    argv: Sequence[str] = (),
    worker: WorkerSpec | None = None,
) -> ServerConfig:
    """
    Validate parsed options (each already coerced by its option's coercer)
    together, in the order C{twistd socks} always checked them, into a
    L{ServerConfig}.

    @param options: the values of L{twisted_socks.app._tap.Options}.
    @param reactor: the reactor endpoints are parsed for (nothing listens
        or connects here).
    @param worker: in a worker process, its spec: its limits are its share
        and its listeners are the sockets it inherited.
    @raise usage.UsageError: for the first option found invalid.
    """
    listen = _listenConfig(options, reactor, worker)
    if options["workers"] > 1 and worker is None:
        from ._workerspec import checkShareable

        for description in listen.descriptions:
            problem = checkShareable(description)
            if problem is not None:
                raise usage.UsageError(problem)
        if options["max-connections"] < options["workers"]:
            raise usage.UsageError(
                f"--max-connections ({options['max-connections']}) must be at "
                f"least --workers ({options['workers']}): each worker gets its "
                "share"
            )
    limits = _limits(options, worker)
    status = _statusConfig(options, reactor, worker)
    ident = options["ident"]
    # usage.Options does not pass defaults through their coercers.
    if isinstance(ident, str):
        ident = identMode(ident)
    outbound = _outboundConfig(options)
    if options["log-format"] not in ("text", "json"):
        raise usage.UsageError(
            f"--log-format must be text or json, not {options['log-format']!r}"
        )
    if options["bind-address"] is not None:
        try:
            IPv4Address(options["bind-address"])
        except ValueError:
            raise usage.UsageError(
                f"--bind-address must be an IPv4 address (SOCKS4 replies "
                f"carry IPv4 only), not {options['bind-address']!r}"
            ) from None
    if options["rules"] is not None:
        # Loaded now so that an invalid file stops start-up with its
        # file:line message; the running server loads it again.
        try:
            loadRules(options["rules"])
        except RulesError as e:
            raise usage.UsageError(str(e)) from None
    if options.get("routes") is not None:
        # Loaded now, as the rules are: a bad file, or an upstream that is
        # one of our own listeners, stops start-up naming file and line.
        from ._routesconfig import checkRoutes, listenersOf

        try:
            checkRoutes(options["routes"], listenersOf(listen.descriptions))
        except RulesError as e:
            raise usage.UsageError(str(e)) from None
    auth = _authConfig(options)
    return ServerConfig(
        programName=programName,
        argv=tuple(argv),
        listen=listen,
        limits=limits,
        ident=IdentConfig(
            mode=ident, port=options["ident-port"], timeout=options["ident-timeout"]
        ),
        status=status,
        rules=RulesConfig(
            path=options["rules"], maxCommands=options["max-rule-commands"]
        ),
        outbound=outbound,
        logFormat=options["log-format"],
        shutdownGrace=options["shutdown-grace"],
        workers=options["workers"],
        worker=worker,
        auth=auth,
        routes=options.get("routes"),
    )


def _authConfig(options: Mapping[str, Any]) -> AuthConfig:
    """
    C{--protocols}, C{--users} (read now), C{--auth-failures} and
    C{--users-strict-reload}.
    """
    text = options.get("protocols", "socks4,socks5")
    names = [name.strip().lower() for name in text.split(",")]
    if not all(name in _PROTOCOL_NAMES for name in names):
        raise usage.UsageError(
            f"--protocols must be socks4, socks5 or both, comma-separated, not {text!r}"
        )
    users = options.get("users")
    if users is not None:
        # Imported only here: the password file's module needs bcrypt,
        # which a server without --users never loads.
        from ..policy._passwords import PasswordFileError, readPasswordFile

        # Read now so that an invalid file stops start-up with its
        # file:line message, as a bad rules file does; the running
        # server reads it again.
        try:
            readPasswordFile(users)
        except PasswordFileError as e:
            raise usage.UsageError(str(e)) from None
    failures = DEFAULT_AUTH_FAILURES
    if options.get("auth-failures") is not None:
        if users is None:
            raise usage.UsageError("--auth-failures needs --users")
        try:
            failures = parseAuthFailures(options["auth-failures"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    strictReload = bool(options.get("users-strict-reload"))
    if strictReload and users is None:
        raise usage.UsageError("--users-strict-reload needs --users")
    return AuthConfig(
        protocols=frozenset(_PROTOCOL_NAMES[name] for name in names),
        users=users,
        failures=failures,
        strictReload=strictReload,
    )


def _listenConfig(
    options: Mapping[str, Any], reactor: Any, worker: WorkerSpec | None
) -> ListenConfig:
    """The listeners: their descriptions, endpoints and trusted proxies."""
    from ._listeners import endpointError, listenEndpoint
    from ._proxyprotocol import DEFAULT_TRUSTED_PROXIES, parseTrustedProxies

    descriptions = list(options["listen"])
    if not descriptions:
        interface = options["interface"].replace(":", "\\:")
        descriptions = [f"tcp:{options['port']}:interface={interface}"]
    try:
        trusted = (
            parseTrustedProxies(options["proxy-protocol-from"])
            or DEFAULT_TRUSTED_PROXIES
        )
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    endpoints: list[tuple[str, Any]]
    if worker is not None:
        # A worker listens on the sockets its supervisor passed it; the
        # descriptions were checked there (and a systemd: one could
        # not even be parsed again here: the passed descriptors belong
        # to the supervisor's process ID).
        from ._listeners import workerEndpoints

        endpoints = list(workerEndpoints(worker, reactor, trusted))
    else:
        endpoints = []
        for description in descriptions:
            try:
                endpoint = listenEndpoint(reactor, description, trusted)
            except _ENDPOINT_ERRORS as e:
                raise usage.UsageError(
                    f"bad --listen description {description!r}: {endpointError(e)}"
                ) from None
            endpoints.append((description, endpoint))
    return ListenConfig(
        descriptions=tuple(descriptions),
        trustedProxies=tuple(trusted),
        endpoints=tuple(endpoints),
    )


def _limits(options: Mapping[str, Any], worker: WorkerSpec | None) -> Limits:
    """The server's limits: C{--rate-per-client} read, a worker's share taken."""
    from ..server._factory import Limits

    rate, window = 0, 1.0
    if options["rate-per-client"] is not None:
        count, _, seconds = options["rate-per-client"].partition("/")
        try:
            rate, window = int(count), float(seconds or "1")
        except ValueError:
            rate = -1
        if rate < 1 or not window > 0:
            raise usage.UsageError(
                "--rate-per-client must be N/SECONDS (e.g. 20/1), "
                f"not {options['rate-per-client']!r}"
            )
    maxConnections = options["max-connections"]
    if worker is not None:
        maxConnections = worker.maxConnections
    try:
        return Limits(
            negotiateTimeout=options["negotiate-timeout"],
            connectTimeout=options["connect-timeout"],
            idleTimeout=options["idle-timeout"],
            maxConnections=maxConnections,
            bindTimeout=options["bind-timeout"],
            maxBindsPerClient=options["max-binds-per-client"],
            udpIdleTimeout=options["udp-idle-timeout"],
            maxUDPPerClient=options["max-udp-per-client"],
            maxConnectionsPerClient=options["max-connections-per-client"],
            ratePerClient=rate,
            rateWindow=window,
            ipv6ClientPrefix=options["ipv6-client-prefix"],
        )
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def _statusConfig(
    options: Mapping[str, Any], reactor: Any, worker: WorkerSpec | None
) -> StatusConfig:
    """
    Resolve C{--status} (a bare port is loopback) and its credential:
    off loopback, a token (C{--status-auth}) or an explicit
    C{--status-insecure} is required.
    """
    from ._statusauth import isLocalEndpoint, loadStatusToken, statusDescription

    insecure = bool(options["status-insecure"])
    if options["status"] is None:
        for option in ("status-auth", "status-insecure"):
            if options[option]:
                raise usage.UsageError(f"--{option} needs --status")
        return StatusConfig(description=None)
    description = statusDescription(options["status"])
    if worker is not None:
        # Workers serve no status page: their supervisor does.
        return StatusConfig(description=description, insecure=insecure)
    from twisted.internet.endpoints import serverFromString

    from ._listeners import endpointError

    try:
        serverFromString(reactor, description)
    except _ENDPOINT_ERRORS as e:
        raise usage.UsageError(
            f"bad --status description {description!r}: {endpointError(e)}"
        ) from None
    token = None
    if options["status-auth"] is not None:
        if insecure:
            raise usage.UsageError("give --status-auth or --status-insecure, not both")
        try:
            token = loadStatusToken(options["status-auth"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    elif not insecure and not isLocalEndpoint(description):
        raise usage.UsageError(
            f"--status {description} is not on loopback or a UNIX socket: "
            "give --status-auth FILE (a token), or --status-insecure to serve "
            "every session to anyone who reaches it"
        )
    return StatusConfig(description=description, token=token, insecure=insecure)


def _outboundConfig(options: Mapping[str, Any]) -> OutboundConfig:
    """C{--outbound-address} and C{--relay} checked (the latter on this OS)."""
    if options["outbound-address"] is not None:
        try:
            ip_address(options["outbound-address"])
        except ValueError:
            raise usage.UsageError(
                "--outbound-address must be an IP address, "
                f"not {options['outbound-address']!r}"
            ) from None
    if options["relay"] not in RELAYS:
        raise usage.UsageError(
            f"--relay must be auto, splice or copy, not {options['relay']!r}"
        )
    if options["relay"] == "splice":
        from ..relay._splice import spliceAvailable

        if not spliceAvailable():
            raise usage.UsageError(
                "--relay splice needs Linux (splice(2)); use auto or copy"
            )
    udpAddress = options["udp-address"]
    if udpAddress is not None:
        try:
            udpAddress = str(ip_address(udpAddress))
        except ValueError:
            raise usage.UsageError(
                f"--udp-address must be an IP address, not {udpAddress!r}"
            ) from None
    return OutboundConfig(
        address=options["outbound-address"],
        bindAddress=options["bind-address"],
        udpAddress=udpAddress,
        relay=options["relay"],
        nameCacheTTL=options["name-cache-ttl"],
    )
