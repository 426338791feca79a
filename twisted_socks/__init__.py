"""
twisted-socks: a SOCKS4/SOCKS4A proxy server and client library for Twisted.

The public API is re-exported here; the C{_}-prefixed modules are private.
"""

from __future__ import annotations

from ._client import (
    HandshakeTimeout,
    NoIPv4Address,
    SOCKS4BindEndpoint,
    SOCKS4BoundPort,
    SOCKS4ClientEndpoint,
)
from ._codec import (
    Command,
    EmptyHostname,
    HostnameTooLong,
    InvalidHostname,
    MalformedReply,
    NoIdentdRejection,
    Reply,
    ReplyCode,
    Request,
    RequestParser,
    RequestRejected,
    SOCKSError,
    SOCKSProtocolError,
    UnknownCommand,
    UnsupportedVersion,
    UserIdMismatch,
    UserIdTooLong,
    ZeroAddress,
    ZeroPort,
    encodeReply,
    encodeRequest,
    parseReply,
    parseRequest,
    rejectionFor,
)
from ._connect import TCPConnector
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
from ._policy import (
    AccessRequest,
    Decision,
    IdentFailure,
    IdentMode,
    LoopbackClientsPolicy,
)
from ._reload import RulesReloader
from ._routes import (
    ProxyServer,
    Route,
    RouteAction,
    RouteTable,
    loadRoutes,
    parseRoutes,
)
from ._routing import ProxiesUnreachable, RouteDenied, RoutingEndpoint
from ._rules import (
    AddressPattern,
    HostPattern,
    PortPattern,
    Rule,
    RulesError,
    RuleSet,
    loadRules,
    parseRules,
)
from ._server import (
    Limits,
    SessionInfo,
    SessionRecord,
    SessionState,
    SOCKSv4ServerFactory,
    SOCKSv4ServerProtocol,
)
from ._status import makeStatusService, makeStatusSite
from .interfaces import IAccessPolicy, IIdentResolver, IOutboundConnector

__version__ = "0.1.0.dev0"

__all__ = [
    "AccessRequest",
    "AddressPattern",
    "Command",
    "CounterSummary",
    "Decision",
    "EmptyHostname",
    "HandshakeTimeout",
    "HostPattern",
    "HostnameTooLong",
    "IAccessPolicy",
    "IIdentResolver",
    "IOutboundConnector",
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
    "NoIPv4Address",
    "NoIdentdRejection",
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
    "SOCKSError",
    "SOCKSProtocolError",
    "SOCKSv4ServerFactory",
    "SOCKSv4ServerProtocol",
    "ServerMetrics",
    "SessionInfo",
    "SessionRecord",
    "SessionState",
    "TCPConnector",
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
    "rejectionFor",
]
