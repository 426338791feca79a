"""
What every version's CONNECT and BIND endpoints ask, and the checks of
local misuse they share.

L{EndpointBase} holds the destination, the proxy, the time allowed and
whether names go to the proxy, checked at construction; a version adds its
own fields (SOCKS4's USERID, SOCKS5's credentials), which address literals
it can carry, how a name is looked up here, and how a request is encoded.
The attempts read what to ask from it through the version's dialect
(L{twisted_socks.client._attempts}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logfields import hostPort

__all__ = ["EndpointBase", "appAddress", "firstAddressOf"]

#: The address literals a version carries: IPv4 only for SOCKS4.
_A = TypeVar("_A", bound=IPv4Address | IPv6Address)


class EndpointBase(Generic[_A]):
    """
    The destination, the proxy, the time allowed and how names are
    resolved, for one version's endpoints.

    Subclasses set C{_command} and say which literals they carry
    (L{_parseLiteral}), how a name is looked up (L{_lookUp}) and how a
    request is encoded (L{_encode}).
    """

    _command: Enum
    #: The request for C{_literal} (or the name the proxy resolves), encoded
    #: at construction, or L{None} if it is encoded per attempt.
    _encoded: bytes | None = None

    def __init__(
        self,
        reactor: IReactorTime,
        host: str,
        port: int,
        proxyEndpoint: IStreamClientEndpoint,
        timeout: float,
        remoteResolve: bool,
    ) -> None:
        """
        @raise ValueError: for an empty host, a port out of range or a
            CONNECT to port 0, a timeout that is not positive, or a literal
            the version cannot carry.
        @raise TypeError: for names resolved here with a reactor that has
            no C{nameResolver}.
        """
        if not host:
            raise ValueError("empty destination host")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        # A BIND's destination port only names the primary connection's
        # port, so 0 is acceptable there; a CONNECT to port 0 reaches nothing.
        # (Compared by name: each version has its own command enum.)
        if port == 0 and self._command.name == "CONNECT":
            raise ValueError("CONNECT to port 0")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive: {timeout}")
        self._reactor = reactor
        self._host = host
        self._port = port
        self._proxyEndpoint = proxyEndpoint
        self._timeout = timeout
        self._remoteResolve = remoteResolve
        self._literal = self._parseLiteral(host, remoteResolve)
        if self._literal is None and not remoteResolve:
            if not IReactorPluggableNameResolver.providedBy(reactor):
                raise TypeError(
                    "remoteResolve=False needs a reactor with a nameResolver"
                )

    def _parseLiteral(self, host: str, remoteResolve: bool) -> _A | None:
        """
        C{host} as an address literal the version carries, or L{None} for a
        name.

        @raise ValueError: for a literal the version cannot carry.
        """
        raise NotImplementedError()

    def _lookUp(self, resolver: IHostnameResolver) -> Deferred[_A]:
        """The address of the name to send, looked up here."""
        raise NotImplementedError()

    def _encode(self, address: _A | None) -> bytes:
        """The request for C{address}, or for the name when L{None}."""
        raise NotImplementedError()

    def _destination(self) -> Deferred[_A | None]:
        """
        The address to send: the literal, the name's address looked up
        here, or L{None} for a name the proxy resolves.

        The local resolver is consulted only in the second case.
        """
        if self._literal is not None:
            return succeed(self._literal)
        if self._remoteResolve:
            return succeed(None)
        resolver = IReactorPluggableNameResolver(self._reactor).nameResolver
        # Deferred is invariant, but what fires a _A fires a _A | None.
        lookup: Deferred[_A | None] = self._lookUp(resolver)  # type: ignore[assignment]
        return lookup

    def _describe(self) -> str:
        """The destination as text, for messages."""
        return hostPort(self._host, self._port)


def appAddress(
    host: str, port: int, address: IPv4Address | IPv6Address | None
) -> IAddress:
    """
    The address an application protocol is built for: C{address}, or the
    name C{host} when the proxy resolves it.
    """
    if isinstance(address, IPv4Address):
        return taddress.IPv4Address("TCP", str(address), port)
    if isinstance(address, IPv6Address):
        return taddress.IPv6Address("TCP", str(address), port)
    return taddress.HostnameAddress(
        host.encode("ascii" if host.isascii() else "idna"), port
    )


def firstAddressOf(
    resolver: IHostnameResolver,
    host: str,
    port: int,
    addressTypes: Sequence[type[IAddress]],
    parse: Callable[[str], _A | None],
    noneFound: Exception,
) -> Deferred[_A]:
    """
    The first address C{resolver} finds for C{host} among C{addressTypes}
    (the one the system prefers, in C{getaddrinfo}'s order), as C{parse}
    reads it.

    @param noneFound: the error if there is none.
    @return: a L{Deferred} that fails with C{noneFound} if there is none;
        cancelling it cancels the lookup (where the resolver can).
    """
    receiver = _FirstAddress(parse, noneFound)
    try:
        resolver.resolveHostName(receiver, host, port, addressTypes=addressTypes)
    except Exception:
        return fail(Failure())
    return receiver.deferred


@implementer(IResolutionReceiver)
class _FirstAddress(Generic[_A]):
    """Collects a lookup's first address."""

    def __init__(self, parse: Callable[[str], _A | None], noneFound: Exception) -> None:
        self._parse = parse
        self._noneFound = noneFound
        self._address: _A | None = None
        self._resolution: IHostResolution | None = None
        self.deferred: Deferred[_A] = Deferred(self._cancel)

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        """Remember the lookup, to cancel it."""
        self._resolution = resolutionInProgress

    def addressResolved(self, address: IAddress) -> None:
        """Keep the first address the version carries."""
        if self._address is None and isinstance(
            address, taddress.IPv4Address | taddress.IPv6Address
        ):
            self._address = self._parse(address.host)

    def resolutionComplete(self) -> None:
        """Fire with the address, or fail if there was none."""
        if self.deferred.called:
            return
        if self._address is None:
            self.deferred.errback(self._noneFound)
        else:
            self.deferred.callback(self._address)

    def _cancel(self, deferred: Deferred[_A]) -> None:
        if self._resolution is not None:
            try:
                self._resolution.cancel()
            except NotImplementedError:
                # GAIResolver cannot cancel a getaddrinfo already running;
                # its answer arrives later and is dropped.
                pass
