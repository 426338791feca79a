"""
The Python work of one proxy session, in process: the server's CPU per
CONNECT session for SOCKS4 and for SOCKS5 without authentication, with no
sockets, no kernel and no other process in the figure.

Each session is the handshake test's (see README.md): a client connects,
sends its request (SOCKS5: the greeting offering only 00 first, then a
CONNECT by address), the outbound connection succeeds, one byte goes each
way, the destination closes and then the client.  Transports are
L{HalfCloseableStringTransport}s and the outbound connector is the project's
L{FakeConnector}, so what is measured is the server's own code (parsing,
the policy, the session record and its log line, the replies), which is
what separates a SOCKS5 session from a SOCKS4 one; the syscalls a real
session adds are the same for both but the greeting's one extra read and
write.

The versions are measured in turns, many short batches each, in the same
process; the figure is CPU time of this thread (C{time.thread_time}), so
other processes on a busy machine count less than in a wall-clock figure
(but still some, through the caches).  The minimum and median of the batches
are printed, and SOCKS5 / SOCKS4 of each.

    .venv/bin/python bench/sessioncpu.py                  # 25 batches of 2,000
    .venv/bin/python bench/sessioncpu.py --profile 5      # cProfile, SOCKS5
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from typing import Any

from twisted.internet import address as taddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_socks import SOCKSv4ServerFactory
from twisted_socks.testing import (
    FakeConnector,
    FakeHostnameResolver,
    HalfCloseableStringTransport,
)

CLIENT = taddress.IPv4Address("TCP", "127.0.0.1", 40000)

#: What each version's client sends before its grant, message by message:
#: a CONNECT to 127.0.0.1:8080.
MESSAGES = {
    4: [b"\x04\x01\x1f\x90\x7f\x00\x00\x01\x00"],
    5: [b"\x05\x01\x00", b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"],
}

#: What each version's client is sent, up to the echoed byte.
EXPECTED = {
    4: b"\x00\x5a\x00\x00\x00\x00\x00\x00q",
    5: b"\x05\x00\x05\x00\x00\x01\x0a\x00\x00\x01\x30\x39q",
}

_DONE = Failure(ConnectionDone())


class Harness:
    """A server factory on a memory clock and a connector that never fails."""

    def __init__(self) -> None:
        self.connector = FakeConnector()
        self.factory = SOCKSv4ServerFactory(
            MemoryReactorClock(),
            connector=self.connector,
            nameResolver=FakeHostnameResolver({}),
            # The record is made (the session pays for it) but not logged:
            # the log line's formatting is the same for both versions.
            sessionObserver=lambda record: None,
        )
        self.factory.doStart()

    def session(self, messages: list[bytes]) -> bytes:
        """One session, start to end; return what its client was sent."""
        protocol: Any = self.factory.buildProtocol(CLIENT)
        transport = HalfCloseableStringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        for message in messages:
            protocol.dataReceived(message)
        outbound: Any = self.connector.connections.pop().succeed()
        protocol.dataReceived(b"q")
        outbound.dataReceived(b"q")
        outbound.connectionLost(_DONE)
        protocol.connectionLost(_DONE)
        return transport.value()


def batch(version: int, sessions: int) -> float:
    """CPU microseconds per session of C{sessions} sessions on a fresh factory."""
    harness = Harness()
    messages = MESSAGES[version]
    sent = harness.session(messages)
    if sent != EXPECTED[version]:
        raise SystemExit(f"SOCKS{version}: the client was sent {sent!r}")
    start = time.thread_time()
    for _ in range(sessions):
        harness.session(messages)
    return (time.thread_time() - start) / sessions * 1e6


def measure(batches: int, sessions: int) -> dict[int, list[float]]:
    """Batches of each version, in turns."""
    figures: dict[int, list[float]] = {4: [], 5: []}
    for _ in range(batches):
        for version in (4, 5):
            figures[version].append(batch(version, sessions))
    return figures


def main(argv: list[str] | None = None) -> int:
    """Measure (or profile) and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--sessions", type=int, default=2000, help="per batch")
    parser.add_argument(
        "--profile",
        type=int,
        choices=(4, 5),
        help="instead, cProfile 10 x --sessions sessions of this version",
    )
    args = parser.parse_args(argv)
    if args.profile:
        harness = Harness()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.sessions * 10):
            harness.session(MESSAGES[args.profile])
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return 0
    figures = measure(args.batches, args.sessions)
    print(
        f"CPU us per session, in process ({args.batches} batches of "
        f"{args.sessions:,} sessions each, thread time):"
    )
    low = {v: min(f) for v, f in figures.items()}
    mid = {v: statistics.median(f) for v, f in figures.items()}
    for version in (4, 5):
        print(f"  SOCKS{version}: min {low[version]:6.1f}  median {mid[version]:6.1f}")
    print(f"  SOCKS5 / SOCKS4: min {low[5] / low[4]:.3f}  median {mid[5] / mid[4]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
