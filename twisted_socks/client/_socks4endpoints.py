"""
SOCKS4 and SOCKS4A client endpoints: CONNECT, and the client side of BIND.

L{SOCKS4ClientEndpoint} is an ordinary L{IStreamClientEndpoint}: it connects
another endpoint to the proxy, sends the request, and hands the connection to
the application's protocol once the proxy has granted it.  Because the
application protocol is connected only after reply 90, endpoints compose the
usual way: TLS to the destination is C{wrapClientTLS(options, socksEndpoint)},
and a chain of proxies is a L{SOCKS4ClientEndpoint} whose C{proxyEndpoint} is
another one.

L{SOCKS4BindEndpoint} is the client side of BIND, shaped like a server
endpoint: C{listen()} fires with a L{SOCKS4BoundPort} once the proxy says
where it listens, and the factory's protocol is connected when the expected
peer connects there.

The endpoints are the public face only.  What they ask and how it goes on
the wire is L{twisted_socks.client._socks4client.SOCKS4EndpointBase}; each
C{connect()} or C{listen()} is one of the attempts every version shares
(L{twisted_socks.client._attempts}, on the handshake driver of
L{twisted_socks.client._handshake}), worded by the SOCKS4 dialect
(L{twisted_socks.client._socks4client.SOCKS4Dialect}).
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

from ..wire._socks4 import Command
from ._attempts import BindAttempt, ConnectAttempt
from ._socks4client import SOCKS4Dialect, SOCKS4EndpointBase

__all__ = ["SOCKS4BindEndpoint", "SOCKS4ClientEndpoint"]


@implementer(IStreamClientEndpoint)
class SOCKS4ClientEndpoint(SOCKS4EndpointBase):
    """
    Connect to C{host}:C{port} through a SOCKS4 or SOCKS4A proxy (CONNECT).

    How the destination goes on the wire:

      - an IPv4 literal is sent as plain SOCKS4;
      - with C{remoteResolve} (the default) any other host is sent as a
        SOCKS4A name for the proxy to resolve, and the local resolver is
        never asked (a name may only exist, or only be meant to be looked up,
        on the proxy's side);
      - without it, the name is resolved with C{reactor.nameResolver} and its
        first IPv4 address is sent as plain SOCKS4, for servers that lack 4A
        (Dante).  A name with no IPv4 address fails with L{NoIPv4Address}
        before the proxy is contacted.

    The application protocol is built when the connection to the proxy is
    made (with the destination as its address: an C{IPv4Address}, or a
    C{HostnameAddress} for a 4A name) and connected once the proxy answers
    90, so a TLS wrapper starts its handshake with the destination, never
    with the proxy.  Its transport is the connection to the proxy itself:
    writes, half-close, producers and C{getPeer()} (the proxy) all act on it.

    @param reactor: provides L{IReactorTime}, and L{IReactorPluggableNameResolver}
        when names are resolved locally.
    @param host: the destination: an IPv4 literal or a name (or, for
        SOCKS4A, any text the proxy can resolve, IPv6 literals included).
    @param port: the destination port.
    @param proxyEndpoint: connects to the proxy; any client endpoint,
        including another L{SOCKS4ClientEndpoint} for a chain of proxies.
    @param user: the USERID; text is sent UTF-8 encoded.
    @param timeout: seconds from C{connect()} until the proxy's reply, after
        which the attempt fails with L{HandshakeTimeout}.
    @param remoteResolve: send names as SOCKS4A (L{True}) or resolve them
        locally and send plain SOCKS4 (L{False}).

    @raise ValueError: at construction, for an empty host, a port out of
        range or 0, an oversize or NUL-holding USERID or hostname, or an IPv6
        literal without C{remoteResolve}.
    """

    _command = Command.CONNECT

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect through the proxy.

        @return: a L{Deferred} that fires with the connected application
            protocol once the proxy granted the request, or fails with a
            L{SOCKSError} (L{RequestRejected} and its subclasses,
            L{MalformedReply}, L{HandshakeTimeout}, L{NoIPv4Address}), with
            whatever error connecting to the proxy met, or with
            L{NoProtocol} if C{protocolFactory} declined.  Cancelling it
            abandons the attempt and closes the connection at once.
        """
        attempt = ConnectAttempt(SOCKS4Dialect(self), protocolFactory)
        attempt.start()
        return attempt.result


@implementer(IStreamServerEndpoint)
class SOCKS4BindEndpoint(SOCKS4EndpointBase):
    """
    Have a SOCKS4 proxy accept one inbound connection for us (BIND).

    BIND serves protocols whose server connects back to the client, FTP's
    active mode being the classic: after a primary CONNECT to the application
    server, the client asks the proxy to listen, tells the server the
    address the proxy reports, and the proxy relays the server's connection.

    C{host} and C{port} name the application server the inbound connection
    will come from (the request's DSTIP; the proxy checks the peer against
    it) and the port of the primary connection; they are sent exactly as
    L{SOCKS4ClientEndpoint} sends a destination.  C{timeout} bounds the wait
    for the first reply only: how long the proxy waits for the inbound
    connection is up to the proxy (the spec suggests 2 minutes).

    The other parameters are those of L{SOCKS4ClientEndpoint}.
    """

    _command = Command.BIND

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Ask the proxy to listen.

        @return: a L{Deferred} that fires with a L{SOCKS4BoundPort} once the
            proxy's first reply granted the request, or fails as
            L{SOCKS4ClientEndpoint.connect} does.  The port's C{connected}
            L{Deferred} fires with the protocol built from
            C{protocolFactory} once the peer has connected.
        """
        attempt = BindAttempt(SOCKS4Dialect(self), protocolFactory)
        attempt.start()
        return attempt.result
