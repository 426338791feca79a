"""
The client routing file: the classic client C{socks.conf}. No Twisted.

One route per line, first match wins, no match denies::

    deny|direct|sockd [@=server[:port][,server[:port]...]] [balance]
        [*=users] DESTINATION [PORT]

A server's C{--routes} file is the same grammar, plus C{from=} and the
C{route.*} settings (see L{parseRoutes}); there no match goes direct.

A server is C{host[:port]} (SOCKS4A, or SOCKS4 if the program says so) or a
proxy URL, C{socks5h://alice:pw@up1:1080}, whose scheme (C{socks5h},
C{socks5}, C{socks4a}, C{socks4}) says the protocol; a route's text never
holds the password.

A program asks the table, for each destination it connects to, whether to
go there directly (C{direct}), through one of a list of SOCKS servers
(C{sockd}, tried in order, or in random order with C{balance}) or not at all
(C{deny}).  DESTINATION and PORT are written exactly as in the server's
rules file (L{twisted_socks.policy._rules}), and parsed by the same code: C{address
mask}, C{address/prefix}, octet wildcards, IPv6 prefixes, C{0/0}, a host
name, or C{.domain} for a domain and everything under it; C{eq neq lt le gt
ge} with a number or a service name, or C{range LOW HIGH}.

Destinations are matched as text, without any lookup: an IP literal matches
address patterns, a name matches host-name patterns, and a name never
matches an address pattern other than the catch-all (mask zero, as in
C{sockd 0.0.0.0 0.0.0.0}).  The client never resolves a name to route it:
routing must not leak the names it is about to send to a proxy to the local
resolver.

Parsing is all-or-nothing: L{parseRoutes} returns a complete L{RouteTable}
or raises L{RulesError} naming the file, the line and the offending field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..policy._fields import (
    MAX_LINE_LENGTH,
    FieldParser,
    RulesError,
)
from ..policy._fields import readUserFile as readNamesFile
from ..policy._patterns import AddressPattern, HostPattern, PortPattern
from ..policy._policy import IPAddress
from ..wire._proxyurl import SCHEMES, ProxyURL, hidePasswords, parseProxyURL
from ._hostport import SERVER_EXPECTED as _SERVER_EXPECTED
from ._hostport import classify as _classify
from ._hostport import splitServer as _splitServer

__all__ = [
    "DEFAULT_SOCKS_PORT",
    "ProxyServer",
    "Route",
    "RouteAction",
    "RouteTable",
    "loadRoutes",
    "parseRoutes",
    "parseServer",
]

#: The port of a server written without one (the SOCKS port, IANA 1080).
DEFAULT_SOCKS_PORT = 1080


class RouteAction(Enum):
    """What a route does with the destinations it matches."""

    #: Refuse the connection: nothing is contacted.
    DENY = "deny"
    #: Connect to the destination directly.
    DIRECT = "direct"
    #: Connect through one of the route's SOCKS servers.
    SOCKD = "sockd"


@dataclass(frozen=True, slots=True)
class ProxyServer:
    """
    A SOCKS server a C{sockd} route goes through.

    Written C{host[:port]}, it speaks SOCKS4A (or SOCKS4, as the routing
    endpoint is told); written as a URL (C{socks5h://alice:pw@host:port}),
    the scheme says the protocol and the userinfo the credentials.

    @ivar host: a host name, an IPv4 address or an IPv6 address (without
        brackets).
    @ivar port: its port.
    @ivar scheme: C{socks4}, C{socks4a}, C{socks5} or C{socks5h} for a
        server written as a URL; L{None} for C{host[:port]}.
    @ivar user: the URL's username (SOCKS4: the USERID), or L{None}.
    @ivar password: the URL's password, or L{None}; never shown by C{repr}
        or C{str}.
    """

    host: str
    port: int = DEFAULT_SOCKS_PORT
    scheme: str | None = None
    user: bytes | None = None
    password: bytes | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """
        C{host:port}, with an IPv6 address in brackets; a URL, password
        hidden, for a server written as one.
        """
        if self.scheme is not None:
            return str(
                ProxyURL(self.scheme, self.host, self.port, self.user, self.password)
            )
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """
    One line of a routing file.

    @ivar location: C{file:line}, as reported in errors and logs.
    @ivar text: the line as written.
    @ivar action: deny, direct, or through a SOCKS server.
    @ivar servers: for L{RouteAction.SOCKD}, the servers in the order
        written (the C{@=} list, or the default server); empty otherwise.
    @ivar balance: whether the servers are tried in random order.
    @ivar users: the users the route applies to (C{*=}), or L{None} for all.
    @ivar destination: the destination pattern.
    @ivar port: the destination port condition, or L{None} for any port.
    @ivar clients: the clients the route applies to (C{from=}, a server's
        routes only), or L{None} for all.
    """

    location: str
    text: str
    action: RouteAction
    servers: tuple[ProxyServer, ...]
    balance: bool
    users: frozenset[str] | None
    destination: AddressPattern | HostPattern
    port: PortPattern | None
    clients: AddressPattern | None = None

    @property
    def resolvesRemotely(self) -> bool:
        """
        Whether every server of the line resolves names itself (C{host:port},
        C{socks4a}, C{socks5h}): only then may a name be sent on unresolved.
        """
        return all(s.scheme is None or SCHEMES[s.scheme][1] for s in self.servers)

    def matches(
        self, host: str, port: int, user: str = "", client: IPAddress | None = None
    ) -> bool:
        """
        Whether a connection to C{host}:C{port} as C{user} takes this route.

        @param host: the destination as the program names it: an IP literal
            (IPv6 with or without brackets) or a host name, never resolved.
        @param client: the address of the client asking (a server's routes).
        """
        address, name = _classify(host)
        return self._matches(address, name, port, user, client)

    def _matches(
        self,
        address: IPAddress | None,
        name: str | None,
        port: int,
        user: str,
        client: IPAddress | None,
    ) -> bool:
        """L{matches}, for a destination already classified by L{_classify}."""
        if self.users is not None and user not in self.users:
            return False
        if self.clients is not None and not self.clients.matches(client):
            return False
        if self.port is not None and not self.port.matches(port):
            return False
        destination = self.destination
        if isinstance(destination, HostPattern):
            return destination.matches(name)
        if destination.universal:
            return True
        return address is not None and destination.matches(address)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """
    A parsed routing file; immutable.

    @ivar path: the file it came from.
    @ivar routes: the routes, in file order.
    @ivar maxFail: C{route.maxfail}: the failures in a row after which a
        server of a server's routes is skipped (Dante's word; default 1).
    @ivar badExpire: C{route.badexpire}: for how many seconds (default 300).
    """

    path: str
    routes: tuple[Route, ...]
    maxFail: int = 1
    badExpire: float = 300.0

    def match(
        self, host: str, port: int, user: str = "", client: IPAddress | None = None
    ) -> Route | None:
        """
        The first route that C{host}:C{port}, connected to as C{user}, takes.

        @param host: the destination as text: an IP literal matches address
            patterns (an IPv4-mapped IPv6 address, or a numeric form such as
            C{127.1} that the C library reads as an address, is matched as
            the IPv4 address it stands for); a name matches host-name
            patterns and the catch-all only.  Names are never resolved.
        @return: the route, or L{None} when none matches, which means deny
            (as in the classic client: an unlisted destination is not
            reached by any path; a server goes direct instead).
        @param client: the address of the client asking, for C{from=}.
        """
        address, name = _classify(host)
        for route in self.routes:
            if route._matches(address, name, port, user, client):
                return route
        return None


def parseServer(text: str) -> ProxyServer:
    """
    Parse C{host}, C{host:port}, C{IPv4:port} or C{[IPv6]:port}; the port
    defaults to L{DEFAULT_SOCKS_PORT}.

    Or a proxy URL, C{socks5h://[user:password@]host[:port]} (also
    C{socks5://}, C{socks4a://}, C{socks4://}; see
    L{twisted_socks.wire._proxyurl}).

    @raise ValueError: for anything else; the message says what was
        expected, and never shows a password.
    """
    if "://" in text:
        url = parseProxyURL(text)
        # The same checks of the host as a server written bare.
        host, _ = _splitServer(f"[{url.host}]" if ":" in url.host else url.host)
        return ProxyServer(host, url.port, url.scheme, url.user, url.password)
    hostText, portText = _splitServer(text)
    port = DEFAULT_SOCKS_PORT
    if portText is not None:
        if not (portText.isdigit() and portText.isascii()) or not (
            1 <= int(portText) <= 0xFFFF
        ):
            raise ValueError(_SERVER_EXPECTED)
        port = int(portText)
    return ProxyServer(hostText, port)


def loadRoutes(
    path: str, defaultServer: ProxyServer | str | None = None, server: bool = False
) -> RouteTable:
    """
    Read and parse the routing file at C{path}.

    @param defaultServer: the server of C{sockd} lines without C{@=} (the
        classic client's C{SOCKS_SERVER}), as a L{ProxyServer} or as text
        for L{parseServer}.
    @param server: read it as a server's C{--routes} file (see
        L{parseRoutes}).
    @raise RulesError: if it cannot be read or is invalid.
    @raise ValueError: if C{defaultServer} is not a valid server.
    """
    default = _defaultServer(defaultServer)  # checked before the file is read
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise RulesError(path, 0, f"cannot read: {e.strerror or e}") from None
    return parseRoutes(text, path, default, server=server)


def parseRoutes(
    text: str,
    path: str = "<routes>",
    defaultServer: ProxyServer | str | None = None,
    readUserFile: Callable[[str], list[str]] | None = None,
    server: bool = False,
) -> RouteTable:
    """
    Parse a whole routing file.

    A server's routes file (C{server}) may also hold C{from=ADDR/MASK} (or
    CIDR) on a route, matching the client's address, and
    C{route.maxfail: N} and C{route.badexpire: SECONDS} lines anywhere
    (Dante's words; the last of each counts).

    @param path: the file name errors and route locations give.
    @param defaultServer: the server of C{sockd} lines without C{@=}; with
        none, such a line is an error.
    @param readUserFile: reads a C{*=/path} user file, returning its names
        (default: one name per line; blank lines and C{#} comments skipped).
    @raise RulesError: at the first invalid line; nothing is half-loaded.
    @raise ValueError: if C{defaultServer} is not a valid server.
    """
    parser = _RouteParser(
        path, readUserFile or readNamesFile, _defaultServer(defaultServer), server
    )
    routes: list[Route] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if len(line) > MAX_LINE_LENGTH:
            raise RulesError(
                path, number, f"line is {len(line)} characters (at most 1023)"
            )
        route = parser.parseRoute(number, line)
        if route is not None:
            routes.append(route)
    return RouteTable(path, tuple(routes), parser.maxFail, parser.badExpire)


def _defaultServer(server: ProxyServer | str | None) -> ProxyServer | None:
    """The default server as a value; text is parsed (L{ValueError} if bad)."""
    if not isinstance(server, str):
        return server
    try:
        return parseServer(server)
    except ValueError as e:
        raise ValueError(
            f"bad default server '{hidePasswords(server)}' ({e})"
        ) from None


_ACTIONS = {action.value: action for action in RouteAction}


class _RouteParser(FieldParser):
    """
    Parses one route at a time; the destination and port fields are the
    rules file's own parser (same forms, same messages).
    """

    def __init__(
        self,
        path: str,
        readUserFile: Callable[[str], list[str]],
        defaultServer: ProxyServer | None,
        server: bool = False,
    ) -> None:
        super().__init__(path, readUserFile)
        self.defaultServer = defaultServer
        self.server = server
        self.maxFail = 1
        self.badExpire = 300.0

    def parseRoute(self, number: int, line: str) -> Route | None:
        """The route on line C{number}, or L{None} for a blank or comment."""
        self.number = number
        # As the classic client: '#' starts a comment anywhere on the line.
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            return None
        self.tokens = tokens
        self.index = 0
        if tokens[0].lower().startswith("route."):
            self.setting()
            return None
        # A server URL may hold a password: the route's text, which logs and
        # messages show, never does.
        return self.route(hidePasswords(line.strip()))

    def route(self, text: str) -> Route:
        """The fields of a route, from the action to the end of the line."""
        word = self.take()
        action = _ACTIONS.get(word.lower())
        if action is None:
            raise self.error(
                f"unknown action '{word}' (expected deny, direct or sockd)"
            )
        servers: tuple[ProxyServer, ...] | None = None
        balance = False
        users: frozenset[str] | None = None
        clients: AddressPattern | None = None
        seen: set[str] = set()
        while (token := self.peek()) is not None:
            if token.startswith("@="):
                field = "@="
            elif token.startswith("*="):
                field = "*="
            elif token.lower().startswith("from=") and self.server:
                field = "from="
            elif token.lower() == "balance":
                field = "balance"
            elif "=" in token:
                known = "@=, *= or from=" if self.server else "@= or *="
                raise self.error(f"unknown field '{token}' (expected {known})")
            else:
                break
            self.take()
            if field in seen:
                raise self.error(f"'{field}' given twice")
            seen.add(field)
            if field not in ("*=", "from=") and action is not RouteAction.SOCKD:
                raise self.error(
                    f"'{field}' on a {action.value} line (it applies to sockd "
                    "lines only)"
                )
            if field == "@=":
                servers = self.servers(token)
            elif field == "*=":
                users = self.users(token)
            elif field == "from=":
                clients = self.network(token[len("from=") :], "client")
            else:
                balance = True
        for token in self.tokens[self.index :]:
            # The rules parser reads numbers with str.isdigit(), which admits
            # digits such as '²' that int() refuses; nothing from here on can
            # be anything but ASCII, so such text is turned away first.
            if not token.isascii():
                raise self.error(
                    f"non-ASCII '{token}' (destinations and ports are ASCII)"
                )
        token = self.peek()
        if token is None or self.isPortStart(token):
            raise self.error(
                "missing destination (expected an address and mask, "
                "address/prefix, a wildcard such as 10.*.*.*, or a host name "
                "such as .example.com)"
            )
        destination = self.destination()
        port = self.port() if self.peek() is not None else None
        self.end()
        if action is RouteAction.SOCKD and servers is None:
            if self.defaultServer is None:
                raise self.error(
                    "sockd line without @= and no default server (give "
                    "@=server[:port], or a default server to the loader)"
                )
            servers = (self.defaultServer,)
        return Route(
            f"{self.path}:{self.number}",
            text,
            action,
            servers or (),
            balance,
            users,
            destination,
            port,
            clients,
        )

    def servers(self, token: str) -> tuple[ProxyServer, ...]:
        """The servers of an C{@=} field, in order."""
        if token == "@=":
            raise self.error(f"empty server list in '{token}' ({_SERVER_EXPECTED})")
        result: list[ProxyServer] = []
        for entry in token[2:].split(","):
            if not entry:
                raise self.error(f"empty server in '{token}'")
            try:
                result.append(parseServer(entry))
            except ValueError as e:
                raise self.error(
                    f"bad server '{hidePasswords(entry)}' in"
                    f" '{hidePasswords(token)}' ({e})"
                ) from None
        return tuple(result)

    def setting(self) -> None:
        """A C{route.maxfail: N} or C{route.badexpire: SECONDS} line."""
        text = " ".join(self.tokens)
        name, colon, value = text.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not self.server:
            raise self.error(f"'{name}' is for a server's --routes file only")
        if name not in ("route.maxfail", "route.badexpire") or not colon:
            raise self.error(
                f"unknown setting '{text}' (expected route.maxfail: N or "
                "route.badexpire: SECONDS)"
            )
        if not (value.isascii() and value.isdigit()) or len(value) > 9:
            raise self.error(f"bad value for {name}: '{value}' (expected a number)")
        if name == "route.maxfail":
            if int(value) < 1:
                raise self.error("route.maxfail must be at least 1")
            self.maxFail = int(value)
        else:
            self.badExpire = float(value)

    def end(self) -> None:
        """Refuse anything after the last field."""
        if (token := self.peek()) is not None:
            raise self.error(f"unexpected '{token}' (expected the end of the route)")
