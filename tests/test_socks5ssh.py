"""
The SOCKS5 client against OpenSSH's dynamic forwarding (C{ssh -D}), on
loopback: a private C{sshd} with a throwaway host key and a throwaway
client key, and C{ssh -N -D} to it.

OpenSSH has no refusal reply: for a destination it cannot reach it closes
the connection before replying (OpenSSH 9.2; older versions replied C{00}
first), and the error says so.

C{./dev} installs openssh-server and openssh-client, so on CI (C{CI} set)
a missing program fails the test rather than skipping it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from tests._support import Echo, closedPort, listen
from tests.test_client import (
    Collector,
    _stop,
    _waitForListener,
    roundTrip,
    tcp,
    withTimeout,
)
from twisted_socks import ClosedBeforeReply5, MalformedReply5, SOCKS5ClientEndpoint

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory}/host_key
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
UsePAM no
"""


def _program(name: str, package: str) -> str:
    """The program's path: skip where it is missing, fail on CI."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None
    )
    if path is None:
        message = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def sshDynamic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """
    A private sshd on a free loopback port and C{ssh -N -D} to it; yields
    the port of ssh's SOCKS listener and stops both processes by pid.
    """
    sshd = _program("sshd", "openssh-server")
    ssh = _program("ssh", "openssh-client")
    directory = tmp_path_factory.mktemp("sshd")
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    if os.geteuid() == 0:
        # sshd's privilege separation directory; a Debian service creates it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    sshPort = closedPort()
    config = directory / "sshd_config"
    config.write_text(SSHD_CONFIG.format(port=sshPort, directory=directory))
    server = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = None
    try:
        if not _waitForListener(sshPort, server):
            pytest.fail("sshd did not start")
        socksPort = closedPort()
        client = subprocess.Popen(
            [
                ssh,
                "-N",
                "-D",
                f"127.0.0.1:{socksPort}",
                "-i",
                str(directory / "client_key"),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ExitOnForwardFailure=yes",
                "-p",
                str(sshPort),
                f"{getpass.getuser()}@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _waitForListener(socksPort, client):
            pytest.fail("ssh -D did not start")
        yield socksPort
    finally:
        if client is not None:
            _stop(client)
        _stop(server)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_sshDynamicForwardingCarriesAStream(
    sshDynamic: int, ports: list[IListeningPort]
) -> None:
    """C{ssh -D} carries a CONNECT to a name it resolves; 100 kB come back."""
    echo = listen(ports, Factory.forProtocol(Echo))
    payload = os.urandom(100_000)
    endpoint = SOCKS5ClientEndpoint(reactor, "localhost", echo, tcp(sshDynamic))
    assert await roundTrip(endpoint, payload) == payload  # type: ignore[arg-type]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_sshRefusedDestinationSaysSo(sshDynamic: int) -> None:
    """
    OpenSSH has no refusal reply: for a refused destination it closes the
    connection before any reply, which fails with L{ClosedBeforeReply5}
    (a L{MalformedReply5}) whose message says that this is what OpenSSH does.
    """
    endpoint = SOCKS5ClientEndpoint(reactor, "127.0.0.1", closedPort(), tcp(sshDynamic))
    with pytest.raises(ClosedBeforeReply5) as caught:
        await withTimeout(endpoint.connect(Factory.forProtocol(Collector)))
    assert isinstance(caught.value, MalformedReply5)
    message = str(caught.value)
    assert "closed the connection before the reply" in message
    assert "OpenSSH (ssh -D)" in message
