"""
What an access policy is asked and what it answers, and the built-in default.

The values here are plain frozen dataclasses so that a policy (the rules file,
or a program's own) can be tested without a network or a reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address

from zope.interface import implementer

from ..interfaces import IAccessPolicy
from ..wire._request import Command, UserSource

__all__ = [
    "AccessRequest",
    "Decision",
    "IPAddress",
    "IdentFailure",
    "IdentMode",
    "LoopbackClientsPolicy",
]

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """
    Everything known about a request when the policy is asked.

    @ivar client: the client's IP address (from the PROXY header when the
        listener is C{haproxy:}); IPv4-mapped IPv6 addresses are given as IPv4.
        L{None} when the client is not on IP (a UNIX socket).
    @ivar clientPort: the client's source port (0 when not on IP).
    @ivar command: CONNECT, BIND or UDP ASSOCIATE.  A UDP association is
        asked about twice over: once for the association itself, with
        C{hostname} and C{address} both L{None} and C{port} 0 (its request
        names where the client will send from, not a destination: the
        question is whether this client may relay UDP at all), then once
        per destination of each datagram, as for CONNECT.
    @ivar user: the user name: the USERID a SOCKS4 client claimed, or the
        name a SOCKS5 client authenticated with (empty when it did not).
    @ivar port: the requested destination port.
    @ivar hostname: the SOCKS4A destination name, or L{None} for SOCKS4.
    @ivar address: the destination address: DSTIP for SOCKS4; for SOCKS4A
        L{None} while the name is not yet resolved, then the resolved address
        the server will connect to, and no other.
    @ivar identUser: the user name the client host's identd reported, when a
        lookup was made.
    @ivar userSource: how C{user} was established: claimed (SOCKS4),
        authenticated (SOCKS5 username/password) or none (SOCKS5 without
        authentication).  Rules' C{auth=} field matches on it.
    @ivar version: the SOCKS version the request arrived in (4 for SOCKS4
        and SOCKS4A, 5 for SOCKS5).
    """

    client: IPAddress | None
    clientPort: int
    command: Command
    user: str
    port: int
    hostname: str | None
    address: IPAddress | None
    identUser: str | None = None
    userSource: UserSource = UserSource.CLAIMED
    version: int = 4

    @property
    def isAssociation(self) -> bool:
        """
        Whether this asks about a UDP association itself rather than a
        destination (see C{command}).
        """
        return (
            self.command is Command.UDP_ASSOCIATE
            and self.hostname is None
            and self.address is None
        )

    @property
    def isResolved(self) -> bool:
        """Whether C{address} is known (always, except SOCKS4A before lookup)."""
        return self.address is not None


class IdentMode(Enum):
    """
    Whether and how strictly the client's identd is asked (the classic
    sockd's C{-i}/C{-I} flags and the rules file's C{?=} field).
    """

    #: No lookup (C{?=n}).
    OFF = "n"
    #: Look up; no identd is logged and allowed; another user gets 93 (C{?=i}).
    LENIENT = "i"
    #: Look up; no identd gets 92; another user gets 93 (C{?=I}).
    STRICT = "I"


class IdentFailure(Enum):
    """How an ident check failed, for the C{#NO_IDENTD:}/C{#BAD_ID:} hooks."""

    #: No usable answer: unreachable, ERROR, timeout or garbage.
    NO_IDENTD = "no identd"
    #: identd named another user than the request's USERID.
    BAD_ID = "bad id"


@dataclass(frozen=True, slots=True)
class Decision:
    """
    A policy's answer.

    @ivar allowed: whether the request may proceed.
    @ivar reason: a short human-readable reason, logged with the session.
    @ivar rule: which rule decided (e.g. C{"rules.conf:12"}), if any.
    @ivar identMode: the ident check the request needs, or L{None} for the
        server's default mode.
    @ivar action: called with the ident user name (L{None} when there is
        none) when this decision settles the request: once for a denial
        that rejects it; for an approval, once before the server connects
        to (or, for BIND, listens for or accepts a peer from) the address
        it approved, after that address's own ident check passed (not for
        a SOCKS4A name check that only lets the lookup go ahead). A SOCKS4A
        request whose first address refuses the connection goes on to the
        next, under that address's own decision. Rules use it for
        C{: shell-command}.
    @ivar identFailed: called once per session, with the kind of failure
        and the ident user name (for L{IdentFailure.BAD_ID}), when the
        ident check of an approved request fails (the decision of the first
        address that needed the check). Rules use it for C{#NO_IDENTD:}
        and C{#BAD_ID:}.
    """

    allowed: bool
    reason: str
    rule: str | None = None
    identMode: IdentMode | None = None
    action: Callable[[str | None], object] | None = field(default=None, compare=False)
    identFailed: Callable[[IdentFailure, str | None], object] | None = field(
        default=None, compare=False
    )

    def withAction(self, action: Callable[[str | None], object]) -> Decision:
        """This decision, with C{action} to run if it settles the request."""
        return replace(self, action=action)

    @classmethod
    def allow(cls, reason: str, rule: str | None = None) -> Decision:
        """An answer that lets the request proceed."""
        return cls(True, reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str | None = None) -> Decision:
        """An answer that rejects the request (reply 91)."""
        return cls(False, reason, rule)


# Cached: every connection's peer is parsed, and parsing an address string
# (IPv4, then IPv6) was about 2.5% of a SOCKS4 session's CPU time.  The
# results are immutable; the size bounds what many client addresses cost.
@lru_cache(maxsize=4096)
def normalizeAddress(host: str) -> IPAddress | None:
    """
    Parse a transport's host string into an address for the policy.

    IPv4-mapped IPv6 addresses (a dual-stack C{tcp6:} listener reports IPv4
    clients as C{::ffff:a.b.c.d}) become plain IPv4 so that IPv4 rules match
    them. Scope ids (C{fe80::1%eth0}) are dropped. Anything unparsable is
    L{None}.
    """
    try:
        address = ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@implementer(IAccessPolicy)
class LoopbackClientsPolicy:
    """
    The default when no rules are configured: local clients only.

    Clients on 127.0.0.0/8 or ::1, and clients on a UNIX socket (whose file
    permissions already say who may connect), may reach any destination
    (UDP included); everyone else is denied. A server started without rules
    can therefore never be an open proxy, whatever interface it listens on.

    @ivar withUsers: whether the server has users (C{--users}): then only
        authenticated SOCKS5 sessions are served, and a SOCKS4 request (a
        claimed USERID) is denied; the server lets this policy judge SOCKS4
        requests only then.
    """

    def __init__(self, withUsers: bool = False) -> None:
        self.withUsers = withUsers

    def decide(self, request: AccessRequest) -> Decision:
        """Allow loopback and UNIX-socket clients, deny the rest."""
        if self.withUsers and request.userSource is not UserSource.AUTHENTICATED:
            return Decision.deny(
                "not authenticated (--users) and no rules admit it", "default"
            )
        if request.client is None:
            return Decision.allow("local (non-IP) client", "default")
        if request.client.is_loopback:
            return Decision.allow("loopback client", "default")
        return Decision.deny("client not on loopback and no rules given", "default")
