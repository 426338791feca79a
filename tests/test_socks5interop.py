"""
The SOCKS5 client against real SOCKS5 servers on loopback: Dante's
C{danted} (CONNECT, BIND, its refusals) and microsocks with a username and
password (accepted, refused, its C{07} for BIND), a chain of proxies mixing
versions, and TLS to a destination through a SOCKS5 tunnel.

Each server runs in the foreground on a free port for the module and is
stopped by its pid.  They are Debian packages that C{./dev} installs, so on
CI (C{CI} set) a missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import (
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS

from tests._support import Echo, closedPort, eventually, listen
from tests.test_client import (
    TIMEOUT,
    AnswerAtEOF,
    Collector,
    _danted,
    _stop,
    _waitForListener,
    bindAndPeer,
    makeCertificates,
    roundTrip,
    startProxy,
    tcp,
    withTimeout,
)
from twisted_socks.client._socks4endpoints import SOCKS4ClientEndpoint
from twisted_socks.client._socks5endpoints import (
    SOCKS5BindEndpoint,
    SOCKS5ClientEndpoint,
)
from twisted_socks.wire._socks5client import (
    AddressTypeNotSupported,
    CommandNotSupported,
    ConnectionRefused5,
    NoAcceptableMethod,
    SOCKS5AuthenticationFailed,
)

#: The microsocks account; the password holds the characters a URL must
#: percent-encode, as real ones do.
USER = "alice"
PASSWORD = "s3cr:t@x pw"

DANTED_CONF = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
socksmethod: none
clientmethod: none
{users}
client pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect bind bindreply udpassociate udpreply
    log: error connect disconnect
}}
"""


def _start(argv: list[str], port: int) -> subprocess.Popen[bytes] | None:
    """Start a server in the foreground; L{None} if it did not listen."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if _waitForListener(port, process):
        return process
    _stop(process)
    return None


@pytest.fixture(scope="module")
def dante5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    A private danted speaking SOCKS5 without authentication (CONNECT,
    BIND and UDP ASSOCIATE) on a free loopback port, IPv4 outside only (so an IPv6 destination gets REP 08);
    yields the port and stops that very process afterwards.
    """
    binary = _danted()
    directory = tmp_path_factory.mktemp("dante5")
    log = directory / "danted.log"
    # As root, danted must be told whom to run as; as anyone else it cannot
    # switch users and must not be told to.
    users = (
        "user.privileged: root\nuser.unprivileged: nobody" if os.geteuid() == 0 else ""
    )
    for _ in range(3):
        port = closedPort()
        conf = directory / "danted.conf"
        conf.write_text(DANTED_CONF.format(log=log, port=port, users=users))
        argv = [binary, "-f", str(conf), "-N", "1", "-p", str(directory / "pid")]
        process = _start(argv, port)
        if process is not None:
            break
    else:
        text = log.read_text() if log.exists() else ""
        pytest.fail(f"danted did not start:\n{text}")
    try:
        yield port
    finally:
        _stop(process)


def _microsocksBinary() -> str:
    """The microsocks binary: skip where it is missing, fail on CI."""
    path = shutil.which("microsocks")
    if path is None:
        message = "microsocks is not installed (apt-get install microsocks)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def microsocks() -> Iterator[int]:
    """
    microsocks requiring C{USER}/C{PASSWORD} (C{-u}/C{-P}) on a free
    loopback port; yields the port and stops that very process afterwards.
    """
    binary = _microsocksBinary()
    for _ in range(3):
        port = closedPort()
        argv = [binary, "-i", "127.0.0.1", "-p", str(port), "-u", USER, "-P", PASSWORD]
        process = _start(argv, port)
        if process is not None:
            break
    else:
        pytest.fail("microsocks did not start")
    try:
        yield port
    finally:
        _stop(process)


# Dante.


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteConnectsEveryWayOfNamingTheDestination(
    dante5: int, ports: list[IListeningPort]
) -> None:
    """
    Dante carries a CONNECT for an IPv4 literal, a name it resolves
    (ATYP 3, socks5h) and a name resolved here (socks5); 200 kB come back
    intact each time.
    """
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(200_000)
    for host, remote in [
        ("127.0.0.1", True),
        ("localhost", True),
        ("localhost", False),
    ]:
        endpoint = SOCKS5ClientEndpoint(
            reactor, host, echo, tcp(dante5), remoteResolve=remote
        )
        assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_halfCloseThroughDante(dante5: int, ports: list[IListeningPort]) -> None:
    """
    Half-close through a SOCKS5 tunnel on real sockets: the client's FIN
    reaches the destination after its bytes, and the destination's answer,
    sent after that FIN, still comes back.
    """
    destination = AnswerAtEOF(b"answer after your FIN")
    port = listen(ports, Factory.forProtocol(lambda: destination))
    client = Collector(b"request", closeWrite=True)
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", port, tcp(dante5))
    await withTimeout(connectProtocol(endpoint, client))
    assert await withTimeout(destination.sawEOF) == b"request"
    assert await withTimeout(client.done) == b"answer after your FIN"


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteRefusals(dante5: int) -> None:
    """
    Dante's refusals reach the caller as their classes: a closed port is
    REP 05; an IPv6 destination, with Dante's outside IPv4 only, is REP 08.
    """
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", closedPort(), tcp(dante5))
    with pytest.raises(ConnectionRefused5) as refused:
        await withTimeout(endpoint.connect(Factory.forProtocol(Protocol)))
    assert refused.value.replyCode == 5
    endpoint = SOCKS5ClientEndpoint(reactor, "::1", 80, tcp(dante5))
    with pytest.raises(AddressTypeNotSupported):
        await withTimeout(endpoint.connect(Factory.forProtocol(Protocol)))


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_danteBind(dante5: int) -> None:
    """
    BIND through Dante: C{listen()} fires with where Dante listens, a peer
    connects there, the second reply connects the application protocol (for
    the peer's address) and data and half-close cross both ways.
    """
    endpoint = SOCKS5BindEndpoint(reactor, "127.0.0.1", 21, tcp(dante5))
    await bindAndPeer(endpoint)


# microsocks, with a username and password.


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_microsocksReachesAnIPv6Destination(
    microsocks: int, ports: list[IListeningPort]
) -> None:
    """An IPv6 destination goes as ATYP 4 and the stream comes back intact."""
    echo = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), interface="::1"
    )
    ports.append(echo)
    payload = os.urandom(50_000)
    endpoint = SOCKS5ClientEndpoint(
        reactor,
        "::1",
        echo.getHost().port,
        tcp(microsocks),
        user=USER,
        password=PASSWORD,
    )
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_microsocksAcceptsTheCredentials(
    microsocks: int, ports: list[IListeningPort]
) -> None:
    """
    microsocks picks username/password from the two methods offered, takes
    ours (a password with C{:}, C{@} and a space) and carries the stream.
    """
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(100_000)
    endpoint = SOCKS5ClientEndpoint(
        reactor, "localhost", echo, tcp(microsocks), user=USER, password=PASSWORD
    )
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_microsocksRefusals(microsocks: int) -> None:
    """
    microsocks refuses a wrong password (L{SOCKS5AuthenticationFailed},
    the password not shown), no credentials (C{05 FF}:
    L{NoAcceptableMethod}), and BIND (REP 07: L{CommandNotSupported}).
    """
    factory = Factory.forProtocol(Protocol)
    wrong = "not-" + PASSWORD
    endpoint = SOCKS5ClientEndpoint(
        reactor, "127.0.0.1", 80, tcp(microsocks), user=USER, password=wrong
    )
    with pytest.raises(SOCKS5AuthenticationFailed) as refused:
        await withTimeout(endpoint.connect(factory))
    assert wrong not in str(refused.value)
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", 80, tcp(microsocks))
    with pytest.raises(NoAcceptableMethod):
        await withTimeout(endpoint.connect(factory))
    bind = SOCKS5BindEndpoint(
        reactor, "127.0.0.1", 21, tcp(microsocks), user=USER, password=PASSWORD
    )
    with pytest.raises(CommandNotSupported) as unsupported:
        await withTimeout(bind.listen(factory))
    assert unsupported.value.replyCode == 7


# Chains and TLS.


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_chainSOCKS5ThroughSOCKS4AThroughSOCKS5(
    dante5: int, microsocks: int, ports: list[IListeningPort]
) -> None:
    """
    A chain mixing versions: Dante (SOCKS5) reaches our server, which
    (SOCKS4A) reaches microsocks, which (SOCKS5 with a password) reaches the
    echo server; each hop's endpoint is the next one's proxy endpoint.
    """
    echo = listen(ports, Factory.forProtocol(Echo))
    ours = startProxy(ports)
    hop1 = SOCKS5ClientEndpoint(reactor, "127.0.0.1", ours, tcp(dante5))
    hop2 = SOCKS4ClientEndpoint(reactor, "localhost", microsocks, hop1)
    hop3 = SOCKS5ClientEndpoint(
        reactor, "127.0.0.1", echo, hop2, user=USER, password=PASSWORD
    )
    payload = os.urandom(50_000)
    assert await roundTrip(hop3, payload) == payload  # type: ignore[arg-type]


@pytest.mark.interop
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tlsThroughASOCKS5Tunnel(
    microsocks: int, ports: list[IListeningPort]
) -> None:
    """
    TLS to a local TLS echo server through microsocks: the certificate is
    checked against the destination's name (C{localhost}, sent as ATYP 3),
    and a client expecting another name gets no data through.
    """
    authority, serverCertificate = makeCertificates()
    tlsPort = reactor.listenSSL(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), serverCertificate.options(), interface="127.0.0.1"
    )
    ports.append(tlsPort)
    socksEndpoint = SOCKS5ClientEndpoint(
        reactor,
        "localhost",
        tlsPort.getHost().port,
        tcp(microsocks),
        user=USER,
        password=PASSWORD,
    )
    endpoint = wrapClientTLS(
        optionsForClientTLS("localhost", trustRoot=authority), socksEndpoint
    )
    client = Collector(b"over TLS, through SOCKS5")
    await withTimeout(connectProtocol(endpoint, client))
    await eventually(lambda: len(client.received) >= 24, TIMEOUT)
    assert client.received == b"over TLS, through SOCKS5"
    client.transport.loseConnection()  # type: ignore[union-attr]
    await withTimeout(client.done)
    wrongName = wrapClientTLS(
        optionsForClientTLS("not-localhost.example", trustRoot=authority), socksEndpoint
    )
    stranger = Collector(b"x")
    await withTimeout(connectProtocol(wrongName, stranger))
    await withTimeout(stranger.done)
    assert stranger.received == b""
