"""
SOCKS4A fallback over a name's addresses, with real sockets: each resolved
address is connected to only under the decision that allowed it (its own
ident mode, its own rule command, its own rule in the session record), and
the client host's identd is asked at most once per session.

The names resolve (through L{FakeHostnameResolver}) to addresses on
127.0.0.2, 127.0.0.3 (and 127.0.0.4), all on one port: for CONNECT nothing
listens on 127.0.0.2 (the connection is refused) and a real listener waits
on 127.0.0.3; for BIND a real peer connects from one of them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort

from tests._support import closedPort, eventually, inThread, listen, recvUpTo
from twisted_socks import (
    Command,
    RFC1413Resolver,
    SessionRecord,
    SOCKSv4ServerFactory,
    encodeRequest,
)
from twisted_socks.policy._rules import Rule, parseRules
from twisted_socks.testing import FakeHostnameResolver, FakeIdentResolver

GRANTED = 90
REJECTED = 91
NO_IDENTD = 92
IDENT_MISMATCH = 93

#: The rules of the attack: 127.0.0.2 loosely allowed, 127.0.0.3 guarded by
#: a strict ident check for alice.
GUARDED = """\
allow ?=I *=alice 127.0.0.0/8 127.0.0.3/32
allow 127.0.0.0/8 127.0.0.2/32
"""


@pytest.fixture
def guarded() -> Iterator[tuple[socket.socket, int]]:
    """
    A listener on 127.0.0.3 (the guarded service); nothing listens on
    127.0.0.2 at the same port (binding 127.0.0.3:P succeeds only when no
    wildcard listener holds P).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.3", 0))
    listener.listen(8)
    listener.settimeout(0)
    yield listener, listener.getsockname()[1]
    listener.close()


class Proxy:
    """An in-process server whose sessions' records and rule commands are kept."""

    def __init__(
        self,
        ports: list[IListeningPort],
        rules: str,
        addresses: list[str],
        identResolver: Any,
    ) -> None:
        self.records: list[SessionRecord] = []
        #: (rule location, destination address) of each rule command run.
        self.commands: list[tuple[str, str]] = []

        def onMatch(rule: Rule, request: Any, decision: Any) -> None:
            self.commands.append((rule.location, str(request.address)))

        self.factory = SOCKSv4ServerFactory(
            reactor,
            policy=parseRules(rules, "rules", onMatch=onMatch),
            nameResolver=FakeHostnameResolver(
                {"svc.test": addresses, "peer.test": addresses}
            ),
            identResolver=identResolver,
            sessionObserver=self.records.append,
        )
        self.port = listen(ports, self.factory)

    async def ask(self, destPort: int, user: str = "alice") -> int:
        """One SOCKS4A CONNECT to svc.test; the reply code (0: none)."""
        request = encodeRequest(
            Command.CONNECT, destPort, userid=user.encode(), hostname="svc.test"
        )

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(request)
                return recvUpTo(s, 8)

        reply = await inThread(client)
        return reply[1] if len(reply) == 8 else 0

    async def record(self) -> SessionRecord:
        """The session's record, once it has ended."""
        await eventually(lambda: len(self.records) == 1)
        return self.records[0]


def noIdentd() -> RFC1413Resolver:
    """A real ident resolver asking a port where no identd listens."""
    return RFC1413Resolver(reactor, port=closedPort(), timeout=5)


def accepted(listener: socket.socket) -> int:
    """
    How many connections wait in C{listener}'s queue (accepting and closing
    them, so that a tunnel to it ends).
    """
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest_twisted.ensureDeferred
async def test_fallbackAddressGetsItsOwnStrictIdentCheck(
    ports: list[IListeningPort], guarded: tuple[socket.socket, int]
) -> None:
    """
    The attack: the name's first address is loosely allowed and refuses the
    connection, the second is guarded by C{?=I *=alice} and there is no
    identd.  The client gets 92, the guarded service sees no connection,
    the record names the guarded address's rule, and only the loose rule's
    command ran (for the address it was tried on).
    """
    listener, port = guarded
    proxy = Proxy(ports, GUARDED, ["127.0.0.2", "127.0.0.3"], noIdentd())
    reply = await proxy.ask(port)
    connections = accepted(listener)
    record = await proxy.record()
    assert (reply, record.reply, record.rule) == (NO_IDENTD, NO_IDENTD, "rules:1")
    assert record.reason.startswith("no ident answer")
    assert connections == 0
    assert proxy.commands == [("rules:2", "127.0.0.2")]


@pytest_twisted.ensureDeferred
async def test_strictAddressFirstIsSkippedForTheLooseOne(
    ports: list[IListeningPort], guarded: tuple[socket.socket, int]
) -> None:
    """
    The other order: the guarded address first, without identd, is not
    used; the loose one is tried under its own rule (and refuses), so the
    client gets 91 and the record names the loose rule.
    """
    listener, port = guarded
    proxy = Proxy(ports, GUARDED, ["127.0.0.3", "127.0.0.2"], noIdentd())
    reply = await proxy.ask(port)
    connections = accepted(listener)
    record = await proxy.record()
    assert (reply, record.rule) == (REJECTED, "rules:2")
    assert record.reason.startswith("connect failed")
    assert connections == 0
    assert proxy.commands == [("rules:2", "127.0.0.2")]


@pytest_twisted.ensureDeferred
async def test_fallbackWithTheRightIdentUserIsServedUnderItsOwnRule(
    ports: list[IListeningPort], guarded: tuple[socket.socket, int]
) -> None:
    """
    With identd naming alice, and the loose address asking identd
    leniently, the fallback reaches the guarded service: 90, the record
    names the guarded rule and its address, each address's own command ran
    once, and identd was asked once (its answer serves both checks).
    """
    listener, port = guarded
    rules = GUARDED.replace("allow 127", "allow ?=i 127")
    ident = FakeIdentResolver({"127.0.0.1": "alice"})
    proxy = Proxy(ports, rules, ["127.0.0.2", "127.0.0.3"], ident)
    reply = await proxy.ask(port)
    connections = accepted(listener)
    record = await proxy.record()
    assert (reply, record.rule, record.identUser) == (GRANTED, "rules:1", "alice")
    assert record.resolved == f"127.0.0.3:{port}"
    assert connections == 1
    assert proxy.commands == [("rules:2", "127.0.0.2"), ("rules:1", "127.0.0.3")]
    assert len(ident.lookups) == 1


@pytest_twisted.ensureDeferred
async def test_identIsAskedOncePerSessionAndJudgedPerAddress(
    ports: list[IListeningPort], guarded: tuple[socket.socket, int]
) -> None:
    """
    Two addresses each needing an ident check (one lenient, one strict),
    identd naming someone else: identd is asked once, neither address is
    used nor runs its command, and the client gets 93 with the rule of the
    last address judged in the record.
    """
    listener, port = guarded
    rules = """\
allow ?=I 127.0.0.0/8 127.0.0.3/32
allow ?=i 127.0.0.0/8 127.0.0.2/32
"""
    ident = FakeIdentResolver({"127.0.0.1": "mallory"})
    proxy = Proxy(ports, rules, ["127.0.0.2", "127.0.0.3"], ident)
    reply = await proxy.ask(port)
    connections = accepted(listener)
    record = await proxy.record()
    assert (reply, record.rule, record.identUser) == (
        IDENT_MISMATCH,
        "rules:1",
        "mallory",
    )
    assert len(ident.lookups) == 1
    assert connections == 0
    assert proxy.commands == []


#: For BIND: the peer may come from 127.0.0.2 only with a strict ident
#: check, from 127.0.0.3 and 127.0.0.4 under rules of their own.
BIND_RULES = """\
allow ?=I *=alice 127.0.0.0/8 127.0.0.2/32
allow 127.0.0.0/8 127.0.0.3/32
allow 127.0.0.0/8 127.0.0.4/32
"""


def bindThrough(proxyPort: int, peerSource: str) -> tuple[bytes, bytes]:
    """
    A SOCKS4A BIND for peer.test; a peer then connects from C{peerSource}.
    Both replies (the second empty if the server closed instead).
    """
    request = encodeRequest(Command.BIND, 21, userid=b"alice", hostname="peer.test")
    with socket.create_connection(("127.0.0.1", proxyPort), timeout=10) as s:
        s.sendall(request)
        first = recvUpTo(s, 8)
        if first[1:2] != bytes([GRANTED]):
            return first, b""
        with socket.socket() as peer:
            peer.settimeout(10)
            peer.bind((peerSource, 0))
            peer.connect((socket.inet_ntoa(first[4:8]), int.from_bytes(first[2:4])))
            return first, recvUpTo(s, 8)


@pytest.mark.parametrize(
    ("peerSource", "second", "rule", "commands"),
    [
        ("127.0.0.2", REJECTED, "rules:2", [("rules:2", "127.0.0.3")]),
        (
            "127.0.0.4",
            GRANTED,
            "rules:3",
            [("rules:2", "127.0.0.3"), ("rules:3", "127.0.0.4")],
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bindPeerMustComeFromAnAddressThatPassedItsOwnCheck(
    ports: list[IListeningPort],
    peerSource: str,
    second: int,
    rule: str,
    commands: list[tuple[str, str]],
) -> None:
    """
    A SOCKS4A BIND whose name resolves to a strictly guarded address (no
    identd) and two loosely allowed ones: the server listens (the guarded
    address is dropped, not the whole request), a peer from the guarded
    address is refused, and a peer from another address is served under
    that address's own rule, whose command runs when the peer arrives.
    """
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    proxy = Proxy(ports, BIND_RULES, addresses, noIdentd())
    first, reply = await inThread(bindThrough, proxy.port, peerSource)
    record = await proxy.record()
    assert (first[1], reply[1:2], record.rule) == (GRANTED, bytes([second]), rule)
    assert proxy.commands == commands
