"""
Tests of the failed-attempt limit of username/password authentication
(C{--auth-failures N/SECONDS}): its option syntax and the per-client
sliding window on a L{Clock}.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from twisted_socks.server._authfailures import (
    DEFAULT_AUTH_FAILURES,
    AuthFailureLimit,
    AuthFailures,
    parseAuthFailures,
)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("10/60", AuthFailureLimit(10, 60.0)),
        (" 3/0.5 ", AuthFailureLimit(3, 0.5)),
        ("1/86400", AuthFailureLimit(1, 86400.0)),
    ],
)
def test_optionSyntaxIsCountSlashSeconds(text: str, limit: AuthFailureLimit) -> None:
    """C{N/SECONDS} gives the count and the window in seconds."""
    assert parseAuthFailures(text) == limit


@pytest.mark.parametrize(
    "text",
    ["", "10", "10/", "/60", "0/60", "-1/60", "10/0", "10/-5", "10/nan", "10/inf",
     "1.5/60", "ten/60", "10/60/2", "10/86401", "1000001/60"],
)  # fmt: skip
def test_badOptionValuesSayWhatIsExpected(text: str) -> None:
    """Anything but a positive count and window is refused, with an example."""
    with pytest.raises(ValueError) as caught:
        parseAuthFailures(text)
    assert str(caught.value).startswith("--auth-failures must be N/SECONDS")
    assert "e.g. 10/60" in str(caught.value)
    assert repr(text) in str(caught.value)


def test_theDefaultIsTenAMinute() -> None:
    """The default limit is 10 failures in 60 seconds, as the issue says."""
    assert DEFAULT_AUTH_FAILURES == parseAuthFailures("10/60")


def test_aClientIsRefusedAfterNFailuresUntilTheWindowPasses() -> None:
    """
    After N failures within the window the client is refused; it may try
    again when its oldest counted failure is SECONDS old.
    """
    clock = Clock()
    failures = AuthFailures(clock, AuthFailureLimit(3, 60.0))
    for _ in range(3):
        assert failures.allows("192.0.2.1")
        failures.failed("192.0.2.1")
        clock.advance(10)
    assert not failures.allows("192.0.2.1")
    assert failures.allows("192.0.2.2")
    clock.advance(29.5)
    assert not failures.allows("192.0.2.1")
    clock.advance(0.5)
    assert failures.allows("192.0.2.1")
    # One more failure now: the 2nd and 3rd are still within the window.
    failures.failed("192.0.2.1")
    assert not failures.allows("192.0.2.1")
    clock.advance(10)
    assert failures.allows("192.0.2.1")


def test_failuresSpreadOutNeverBlock() -> None:
    """Failures further apart than the window never add up to N."""
    clock = Clock()
    failures = AuthFailures(clock, AuthFailureLimit(2, 60.0))
    for _ in range(5):
        failures.failed("192.0.2.1")
        assert failures.allows("192.0.2.1")
        clock.advance(60)


def test_anIPv6ClientIsItsSlash64() -> None:
    """
    IPv6 addresses of one /64 count as one client (as the per-client limits
    count them), another /64 is another client, and an IPv4-mapped address
    is its IPv4 client.
    """
    clock = Clock()
    failures = AuthFailures(clock, AuthFailureLimit(2, 60.0))
    failures.failed("2001:db8:1:2::1")
    failures.failed("2001:db8:1:2:ffff::9")
    assert not failures.allows("2001:db8:1:2::77")
    assert failures.allows("2001:db8:1:3::1")
    failures.failed("::ffff:192.0.2.7")
    failures.failed("192.0.2.7")
    assert not failures.allows("192.0.2.7")
    assert failures.key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert AuthFailures(clock, ipv6Prefix=128).key("2001:db8::1") == "2001:db8::1"


def test_theTableForgetsClientsWhoseFailuresAgedOut() -> None:
    """
    A client whose latest failure is older than the window leaves the
    table: memory follows the clients failing now.
    """
    clock = Clock()
    failures = AuthFailures(clock, AuthFailureLimit(3, 60.0))
    for n in range(100):
        failures.failed(f"192.0.2.{n}")
    assert failures.clients == 100
    clock.advance(60)
    failures.failed("198.51.100.1")
    assert failures.clients == 1


def test_aFloodOfAddressesIsBounded() -> None:
    """
    Beyond C{maxClients} clients, the one with the oldest latest failure is
    forgotten: a flood of addresses cannot grow the table.
    """
    clock = Clock()
    failures = AuthFailures(clock, AuthFailureLimit(1, 60.0), maxClients=50)
    failures.failed("192.0.2.1")
    assert not failures.allows("192.0.2.1")
    for n in range(5000):
        clock.advance(0.001)
        failures.failed(f"2001:db8:{n:x}::1")
        assert failures.clients <= 50
    assert failures.clients == 50
    assert not failures.allows("2001:db8:1387::1")
    # The first client was forgotten by the flood.
    assert failures.allows("192.0.2.1")
