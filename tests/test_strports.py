"""Endpoint strings: clientFromString(reactor, "socks4a:...") and "socks4:..."."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    clientFromString,
    connectProtocol,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins

from tests._support import Echo, eventually, listen
from tests.test_client import TIMEOUT, Collector, makeCertificates, withTimeout
from twisted_socks import SessionRecord, SOCKS4ClientEndpoint, SOCKSv4ServerFactory
from twisted_socks.testing import FakeHostnameResolver


def parse(description: str, on: Any = reactor) -> Any:
    """clientFromString, as a program would call it."""
    return clientFromString(on, description)


def test_pluginsAreFound() -> None:
    """Twisted's plugin scan finds the socks4a, socks4 and socks prefixes."""
    prefixes = {
        getattr(plugin, "prefix", None)
        for plugin in getPlugins(IStreamClientEndpointStringParserWithReactor)
    }
    assert {"socks4a", "socks4", "socks"} <= prefixes
    assert all(
        IPlugin.providedBy(p)
        for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
        if getattr(p, "prefix", "").startswith("socks")
    )


def test_fullDescription() -> None:
    """Every option lands where it belongs."""
    endpoint = parse(
        "socks4a:host=example.com:port=80:proxyHost=127.0.0.1:proxyPort=1081"
        ":user=alice:timeout=12.5"
    )
    assert isinstance(endpoint, SOCKS4ClientEndpoint)
    assert (endpoint._host, endpoint._port, endpoint._timeout) == (
        "example.com",
        80,
        12.5,
    )
    assert endpoint._userid == b"alice"
    assert endpoint._remoteResolve is True
    assert isinstance(endpoint._proxyEndpoint, HostnameEndpoint)
    assert endpoint._proxyEndpoint._hostText == "127.0.0.1"
    assert endpoint._proxyEndpoint._port == 1081


def test_defaultsAndPositionalHostPort() -> None:
    """host and port may be positional; proxyPort 1080, timeout 30, no user."""
    endpoint = parse("socks4:example.com:8080:proxyHost=proxy.example")
    assert (endpoint._host, endpoint._port) == ("example.com", 8080)
    assert endpoint._remoteResolve is False
    assert endpoint._proxyEndpoint._port == 1080
    assert endpoint._timeout == 30
    assert endpoint._userid == b""


def test_nestedProxyDescription() -> None:
    """proxy= takes any client endpoint description, colons escaped."""
    endpoint = parse(r"socks4a:host=example.com:port=80:proxy=tcp\:127.0.0.1\:1080")
    assert isinstance(endpoint._proxyEndpoint, TCP4ClientEndpoint)
    chain = parse(
        r"socks4a:host=example.com:port=80"
        r":proxy=socks4a\:host=127.0.0.2\:port=1081\:proxyHost=127.0.0.1"
    )
    inner = chain._proxyEndpoint
    assert isinstance(inner, SOCKS4ClientEndpoint)
    assert (inner._host, inner._port) == ("127.0.0.2", 1081)


def test_tlsWrapsTheTunnel(tmp_path: Path) -> None:
    """tls=true wraps the SOCKS endpoint; trustRoots= reads a CA file."""
    authority, _ = makeCertificates()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.dumpPEM())
    endpoint = parse(
        f"socks4a:host=localhost:port=443:proxyHost=127.0.0.1:tls=true:trustRoots={ca}"
    )
    assert not isinstance(endpoint, SOCKS4ClientEndpoint)
    assert isinstance(endpoint._wrappedEndpoint, SOCKS4ClientEndpoint)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("socks4a:port=80:proxyHost=h", "socks4a: host= is required"),
        ("socks4a:host=x:proxyHost=h", "socks4a: port= is required"),
        (
            "socks4a:host=x:port=http:proxyHost=h",
            "port='http' is not a port number 1..65535",
        ),
        ("socks4a:host=x:port=0:proxyHost=h", "port='0' is not a port number 1..65535"),
        (
            "socks4a:host=x:port=70000:proxyHost=h",
            "port='70000' is not a port number 1..65535",
        ),
        (
            "socks4a:host=x:port=80",
            "socks4a: proxyHost= (or proxy=, or url=) is required",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:proxyPort=x",
            "proxyPort='x' is not a port number 1..65535",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:proxy=tcp\\:h\\:1",
            "socks4a: give proxy=, proxyHost=/proxyPort= or url=, only one of them",
        ),
        (
            "socks4a:host=x:port=80:proxy=nonsense\\:1",
            "socks4a: proxy='nonsense:1': Unknown endpoint type: 'nonsense'",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:timeout=0",
            "timeout='0' is not a positive number of seconds",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:timeout=soon",
            "timeout='soon' is not a positive number of seconds",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:tls=maybe",
            "tls='maybe' is not true or false",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:trustRoots=/x",
            "socks4a: trustRoots= needs tls=true",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:tls=true:trustRoots=/nonexistent.pem",
            "trustRoots='/nonexistent.pem': cannot read: No such file or directory",
        ),
        (
            "socks4a:host=x:port=80:proxyHost=h:colour=blue",
            "socks4a: unknown option 'colour'",
        ),
        (
            "socks4a:x:80:extra:proxyHost=h",
            "socks4a: at most host and port may be positional",
        ),
        ("socks4a:x:port=80:host=y:proxyHost=h", "socks4a: host given twice"),
        ("socks4:host=::1:port=80:proxyHost=h", "socks4: "),
    ],
)
def test_badDescriptionsNameTheField(description: str, message: str) -> None:
    """A bad string raises ValueError naming the bad field."""
    with pytest.raises(ValueError) as caught:
        parse(description)
    assert message in str(caught.value)


def resolverReactor(answers: dict[str, list[str]]) -> tuple[Any, FakeHostnameResolver]:
    """A memory reactor whose name resolver is a recording fake."""
    fake = MemoryReactorClock()
    resolver = FakeHostnameResolver(answers)
    fake.nameResolver = resolver  # type: ignore[attr-defined]
    return fake, resolver


def test_socks4aNeverCallsTheLocalResolver() -> None:
    """The 4A form sends the name; the local resolver never sees it."""
    fake, resolver = resolverReactor({"www.example": ["192.0.2.1"]})
    endpoint = parse(
        "socks4a:host=www.example:port=80:proxy=tcp\\:127.0.0.1\\:1080", fake
    )
    endpoint.connect(Factory.forProtocol(Echo))
    assert [lookup.name for lookup in resolver.lookups] == []
    assert len(fake.tcpClients) == 1


def test_socks4ResolvesLocally() -> None:
    """The SOCKS4 form resolves the name with the reactor's resolver, once."""
    fake, resolver = resolverReactor({"www.example": ["192.0.2.1"]})
    endpoint = parse(
        "socks4:host=www.example:port=80:proxy=tcp\\:127.0.0.1\\:1080", fake
    )
    endpoint.connect(Factory.forProtocol(Echo))
    assert [lookup.name for lookup in resolver.lookups] == ["www.example"]


@pytest_twisted.ensureDeferred
async def test_realTunnelsFromStrings(ports: list[IListeningPort]) -> None:
    """
    Through our server, from strings: SOCKS4 (name resolved here), SOCKS4A
    (name sent to the proxy) and a chain of two proxies all echo.
    """
    records: list[SessionRecord] = []
    first = listen(ports, SOCKSv4ServerFactory(reactor, sessionObserver=records.append))
    second = listen(
        ports, SOCKSv4ServerFactory(reactor, sessionObserver=records.append)
    )
    echo = listen(ports, Factory.forProtocol(Echo))
    descriptions = [
        f"socks4:host=127.0.0.1:port={echo}:proxyHost=127.0.0.1:proxyPort={first}",
        f"socks4a:host=localhost:port={echo}:proxyHost=127.0.0.1:proxyPort={first}",
        f"socks4a:host=127.0.0.1:port={echo}"
        f":proxy=socks4a\\:host=127.0.0.1\\:port={second}"
        f"\\:proxyHost=127.0.0.1\\:proxyPort={first}",
    ]
    for description in descriptions:
        client = Collector(b"hello")
        await withTimeout(connectProtocol(parse(description), client))
        await eventually(lambda c=client: c.received == b"hello", TIMEOUT)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await withTimeout(client.done)
    await eventually(lambda: len(records) == 4, TIMEOUT)
    destinations = sorted(r.destination or "" for r in records)
    assert destinations == sorted(
        [
            f"127.0.0.1:{echo}",
            f"localhost:{echo}",
            f"127.0.0.1:{echo}",
            f"127.0.0.1:{second}",
        ]
    )


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tlsFromStringChecksTheHostname(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    tls=true with trustRoots: the certificate is checked against host, so
    the right name connects and a wrong one fails the handshake.
    """
    authority, serverCertificate = makeCertificates()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.dumpPEM())
    proxy = listen(ports, SOCKSv4ServerFactory(reactor))
    tlsPort = reactor.listenSSL(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), serverCertificate.options(), interface="127.0.0.1"
    )
    ports.append(tlsPort)
    port = tlsPort.getHost().port
    base = f"port={port}:proxyHost=127.0.0.1:proxyPort={proxy}:tls=true:trustRoots={ca}"
    client = Collector(b"secret")
    await withTimeout(connectProtocol(parse(f"socks4a:host=localhost:{base}"), client))
    await eventually(lambda: client.received == b"secret", TIMEOUT)
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)
    # 127.0.0.1 is not the name in the certificate: the handshake fails.
    stranger = Collector(b"x")
    await withTimeout(
        connectProtocol(parse(f"socks4a:host=127.0.0.1:{base}"), stranger)
    )
    await withTimeout(stranger.done)
    assert stranger.received == b""


@pytest_twisted.ensureDeferred
async def test_routingStringChoosesProxyOrDenies(
    ports: list[IListeningPort], tmp_path: Path
) -> None:
    """
    socks:conf=FILE:host=...:port=... routes by the file: through the proxy
    for one port, denied for another.
    """
    from twisted_socks.client._routing import RouteDenied

    records: list[SessionRecord] = []
    proxy = listen(ports, SOCKSv4ServerFactory(reactor, sessionObserver=records.append))
    echo = listen(ports, Factory.forProtocol(Echo))
    conf = tmp_path / "socks.conf"
    conf.write_text(
        f"sockd @=127.0.0.1:{proxy} 127.0.0.0/8 eq {echo}\ndeny 0.0.0.0 0.0.0.0\n"
    )
    client = Collector(b"routed")
    endpoint = parse(f"socks:conf={conf}:host=127.0.0.1:port={echo}")
    await withTimeout(connectProtocol(endpoint, client))
    await eventually(lambda: client.received == b"routed", TIMEOUT)
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)
    await eventually(lambda: len(records) == 1, TIMEOUT)
    denied = parse(f"socks:conf={conf}:host=127.0.0.1:port={echo + 1}")
    with pytest.raises(RouteDenied):
        await withTimeout(connectProtocol(denied, Collector(b"x")))
