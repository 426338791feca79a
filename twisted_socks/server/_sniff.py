"""
One port, two protocols: the server's protocol, whose first byte from the
client decides once which front end serves the connection (C{04}: SOCKS4
and 4A, L{twisted_socks.server._socks4}; C{05}: SOCKS5,
L{twisted_socks.server._socks5}; anything else is not SOCKS and is closed
without a word).

The decision is the byte's, never the size of the first chunk: a SOCKS5
client may send its greeting, credentials and request in one segment, or a
byte at a time.  The front ends are peers: each is a negotiation object
(L{Negotiation4}, L{Negotiation5}) that this protocol feeds the client's
bytes until the request is complete, with the version's replies
(L{SOCKS4_FRONT_END}, L{SOCKS5_FRONT_END}) for the session to say outcomes
in.  Neither knows the other; this module is the one place that knows
both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire._outcome import Outcome
from ..wire._request import UserSource
from ._connection import SPENT
from ._records import SessionState
from ._session import ServerSession
from ._socks4 import SOCKS4_FRONT_END, Negotiation4
from ._socks5 import NO_ACCEPTABLE, SOCKS5_FRONT_END, Negotiation5

if TYPE_CHECKING:
    from ..wire._request import SessionRequest
    from ._factory import SOCKSv4ServerFactory

__all__ = ["NOT_SOCKS", "SOCKSServerProtocol"]

#: The auth method a record names, by how the request's user was known.
_AUTH_METHODS = {UserSource.NONE: "none", UserSource.AUTHENTICATED: "password"}

#: The negotiation of a client refused at accept, not yet answered.
_UNANSWERED: Any = ("unanswered",)

#: How the reason of a connection whose first byte names no SOCKS version
#: starts (the metrics count it as C{not_socks}).
NOT_SOCKS = "not SOCKS: "


class SOCKSServerProtocol(ServerSession):
    """
    Serves one client connection in the version its first byte names.

    Not meant to be subclassed: behaviour is changed through the factory's
    policy, connector, resolver and credentials checker.
    """

    __slots__ = ("_parser",)

    def __init__(self, factory: SOCKSv4ServerFactory) -> None:
        # SOCKS4's replies until the first byte says otherwise (every
        # outcome before that byte is answered in its version, or not at
        # all: see _refuse).
        super().__init__(factory, SOCKS4_FRONT_END)
        #: The version's negotiation, made when the first byte names it.
        self._parser: Any = None

    def _negotiate(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            if not data:
                return
            parser = self._decide(data[0])
            if parser is None:
                # Refused for its first byte: closed, so no more bytes come.
                return
        parser.feed(self, data)

    def _refuse(self, reason: str) -> None:
        """
        A limit turned the client away before its first byte: it is
        answered in the version that byte names (L{_closedDataReceived}),
        or closed when the linger time passes without one.
        """
        self._close(reason)
        self._parser = _UNANSWERED
        self._timer = self._clock.callLater(
            self._limits.lingerTimeout, self._silentTimedOut
        )

    def _closedDataReceived(self, data: bytes) -> None:
        if self._parser is not _UNANSWERED or not data:
            return
        # Told in its own version: SOCKS4's 91, or SOCKS5's "no acceptable
        # method" (its one refusal before a method is chosen); anything
        # else, nothing.  Then the usual linger, discarding the rest.
        first = data[0]
        self._parser = SPENT if first in (4, 5) else None
        if first == 4:
            self.outcome = Outcome.DENIED
            self.write(SOCKS4_FRONT_END.reply(Outcome.DENIED, None, 0))
        elif first == 5:
            self._frontEnd = SOCKS5_FRONT_END
            self.write(NO_ACCEPTABLE)
        self._cancelTimer()
        self._linger()

    def _silentTimedOut(self) -> None:
        # Refused at accept and silent since: nothing unread, so a plain
        # close is a FIN, not a reset.
        self._timer = None
        self._parser = None
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _decide(self, first: int) -> Negotiation4 | Negotiation5 | None:
        """
        The front end the first byte C{first} names, or L{None} when the
        connection is refused for it: a version turned off (C{--protocols})
        is told so in its own words; anything but 04 and 05 is not SOCKS
        and is closed without a reply, which would be noise to whatever
        protocol it speaks.
        """
        protocols = self.factory.protocols
        if first == 4:
            if 4 not in protocols:
                self._parser = SPENT
                self.fail(Outcome.DENIED, "SOCKS4 is disabled (--protocols)")
                return None
            parser: Negotiation4 | Negotiation5 = Negotiation4()
        elif first == 5:
            self._frontEnd = SOCKS5_FRONT_END
            if 5 not in protocols:
                self._parser = SPENT
                self.write(NO_ACCEPTABLE)
                self.fail(None, "SOCKS5 is disabled (--protocols)")
                return None
            parser = Negotiation5()
        else:
            # No version: the record and the metrics say none.
            self.fail(None, f"{NOT_SOCKS}first byte 0x{first:02x}")
            return None
        self._parser = parser
        return parser

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

    def _spent(self) -> None:
        super()._spent()
        self._parser = SPENT

    def _protocolOf(
        self, request: SessionRequest | None
    ) -> tuple[int | None, str | None]:
        if request is None:
            parser = self._parser
            if parser is None or parser is _UNANSWERED:
                # Nothing sent yet, or not SOCKS.
                return None, None
            if self._frontEnd is SOCKS5_FRONT_END:
                return 5, getattr(parser, "methodName", None)
            return 4, None
        return request.version, _AUTH_METHODS.get(request.userSource)
