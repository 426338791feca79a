"""
What an access policy is asked and what it answers, and the built-in default.

The values here are plain frozen dataclasses so that a policy (the rules file,
or a program's own) can be tested without a network or a reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address

from zope.interface import implementer

from ._codec import Command
from .interfaces import IAccessPolicy

__all__ = ["AccessRequest", "Decision", "IPAddress", "LoopbackClientsPolicy"]

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """
    Everything known about a request when the policy is asked.

    @ivar client: the client's IP address (from the PROXY header when the
        listener is C{haproxy:}); IPv4-mapped IPv6 addresses are given as IPv4.
        L{None} when the client is not on IP (a UNIX socket).
    @ivar clientPort: the client's source port (0 when not on IP).
    @ivar command: CONNECT or BIND.
    @ivar user: the USERID the client sent, as text.
    @ivar port: the requested destination port.
    @ivar hostname: the SOCKS4A destination name, or L{None} for SOCKS4.
    @ivar address: the destination address: DSTIP for SOCKS4; for SOCKS4A
        L{None} while the name is not yet resolved, then the resolved address
        the server will connect to, and no other.
    @ivar identUser: the user name the client host's identd reported, when a
        lookup was made.
    """

    client: IPAddress | None
    clientPort: int
    command: Command
    user: str
    port: int
    hostname: str | None
    address: IPAddress | None
    identUser: str | None = None

    @property
    def isResolved(self) -> bool:
        """Whether C{address} is known (always, except SOCKS4A before lookup)."""
        return self.address is not None


@dataclass(frozen=True, slots=True)
class Decision:
    """
    A policy's answer.

    @ivar allowed: whether the request may proceed.
    @ivar reason: a short human-readable reason, logged with the session.
    @ivar rule: which rule decided (e.g. C{"rules.conf:12"}), if any.
    @ivar action: called once, with no arguments, if this decision settles
        the request: a denial that rejects it, or the approval of the address
        the server connects to (not a SOCKS4A name check that only lets the
        lookup go ahead). Rules use it for their C{: shell-command}.
    """

    allowed: bool
    reason: str
    rule: str | None = None
    action: Callable[[], object] | None = field(default=None, compare=False)

    def withAction(self, action: Callable[[], object]) -> Decision:
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
    permissions already say who may connect), may reach any destination;
    everyone else is denied. A server started without rules can therefore
    never be an open proxy, whatever interface it listens on.
    """

    def decide(self, request: AccessRequest) -> Decision:
        """Allow loopback and UNIX-socket clients, deny the rest."""
        if request.client is None:
            return Decision.allow("local (non-IP) client", "default")
        if request.client.is_loopback:
            return Decision.allow("loopback client", "default")
        return Decision.deny("client not on loopback and no rules given", "default")
