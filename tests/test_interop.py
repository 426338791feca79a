"""
Real third-party SOCKS clients (curl, socat, ncat, proxychains4) talk to our
server, run as C{twistd -n socks --port 0} in a subprocess.

Each test moves a 1 MiB random payload through the proxy and compares it
byte for byte, and checks the server's session log for the record of that
very tunnel (unique destination port, C{reply=90}), so a client that quietly
bypassed the proxy would fail the test.

Destination servers are plain threads with blocking sockets on loopback
only: 127.0.0.1 and, when the host has it, ::1 on the same port, so that a
SOCKS4A test of C{localhost} (::1 first on many systems) succeeds on the
first address the server tries.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

#: Upper bound, in seconds, for any one client run or wait in this module.
TIMEOUT = 20.0
PAYLOAD_SIZE = 1024 * 1024

_LISTENING = re.compile(r"SOCKS4/4A server listening on IPv4Address\(.*?port=(\d+)\)")
_SESSION = re.compile(
    r"session (?P<client>\S+) (?P<command>\S+) (?P<destination>\S+) "
    r"resolved=(?P<resolved>\S+) user=(?P<user>\S*) ident=\S* reply=(?P<reply>\S+) "
    r"up=(?P<up>\d+) down=(?P<down>\d+) .*reason=(?P<reason>.*)$"
)


def _tool(name: str) -> str:
    """
    The path of the command-line tool C{name}; a missing tool skips the test
    on a developer machine and fails it on CI.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (./dev test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _clientEnv() -> dict[str, str]:
    """
    The environment for client tools: no proxy variables (curl would obey
    them) and a fixed user name (socat's default SOCKS user id).
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy")
    }
    env["LOGNAME"] = env["USER"] = "interop"
    return env


def _run(args: list[str], payload: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run a client with C{payload} as its whole stdin, bounded in time."""
    return subprocess.run(
        args,
        input=payload,
        capture_output=True,
        timeout=TIMEOUT,
        env=_clientEnv(),
        check=False,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assertSucceeded(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, (
        f"{result.args[0]} exited {result.returncode}: "
        f"{result.stderr.decode(errors='replace')}"
    )


def _assertByteExact(received: bytes, payload: bytes) -> None:
    assert (len(received), _sha(received)) == (len(payload), _sha(payload))


# Our server, and its log.


@dataclass
class _Session:
    client: str
    command: str
    destination: str
    resolved: str
    user: str
    reply: str
    up: int
    down: int
    reason: str


class _ServerProcess:
    """Our server in a subprocess; collects everything it logs."""

    def __init__(self, workdir: Path) -> None:
        twistd = Path(sys.executable).with_name("twistd")
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.port = 0
        self.process = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "socks", "--port", "0"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._lines.append(line)
            match = _LISTENING.search(line)
            if match and not self._listening.is_set():
                self.port = int(match.group(1))
                self._listening.set()

    def waitListening(self) -> None:
        deadline = time.monotonic() + 15
        while not self._listening.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("twistd socks did not start:\n" + self.log())

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def log(self, start: int = 0) -> str:
        return "\n".join(self.lines()[start:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)


class _Proxy:
    """One test's view of the shared server: only what it logged since."""

    def __init__(self, server: _ServerProcess) -> None:
        self._server = server
        self.port = server.port
        self._start = len(server.lines())

    def sessions(self) -> list[_Session]:
        found = []
        for line in self._server.lines()[self._start :]:
            match = _SESSION.search(line)
            if match:
                fields = match.groupdict()
                found.append(
                    _Session(
                        **{
                            **fields,
                            "up": int(fields["up"]),
                            "down": int(fields["down"]),
                        }
                    )
                )
        return found

    def sessionTo(self, destination: str) -> _Session:
        """
        Wait for the record of the one session to C{destination} (written
        when the tunnel has closed both ways) and check the server logged no
        error while this test ran.
        """
        deadline = time.monotonic() + 10
        while True:
            matching = [s for s in self.sessions() if s.destination == destination]
            if matching or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        log = self._server.log(self._start)
        assert len(matching) == 1, f"no single session to {destination}:\n{log}"
        assert "Traceback" not in log and "Unhandled Error" not in log, log
        return matching[0]


@pytest.fixture(scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_ServerProcess]:
    server = _ServerProcess(tmp_path_factory.mktemp("twistd"))
    try:
        server.waitListening()
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(_server: _ServerProcess) -> _Proxy:
    """Our server's port and the session records of the current test."""
    if _server.process.poll() is not None:
        pytest.fail("twistd socks has exited:\n" + _server.log())
    return _Proxy(_server)


def _loopbackAddresses(port: str) -> set[str]:
    """How the server may log a loopback address it resolved a name to."""
    return {f"127.0.0.1:{port}", f"[::1]:{port}", f"::1:{port}"}


# Destination servers.


def _bindLoopback(listen: bool = True) -> list[socket.socket]:
    """
    TCP sockets on 127.0.0.1 and, when available, ::1 sharing one port.
    """
    for _ in range(50):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        port = v4.getsockname()[1]
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            sockets = [v4]
        else:
            try:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::1", port))
            except OSError as e:
                v6.close()
                if e.errno == errno.EADDRINUSE:
                    v4.close()
                    continue
                sockets = [v4]  # no usable ::1 here
            else:
                sockets = [v4, v6]
        if listen:
            for s in sockets:
                s.listen(16)
        return sockets
    raise RuntimeError("could not bind the same port on 127.0.0.1 and ::1")


class _LoopbackServer:
    """Runs C{handler(connection)} in a thread for every connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self._handler = handler
        self._sockets = _bindLoopback()
        self.port = self._sockets[0].getsockname()[1]
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for s in self._sockets:
                selector.register(s, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(0.1):
                    try:
                        connection, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    except OSError:
                        continue
                    threading.Thread(
                        target=self._handle, args=(connection,), daemon=True
                    ).start()

    def _handle(self, connection: socket.socket) -> None:
        connection.settimeout(TIMEOUT)
        with connection:
            try:
                self._handler(connection)
            except BaseException as e:
                self.errors.append(e)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for s in self._sockets:
            s.close()


def _finish(connection: socket.socket) -> None:
    """Send EOF, then wait for the peer's, so no RST can cut the data short."""
    connection.shutdown(socket.SHUT_WR)
    while connection.recv(65536):
        pass


def _receiveAll(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _serving(handler: Callable[[socket.socket], None]) -> Iterator[_LoopbackServer]:
    server = _LoopbackServer(handler)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def payload() -> bytes:
    """1 MiB of random bytes, the same for the whole module."""
    return os.urandom(PAYLOAD_SIZE)


@pytest.fixture
def httpServer(payload: bytes) -> Iterator[_LoopbackServer]:
    """A minimal HTTP/1.1 server: C{GET /file} answers the payload."""

    def handle(connection: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 65536:
            chunk = connection.recv(65536)
            if not chunk:
                return
            request += chunk
        if request.startswith(b"GET /file "):
            head = b"HTTP/1.1 200 OK\r\n"
            body = payload
        else:
            head, body = b"HTTP/1.1 404 Not Found\r\n", b""
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        connection.sendall(head + body)
        _finish(connection)

    with _serving(handle) as server:
        yield server


@pytest.fixture
def payloadServer(payload: bytes) -> Iterator[_LoopbackServer]:
    """A raw TCP server: sends the payload, then EOF, to every client."""

    def handle(connection: socket.socket) -> None:
        connection.sendall(payload)
        _finish(connection)

    with _serving(handle) as server:
        yield server


class _HashingSink:
    """Reads until EOF, then answers C{"<length> <sha256>\\n"} and closes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def __call__(self, connection: socket.socket) -> None:
        data = _receiveAll(connection)
        self.received.append(data)
        connection.sendall(f"{len(data)} {_sha(data)}\n".encode())


@pytest.fixture
def sink() -> Iterator[tuple[_LoopbackServer, _HashingSink]]:
    """A destination that hashes what it receives; see L{_HashingSink}."""
    recorder = _HashingSink()
    with _serving(recorder) as server:
        yield server, recorder


def _proxychainsConfig(
    directory: Path, proxyPort: int, user: str | None = None
) -> Path:
    entry = f"socks4 127.0.0.1 {proxyPort}" + (f" {user}" if user else "")
    config = directory / "proxychains.conf"
    config.write_text(
        "strict_chain\n"
        "proxy_dns\n"
        "remote_dns_subnet 224\n"
        "quiet_mode\n"
        "tcp_read_time_out 15000\n"
        "tcp_connect_time_out 8000\n"
        "[ProxyList]\n"
        f"{entry}\n"
    )
    return config


def _curl(*args: str) -> list[str]:
    # -q first: ignore any ~/.curlrc.
    return [_tool("curl"), "-q", "--silent", "--show-error", "--fail", *args]


# curl


def test_curlSocks4FetchesFileByteExact(
    proxy: _Proxy, httpServer: _LoopbackServer, payload: bytes
) -> None:
    """
    curl --socks4 (curl resolves the name itself and sends an IPv4 DSTIP)
    downloads a 1 MiB file byte-exact through our server.
    """
    result = _run(
        _curl(
            "--socks4",
            f"127.0.0.1:{proxy.port}",
            f"http://127.0.0.1:{httpServer.port}/file",
        )
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"127.0.0.1:{httpServer.port}")
    assert session.reply == "90"
    assert session.resolved == f"127.0.0.1:{httpServer.port}"
    assert session.user == ""
    assert session.down > PAYLOAD_SIZE


def test_curlSocks4aFetchesFileByteExact(
    proxy: _Proxy, httpServer: _LoopbackServer, payload: bytes
) -> None:
    """
    curl --socks4a hands the name C{localhost} to our server, which resolves
    it and relays a 1 MiB download byte-exact.
    """
    result = _run(
        _curl(
            "--socks4a",
            f"127.0.0.1:{proxy.port}",
            f"http://localhost:{httpServer.port}/file",
        )
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"localhost:{httpServer.port}")
    assert session.reply == "90"
    assert session.resolved in _loopbackAddresses(str(httpServer.port))
    assert session.down > PAYLOAD_SIZE


@pytest.mark.parametrize(
    "proxyOption",
    [
        pytest.param(["--socks4a", "bob@127.0.0.1:{port}"], id="socks4a-option"),
        pytest.param(["--proxy", "socks4a://bob@127.0.0.1:{port}"], id="proxy-url"),
    ],
)
def test_curlSocks4aSendsUserId(
    proxy: _Proxy,
    httpServer: _LoopbackServer,
    payload: bytes,
    proxyOption: list[str],
) -> None:
    """
    A user id given to curl (C{user@proxy}) reaches our server as the
    SOCKS4A USERID, and the download still arrives byte-exact.
    """
    option, value = proxyOption
    result = _run(
        _curl(
            option,
            value.format(port=proxy.port),
            f"http://localhost:{httpServer.port}/file",
        )
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"localhost:{httpServer.port}")
    assert session.reply == "90"
    assert session.user == "bob"


@pytest.mark.parametrize(
    ("option", "host"),
    [("--socks4", "127.0.0.1"), ("--socks4a", "localhost")],
)
def test_curlRefusedDestinationExits97(proxy: _Proxy, option: str, host: str) -> None:
    """
    When the destination refuses the connection our server answers reply 91
    quickly, which curl reports as exit code 97 within a few seconds.
    """
    closed = _bindLoopback(listen=False)  # bound, not listening: refuses
    port = closed[0].getsockname()[1]
    try:
        started = time.monotonic()
        result = _run(
            _curl(option, f"127.0.0.1:{proxy.port}", f"http://{host}:{port}/file")
        )
        elapsed = time.monotonic() - started
    finally:
        for s in closed:
            s.close()
    assert result.returncode == 97, result.stderr
    assert b"(91)" in result.stderr
    assert elapsed < 5
    session = proxy.sessionTo(f"{host}:{port}")
    assert session.reply == "91"
    assert (session.up, session.down) == (0, 0)


# socat


def test_socatSocks4aReceivesPayloadByteExact(
    proxy: _Proxy, payloadServer: _LoopbackServer, payload: bytes
) -> None:
    """
    socat's SOCKS4A address sends the name C{localhost} to our server and
    receives a raw 1 MiB stream byte-exact up to the destination's EOF; with
    no socksuser option socat sends $LOGNAME as the user id.
    """
    result = _run(
        [
            _tool("socat"),
            "-u",
            f"SOCKS4A:127.0.0.1:localhost:{payloadServer.port},socksport={proxy.port}",
            "STDOUT",
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"localhost:{payloadServer.port}")
    assert session.reply == "90"
    assert session.resolved in _loopbackAddresses(str(payloadServer.port))
    assert session.user == "interop"
    assert (session.up, session.down) == (0, PAYLOAD_SIZE)


def test_socatSocks4WithSocksuserReceivesPayloadByteExact(
    proxy: _Proxy, payloadServer: _LoopbackServer, payload: bytes
) -> None:
    """
    socat's SOCKS4 address (IPv4 DSTIP) with socksuser=alice receives a raw
    1 MiB stream byte-exact; the server records the user id alice.
    """
    result = _run(
        [
            _tool("socat"),
            "-u",
            f"SOCKS4:127.0.0.1:127.0.0.1:{payloadServer.port},"
            f"socksport={proxy.port},socksuser=alice",
            "STDOUT",
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"127.0.0.1:{payloadServer.port}")
    assert session.reply == "90"
    assert session.user == "alice"
    assert (session.up, session.down) == (0, PAYLOAD_SIZE)


def test_socatUploadHalfClosesToDestination(
    proxy: _Proxy, sink: tuple[_LoopbackServer, _HashingSink], payload: bytes
) -> None:
    """
    Half-close upstream: socat sends 1 MiB and, at its stdin's EOF, shuts
    down its write side; the destination must get the bytes and then EOF
    while the tunnel stays open downstream, so the destination's reply (the
    length and hash of what it got) still reaches socat.
    """
    server, recorder = sink
    result = _run(
        [
            _tool("socat"),
            "-t",
            str(TIMEOUT),  # wait this long for the reply after stdin's EOF
            "STDIO",
            f"SOCKS4A:127.0.0.1:localhost:{server.port},socksport={proxy.port}",
        ],
        payload,
    )
    _assertSucceeded(result)
    session = proxy.sessionTo(f"localhost:{server.port}")
    assert session.reply == "90"
    assert [_sha(data) for data in recorder.received] == [_sha(payload)]
    assert result.stdout == f"{PAYLOAD_SIZE} {_sha(payload)}\n".encode()


# ncat


def test_ncatSocks4ReceivesPayloadByteExact(
    proxy: _Proxy, payloadServer: _LoopbackServer, payload: bytes
) -> None:
    """
    ncat --proxy-type socks4 to an IPv4 address receives a raw 1 MiB stream
    byte-exact through our server.
    """
    result = _run(
        [
            _tool("ncat"),
            "--recv-only",
            "--proxy",
            f"127.0.0.1:{proxy.port}",
            "--proxy-type",
            "socks4",
            "127.0.0.1",
            str(payloadServer.port),
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"127.0.0.1:{payloadServer.port}")
    assert session.reply == "90"
    assert (session.up, session.down) == (0, PAYLOAD_SIZE)


def test_ncatHostnameUsesSocks4a(
    proxy: _Proxy, payloadServer: _LoopbackServer, payload: bytes
) -> None:
    """
    ncat --proxy-type socks4 given a host name sends it as SOCKS4A; our
    server resolves C{localhost} and relays 1 MiB byte-exact.
    """
    result = _run(
        [
            _tool("ncat"),
            "--recv-only",
            "--proxy",
            f"127.0.0.1:{proxy.port}",
            "--proxy-type",
            "socks4",
            "localhost",
            str(payloadServer.port),
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"localhost:{payloadServer.port}")
    assert session.reply == "90"
    assert session.resolved in _loopbackAddresses(str(payloadServer.port))


def test_ncatUploadHalfClosesToDestination(
    proxy: _Proxy, sink: tuple[_LoopbackServer, _HashingSink], payload: bytes
) -> None:
    """
    Half-close upstream: ncat sends 1 MiB and shuts down its write side at
    its stdin's EOF (its default); the destination must get the bytes, then
    EOF, and its reply must still come back to ncat before the tunnel closes.
    """
    server, recorder = sink
    result = _run(
        [
            _tool("ncat"),
            "--proxy",
            f"127.0.0.1:{proxy.port}",
            "--proxy-type",
            "socks4",
            "127.0.0.1",
            str(server.port),
        ],
        payload,
    )
    _assertSucceeded(result)
    session = proxy.sessionTo(f"127.0.0.1:{server.port}")
    assert session.reply == "90"
    assert [_sha(data) for data in recorder.received] == [_sha(payload)]
    assert result.stdout == f"{PAYLOAD_SIZE} {_sha(payload)}\n".encode()


# proxychains4


def test_proxychainsCurlFetchesLoopbackThroughProxy(
    proxy: _Proxy,
    httpServer: _LoopbackServer,
    payload: bytes,
    tmp_path: Path,
) -> None:
    """
    proxychains4 (no localnet exclusions) sends even a loopback destination
    through our server: curl, unaware of any proxy, downloads 1 MiB
    byte-exact and the server logs that tunnel.
    """
    config = _proxychainsConfig(tmp_path, proxy.port)
    result = _run(
        [
            _tool("proxychains4"),
            "-q",
            "-f",
            str(config),
            *_curl(f"http://127.0.0.1:{httpServer.port}/file"),
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"127.0.0.1:{httpServer.port}")
    assert session.reply == "90"
    assert session.user == ""
    assert session.down > PAYLOAD_SIZE


def test_proxychainsSendsUserIdColumn(
    proxy: _Proxy,
    httpServer: _LoopbackServer,
    payload: bytes,
    tmp_path: Path,
) -> None:
    """
    The user column of a proxychains4 C{socks4} line reaches our server as
    the USERID, and the download arrives byte-exact.
    """
    config = _proxychainsConfig(tmp_path, proxy.port, user="carol")
    result = _run(
        [
            _tool("proxychains4"),
            "-q",
            "-f",
            str(config),
            *_curl(f"http://127.0.0.1:{httpServer.port}/file"),
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"127.0.0.1:{httpServer.port}")
    assert session.reply == "90"
    assert session.user == "carol"


def test_proxychainsProxyDnsSendsNameAsSocks4a(
    proxy: _Proxy,
    payloadServer: _LoopbackServer,
    payload: bytes,
    tmp_path: Path,
) -> None:
    """
    With proxy_dns, proxychains4 answers a lookup with a fake 224.x address
    and, on connect, sends the real name to our server as SOCKS4A, which
    resolves it; 1 MiB arrives byte-exact.

    The name is C{LOCALHOST}: proxychains resolves names it finds in
    /etc/hosts itself, comparing case-sensitively, while the server's
    getaddrinfo matches /etc/hosts case-insensitively. (curl resolves
    C{localhost} and C{*.localhost} internally, without any lookup
    proxychains could see, which is why ncat is the client here.)
    """
    config = _proxychainsConfig(tmp_path, proxy.port)
    result = _run(
        [
            _tool("proxychains4"),
            "-q",
            "-f",
            str(config),
            _tool("ncat"),
            "--recv-only",
            "LOCALHOST",
            str(payloadServer.port),
        ]
    )
    _assertSucceeded(result)
    _assertByteExact(result.stdout, payload)
    session = proxy.sessionTo(f"LOCALHOST:{payloadServer.port}")
    assert session.reply == "90"
    assert session.resolved in _loopbackAddresses(str(payloadServer.port))
    assert (session.up, session.down) == (0, PAYLOAD_SIZE)
