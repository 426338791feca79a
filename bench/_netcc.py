"""
The machine's TCP congestion control, read and (for a while) changed.

Why the harness touches it: on loopback the congestion control is a
property of the machine that every target shares, and one of them, BBR,
paces each stream with a high-resolution timer (loopback has no C{fq}
qdisc, so TCP paces internally).  On the 2-core development machine,
whose default is BBR, that pacing held a single loopback stream to about
2,000 MiB/s through our splicing relay and 4,500 MiB/s direct, whatever
the proxy did; under CUBIC (Linux's and Debian's default) the same streams
reached 4,600-5,600 and 5,800-6,900 MiB/s.  A server that is itself
CPU-bound copying every byte (Dante, Twisted's built-in server) gains
less.  So the throughput section runs under CUBIC, every target alike,
and once more under the machine's own default when that differs, and
reports both.

The setting is the network namespace's
C{net.ipv4.tcp_congestion_control}: new sockets take it, including those
accepted by a listening socket that did not choose its own (the kernel's
C{tcp_ca_openreq_child}), so servers already running follow it without a
restart.  Writing it needs root (CAP_NET_ADMIN); without that the harness
measures under the machine's default only and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["REFERENCE", "available", "current", "switched"]

_SYSCTL = Path("/proc/sys/net/ipv4/tcp_congestion_control")
_AVAILABLE = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")

#: The congestion control the throughput figures are judged under: the
#: kernel's default (CONFIG_DEFAULT_TCP_CONG) and Debian's.
REFERENCE = "cubic"


def current() -> str | None:
    """The namespace's default congestion control; L{None} off Linux."""
    try:
        return _SYSCTL.read_text().strip()
    except OSError:
        return None


def available() -> list[str]:
    """The congestion controls this kernel has loaded or built in."""
    try:
        return _AVAILABLE.read_text().split()
    except OSError:
        return []


@contextlib.contextmanager
def switched(name: str) -> Iterator[None]:
    """
    Make C{name} the namespace's default for the duration, then put the
    previous default back (also on an exception or interrupt).

    @raise OSError: if it cannot be read or written (not root, not Linux,
        C{name} not available).
    """
    before = _SYSCTL.read_text().strip()
    if before == name:
        yield
        return
    _SYSCTL.write_text(name)
    try:
        yield
    finally:
        _SYSCTL.write_text(before)
