"""
The SOCKS5 front end of the server (RFC 1928, with RFC 1929
username/password): reads the greeting, the optional sub-negotiation and
the request with the sans-IO parsers of L{twisted_socks.wire._socks5} and
L{twisted_socks.wire._userpass}, hands the request to the version-neutral
session as a L{SessionRequest}, and says each outcome as a 10-byte SOCKS5
reply (L{replyFor5}).

The session's first byte decides the version (see
L{twisted_socks.server._sniff}); from then on a L{Negotiation5} reads the
client's bytes until its request is complete.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from .._logfields import escapeField
from ..wire._outcome import Outcome
from ..wire._request import Command, SessionRequest, UserSource
from ..wire._socks5 import (
    Command5,
    Method,
    SOCKS5ProtocolError,
    encodeMethodSelection,
    encodeReply5,
    failureReply,
    parseGreeting,
    parseRequest5,
    replyFor5,
)
from ..wire._userpass import (
    AUTH_FAILURE,
    AUTH_SUCCESS,
    encodeAuthStatus,
    parseCredentials,
)

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from ..wire._socks5 import Greeting, Request5
    from ..wire._userpass import Credentials
    from ._sniff import SOCKSServerProtocol

__all__ = ["NO_ACCEPTABLE", "SOCKS5_FRONT_END", "Negotiation5"]

_log = Logger(namespace="twisted_socks.server")

#: C{05 FF}: none of the client's methods is acceptable (then a close).
NO_ACCEPTABLE = encodeMethodSelection(Method.NO_ACCEPTABLE)
_NO_AUTHENTICATION = encodeMethodSelection(Method.NO_AUTHENTICATION)
_USERNAME_PASSWORD = encodeMethodSelection(Method.USERNAME_PASSWORD)
_AUTH_OK = encodeAuthStatus(AUTH_SUCCESS)
_AUTH_FAILED = encodeAuthStatus(AUTH_FAILURE)
#: twisted.cred's refusal, and the password file checker's "too busy" one,
#: named rather than imported: a server without users (the lean launcher,
#: whose idle memory is budgeted) never loads twisted.cred or the checker.
_UNAUTHORIZED = "twisted.cred.error.UnauthorizedLogin"
_CHECKER_BUSY = "twisted_socks.policy._credentials.CheckerBusy"


#: Reply heads (C{05 REP 00 ATYP BND.ADDR}) remembered at most.
_MAX_HEADS = 64


class _SOCKS5Replies:
    """What a SOCKS5 client is told: REP 00-08, any address type."""

    __slots__ = ("_codes", "_heads", "_plain")

    #: The protocol version these replies belong to.
    version = 5

    def __init__(self) -> None:
        # Replies that name no address, made once: every failure is one.
        self._plain = {o: failureReply(replyFor5(o)) for o in Outcome}
        self._codes = {o: int(replyFor5(o)) for o in Outcome}
        # Every CONNECT's grant names its outbound socket's local address,
        # which is one of this host's few addresses: its reply up to the
        # port is made once per address (parsing the text and encoding it
        # was most of what a SOCKS5 session costs beyond a SOCKS4 one).
        # Bounded: the addresses are the host's, but a host with rotating
        # IPv6 privacy addresses must not grow it for ever.
        self._heads: dict[tuple[Outcome, str], bytes] = {}

    def reply(
        self, outcome: Outcome, boundAddress: str | None, boundPort: int
    ) -> bytes:
        """The reply for C{outcome}, naming C{boundAddress} if given."""
        if boundAddress is None:
            if not boundPort:
                return self._plain[outcome]
            return encodeReply5(replyFor5(outcome), boundPort)
        head = self._heads.get((outcome, boundAddress))
        if head is None:
            # Encoded with port 0, then the port cut off: the encoder
            # checks what it is given, the head is all but the port.
            head = encodeReply5(replyFor5(outcome), 0, _announced(boundAddress))[:-2]
            if len(self._heads) < _MAX_HEADS:
                self._heads[outcome, boundAddress] = head
        # The port comes from the kernel or a listener, 0..65535; anything
        # else is a bug, and to_bytes says so (OverflowError).
        return head + boundPort.to_bytes(2, "big")

    def replyCode(self, outcome: Outcome) -> int:
        """REP of the reply that says C{outcome}."""
        return self._codes[outcome]

    def canAnnounce(self, address: IPv4Address | IPv6Address) -> bool:
        """Any IP address: ATYP 1 and 4 carry both families."""
        return True


def _announced(host: str) -> IPv4Address | IPv6Address:
    """
    An address as a reply names it: an IPv4-mapped IPv6 address as the
    IPv4 address it maps (the client reached us over IPv4), no scope.
    """
    address = ip_address(host.partition("%")[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


#: The SOCKS5 front end's replies (stateless: one for all sessions).
SOCKS5_FRONT_END = _SOCKS5Replies()

# The stages of a negotiation.
_GREETING = 0
_AUTH = 1
_CHECKING = 2
_REQUEST = 3
_DONE = 4

#: The parse function of each stage that reads a message, by stage.
_PARSE: dict[int, Any] = {
    _GREETING: parseGreeting,
    _AUTH: parseCredentials,
    _REQUEST: parseRequest5,
}

#: The version-neutral command of each SOCKS5 one.
_COMMANDS = {c: Command(int(c)) for c in Command5}


class Negotiation5:
    """
    One SOCKS5 client's negotiation: greeting, method choice, the
    username/password sub-negotiation when the server has users, then the
    request.  Bytes are handed on in order whatever the segmenting: what
    follows each message goes to the next parser, and what arrives while a
    password is being checked is held until the check answers.

    @ivar method: the method chosen (L{None} before the choice).
    @ivar user: the authenticated user name (C{""} without authentication).
    """

    # No reference to the session (it is passed in): the session holds
    # this object, and a cycle would keep a refused session's memory until
    # the cycle collector's next pass.
    __slots__ = ("_held", "_partial", "_stage", "method", "user")

    def __init__(self) -> None:
        self._stage = _GREETING
        # The start of a message that has not all arrived (most clients
        # send each whole, so this is usually empty and no parser object
        # is made per message: the stage's parse function reads the chunk).
        self._partial = b""
        self._held = b""
        self.method: Method | None = None
        self.user = ""

    @property
    def methodName(self) -> str | None:
        """The chosen method for the record: C{"none"}, C{"password"}."""
        if self.method is Method.NO_AUTHENTICATION:
            return "none"
        if self.method is Method.USERNAME_PASSWORD:
            return "password"
        return None

    def feed(self, session: SOCKSServerProtocol, data: bytes) -> None:
        """Bytes from C{session}'s client, before its request is complete."""
        stage = self._stage
        if stage == _CHECKING:
            # Held, not parsed: the request must not be read before the
            # password it depends on is known to be right.
            self._held += data
            if len(self._held) >= session.factory.limits.maxPendingBytes:
                session.transport.pauseProducing()  # type: ignore[union-attr]
            return
        if stage == _DONE:
            return
        if self._partial:
            data = self._partial + data
        try:
            # Parsed again from the message's start on every chunk: each
            # message is a few hundred bytes at most, and a message split
            # at any byte parses exactly as if it came whole.  A parse
            # function raises as soon as the bytes cannot be a message, so
            # _partial never grows past a message's maximum size.
            parsed = _PARSE[stage](data)
        except SOCKS5ProtocolError as e:
            self._partial = b""
            self._refuse(session, e)
            return
        if parsed is None:
            self._partial = data
            return
        self._partial = b""
        message, used = parsed
        trailing = data[used:]
        if stage == _GREETING:
            self._greeted(session, message, trailing)
        elif stage == _AUTH:
            self._authenticate(session, message, trailing)
        else:
            self._requested(session, message, trailing)

    def _refuse(self, session: SOCKSServerProtocol, error: SOCKS5ProtocolError) -> None:
        """A malformed message: its answer (if it has one), then a close."""
        self._stage = _DONE
        reason = f"bad request: {type(error).__name__}: {error}"
        if error.replyCode is not None:
            # A request that could not be read: a well-formed 10-byte reply,
            # recorded as the outcome it says.
            session.fail(_badRequest(error), reason)
            return
        if error.reply is not None:
            session.write(error.reply)
        session.fail(None, reason)

    def _next(self, session: SOCKSServerProtocol, stage: int, trailing: bytes) -> None:
        """Move on to the next message; what followed is its first bytes."""
        self._stage = stage
        if trailing:
            self.feed(session, trailing)

    def _noMethod(self, session: SOCKSServerProtocol, why: str) -> None:
        """Answer C{05 FF} and close."""
        self._stage = _DONE
        session.write(NO_ACCEPTABLE)
        session.fail(None, why)

    # -- the greeting -----------------------------------------------------------

    def _greeted(
        self, session: SOCKSServerProtocol, greeting: Greeting, trailing: bytes
    ) -> None:
        factory = session.factory
        if factory.credentialsChecker is None:
            if not greeting.offers(Method.NO_AUTHENTICATION):
                self._noMethod(
                    session, "no acceptable method: no authentication not offered"
                )
                return
            self.method = Method.NO_AUTHENTICATION
            session.write(_NO_AUTHENTICATION)
            self._next(session, _REQUEST, trailing)
            return
        if not greeting.offers(Method.USERNAME_PASSWORD):
            self._noMethod(
                session, "no acceptable method: username/password not offered"
            )
            return
        if not factory.authFailures.allows(session.peerHost):
            self._noMethod(session, "too many failed authentications from this client")
            return
        self.method = Method.USERNAME_PASSWORD
        session.write(_USERNAME_PASSWORD)
        self._next(session, _AUTH, trailing)

    # -- username and password (RFC 1929) --------------------------------------

    def _authenticate(
        self, session: SOCKSServerProtocol, credentials: Credentials, trailing: bytes
    ) -> None:
        self._stage = _CHECKING
        self._held = trailing
        # Imported here, with users only (see _UNAUTHORIZED).
        from twisted.cred.credentials import UsernamePassword

        checker = session.factory.credentialsChecker
        checking = maybeDeferred(
            checker.requestAvatarId,  # type: ignore[union-attr]
            UsernamePassword(credentials.username, credentials.password),
        )
        # Not cancelled if the session closes first (not given to
        # session.wait): a check under way in a thread cannot stop, and
        # the file's checker would count it done and log the cancellation
        # as a failure.  Its answer then finds the session closed.
        name = credentials.user
        checking.addCallbacks(
            self._authenticated,
            self._refused,
            callbackArgs=(session,),
            errbackArgs=(session, name),
        )

    def _authenticated(self, avatarId: object, session: SOCKSServerProtocol) -> None:
        if not session.negotiating:
            return
        if isinstance(avatarId, bytes):
            self.user = avatarId.decode("utf-8", "surrogateescape")
        else:
            self.user = str(avatarId)
        session.write(_AUTH_OK)
        held, self._held = self._held, b""
        session.transport.resumeProducing()  # type: ignore[union-attr]
        self._next(session, _REQUEST, held)

    def _refused(
        self, failure: Failure, session: SOCKSServerProtocol, name: str
    ) -> None:
        if not session.negotiating:
            # Closed (or timed out) while the check ran.
            return
        self._stage = _DONE
        self._held = b""
        if not failure.check(_UNAUTHORIZED):
            # An embedder's checker that broke: a refusal, logged (its text
            # is never shown: it could carry what it was given).
            _log.error(
                "credentials checker failed: {kind}",
                kind=failure.type.__name__ if failure.type else "?",
            )
        elif not failure.check(_CHECKER_BUSY):
            # A busy checker said nothing about the password.
            session.factory.authFailures.failed(session.peerHost)
        session.write(_AUTH_FAILED)
        session.fail(None, f"authentication failed for user {escapeField(name)}")

    # -- the request -------------------------------------------------------------

    def _requested(
        self, session: SOCKSServerProtocol, request: Request5, trailing: bytes
    ) -> None:
        self._stage = _DONE
        address = request.address
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            # An IPv4-mapped address reaches the IPv4 host: it is that
            # host, for the rules, the log and the connect.  Mapped
            # 0.0.0.0 would reach this host, as 0.0.0.0 does (refused by
            # the parser for CONNECT).
            address = address.ipv4_mapped
            if not int(address) and request.command is Command5.CONNECT:
                session.fail(Outcome.FAILURE, "bad request: CONNECT to 0.0.0.0")
                return
        authenticated = self.method is Method.USERNAME_PASSWORD
        session.requestReceived(
            SessionRequest(
                version=5,
                command=_COMMANDS[request.command],
                port=request.port,
                address=address,
                hostname=request.name,
                user=self.user,
                userSource=(
                    UserSource.AUTHENTICATED if authenticated else UserSource.NONE
                ),
                trailing=trailing,
            )
        )


def _badRequest(error: SOCKS5ProtocolError) -> Outcome:
    """The outcome a malformed request is answered with."""
    code = error.replyCode
    for outcome in (Outcome.COMMAND_NOT_SUPPORTED, Outcome.ADDRESS_TYPE_NOT_SUPPORTED):
        if replyFor5(outcome) == code:
            return outcome
    return Outcome.FAILURE
