"""
The SOCKS4/4A front end of the server: L{Negotiation4} reads one request
with the sans-IO L{RequestParser} and hands it to the version-neutral
session as a L{SessionRequest}; L{SOCKS4_FRONT_END} says each outcome as a
SOCKS4 reply (90-93).  L{SOCKSv4ServerProtocol} is a SOCKS4-only server
protocol; the server's own, which decides the version from the first byte,
is L{twisted_socks.server._sniff}'s.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from ..wire._outcome import Outcome
from ..wire._request import SessionRequest, UserSource
from ..wire._socks4 import (
    Request,
    RequestParser,
    SOCKSProtocolError,
    UnknownCommand,
    encodeReply,
    replyFor,
)
from ._connection import SPENT
from ._session import ServerSession

if TYPE_CHECKING:
    from ._factory import SOCKSv4ServerFactory

__all__ = ["SOCKS4_FRONT_END", "Negotiation4", "SOCKSv4ServerProtocol"]


class _SOCKS4Replies:
    """What a SOCKS4 client is told: 90-93, and IPv4 addresses only."""

    __slots__ = ("_plain",)

    def __init__(self) -> None:
        # Replies that name no address, made once: a grant's is sent by
        # every CONNECT.
        self._plain = {outcome: encodeReply(replyFor(outcome)) for outcome in Outcome}

    def reply(
        self, outcome: Outcome, boundAddress: str | None, boundPort: int
    ) -> bytes:
        """The 8-byte reply for C{outcome}, naming C{boundAddress} if given."""
        if boundAddress is None and not boundPort:
            return self._plain[outcome]
        address = None if boundAddress is None else IPv4Address(boundAddress)
        return encodeReply(replyFor(outcome), boundPort, address)

    def replyCode(self, outcome: Outcome) -> int:
        """CD of the reply that says C{outcome}."""
        return int(replyFor(outcome))

    def canAnnounce(self, address: IPv4Address | IPv6Address) -> bool:
        """Only IPv4: a SOCKS4 reply has four bytes for the address."""
        return address.version == 4


#: The SOCKS4 front end's replies (stateless: one for all sessions).
SOCKS4_FRONT_END = _SOCKS4Replies()


class Negotiation4:
    """
    One SOCKS4/4A client's negotiation: its one request, read by the
    sans-IO L{RequestParser} whatever the segmenting, then handed to the
    session as a L{SessionRequest}.  A peer of the SOCKS5 front end's
    L{twisted_socks.server._socks5.Negotiation5}: the session
    that holds one feeds it the client's bytes until the request is
    complete.
    """

    # No reference to the session (it is passed in): the session holds
    # this object, and a cycle would keep a refused session's memory until
    # the cycle collector's next pass.
    __slots__ = ("_parser",)

    #: SOCKS4 has no authentication methods (for the record's C{auth}).
    methodName = None

    def __init__(self) -> None:
        self._parser = RequestParser()

    def feed(self, session: ServerSession, data: bytes) -> None:
        """Bytes from C{session}'s client, before its request is complete."""
        parser = self._parser
        try:
            request = parser.feed(data)
        except SOCKSProtocolError as e:
            session.fail(_badRequest(e), f"bad request: {type(e).__name__}: {e}")
            return
        if request is not None:
            session.requestReceived(_sessionRequest(request, parser.trailingData))


class SOCKSv4ServerProtocol(ServerSession):
    """
    Serves one SOCKS4/4A client connection (SOCKS4 only: the server's
    factory builds L{twisted_socks.server._sniff.SOCKSServerProtocol}s,
    which serve SOCKS5 on the same port).

    Not meant to be subclassed: behaviour is changed through the factory's
    policy, connector and resolver.
    """

    __slots__ = ("_parser",)

    def __init__(self, factory: SOCKSv4ServerFactory) -> None:
        super().__init__(factory, SOCKS4_FRONT_END)
        self._parser: Any = Negotiation4()

    def _negotiate(self, data: bytes) -> None:
        self._parser.feed(self, data)

    def _spent(self) -> None:
        super()._spent()
        self._parser = SPENT


def _sessionRequest(request: Request, trailing: bytes) -> SessionRequest:
    """The version-neutral form of a SOCKS4/4A request."""
    return SessionRequest(
        version=4,
        command=request.command,
        port=request.port,
        address=request.address,
        hostname=request.hostname,
        user=request.user,
        # SOCKS4's USERID is the client's word, checked only by identd.
        userSource=UserSource.CLAIMED,
        trailing=trailing,
    )


def _badRequest(error: SOCKSProtocolError) -> Outcome | None:
    """What a malformed request is told (L{None}: nothing, just a close)."""
    if error.replyCode is None:
        return None
    if isinstance(error, UnknownCommand):
        return Outcome.COMMAND_NOT_SUPPORTED
    return Outcome.FAILURE
