"""
What a client asks the server for, in words no SOCKS version owns.

Each protocol front end (SOCKS4/4A today, SOCKS5 next) parses its own bytes
and hands the session core one L{SessionRequest}; the core never sees a
version's wire format.  The command values are the ones both versions put on
the wire (SOCKS4's CD, SOCKS5's CMD), so a front end converts with
C{Command(value)} after checking the value is one its version has.

Sans-IO: no Twisted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address

__all__ = ["Command", "SessionRequest", "UserSource", "addressText"]

#: C{str()} of an IP address, remembered: a session formats its destination
#: several times (connector, log line, status), and ipaddress computes the
#: text anew each time.  Addresses are immutable; the size bounds the memory.
addressText = lru_cache(maxsize=4096)(str)


class Command(IntEnum):
    """What a request asks for (SOCKS4's CD, SOCKS5's CMD)."""

    CONNECT = 1
    BIND = 2
    #: SOCKS5 only.
    UDP_ASSOCIATE = 3

    @property
    def word(self) -> str:
        """
        The command as an operator reads and writes it, one word everywhere:
        the session record (log line, JSON log, C{/sessions}, the live
        table), C{/metrics}' C{command} label, a rule command's C{%c} and
        the rules' C{cmd=}: C{connect}, C{bind} or C{udp}.
        """
        return "udp" if self is Command.UDP_ASSOCIATE else self.name.lower()


class UserSource(Enum):
    """How the user name of a request was established."""

    #: The client said so, unverified (SOCKS4's USERID).
    CLAIMED = "claimed"
    #: The client proved it (SOCKS5's RFC 1929 username and password).
    AUTHENTICATED = "authenticated"
    #: No user name at all.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """
    One complete request, as the session core sees it.

    @ivar version: the SOCKS version it arrived in (4 for SOCKS4 and 4A);
        for the record only: the core does not branch on it.
    @ivar command: what is asked for.
    @ivar port: the destination port.
    @ivar address: the destination address, or L{None} when the destination
        is a name.
    @ivar hostname: the destination name for the server to resolve, or
        L{None} when it is an address.
    @ivar user: the user name, as text (undecodable bytes kept as lone
        surrogates, so that nothing is lost and nothing matches by accident).
    @ivar userSource: how C{user} was established.
    @ivar trailing: bytes the client sent after the request, before any
        reply: they go to the destination once it is connected.
    """

    version: int
    command: Command
    port: int
    address: IPv4Address | IPv6Address | None
    hostname: str | None
    user: str
    userSource: UserSource
    trailing: bytes = b""

    @property
    def destination(self) -> str:
        """The requested destination as text: the name or the address."""
        return self.hostname if self.hostname is not None else addressText(self.address)
