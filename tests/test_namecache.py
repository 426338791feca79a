"""L{CachingHostnameResolver}: repeated SOCKS4A names are answered from memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import address as taddress
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.task import Clock
from zope.interface import implementer

from twisted_socks import CachingHostnameResolver
from twisted_socks.outbound._resolve import (
    NameNotFound,
    answeredFromMemory,
    resolveHostname,
)
from twisted_socks.testing import FakeHostnameResolver


def lookup(resolver: Any, name: str, port: int = 80) -> Any:
    """Resolve through the server's own helper; the result (or failure)."""
    results: list[Any] = []
    resolveHostname(resolver, name, port).addBoth(results.append)
    return results[0] if results else None


def test_repeatedNameIsAnsweredFromMemoryUntilTheTtl() -> None:
    """
    The second lookup of a name within the TTL does not reach the resolver
    and gives the same addresses, with the port of its own request; after
    the TTL the resolver is asked again.
    """
    clock = Clock()
    inner = FakeHostnameResolver({"example.test": ["192.0.2.1", "2001:db8::1"]})
    cache = CachingHostnameResolver(inner, clock, ttl=30)
    first = lookup(cache, "example.test", 80)
    second = lookup(cache, "EXAMPLE.test", 443)
    assert [str(a) for a in first] == ["192.0.2.1", "2001:db8::1"]
    assert second == first
    assert (cache.hits, cache.misses) == (1, 1)
    clock.advance(30)
    assert lookup(cache, "example.test") == first
    assert (cache.hits, cache.misses) == (1, 2)


def test_failuresAreNotKept() -> None:
    """A name that did not resolve is asked again next time."""
    clock = Clock()
    inner = FakeHostnameResolver()
    cache = CachingHostnameResolver(inner, clock)
    for attempt in range(2):
        results: list[Any] = []
        resolveHostname(cache, "missing.test", 80).addBoth(results.append)
        inner.lookups[attempt].complete([])
        results[0].trap(NameNotFound)
    assert (cache.hits, cache.misses) == (0, 2)


def test_leastRecentlyUsedNamesGoFirst() -> None:
    """At most C{maxEntries} names are kept; the least recently used leave."""
    clock = Clock()
    inner = FakeHostnameResolver({f"n{i}.test": [f"192.0.2.{i}"] for i in range(4)})
    cache = CachingHostnameResolver(inner, clock, maxEntries=2)
    lookup(cache, "n0.test")
    lookup(cache, "n1.test")
    lookup(cache, "n0.test")  # n0 is now the most recent
    lookup(cache, "n2.test")  # evicts n1
    misses = cache.misses
    lookup(cache, "n0.test")
    assert cache.misses == misses
    lookup(cache, "n1.test")
    assert cache.misses == misses + 1


def test_pendingLookupsAreNotShared() -> None:
    """An answer that has not arrived is not cached: both lookups go out."""
    clock = Clock()
    inner = FakeHostnameResolver()
    cache = CachingHostnameResolver(inner, clock)
    results: list[Any] = []
    resolveHostname(cache, "slow.test", 80).addBoth(results.append)
    resolveHostname(cache, "slow.test", 80).addBoth(results.append)
    assert len(inner.lookups) == 2
    inner.lookups[0].complete(["192.0.2.9"])
    assert [str(a) for a in results[0]] == ["192.0.2.9"]
    assert lookup(cache, "slow.test") == results[0]


def test_cachedAnswerKeepsTheAddressTypes() -> None:
    """IPv4 and IPv6 answers come back as the address types they were."""
    clock = Clock()
    inner = FakeHostnameResolver({"dual.test": ["192.0.2.1", "2001:db8::1"]})
    cache = CachingHostnameResolver(inner, clock)
    seen: list[Any] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution: Any) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            seen.append(address)

        def resolutionComplete(self) -> None:
            pass

    cache.resolveHostName(Receiver(), "dual.test", 1080)
    cache.resolveHostName(Receiver(), "dual.test", 443)
    assert (cache.hits, cache.misses) == (1, 1)
    assert [(a.host, a.port) for a in seen] == [
        ("192.0.2.1", 1080),
        ("2001:db8::1", 1080),
        ("192.0.2.1", 443),
        ("2001:db8::1", 443),
    ]
    assert isinstance(seen[2], taddress.IPv4Address)
    assert isinstance(seen[3], taddress.IPv6Address)


def test_invalidSettingsAreRefused() -> None:
    """A zero TTL or size is a caller's mistake, not a silent no-op."""
    with pytest.raises(ValueError):
        CachingHostnameResolver(FakeHostnameResolver(), Clock(), ttl=0)
    with pytest.raises(ValueError):
        CachingHostnameResolver(FakeHostnameResolver(), Clock(), maxEntries=0)


def test_nameCacheOption() -> None:
    """C{--name-cache-ttl} takes 0 (off) to a day; anything else is refused."""
    from twisted.python.usage import UsageError

    from twisted_socks.app._tap import Options

    for value, expected in (("0", 0.0), ("2.5", 2.5), ("86400", 86400.0)):
        options = Options()
        options.parseOptions(["--name-cache-ttl", value])
        assert options["name-cache-ttl"] == expected
    for value in ("-1", "86401"):
        with pytest.raises(UsageError, match="--name-cache-ttl must be 0 to 86400"):
            Options().parseOptions(["--name-cache-ttl", value])


def test_answersSaysWhetherALookupWouldBeAnsweredFromMemory() -> None:
    """
    L{CachingHostnameResolver.answers} is true for a kept name (any case)
    until its TTL, and false for a name never answered or expired.
    """
    clock = Clock()
    inner = FakeHostnameResolver({"example.test": ["192.0.2.1"]})
    cache = CachingHostnameResolver(inner, clock, ttl=30)
    assert not cache.answers("example.test")
    lookup(cache, "example.test")
    both = [taddress.IPv4Address, taddress.IPv6Address]
    assert cache.answers("EXAMPLE.test", both)
    assert answeredFromMemory(cache, "example.test")
    assert not answeredFromMemory(inner, "example.test")
    assert not cache.answers("other.test", both)
    clock.advance(30)
    assert not cache.answers("example.test", both)
