"""
The extension points of twisted-socks.

Programs that embed the server plug their own behaviour in here: who may use
the proxy (L{IAccessPolicy}), how outbound connections are made
(L{IOutboundConnector}), who owns a client connection (L{IIdentResolver})
and what is told about the server's events (L{IServerMetrics}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory

    from .policy._policy import AccessRequest, Decision
    from .server._factory import SessionRecord

__all__ = ["IAccessPolicy", "IIdentResolver", "IOutboundConnector", "IServerMetrics"]


class IAccessPolicy(Interface):
    """
    Decides whether a SOCKS request may proceed.

    The server asks once for a SOCKS4 request, with the destination address.
    For a SOCKS4A request it asks first with C{address} L{None}, so the policy
    can refuse on the name alone before any DNS lookup is made, then once for
    each resolved address (the first few, in the resolver's order). The
    server tries only the approved addresses, in order, and never connects
    anywhere else; if none is approved the request is denied. A policy whose
    answer depends on the address must allow the first question and decide on
    the later ones.

    On a server with a credentials checker (SOCKS5 logins), SOCKS4 requests,
    which cannot log in, are refused with 91 before the policy is asked,
    unless the policy has an attribute C{withUsers} that is C{True}: it then
    judges them itself, telling a claimed user from a logged-in one by the
    request's C{userSource} (as the rules' C{auth=} does).
    """

    def decide(request: AccessRequest) -> Decision | Deferred[Decision]:
        """
        Judge C{request}.

        @return: a L{Decision}, or a L{Deferred} that fires with one (a
            failed Deferred counts as a denial).
        """


class IOutboundConnector(Interface):
    """
    Makes the server's outbound TCP connections, and its BIND listeners.

    The default connects directly from the host; an embedding program can
    supply one that binds a source address or goes through another proxy.
    """

    def connect(
        address: IPv4Address | IPv6Address, port: int, factory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """
        Connect to exactly C{address}:C{port} (never re-resolve anything).

        @return: a cancellable L{Deferred} firing with the connected protocol
            built by C{factory}, or failing if no connection can be made.
        """

    def listen(interface: str, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen on C{interface}, on a port the kernel chooses, for a BIND.

        The server accepts one connection and then stops listening; the
        factory's C{buildProtocol} returns L{None} to refuse a connection.

        @return: a L{Deferred} firing with the listening port.
        """


class IIdentResolver(Interface):
    """
    Finds out which user owns a client connection (RFC 1413 ident).

    The answer is only as trustworthy as the client host: ident says who a
    well-run host claims is connecting, never proves it.
    """

    def lookup(client: tuple[str, int], server: tuple[str, int]) -> Deferred[str]:
        """
        Ask who owns the connection from C{client} to C{server}.

        @param client: the client's address and port, as the server sees them.
        @param server: the server's own address and port of that connection.
        @return: a L{Deferred} firing with the user name, or failing with
            L{twisted_socks.IdentUnreachable} (no identd),
            L{twisted_socks.IdentErrorReply} (it answered ERROR, with its
            token), L{twisted_socks.IdentTimeout}, or
            L{twisted_socks.IdentProtocolError} (a malformed answer).
            Cancelling it abandons the lookup.
        """


class IServerMetrics(Interface):
    """
    Told about a server's events, for monitoring (L{twisted_socks.ServerMetrics}
    provides it, exporting Prometheus metrics).

    The server calls these in the reactor thread, with keyword arguments,
    as the events happen; C{handshake} and C{sessionEnded} run once per
    session, so they should be cheap.  A method that raises is logged and
    ignored: monitoring never ends a session.  An object given to the server
    factory as C{metrics} that does not declare this interface may have any
    subset of these methods; the missing ones do nothing.
    """

    def sessionStarted(session: object) -> None:
        """
        A client connection was admitted (not refused for a connection
        limit).

        @param session: the session's protocol.
        """

    def sessionEnded(record: SessionRecord) -> None:
        """
        A session ended, admitted or not.

        @param record: what it did (the same record the session log and the
            factory's C{sessionObserver} get).
        """

    def sessionShed() -> None:
        """
        A session still negotiating was closed, at max-connections, to admit
        a new client.
        """

    def dnsLookup(ok: bool) -> None:
        """
        A SOCKS4A name lookup finished (cancelled ones are not reported).

        @param ok: whether it found addresses.
        """

    def identLookup(outcome: str) -> None:
        """
        An ident (RFC 1413) lookup finished.

        @param outcome: C{"match"}, C{"mismatch"}, C{"named"} (identd
            named a user and the request claimed none to compare: SOCKS5),
            or the name of the exception the lookup failed with
            (C{"IdentUnreachable"}, ...).
        """

    def handshake(seconds: float) -> None:
        """
        A session started relaying (for BIND: sent its second reply).

        @param seconds: how long after its connection was accepted.
        """
