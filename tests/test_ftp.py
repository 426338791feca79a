"""
FTP active mode end to end through the proxy: the control connection is a
SOCKS CONNECT, the data connection a SOCKS BIND, both with our client
endpoints and our server, against Twisted's own FTP server.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest_twisted
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.ftp import FTPClient, FTPFactory, FTPRealm, encodeHostPort
from twisted.python.failure import Failure

from tests._support import eventually
from twisted_socks import (
    SessionRecord,
    SOCKS4BindEndpoint,
    SOCKS4ClientEndpoint,
    SOCKSv4ServerFactory,
)


class Collector(Protocol):
    """Collects a data connection's bytes; C{done} fires with them at close."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.chunks))


@pytest_twisted.ensureDeferred
async def test_activeModeDownloadThroughProxy(tmp_path: Path) -> None:
    """
    A 1 MiB file comes down byte-exact in FTP active mode: the client asks
    the proxy for a BIND, sends PORT with the address of the proxy's
    listener, and the FTP server's data connection arrives through it.
    """
    content = os.urandom(1 << 20)
    (tmp_path / "file.bin").write_bytes(content)
    portal = Portal(FTPRealm(anonymousRoot=str(tmp_path)), [AllowAnonymousAccess()])
    ftpFactory = FTPFactory(portal)
    ftpFactory.noisy = False
    ftpPort = reactor.listenTCP(0, ftpFactory, interface="127.0.0.1")  # type: ignore[attr-defined]
    records: list[SessionRecord] = []
    proxyFactory = SOCKSv4ServerFactory(reactor, sessionObserver=records.append)
    proxyPort = reactor.listenTCP(0, proxyFactory, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        ftpAddress = ftpPort.getHost()
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", proxyPort.getHost().port)
        control = SOCKS4ClientEndpoint(
            reactor, "127.0.0.1", ftpAddress.port, proxyEndpoint=proxy
        )
        # An anonymous login's "password" is conventionally an e-mail address.
        client = FTPClient(username="anonymous", password="test@", passive=0)  # noqa: S106
        await connectProtocol(control, client)
        await client.queueStringCommand("TYPE I")

        # The data connection will come from the FTP server's address; the
        # proxy listens for it and tells us where.
        collector = Collector()
        bind = SOCKS4BindEndpoint(
            reactor, ftpAddress.host, ftpAddress.port, proxyEndpoint=proxy
        )
        listener = await bind.listen(Factory.forProtocol(lambda: collector))
        where = listener.getHost()
        await client.queueStringCommand(
            f"PORT {encodeHostPort(where.host, where.port)}"
        )
        transfer = client.queueStringCommand("RETR file.bin")
        data = await collector.done
        await transfer
        assert len(data) == len(content)
        assert hashlib.sha256(data).digest() == hashlib.sha256(content).digest()
        await client.quit()
        # The data really came through a BIND session of the proxy.
        await eventually(lambda: any(r.command == "bind" for r in records))
        [bindRecord] = [r for r in records if r.command == "bind"]
        assert (bindRecord.reply, bindRecord.bytesDown) == (90, len(content))
    finally:
        await ftpPort.stopListening()
        await proxyPort.stopListening()
