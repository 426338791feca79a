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
    from ._logfields import escapeField
    from .app._metrics import CounterSummary, ServerMetrics
    from .app._proxyprotocol import proxyProtocolEndpoint
    from .app._status import makeStatusService, makeStatusSite
    from .app._statusauth import StatusToken
    from .client._routes import (
        ProxyServer,
        Route,
        RouteAction,
        RouteTable,
        loadRoutes,
        parseRoutes,
    )
    from .client._routing import ProxiesUnreachable, RouteDenied, RoutingEndpoint
    from .client._socks4client import SOCKS4BoundPort
    from .client._socks4endpoints import SOCKS4BindEndpoint, SOCKS4ClientEndpoint
    from .client._socks4resolve import NoIPv4Address
    from .client._socks5endpoints import SOCKS5BindEndpoint, SOCKS5ClientEndpoint
    from .client._socks5handshake import NoAddressFound, SOCKS5BoundPort
    from .client._socks5udpclient import SOCKS5UDPEndpoint, SOCKS5UDPPort
    from .ident._ident import NullIdentResolver, RFC1413Resolver
    from .interfaces import (
        IAccessPolicy,
        IIdentResolver,
        IOutboundConnector,
        IServerMetrics,
    )
    from .outbound._connect import TCPConnector
    from .outbound._namecache import CachingHostnameResolver
    from .outbound._resolve import ThreadedHostnameResolver
    from .policy._fields import RulesError
    from .policy._patterns import AddressPattern, HostPattern, PortPattern
    from .policy._policy import (
        AccessRequest,
        Decision,
        IdentFailure,
        IdentMode,
        LoopbackClientsPolicy,
    )
    from .policy._reload import RulesReloader
    from .policy._rules import loadRules, parseRules
    from .policy._ruleset import Rule, RuleSet
    from .server._factory import SOCKSv4ServerFactory
    from .server._records import (
        Limits,
        SessionInfo,
        SessionRecord,
        SessionState,
        UDPStats,
    )
    from .server._socks4 import SOCKSv4ServerProtocol
    from .wire._clienterrors import HandshakeTimeout, MalformedReply, SOCKSError
    from .wire._identparse import (
        IdentAnswer,
        IdentError,
        IdentErrorReply,
        IdentProtocolError,
        IdentTimeout,
        IdentUnreachable,
        identQuery,
        parseIdentResponse,
    )
    from .wire._request import Command
    from .wire._socks4 import (
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
    from .wire._socks4reply import (
        NoIdentdRejection,
        Reply,
        RequestRejected,
        UserIdMismatch,
        parseReply,
        rejectionFor,
    )
    from .wire._socks5client import (
        AddressTypeNotSupported,
        ClosedBeforeReply5,
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


__version__ = "0.1.0.dev0"

#: Where each public name is defined, relative to this package.
_ORIGINS: dict[str, str] = {
    "HandshakeTimeout": ".wire._clienterrors",
    "NoIPv4Address": ".client._socks4resolve",
    "SOCKS4BindEndpoint": ".client._socks4endpoints",
    "SOCKS4BoundPort": ".client._socks4client",
    "SOCKS4ClientEndpoint": ".client._socks4endpoints",
    "SOCKS5BindEndpoint": ".client._socks5endpoints",
    "SOCKS5ClientEndpoint": ".client._socks5endpoints",
    "SOCKS5BoundPort": ".client._socks5handshake",
    "NoAddressFound": ".client._socks5handshake",
    "SOCKS5UDPEndpoint": ".client._socks5udpclient",
    "SOCKS5UDPPort": ".client._socks5udpclient",
    "AddressTypeNotSupported": ".wire._socks5client",
    "ClosedBeforeReply5": ".wire._socks5client",
    "CommandNotSupported": ".wire._socks5client",
    "ConnectionRefused5": ".wire._socks5client",
    "GeneralSOCKSFailure": ".wire._socks5client",
    "HostUnreachable5": ".wire._socks5client",
    "MalformedReply5": ".wire._socks5client",
    "NetworkUnreachable5": ".wire._socks5client",
    "NoAcceptableMethod": ".wire._socks5client",
    "NotAllowedByRuleset": ".wire._socks5client",
    "SOCKS5AuthenticationFailed": ".wire._socks5client",
    "SOCKS5Rejected": ".wire._socks5client",
    "TTLExpired": ".wire._socks5client",
    "Command": ".wire._request",
    "EmptyHostname": ".wire._socks4",
    "HostnameTooLong": ".wire._socks4",
    "InvalidHostname": ".wire._socks4",
    "MalformedReply": ".wire._clienterrors",
    "NoIdentdRejection": ".wire._socks4reply",
    "Reply": ".wire._socks4reply",
    "ReplyCode": ".wire._socks4",
    "Request": ".wire._socks4",
    "RequestParser": ".wire._socks4",
    "RequestRejected": ".wire._socks4reply",
    "SOCKSError": ".wire._clienterrors",
    "SOCKSProtocolError": ".wire._socks4",
    "UnknownCommand": ".wire._socks4",
    "UnsupportedVersion": ".wire._socks4",
    "UserIdMismatch": ".wire._socks4reply",
    "UserIdTooLong": ".wire._socks4",
    "ZeroAddress": ".wire._socks4",
    "ZeroPort": ".wire._socks4",
    "encodeReply": ".wire._socks4",
    "encodeRequest": ".wire._socks4",
    "parseReply": ".wire._socks4reply",
    "parseRequest": ".wire._socks4",
    "rejectionFor": ".wire._socks4reply",
    "TCPConnector": ".outbound._connect",
    "NullIdentResolver": ".ident._ident",
    "RFC1413Resolver": ".ident._ident",
    "CachingHostnameResolver": ".outbound._namecache",
    "ThreadedHostnameResolver": ".outbound._resolve",
    "IdentAnswer": ".wire._identparse",
    "IdentError": ".wire._identparse",
    "IdentErrorReply": ".wire._identparse",
    "IdentProtocolError": ".wire._identparse",
    "IdentTimeout": ".wire._identparse",
    "IdentUnreachable": ".wire._identparse",
    "identQuery": ".wire._identparse",
    "parseIdentResponse": ".wire._identparse",
    "escapeField": "._logfields",
    "CounterSummary": ".app._metrics",
    "ServerMetrics": ".app._metrics",
    "AccessRequest": ".policy._policy",
    "Decision": ".policy._policy",
    "IdentFailure": ".policy._policy",
    "IdentMode": ".policy._policy",
    "LoopbackClientsPolicy": ".policy._policy",
    "proxyProtocolEndpoint": ".app._proxyprotocol",
    "RulesReloader": ".policy._reload",
    "ProxyServer": ".client._routes",
    "Route": ".client._routes",
    "RouteAction": ".client._routes",
    "RouteTable": ".client._routes",
    "loadRoutes": ".client._routes",
    "parseRoutes": ".client._routes",
    "ProxiesUnreachable": ".client._routing",
    "RouteDenied": ".client._routing",
    "RoutingEndpoint": ".client._routing",
    "AddressPattern": ".policy._patterns",
    "HostPattern": ".policy._patterns",
    "PortPattern": ".policy._patterns",
    "Rule": ".policy._ruleset",
    "RulesError": ".policy._fields",
    "RuleSet": ".policy._ruleset",
    "loadRules": ".policy._rules",
    "parseRules": ".policy._rules",
    "Limits": ".server._records",
    "SessionInfo": ".server._records",
    "SessionRecord": ".server._records",
    "SessionState": ".server._records",
    "UDPStats": ".server._records",
    "SOCKSv4ServerFactory": ".server._factory",
    "SOCKSv4ServerProtocol": ".server._socks4",
    "makeStatusService": ".app._status",
    "makeStatusSite": ".app._status",
    "StatusToken": ".app._statusauth",
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
    "ClosedBeforeReply5",
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
    "UDPStats",
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
