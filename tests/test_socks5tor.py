"""
The SOCKS5 client against Tor's SocksPort with no way out: a private tor
whose only bridge is a closed loopback port, so it never leaves the machine
and never builds a circuit.  A request then gets no reply, and the client
must end with a clear L{HandshakeTimeout} rather than hang.

C{./dev} installs tor, so on CI (C{CI} set) a missing tor fails the test
rather than skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from tests._support import closedPort
from tests.test_client import _stop, _waitForListener, tcp, withTimeout
from twisted_socks import HandshakeTimeout, SOCKS5ClientEndpoint


@pytest.fixture(scope="module")
def torSocksPort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    A private tor in the foreground whose SocksPort is on a free loopback
    port and whose only bridge is a closed loopback port; yields the
    SocksPort and stops that very process afterwards.
    """
    tor = shutil.which("tor") or (
        "/usr/sbin/tor" if os.access("/usr/sbin/tor", os.X_OK) else None
    )
    if tor is None:
        message = "tor is not installed (apt-get install tor)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("tor")
    directory.chmod(0o700)
    # An empty torrc of our own, so that the system's is not read.
    torrc = directory / "torrc"
    torrc.write_text("")
    port = closedPort()
    process = subprocess.Popen(
        [
            tor,
            "-f",
            str(torrc),
            "--SocksPort",
            f"127.0.0.1:{port}",
            "--DataDirectory",
            str(directory),
            # No directory authority, relay or bridge beyond this dead
            # loopback port: nothing leaves the machine.
            "--UseBridges",
            "1",
            "--Bridge",
            f"127.0.0.1:{closedPort()}",
            "--Log",
            "err stderr",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if not _waitForListener(port, process):
            pytest.fail("tor did not open its SocksPort")
        yield port
    finally:
        _stop(process)


@pytest.mark.interop
@pytest.mark.parametrize("credentials", [False, True])
@pytest_twisted.ensureDeferred
async def test_torWithoutCircuitsTimesOutClearly(
    torSocksPort: int, credentials: bool
) -> None:
    """
    Tor negotiates (choosing username/password when offered, which it
    uses for stream isolation, and accepting any), then cannot build a
    circuit: the client ends with L{HandshakeTimeout} saying it was waiting
    for the reply.
    """
    kwargs = {"user": "isolation", "password": "any"} if credentials else {}
    endpoint = SOCKS5ClientEndpoint(
        reactor, "example.com", 80, tcp(torSocksPort), timeout=1.5, **kwargs
    )
    with pytest.raises(HandshakeTimeout) as caught:
        await withTimeout(endpoint.connect(Factory.forProtocol(Protocol)))
    assert "waiting for the proxy's reply" in str(caught.value)
