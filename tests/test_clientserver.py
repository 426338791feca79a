"""
Our client endpoints, both versions, against our own server, in-process on
real loopback sockets: what L{tests.test_socks5serverclient} and the real
socket half of L{tests.test_client} leave out.  An IPv6 destination, a name
resolved by the server (a fake resolver on its factory) or by the client
(a fake resolver on the client's reactor), credentials offered or demanded,
BIND with a login, refusals by the server's rules reaching the caller as
the version's exception with its reply code, and a chain of both versions.

Each tunnel is checked in the server's session records too, so a client
that bypassed the proxy, or sent the request in another form, would fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import reactor
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IHostnameResolver,
    IListeningPort,
    IReactorPluggableNameResolver,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from zope.interface import implementer

from tests._support import Echo, eventually, listen
from tests.test_client import (
    TIMEOUT,
    Collector,
    bindAndPeer,
    roundTrip,
    tcp,
    withTimeout,
)
from twisted_socks import (
    SOCKS4BindEndpoint,
    SOCKS4ClientEndpoint,
    SOCKS5BindEndpoint,
    SOCKS5ClientEndpoint,
    SOCKSv4ServerFactory,
    parseRules,
)
from twisted_socks.server._records import SessionRecord
from twisted_socks.testing import FakeHostnameResolver
from twisted_socks.wire._socks4 import ReplyCode as ReplyCode4
from twisted_socks.wire._socks4reply import RequestRejected
from twisted_socks.wire._socks5client import NoAcceptableMethod, NotAllowedByRuleset
from twisted_socks.wire._socks5replies import ReplyCode5

#: The password holds what a careless encoder might mangle.
PASSWORD = b"s3cret:@%"


def startServer(
    ports: list[IListeningPort],
    interface: str = "127.0.0.1",
    **kwargs: Any,
) -> tuple[int, list[SessionRecord]]:
    """
    Our server on C{interface}, with C{kwargs}; its port, and the list its
    session records go to.
    """
    records: list[SessionRecord] = []
    factory = SOCKSv4ServerFactory(reactor, sessionObserver=records.append, **kwargs)  # type: ignore[arg-type]
    port = reactor.listenTCP(0, factory, interface=interface)  # type: ignore[attr-defined]
    ports.append(port)
    return port.getHost().port, records


def users() -> InMemoryUsernamePasswordDatabaseDontUse:
    """A checker that knows ann."""
    return InMemoryUsernamePasswordDatabaseDontUse(ann=PASSWORD)


async def record(records: list[SessionRecord]) -> SessionRecord:
    """The first session record, once the session has ended (bounded)."""
    await eventually(lambda: bool(records), TIMEOUT)
    return records[0]


@implementer(IReactorTime, IReactorPluggableNameResolver)
class LocalNames:
    """
    The client's reactor with a name resolver that knows only C{names}:
    the real reactor's clock, and a lookup that the server could not make
    (it has no such names), so a tunnel that works was resolved here.
    """

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.nameResolver = FakeHostnameResolver(names)

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        """Not used by the client."""
        raise NotImplementedError()

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> IDelayedCall:
        """The real reactor's."""
        return reactor.callLater(delay, callable, *args, **kw)  # type: ignore[attr-defined,no-any-return]

    def getDelayedCalls(self) -> list[IDelayedCall]:
        """The real reactor's."""
        return reactor.getDelayedCalls()  # type: ignore[attr-defined,no-any-return]

    def seconds(self) -> float:
        """The real reactor's."""
        return reactor.seconds()  # type: ignore[attr-defined,no-any-return]


def clientEndpoint(
    version: int, host: str, port: int, proxy: IStreamClientEndpoint, **kwargs: Any
) -> SOCKS4ClientEndpoint | SOCKS5ClientEndpoint:
    """A CONNECT endpoint of C{version} (4: SOCKS4/4A, 5: SOCKS5)."""
    theReactor = kwargs.pop("reactor", reactor)
    if version == 4:
        return SOCKS4ClientEndpoint(theReactor, host, port, proxy, **kwargs)
    return SOCKS5ClientEndpoint(theReactor, host, port, proxy, **kwargs)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_socks5ConnectToAnIPv6Destination(
    ports: list[IListeningPort], host: str
) -> None:
    """
    SOCKS5 CONNECT to an IPv6 literal (bare or bracketed): it goes as one
    (ATYP 4), the server connects to the echo server on C{::1}, and the
    application protocol is built for that address.
    """
    proxy, records = startServer(ports)
    echo = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="::1")  # type: ignore[attr-defined]
    ports.append(echo)
    echoPort = echo.getHost().port
    payload = os.urandom(100_000)
    endpoint = SOCKS5ClientEndpoint(reactor, host, echoPort, tcp(proxy))
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]
    session = await record(records)
    assert (session.version, session.destination) == (5, f"[::1]:{echoPort}")
    assert session.resolved == f"[::1]:{echoPort}"


@pytest_twisted.ensureDeferred
async def test_socks4AReachesAnIPv6DestinationByName(
    ports: list[IListeningPort],
) -> None:
    """
    SOCKS4 has no room for an IPv6 address, but SOCKS4A carries the
    literal as a name, which our server resolves to C{::1}.
    """
    proxy, records = startServer(ports)
    echo = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="::1")  # type: ignore[attr-defined]
    ports.append(echo)
    echoPort = echo.getHost().port
    endpoint = SOCKS4ClientEndpoint(reactor, "::1", echoPort, tcp(proxy))
    assert await roundTrip(endpoint, b"over IPv6") == b"over IPv6"
    session = await record(records)
    assert (session.version, session.resolved) == (4, f"[::1]:{echoPort}")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("version", [4, 5])
async def test_serverResolvesTheName(ports: list[IListeningPort], version: int) -> None:
    """
    With C{remoteResolve} (the default) a name goes to the server (SOCKS4A,
    or SOCKS5 ATYP 3), whose resolver (a fake one that knows C{echo.test})
    looks it up; the application protocol is built for the name.
    """
    resolver = FakeHostnameResolver({"echo.test": ["127.0.0.1"]})
    proxy, records = startServer(ports, nameResolver=resolver)
    echo = listen(ports, Factory.forProtocol(Echo))
    endpoint = clientEndpoint(version, "echo.test", echo, tcp(proxy))
    payload = os.urandom(20_000)
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]
    assert [lookup.name for lookup in resolver.lookups] == ["echo.test"]
    session = await record(records)
    assert (session.version, session.destination) == (version, f"echo.test:{echo}")
    assert session.resolved == f"127.0.0.1:{echo}"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("version", [4, 5])
async def test_clientResolvesTheName(ports: list[IListeningPort], version: int) -> None:
    """
    With C{remoteResolve=False} the client's resolver turns C{echo.test}
    into 127.0.0.1 and the server sees only the address (its own resolver,
    which does not know the name, is never asked).
    """
    serverResolver = FakeHostnameResolver({})
    proxy, records = startServer(ports, nameResolver=serverResolver)
    echo = listen(ports, Factory.forProtocol(Echo))
    local = LocalNames({"echo.test": ["127.0.0.1"]})
    endpoint = clientEndpoint(
        version, "echo.test", echo, tcp(proxy), reactor=local, remoteResolve=False
    )
    assert await roundTrip(endpoint, b"resolved here") == b"resolved here"  # type: ignore[arg-type]
    assert [lookup.name for lookup in local.nameResolver.lookups] == ["echo.test"]
    assert serverResolver.lookups == []
    session = await record(records)
    assert (session.version, session.destination) == (version, f"127.0.0.1:{echo}")


@pytest_twisted.ensureDeferred
async def test_credentialsOfferedToAServerThatNeedsNone(
    ports: list[IListeningPort],
) -> None:
    """
    A client with credentials offers both methods; a server without a
    checker picks "no authentication" and the tunnel works, anonymously.
    """
    proxy, records = startServer(ports)
    echo = listen(ports, Factory.forProtocol(Echo))
    endpoint = SOCKS5ClientEndpoint(
        reactor, "127.0.0.1", echo, tcp(proxy), user="ann", password=PASSWORD
    )
    assert await roundTrip(endpoint, b"anonymous") == b"anonymous"  # type: ignore[arg-type]
    session = await record(records)
    assert (session.auth, session.user) == ("none", "")


@pytest_twisted.ensureDeferred
async def test_noCredentialsForAServerThatDemandsThem(
    ports: list[IListeningPort],
) -> None:
    """
    A client without credentials offers only "no authentication"; a server
    with a checker accepts none of that, and the connect fails with
    L{NoAcceptableMethod} before any request is sent.
    """
    proxy, records = startServer(ports, credentialsChecker=users())
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", 9, tcp(proxy))
    with pytest.raises(NoAcceptableMethod):
        await withTimeout(connectProtocol(endpoint, Collector()))
    session = await record(records)
    assert session.command is None


@pytest_twisted.ensureDeferred
async def test_socks5ConnectLogsInAsTheUser(ports: list[IListeningPort]) -> None:
    """
    A CONNECT with a login to a server with a checker: the session is
    ann's, authenticated by password, and the tunnel carries data.
    """
    proxy, records = startServer(ports, credentialsChecker=users())
    echo = listen(ports, Factory.forProtocol(Echo))
    endpoint = SOCKS5ClientEndpoint(
        reactor, "127.0.0.1", echo, tcp(proxy), user="ann", password=PASSWORD
    )
    assert await roundTrip(endpoint, b"as ann") == b"as ann"  # type: ignore[arg-type]
    session = await record(records)
    assert (session.auth, session.user, session.reply) == ("password", "ann", 0)


@pytest_twisted.ensureDeferred
async def test_socks5BindWithLogin(ports: list[IListeningPort]) -> None:
    """
    BIND with a login: the server accepts ann, listens, and relays the
    peer's connection to the application protocol both ways.
    """
    proxy, records = startServer(ports, credentialsChecker=users())
    endpoint = SOCKS5BindEndpoint(
        reactor, "127.0.0.1", 21, tcp(proxy), user="ann", password=PASSWORD
    )
    await bindAndPeer(endpoint)
    session = await record(records)
    assert (session.command, session.user, session.auth) == ("bind", "ann", "password")


@pytest_twisted.ensureDeferred
async def test_socks4BindThroughOurServer(ports: list[IListeningPort]) -> None:
    """
    SOCKS4 BIND with a USERID: the first reply's port takes the peer, whose
    data and half-close cross both ways.
    """
    proxy, records = startServer(ports)
    endpoint = SOCKS4BindEndpoint(reactor, "127.0.0.1", 21, tcp(proxy), user="bob")
    await bindAndPeer(endpoint)
    session = await record(records)
    assert (session.version, session.command, session.user) == (4, "bind", "bob")


#: Rules that deny CONNECT to port 9 and every BIND, and allow the rest.
DENYING = "deny cmd=bind 0/0\ndeny 0/0 0/0 eq 9\nallow 0/0 0/0\n"


@pytest_twisted.ensureDeferred
async def test_socks5RefusalByRulesIsNotAllowedByRuleset(
    ports: list[IListeningPort],
) -> None:
    """
    A CONNECT the server's rules deny fails with L{NotAllowedByRuleset}
    (REP 02), carrying the reply, its message naming the destination and
    the server; a request the rules allow still goes through.
    """
    proxy, records = startServer(ports, policy=parseRules(DENYING, "rules.conf"))
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", 9, tcp(proxy))
    with pytest.raises(NotAllowedByRuleset) as caught:
        await withTimeout(connectProtocol(endpoint, Collector()))
    assert caught.value.replyCode is ReplyCode5.NOT_ALLOWED
    assert caught.value.reply.code is ReplyCode5.NOT_ALLOWED
    assert f"CONNECT 127.0.0.1:9 via SOCKS5 server 127.0.0.1:{proxy}" in str(
        caught.value
    )
    session = await record(records)
    assert (session.reply, session.rule) == (2, "rules.conf:2")
    echo = listen(ports, Factory.forProtocol(Echo))
    allowed = SOCKS5ClientEndpoint(reactor, "127.0.0.1", echo, tcp(proxy))
    assert await roundTrip(allowed, b"allowed") == b"allowed"  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_socks4RefusalByRulesIsRequestRejected(
    ports: list[IListeningPort],
) -> None:
    """
    The same refusal to a SOCKS4 client is L{RequestRejected} with CD 91,
    its message naming the destination and the server.
    """
    proxy, _ = startServer(ports, policy=parseRules(DENYING, "rules.conf"))
    endpoint = SOCKS4ClientEndpoint(reactor, "127.0.0.1", 9, tcp(proxy))
    with pytest.raises(RequestRejected) as caught:
        await withTimeout(connectProtocol(endpoint, Collector()))
    assert type(caught.value) is RequestRejected
    assert caught.value.replyCode is ReplyCode4.REJECTED
    assert caught.value.reply.code is ReplyCode4.REJECTED
    assert f"CONNECT 127.0.0.1:9 via SOCKS server 127.0.0.1:{proxy}" in str(
        caught.value
    )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("version", [4, 5])
async def test_bindRefusedByRulesFailsListen(
    ports: list[IListeningPort], version: int
) -> None:
    """A BIND the rules deny fails C{listen()} with the version's refusal."""
    proxy, _ = startServer(ports, policy=parseRules(DENYING, "rules.conf"))
    endpoint: SOCKS4BindEndpoint | SOCKS5BindEndpoint
    if version == 4:
        endpoint = SOCKS4BindEndpoint(reactor, "127.0.0.1", 21, tcp(proxy))
        expected: type[Exception] = RequestRejected
    else:
        endpoint = SOCKS5BindEndpoint(reactor, "127.0.0.1", 21, tcp(proxy))
        expected = NotAllowedByRuleset
    with pytest.raises(expected, match=re.escape("BIND 127.0.0.1:21 via SOCKS")):
        await withTimeout(endpoint.listen(Factory.forProtocol(Collector)))


@pytest_twisted.ensureDeferred
async def test_chainSOCKS5OverSOCKS4AOverOurServers(
    ports: list[IListeningPort],
) -> None:
    """
    A SOCKS5 client whose proxy endpoint is a SOCKS4A tunnel: the first
    server carries a tunnel to the second (named, and resolved by the first
    server's resolver), which speaks SOCKS5 to the client at the end and
    connects it, with a login, to the echo server.
    """
    second, secondRecords = startServer(ports, credentialsChecker=users())
    firstResolver = FakeHostnameResolver({"second.test": ["127.0.0.1"]})
    first, firstRecords = startServer(ports, nameResolver=firstResolver)
    echo = listen(ports, Factory.forProtocol(Echo))
    hop = SOCKS4ClientEndpoint(reactor, "second.test", second, tcp(first), user="hop")
    endpoint = SOCKS5ClientEndpoint(
        reactor, "127.0.0.1", echo, hop, user="ann", password=PASSWORD
    )
    payload = os.urandom(100_000)
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]
    outer, inner = await record(firstRecords), await record(secondRecords)
    assert (outer.version, outer.destination, outer.user) == (
        4,
        f"second.test:{second}",
        "hop",
    )
    assert (inner.version, inner.destination, inner.user) == (
        5,
        f"127.0.0.1:{echo}",
        "ann",
    )
