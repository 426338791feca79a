"""
This server's own listening addresses, and whether a destination is one.

A CONNECT to the proxy's own listening address, with a second request
pipelined into that tunnel, makes the inner request come from the proxy's
own address, which rules that trust local clients then allow: the client's
address is laundered.  Dante refuses such a CONNECT; so does this server
(see L{SOCKSv4ServerFactory.addListeningAddress}).

A listener on a wildcard address (C{0.0.0.0}, C{::}) is reached through
every local address on its port.  Whether an address is local is asked of
the kernel: binding a throwaway socket to C{(address, 0)} fails with
C{EADDRNOTAVAIL} unless the address is one of the host's (about 8 us on
Linux).  The answer is cached for a few seconds, so that addresses added
or removed later are noticed; and nothing is asked at all when the
destination port is not one the server listens on.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from ipaddress import IPv6Address

from ..policy._policy import IPAddress, normalizeAddress

__all__ = ["ListeningAddresses", "isLocalAddress"]

#: Bind errors that say "not an address of this host" (or of no family this
#: host has); any other error counts as local, so that a doubt refuses.
_NOT_LOCAL = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


def isLocalAddress(address: IPAddress) -> bool:
    """
    Whether C{address} is one of this host's addresses: whether a socket
    can be bound to it.
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        probe = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as e:
        return e.errno not in _NOT_LOCAL
    with probe:
        try:
            probe.bind((str(address), 0))
        except OSError as e:
            return e.errno not in _NOT_LOCAL
    return True


class ListeningAddresses:
    """
    The IP addresses and ports a server listens on.

    @param isLocal: tells whether an address is one of this host's (for
        wildcard listeners); L{isLocalAddress} by default.
    @param clock: seconds, for the cache of C{isLocal}'s answers.
    @param ttl: how long an answer of C{isLocal} is kept.
    """

    #: Cached answers at most; beyond it the cache starts again (bounded
    #: memory whatever destinations clients name).
    maxCached = 1024

    def __init__(
        self,
        isLocal: Callable[[IPAddress], bool] = isLocalAddress,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = 5.0,
    ) -> None:
        self._isLocal = isLocal
        self._clock = clock
        self._ttl = ttl
        # Every port listened on, for the fast "no" of the common case.
        self._ports: set[int] = set()
        self._exact: set[tuple[IPAddress, int]] = set()
        # Wildcard listeners: port to the address families they accept.
        self._wildcards: dict[int, frozenset[int]] = {}
        self._cache: dict[IPAddress, tuple[bool, float]] = {}

    def add(self, host: str, port: int) -> None:
        """
        Note a listener on C{host} (an IP literal; C{0.0.0.0} or C{::} for
        every address) and C{port}.  Anything but an IP literal is ignored.
        """
        address = normalizeAddress(host)
        if address is None:
            return
        self._ports.add(port)
        if not address.is_unspecified:
            self._exact.add((address, port))
            return
        # An IPv6 wildcard listener accepts IPv4 too, unless it was made
        # IPv6-only (Linux's default is dual-stack): counted as both, since
        # refusing a destination nothing else could listen on costs nothing.
        families = frozenset({4} if address.version == 4 else {4, 6})
        self._wildcards[port] = self._wildcards.get(port, frozenset()) | families

    @staticmethod
    def plain(address: IPAddress) -> IPAddress:
        """
        An IPv4-mapped IPv6 address (C{::ffff:127.0.0.1}) as the IPv4
        address it reaches; any other address as it is.
        """
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    def includes(self, address: IPAddress, port: int) -> bool:
        """Whether connecting to C{address}:C{port} would reach a listener."""
        if port not in self._ports:
            return False
        address = self.plain(address)
        if (address, port) in self._exact:
            return True
        families = self._wildcards.get(port)
        return (
            families is not None
            and address.version in families
            and (self._local(address))
        )

    def _local(self, address: IPAddress) -> bool:
        now = self._clock()
        cached = self._cache.get(address)
        if cached is not None and cached[1] > now:
            return cached[0]
        local = self._isLocal(address)
        if len(self._cache) >= self.maxCached:
            self._cache.clear()
        self._cache[address] = (local, now + self._ttl)
        return local
