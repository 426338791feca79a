"""
Endpoint strings: C{clientFromString(reactor, "socks4a:...")}.

The plugin module C{twisted/plugins/twisted_socks4a.py} registers the
parsers here under the prefixes C{socks4a}, C{socks4}, C{socks5h},
C{socks5} and C{socks}::

    socks4a:host=example.com:port=80:proxyHost=127.0.0.1:proxyPort=1080
    socks5h:host=example.com:port=443:proxyHost=127.0.0.1:user=alice:password=pw
    socks5h:host=example.com:port=443:url=socks5h\\://alice\\:pw@127.0.0.1\\:1080
    socks4:example.com:80:proxyHost=127.0.0.1:user=alice:timeout=10
    socks4a:host=example.com:port=443:proxy=tcp\\:127.0.0.1\\:9050:tls=true
    socks4a:host=x.example:port=80:proxy=socks4a\\:host=hop2\\:port=1080\\:proxyHost=hop1
    socks:conf=/etc/socks.conf:host=example.com:port=80

Nested endpoint descriptions (C{proxy=}) escape their colons with a
backslash, as Twisted's own C{tls:} endpoint does; a chain of two proxies is
a C{socks4a:} description inside C{proxy=}.

L{makeSOCKSEndpoint} and L{parseRoutingEndpoint} turn the fields into an
endpoint, each message naming the bad field (and never showing a password).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import (
    IReactorTime,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

if TYPE_CHECKING:
    from ._routing import RoutingEndpoint

# The endpoint implementations are imported when a description is parsed,
# not here: twistd's plugin scan imports this module (through the plugin
# module) in every twistd process, servers included, which never parse one.

__all__ = [
    "SOCKSEndpointParser",
    "SOCKSRoutingParser",
    "makeSOCKSEndpoint",
    "parseRoutingEndpoint",
]

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_OPTIONS = frozenset(
    {
        "host",
        "port",
        "proxyHost",
        "proxyPort",
        "proxy",
        "user",
        "password",
        "url",
        "timeout",
        "tls",
        "trustRoots",
    }
)


def _port(name: str, value: str, allowZero: bool = False) -> int:
    if not value.isdigit() or not (0 if allowZero else 1) <= int(value) <= 65535:
        raise ValueError(f"{name}={value!r} is not a port number 1..65535")
    return int(value)


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not true or false")


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also rejects NaN
        raise ValueError(f"{name}={value!r} is not a positive number of seconds")
    return seconds


def _shown(description: str) -> str:
    """
    A nested description for an error message: as written, unless it may
    hold a password (a C{password=} field, or a URL's userinfo).
    """
    if "password" in description or "@" in description:
        return "<description holding a password>"
    return repr(description)


def _trustRoot(path: str) -> Any:
    """The CA certificates in a PEM file, as a trust root."""
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(
            f"trustRoots={path!r}: cannot read: {e.strerror or e}"
        ) from None
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in pem.split(marker)[1:]]
    if not blocks:
        raise ValueError(f"trustRoots={path!r}: no PEM certificate in the file")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ValueError(f"trustRoots={path!r}: bad certificate: {e}") from None
    return trustRootFromCertificates(certificates)


def makeSOCKSEndpoint(
    reactor: Any, prefix: str, *args: str, **kwargs: str
) -> IStreamClientEndpoint:
    """
    Build the endpoint a C{socks4a:}, C{socks4:}, C{socks5h:} or C{socks5:}
    description names.

    The prefix says the SOCKS version and where names are resolved, unless
    C{url=} gives a proxy URL, whose scheme then says both (an
    C{ALL_PROXY} value works whatever prefix it is pasted after).

    @raise ValueError: naming the bad or missing field; never showing a
        password.
    """
    from twisted.internet.endpoints import (
        HostnameEndpoint,
        clientFromString,
        wrapClientTLS,
    )

    from ..wire._proxyurl import SCHEMES, parseProxyURL

    version, remoteResolve = SCHEMES[prefix]
    if len(args) > 2:
        raise ValueError(f"{prefix}: at most host and port may be positional")
    for name, value in zip(("host", "port"), args, strict=False):
        if name in kwargs:
            raise ValueError(f"{prefix}: {name} given twice")
        kwargs[name] = value
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        raise ValueError(
            f"{prefix}: unknown option {unknown[0]!r} (expected one of "
            f"{', '.join(sorted(_OPTIONS))})"
        )
    host = kwargs.get("host", "")
    if not host:
        raise ValueError(f"{prefix}: host= is required")
    if "port" not in kwargs:
        raise ValueError(f"{prefix}: port= is required")
    port = _port("port", kwargs["port"])
    timeout = _seconds("timeout", kwargs.get("timeout", "30"))
    user: str | bytes | None = kwargs.get("user")
    password: str | bytes | None = kwargs.get("password")
    given = {"proxy", "url"} & set(kwargs)
    if len(given) + bool({"proxyHost", "proxyPort"} & set(kwargs)) > 1:
        raise ValueError(
            f"{prefix}: give proxy=, proxyHost=/proxyPort= or url=, only one of them"
        )
    if "url" in kwargs:
        if "user" in kwargs or "password" in kwargs:
            raise ValueError(
                f"{prefix}: give the user and password in url= or as user=/password=,"
                " not both"
            )
        try:
            url = parseProxyURL(kwargs["url"])
        except ValueError as e:
            raise ValueError(f"{prefix}: url=: {e}") from None
        version, remoteResolve = url.version, url.remoteResolve
        user, password = url.user, url.password
        proxy: IStreamClientEndpoint = HostnameEndpoint(
            reactor, url.host, url.port, timeout=timeout
        )
    elif "proxy" in kwargs:
        try:
            proxy = clientFromString(reactor, kwargs["proxy"])
        except ValueError as e:
            raise ValueError(
                f"{prefix}: proxy={_shown(kwargs['proxy'])}: {e}"
            ) from None
    else:
        proxyHost = kwargs.get("proxyHost", "")
        if not proxyHost:
            raise ValueError(f"{prefix}: proxyHost= (or proxy=, or url=) is required")
        proxyPort = _port("proxyPort", kwargs.get("proxyPort", "1080"))
        proxy = HostnameEndpoint(reactor, proxyHost, proxyPort, timeout=timeout)
    tls = _flag("tls", kwargs.get("tls", "false"))
    if "trustRoots" in kwargs and not tls:
        raise ValueError(f"{prefix}: trustRoots= needs tls=true")
    endpoint: IStreamClientEndpoint
    try:
        if version == 4:
            if password is not None:
                raise ValueError("password= needs SOCKS5 (socks5: or socks5h:)")
            from ._socks4endpoints import SOCKS4ClientEndpoint

            endpoint = SOCKS4ClientEndpoint(
                reactor,
                host,
                port,
                proxyEndpoint=proxy,
                user=user or "",
                timeout=timeout,
                remoteResolve=remoteResolve,
            )
        else:
            from ._socks5endpoints import SOCKS5ClientEndpoint

            endpoint = SOCKS5ClientEndpoint(
                reactor,
                host,
                port,
                proxyEndpoint=proxy,
                user=user,
                password=password,
                timeout=timeout,
                remoteResolve=remoteResolve,
            )
    except ValueError as e:
        raise ValueError(f"{prefix}: {e}") from None
    if tls:
        trustRoot = _trustRoot(kwargs["trustRoots"]) if "trustRoots" in kwargs else None
        # Imported here: plain SOCKS needs no TLS stack (pyOpenSSL).
        from twisted.internet.ssl import optionsForClientTLS

        # service-identity checks the certificate against `host`.
        options = optionsForClientTLS(host, trustRoot=trustRoot)
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


_ROUTING_FIELDS = "conf, host, port, user, timeout, socks4 or defaultServer"


def parseRoutingEndpoint(
    reactor: IReactorTime,
    conf: str,
    host: str,
    port: str,
    user: str = "",
    timeout: str = "30",
    socks4: str = "false",
    defaultServer: str | None = None,
    **unknown: str,
) -> RoutingEndpoint:
    """
    Build a L{RoutingEndpoint} from the fields of an endpoint string::

        socks:conf=/etc/socks.conf:host=example.com:port=80[:user=alice]
            [:timeout=30][:socks4=true][:defaultServer=proxy.example\\:1080]

    The routing file is read now, so a bad file is reported when the string
    is parsed, not at the first connection.

    @param conf: the routing file.
    @param host: the destination.
    @param port: the destination port, 1-65535.
    @param user: the user to connect as (C{*=}, and the USERID).
    @param timeout: seconds per attempt (see L{RoutingEndpoint}).
    @param socks4: C{true} to resolve names locally and send plain SOCKS4
        (for servers without 4A); C{false} (the default) sends SOCKS4A.
    @param defaultServer: the server of C{sockd} lines without C{@=},
        C{host[:port]} (a C{:} escaped as C{\\:} in an endpoint string).
    @raise ValueError: for a bad field; the message names it.
    """
    if unknown:
        name = sorted(unknown)[0]
        raise ValueError(f"unknown option '{name}' (expected {_ROUTING_FIELDS})")
    if not conf:
        raise ValueError("conf: empty (expected the path of a routing file)")
    if not host:
        raise ValueError("host: empty (expected a host name or an IP address)")
    if not (port.isdigit() and port.isascii() and 1 <= int(port) <= 0xFFFF):
        raise ValueError(f"port: '{port}' (expected a number 1-65535)")
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"timeout: '{timeout}' (expected a positive number)")
    if socks4.lower() in _TRUE:
        remoteResolve = False
    elif socks4.lower() in _FALSE:
        remoteResolve = True
    else:
        raise ValueError(f"socks4: '{socks4}' (expected true or false)")
    from ..policy._rules import RulesError
    from ._routes import loadRoutes
    from ._routing import RoutingEndpoint

    try:
        table = loadRoutes(conf, defaultServer)
    except RulesError as e:
        raise ValueError(f"conf: {e}") from None
    except ValueError as e:
        raise ValueError(f"defaultServer: {e}") from None
    try:
        return RoutingEndpoint(
            reactor,
            table,
            host,
            int(port),
            user=user,
            timeout=seconds,
            remoteResolve=remoteResolve,
        )
    except ValueError as e:
        raise ValueError(f"user: {e}") from None


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SOCKSEndpointParser:
    """
    The C{socks4a:}, C{socks4:}, C{socks5h:} and C{socks5:} endpoint-string
    parsers: the SOCKS version, and whether names are resolved by the proxy
    (C{socks4a}, C{socks5h}) or here (C{socks4}: first IPv4 address;
    C{socks5}: first address), as curl's proxy schemes have it.
    """

    def __init__(self, prefix: str) -> None:
        """
        @param prefix: one of C{socks4a}, C{socks4}, C{socks5h}, C{socks5}.
        """
        from ..wire._proxyurl import SCHEMES

        if prefix not in SCHEMES:
            raise ValueError(f"unknown SOCKS prefix {prefix!r}")
        self.prefix = prefix

    def parseStreamClient(
        self, reactor: Any, *args: object, **kwargs: object
    ) -> IStreamClientEndpoint:
        """Build the endpoint; L{ValueError} names a bad field."""
        # Twisted's string parser only ever passes text.
        return makeSOCKSEndpoint(
            reactor,
            self.prefix,
            *map(str, args),
            **{k: str(v) for k, v in kwargs.items()},
        )


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SOCKSRoutingParser:
    """
    The C{socks:} endpoint-string parser: the route for C{host} and C{port}
    comes from a client routing file (C{conf=}).
    """

    prefix = "socks"

    def parseStreamClient(
        self, reactor: Any, *args: object, **kwargs: object
    ) -> IStreamClientEndpoint:
        """Build a routing endpoint; L{ValueError} names a bad field."""
        if args:
            raise ValueError("socks: options must be given as name=value")
        return parseRoutingEndpoint(reactor, **{k: str(v) for k, v in kwargs.items()})
