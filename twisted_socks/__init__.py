"""
twisted-socks: a SOCKS4/SOCKS4A proxy server and a SOCKS4/4A/5 client library
for Twisted.

The public API is re-exported here; the C{_}-prefixed modules are private.

Importing the package imports none of them: each name is imported from its
module when it is first used (PEP 562).  A program that needs only the
client, or the server without its status page, does not pay for twisted.web,
prometheus_client or the TLS stack in memory and start-up time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What the type checker and the API documentation (pydoctor) see: the
    # same names, imported eagerly.
    from ._client import SOCKS4BindEndpoint, SOCKS4ClientEndpoint
    from ._clienterrors import HandshakeTimeout, MalformedReply, SOCKSError
    from ._codec import (
        Command,
        EmptyHostname,
        HostnameTooLong,
        InvalidHostname,
        ReplyCode,
        Request,
        RequestParser,
        SOCKSProtocolError,
        UnknownCommand,
        UnsupportedVersion,
        UserIdTooLong,
        ZeroAddress,
        ZeroPort,
        encodeReply,
        encodeRequest,
        parseRequest,
    )
    from ._connect import TCPConnector
    from ._fields import RulesError
    from ._ident import NullIdentResolver, RFC1413Resolver
    from ._identparse import (
        IdentAnswer,
        IdentError,
        IdentErrorReply,
        IdentProtocolError,
        IdentTimeout,
        IdentUnreachable,
        identQuery,
        parseIdentResponse,
    )
    from ._logfields import escapeField
    from ._metrics import CounterSummary, ServerMetrics
    from ._namecache import CachingHostnameResolver
    from ._patterns import AddressPattern, HostPattern, PortPattern
    from ._policy import (
        AccessRequest,
        Decision,
        IdentFailure,
        IdentMode,
        LoopbackClientsPolicy,
    )
    from ._proxyprotocol import proxyProtocolEndpoint
    from ._reload import RulesReloader
    from ._resolve import ThreadedHostnameResolver
    from ._routes import (
        ProxyServer,
        Route,
        RouteAction,
        RouteTable,
        loadRoutes,
        parseRoutes,
    )
    from ._routing import ProxiesUnreachable, RouteDenied, RoutingEndpoint
    from ._rules import loadRules, parseRules
    from ._ruleset import Rule, RuleSet
    from ._server import (
        Limits,
        SessionInfo,
        SessionRecord,
        SessionState,
        SOCKSv4ServerFactory,
        SOCKSv4ServerProtocol,
    )
    from ._socks4client import SOCKS4BoundPort
    from ._socks4reply import (
        NoIdentdRejection,
        Reply,
        RequestRejected,
        UserIdMismatch,
        parseReply,
        rejectionFor,
    )
    from ._socks4resolve import NoIPv4Address
    from ._socks5client import (
        AddressTypeNotSupported,
        CommandNotSupported,
        ConnectionRefused5,
        GeneralSOCKSFailure,
        HostUnreachable5,
        MalformedReply5,
        NetworkUnreachable5,
        NoAcceptableMethod,
        NotAllowedByRuleset,
        SOCKS5AuthenticationFailed,
        SOCKS5Rejected,
        TTLExpired,
    )
    from ._socks5endpoints import SOCKS5BindEndpoint, SOCKS5ClientEndpoint
    from ._socks5handshake import NoAddressFound, SOCKS5BoundPort
    from ._socks5udpclient import SOCKS5UDPEndpoint, SOCKS5UDPPort
    from ._status import makeStatusService, makeStatusSite
    from ._statusauth import StatusToken
    from .interfaces import (
        IAccessPolicy,
        IIdentResolver,
        IOutboundConnector,
        IServerMetrics,
    )

__version__ = "0.1.0.dev0"

#: Where each public name is defined, relative to this package.
_ORIGINS: dict[str, str] = {
    "HandshakeTimeout": "._clienterrors",
    "NoIPv4Address": "._socks4resolve",
    "SOCKS4BindEndpoint": "._client",
    "SOCKS4BoundPort": "._socks4client",
    "SOCKS4ClientEndpoint": "._client",
    "SOCKS5BindEndpoint": "._socks5endpoints",
    "SOCKS5ClientEndpoint": "._socks5endpoints",
    "SOCKS5BoundPort": "._socks5handshake",
    "NoAddressFound": "._socks5handshake",
    "SOCKS5UDPEndpoint": "._socks5udpclient",
    "SOCKS5UDPPort": "._socks5udpclient",
    "AddressTypeNotSupported": "._socks5client",
    "CommandNotSupported": "._socks5client",
    "ConnectionRefused5": "._socks5client",
    "GeneralSOCKSFailure": "._socks5client",
    "HostUnreachable5": "._socks5client",
    "MalformedReply5": "._socks5client",
    "NetworkUnreachable5": "._socks5client",
    "NoAcceptableMethod": "._socks5client",
    "NotAllowedByRuleset": "._socks5client",
    "SOCKS5AuthenticationFailed": "._socks5client",
    "SOCKS5Rejected": "._socks5client",
    "TTLExpired": "._socks5client",
    "Command": "._codec",
    "EmptyHostname": "._codec",
    "HostnameTooLong": "._codec",
    "InvalidHostname": "._codec",
    "MalformedReply": "._clienterrors",
    "NoIdentdRejection": "._socks4reply",
    "Reply": "._socks4reply",
    "ReplyCode": "._codec",
    "Request": "._codec",
    "RequestParser": "._codec",
    "RequestRejected": "._socks4reply",
    "SOCKSError": "._clienterrors",
    "SOCKSProtocolError": "._codec",
    "UnknownCommand": "._codec",
    "UnsupportedVersion": "._codec",
    "UserIdMismatch": "._socks4reply",
    "UserIdTooLong": "._codec",
    "ZeroAddress": "._codec",
    "ZeroPort": "._codec",
    "encodeReply": "._codec",
    "encodeRequest": "._codec",
    "parseReply": "._socks4reply",
    "parseRequest": "._codec",
    "rejectionFor": "._socks4reply",
    "TCPConnector": "._connect",
    "NullIdentResolver": "._ident",
    "RFC1413Resolver": "._ident",
    "CachingHostnameResolver": "._namecache",
    "ThreadedHostnameResolver": "._resolve",
    "IdentAnswer": "._identparse",
    "IdentError": "._identparse",
    "IdentErrorReply": "._identparse",
    "IdentProtocolError": "._identparse",
    "IdentTimeout": "._identparse",
    "IdentUnreachable": "._identparse",
    "identQuery": "._identparse",
    "parseIdentResponse": "._identparse",
    "escapeField": "._logfields",
    "CounterSummary": "._metrics",
    "ServerMetrics": "._metrics",
    "AccessRequest": "._policy",
    "Decision": "._policy",
    "IdentFailure": "._policy",
    "IdentMode": "._policy",
    "LoopbackClientsPolicy": "._policy",
    "proxyProtocolEndpoint": "._proxyprotocol",
    "RulesReloader": "._reload",
    "ProxyServer": "._routes",
    "Route": "._routes",
    "RouteAction": "._routes",
    "RouteTable": "._routes",
    "loadRoutes": "._routes",
    "parseRoutes": "._routes",
    "ProxiesUnreachable": "._routing",
    "RouteDenied": "._routing",
    "RoutingEndpoint": "._routing",
    "AddressPattern": "._patterns",
    "HostPattern": "._patterns",
    "PortPattern": "._patterns",
    "Rule": "._ruleset",
    "RulesError": "._fields",
    "RuleSet": "._ruleset",
    "loadRules": "._rules",
    "parseRules": "._rules",
    "Limits": "._server",
    "SessionInfo": "._server",
    "SessionRecord": "._server",
    "SessionState": "._server",
    "SOCKSv4ServerFactory": "._server",
    "SOCKSv4ServerProtocol": "._server",
    "makeStatusService": "._status",
    "makeStatusSite": "._status",
    "StatusToken": "._statusauth",
    "IAccessPolicy": ".interfaces",
    "IIdentResolver": ".interfaces",
    "IOutboundConnector": ".interfaces",
    "IServerMetrics": ".interfaces",
}

__all__ = [
    "AccessRequest",
    "AddressPattern",
    "AddressTypeNotSupported",
    "CachingHostnameResolver",
    "Command",
    "CommandNotSupported",
    "ConnectionRefused5",
    "CounterSummary",
    "Decision",
    "EmptyHostname",
    "GeneralSOCKSFailure",
    "HandshakeTimeout",
    "HostPattern",
    "HostUnreachable5",
    "HostnameTooLong",
    "IAccessPolicy",
    "IIdentResolver",
    "IOutboundConnector",
    "IServerMetrics",
    "IdentAnswer",
    "IdentError",
    "IdentErrorReply",
    "IdentFailure",
    "IdentMode",
    "IdentProtocolError",
    "IdentTimeout",
    "IdentUnreachable",
    "InvalidHostname",
    "Limits",
    "LoopbackClientsPolicy",
    "MalformedReply",
    "MalformedReply5",
    "NetworkUnreachable5",
    "NoAcceptableMethod",
    "NoAddressFound",
    "NoIPv4Address",
    "NoIdentdRejection",
    "NotAllowedByRuleset",
    "NullIdentResolver",
    "PortPattern",
    "ProxiesUnreachable",
    "ProxyServer",
    "RFC1413Resolver",
    "Reply",
    "ReplyCode",
    "Request",
    "RequestParser",
    "RequestRejected",
    "Route",
    "RouteAction",
    "RouteDenied",
    "RouteTable",
    "RoutingEndpoint",
    "Rule",
    "RuleSet",
    "RulesError",
    "RulesReloader",
    "SOCKS4BindEndpoint",
    "SOCKS4BoundPort",
    "SOCKS4ClientEndpoint",
    "SOCKS5AuthenticationFailed",
    "SOCKS5BindEndpoint",
    "SOCKS5BoundPort",
    "SOCKS5ClientEndpoint",
    "SOCKS5Rejected",
    "SOCKS5UDPEndpoint",
    "SOCKS5UDPPort",
    "SOCKSError",
    "SOCKSProtocolError",
    "SOCKSv4ServerFactory",
    "SOCKSv4ServerProtocol",
    "ServerMetrics",
    "SessionInfo",
    "SessionRecord",
    "SessionState",
    "StatusToken",
    "TCPConnector",
    "TTLExpired",
    "ThreadedHostnameResolver",
    "UnknownCommand",
    "UnsupportedVersion",
    "UserIdMismatch",
    "UserIdTooLong",
    "ZeroAddress",
    "ZeroPort",
    "encodeReply",
    "encodeRequest",
    "escapeField",
    "identQuery",
    "loadRoutes",
    "loadRules",
    "makeStatusService",
    "makeStatusSite",
    "parseIdentResponse",
    "parseReply",
    "parseRequest",
    "parseRoutes",
    "parseRules",
    "proxyProtocolEndpoint",
    "rejectionFor",
]


# Not visible to the type checker, which would otherwise type any misspelt
# attribute of the package as Any instead of reporting it.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        """Import a public name from its module on first use, then keep it."""
        try:
            origin = _ORIGINS[name]
        except KeyError:
            raise AttributeError(
                f"module {__name__!r} has no attribute {name!r}"
            ) from None
        value = getattr(import_module(origin, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The module's names, the public ones not yet imported included."""
    return sorted({*globals(), *__all__})
