"""
The failed-attempt limit of username/password authentication
(C{--auth-failures N/SECONDS}, default C{10/60}).

A client (an IPv4 address, or an IPv6 /64 by default, as the per-client
limits count: L{twisted_socks.server._admission.clientKey}) that failed N times in
the last SECONDS is refused without a check until the oldest of those
failures is SECONDS old.  This bounds the cost of wrong passwords (each is a
bcrypt) and the speed of guessing from one address.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from ..policy._policy import normalizeAddress
from ._admission import clientKey

__all__ = [
    "DEFAULT_AUTH_FAILURES",
    "MAX_FAILING_CLIENTS",
    "AuthFailureLimit",
    "AuthFailures",
    "parseAuthFailures",
]

#: Clients whose failures are remembered at most (each is a key and at
#: most N timestamps): a flood of addresses cannot grow the table further.
MAX_FAILING_CLIENTS = 10_000


@dataclass(frozen=True, slots=True)
class AuthFailureLimit:
    """
    At most C{count} failed authentications per client in C{seconds}.
    """

    count: int
    seconds: float


#: C{--auth-failures}' default: 10 failures a minute.
DEFAULT_AUTH_FAILURES = AuthFailureLimit(10, 60.0)

#: Beyond these the limit is no limit, or a typo.
_MAX_COUNT = 1_000_000
_MAX_SECONDS = 86_400.0


def parseAuthFailures(text: str) -> AuthFailureLimit:
    """
    Read C{--auth-failures N/SECONDS}: C{N} a whole number from 1, C{SECONDS}
    a positive number of seconds (up to a day), e.g. C{10/60}.

    @raise ValueError: saying what is expected.
    """
    count, slash, seconds = text.strip().partition("/")
    try:
        limit = AuthFailureLimit(int(count), float(seconds))
    except ValueError:
        limit = None
    if (
        limit is None
        or not slash
        or not 1 <= limit.count <= _MAX_COUNT
        or not math.isfinite(limit.seconds)
        or not 0 < limit.seconds <= _MAX_SECONDS
    ):
        raise ValueError(
            "--auth-failures must be N/SECONDS, N failed attempts per client "
            f"in SECONDS (e.g. 10/60; N from 1 to {_MAX_COUNT}, SECONDS "
            f"above 0 and up to {_MAX_SECONDS:.0f}), not {text!r}"
        )
    return limit


class AuthFailures:
    """
    Counts failed authentications per client, on an injected clock.

    Each client's failures are kept as the times of its last C{N} (a
    sliding window); the table is kept in order of each client's latest
    failure, so clients whose failures have all aged out leave it as soon
    as anyone is counted, and beyond C{maxClients} the client with the
    oldest latest failure is forgotten.  Forgetting lets that client try
    again early; the alternative, refusing new clients while the table is
    full, would let a flood of addresses lock everyone out, and a client
    with that many addresses gains nothing by being forgotten.

    A success resets nothing: with a valid account of their own, a client
    could otherwise interleave successes to guess other users' passwords.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: AuthFailureLimit = DEFAULT_AUTH_FAILURES,
        ipv6Prefix: int = 64,
        maxClients: int = MAX_FAILING_CLIENTS,
    ) -> None:
        """
        @param clock: the time.
        @param limit: failures allowed per client and window.
        @param ipv6Prefix: the IPv6 prefix length that makes one client (as
            C{--ipv6-client-prefix}).
        @param maxClients: clients remembered at most.
        """
        self._clock = clock
        self.limit = limit
        self.ipv6Prefix = ipv6Prefix
        self.maxClients = maxClients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def key(self, host: str) -> str:
        """The client C{host} (a transport's host text) counts as."""
        return clientKey(normalizeAddress(host), host, self.ipv6Prefix)

    def allows(self, host: str) -> bool:
        """Whether the client at C{host} may try to authenticate now."""
        self._expire()
        times = self._failures.get(self.key(host))
        if times is None or len(times) < self.limit.count:
            return True
        return self._clock.seconds() - times[0] >= self.limit.seconds

    def failed(self, host: str) -> None:
        """Count a failed authentication of the client at C{host}."""
        self._expire()
        key = self.key(host)
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit.count)
        times.append(self._clock.seconds())
        self._failures.move_to_end(key)
        while len(self._failures) > self.maxClients:
            self._failures.popitem(last=False)

    def _expire(self) -> None:
        """Forget the clients whose latest failure is older than the window."""
        oldest = self._clock.seconds() - self.limit.seconds
        while self._failures:
            times = next(iter(self._failures.values()))
            if times[-1] > oldest:
                break
            self._failures.popitem(last=False)

    @property
    def clients(self) -> int:
        """How many clients have failures remembered."""
        return len(self._failures)
