"""
One port, two protocols: the server's protocol, whose first byte from the
client decides once which front end serves the connection (C{04}: SOCKS4
and 4A, L{twisted_socks.server._socks4}; C{05}: SOCKS5,
L{twisted_socks.server._socks5}; anything else is not SOCKS and is closed,
as the SOCKS4 parser has always closed it).

The decision is the byte's, never the size of the first chunk: a SOCKS5
client may send its greeting, credentials and request in one segment, or a
byte at a time.  A SOCKS4 session costs nothing more than before: the
decided parser takes the place the SOCKS4 parser always had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire._outcome import Outcome
from ..wire._request import UserSource
from ..wire._socks4 import RequestParser
from ._records import SessionState
from ._session import ServerSession
from ._socks4 import SOCKS4_FRONT_END, SOCKSv4ServerProtocol
from ._socks5 import NO_ACCEPTABLE, SOCKS5_FRONT_END, Negotiation5

if TYPE_CHECKING:
    from ..wire._request import SessionRequest
    from ._factory import SOCKSv4ServerFactory

__all__ = ["SOCKSServerProtocol"]

#: The auth method a record names, by how the request's user was known.
_AUTH_METHODS = {UserSource.NONE: "none", UserSource.AUTHENTICATED: "password"}


class SOCKSServerProtocol(SOCKSv4ServerProtocol):
    """
    Serves one client connection in the version its first byte names.

    Not meant to be subclassed: behaviour is changed through the factory's
    policy, connector, resolver and credentials checker.
    """

    __slots__ = ()

    def __init__(self, factory: SOCKSv4ServerFactory) -> None:
        ServerSession.__init__(self, factory, SOCKS4_FRONT_END)
        # Made when the first byte names the version.
        self._parser = None

    def _negotiate(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            if not data:
                return
            first = data[0]
            protocols = self.factory.protocols
            if first == 5:
                self._frontEnd = SOCKS5_FRONT_END
                if 5 not in protocols:
                    self._parser = False
                    self.write(NO_ACCEPTABLE)
                    self.fail(None, "SOCKS5 is disabled (--protocols)")
                    return
                parser = self._parser = Negotiation5()
            else:
                if first == 4 and 4 not in protocols:
                    self._parser = False
                    self.fail(Outcome.DENIED, "SOCKS4 is disabled (--protocols)")
                    return
                # Anything but 05, 04 included: the SOCKS4 parser, which
                # refuses whatever is not SOCKS4 as it always has.
                self._parser = RequestParser()
                SOCKSv4ServerProtocol._negotiate(self, data)
                return
        elif parser.__class__ is not Negotiation5:
            SOCKSv4ServerProtocol._negotiate(self, data)
            return
        parser.feed(self, data)

    def requestReceived(self, request: SessionRequest) -> None:
        """
        A complete request: refused if it is SOCKS4, users must log in and
        the policy does not say it judges unauthenticated requests.
        """
        factory = self.factory
        if (
            request.version == 4
            and factory.credentialsChecker is not None
            # The rules (auth=none) and the default policy know users are
            # configured and judge SOCKS4 themselves; an embedder's own
            # policy may not know, and is kept from seeing what it may
            # take for an authenticated user.
            and getattr(factory.policy, "withUsers", False) is not True
        ):
            self.request = request
            self.fail(Outcome.DENIED, "SOCKS4 cannot authenticate (--users)")
            return
        super().requestReceived(request)

    @property
    def authenticatedUser(self) -> str | None:
        """
        The name this session logged in with (SOCKS5 username/password),
        from the login on, request or not; L{None} if it has not.
        """
        if self.request is not None:
            return super().authenticatedUser
        parser = self._parser
        if parser.__class__ is Negotiation5 and parser.user:
            return str(parser.user)
        return None

    @property
    def negotiating(self) -> bool:
        """Whether the client's request is still being read."""
        return self.state is SessionState.NEGOTIATING

    @property
    def peerHost(self) -> str:
        """The client's host as its transport says it (C{"unix"} off IP)."""
        host = getattr(self.transport.getPeer(), "host", None)  # type: ignore[union-attr]
        return host if isinstance(host, str) else "unix"

    def connectReply(self, outbound: Any) -> bytes:
        """
        The grant of a CONNECT: SOCKS5 names the outbound socket's local
        address and port (RFC 1928 section 6); SOCKS4 names nothing.
        """
        frontEnd = self._frontEnd
        if frontEnd is SOCKS4_FRONT_END:
            return frontEnd.reply(Outcome.GRANTED, None, 0)
        host: Any = outbound.transport.getHost()
        return frontEnd.reply(Outcome.GRANTED, host.host, host.port)

    def _protocolOf(
        self, request: SessionRequest | None
    ) -> tuple[int | None, str | None]:
        if request is None:
            parser = self._parser
            if parser.__class__ is Negotiation5:
                return 5, parser.methodName
            if self._frontEnd is SOCKS5_FRONT_END:
                return 5, None
            return None, None
        return request.version, _AUTH_METHODS.get(request.userSource)
