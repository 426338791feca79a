"""
SOCKS5 client endpoints: CONNECT, and the client side of BIND.

L{SOCKS5ClientEndpoint} is an ordinary L{IStreamClientEndpoint}, in the
shape of L{twisted_socks.SOCKS4ClientEndpoint}: it connects another endpoint
to the proxy, negotiates (with a username and password when given, RFC
1929), sends the request, and hands the connection to the application's
protocol once the proxy granted it.  TLS to the destination is
C{wrapClientTLS(options, socks5Endpoint)}; a chain of proxies, of either
version, is an endpoint whose C{proxyEndpoint} is another one.

L{SOCKS5BindEndpoint} is the client side of BIND, shaped like
L{twisted_socks.client._socks4endpoints.SOCKS4BindEndpoint}.

Each C{connect()} or C{listen()} is one of the attempts every version
shares (L{twisted_socks.client._attempts}, on the handshake driver of
L{twisted_socks.client._handshake}), worded by the SOCKS5 dialect
(L{twisted_socks.client._socks5handshake.SOCKS5Dialect}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from ..wire._socks5 import Command5
from ._attempts import BindAttempt, ConnectAttempt
from ._socks5handshake import SOCKS5Dialect, SOCKS5EndpointBase

__all__ = ["SOCKS5BindEndpoint", "SOCKS5ClientEndpoint"]


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint(SOCKS5EndpointBase):
    """
    Connect to C{host}:C{port} through a SOCKS5 proxy (CONNECT).

    How the destination goes on the wire:

      - an IPv4 or IPv6 literal is sent as one (ATYP 1 or 4);
      - with C{remoteResolve} (the default, curl's C{socks5h://}) any other
        host is sent as a name (ATYP 3) for the proxy to resolve, and the
        local resolver is never asked;
      - without it (curl's C{socks5://}), the name is resolved with
        C{reactor.nameResolver} and its first address, IPv4 or IPv6, is
        sent.  A name with no address fails with L{NoAddressFound} before
        the proxy is contacted.

    With C{user} and C{password} the greeting offers both "no
    authentication" and username/password, and the server chooses; without
    them it offers only "no authentication".  The password is never shown by
    C{repr} or in an error message.

    The application protocol is built when the connection to the proxy is
    made (with the destination as its address) and connected once the proxy
    answers 00; bytes that came with the reply are delivered after
    C{makeConnection}.  Its transport is the connection to the proxy itself:
    writes, half-close, producers and C{getPeer()} (the proxy) act on it.

    @param reactor: provides L{IReactorTime}, and
        L{IReactorPluggableNameResolver} when names are resolved locally.
    @param host: the destination: an IP literal or a name.
    @param port: the destination port.
    @param proxyEndpoint: connects to the proxy; any client endpoint,
        including another SOCKS endpoint for a chain of proxies.
    @param user: the RFC 1929 username (text is sent UTF-8 encoded).
    @param password: its password, 1..255 bytes.
    @param timeout: seconds from C{connect()} until the proxy's reply
        (lookup, connection, negotiation), after which the attempt fails
        with L{HandshakeTimeout}.
    @param remoteResolve: send names to the proxy (L{True}) or resolve them
        here (L{False}).

    @raise ValueError: at construction, for an empty host, a port out of
        range or 0, a name that is not a DNS name, a username or password
        out of 1..255 bytes, or only one of the two.
    """

    _command = Command5.CONNECT

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect through the proxy.

        @return: a L{Deferred} that fires with the connected application
            protocol once the proxy granted the request, or fails with a
            L{SOCKSError}: L{SOCKS5Rejected} (a subclass for each REP),
            L{NoAcceptableMethod}, L{SOCKS5AuthenticationFailed},
            L{MalformedReply} (garbage, or a close mid-negotiation),
            L{HandshakeTimeout}, L{NoAddressFound}; or with whatever error
            connecting to the proxy met, or L{NoProtocol} if
            C{protocolFactory} declined.  Cancelling it abandons the attempt
            and closes the connection at once.
        """
        attempt = ConnectAttempt(SOCKS5Dialect(self), protocolFactory)
        attempt.start()
        return attempt.result


@implementer(IStreamServerEndpoint)
class SOCKS5BindEndpoint(SOCKS5EndpointBase):
    """
    Have a SOCKS5 proxy accept one inbound connection for us (BIND).

    C{host} and C{port} name the application server the inbound connection
    will come from and the port of the primary connection (the proxy may
    check the peer against them); they are sent exactly as
    L{SOCKS5ClientEndpoint} sends a destination.  C{timeout} bounds the wait
    for the first reply only.  The other parameters are those of
    L{SOCKS5ClientEndpoint}.
    """

    _command = Command5.BIND

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Ask the proxy to listen.

        @return: a L{Deferred} that fires with a L{SOCKS5BoundPort} once the
            proxy's first reply granted the request (its C{getHost()} is
            where the peer must connect: the reply's address, or the
            proxy's own for a wildcard), or fails as
            L{SOCKS5ClientEndpoint.connect} does.  The port's C{connected}
            L{Deferred} fires with the protocol built from
            C{protocolFactory} (for the peer's address, from the second
            reply) once the peer has connected.
        """
        attempt = BindAttempt(SOCKS5Dialect(self), protocolFactory)
        attempt.start()
        return attempt.result
