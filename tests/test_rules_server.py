"""
The rules file in a running `twistd socks`: start-up errors, SIGHUP reload
under load, and curl against a rule that denies a port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests._support import (
    Server,
    recvUpTo,
    runTwistd,
    startServer,
    stopServer,
    waitUntil,
)
from twisted_socks import Command, encodeRequest

GRANTED = b"\x00\x5a" + b"\0" * 6
REJECTED = b"\x00\x5b" + b"\0" * 6


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(30)
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    """A threaded echo server on a kernel-chosen loopback port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def echoes() -> Iterator[tuple[EchoServer, EchoServer]]:
    """Two echo destinations."""
    servers = (EchoServer(), EchoServer())
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def request(proxyPort: int, destPort: int) -> tuple[bytes, socket.socket]:
    """Send a CONNECT to 127.0.0.1:destPort; return the reply and the socket."""
    sock = socket.create_connection(("127.0.0.1", proxyPort), timeout=10)
    sock.sendall(encodeRequest(Command.CONNECT, destPort, IPv4Address("127.0.0.1")))
    return recvUpTo(sock, 8), sock


def verdict(proxyPort: int, destPort: int) -> bytes:
    """The reply to one CONNECT; the connection is closed afterwards."""
    reply, sock = request(proxyPort, destPort)
    sock.close()
    return reply


def writeRules(path: Path, text: str) -> None:
    """Replace the file atomically, as an administrator's editor would."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def allowOnly(port: int) -> str:
    """Rules allowing loopback clients to one destination port only."""
    return f"allow 127.0.0.0 255.0.0.0 0.0.0.0 0.0.0.0 eq {port}\ndeny 0/0\n"


def test_invalidRulesStopStartUp(tmp_path: Path) -> None:
    """An invalid rules file: one line naming file and line, non-zero exit."""
    rules = tmp_path / "rules.conf"
    rules.write_text("allow 127.0.0.1/32\nallow 10.0.0.0 255.0.300.0\n")
    returncode, output = runTwistd(tmp_path, "--port", "0", "--rules", str(rules))
    assert returncode != 0
    assert b"Traceback" not in output
    assert output.splitlines()[-1].endswith(
        f"{rules}:2: bad mask '255.0.300.0' (expected a dotted netmask or /prefix)".encode()
    )


def test_rulesDecideAndSighupReloadsUnderLoad(
    tmp_path: Path, echoes: tuple[EchoServer, EchoServer]
) -> None:
    """
    While a client keeps making requests, SIGHUP alternates two rules files:
    each reload takes effect, an invalid file in between changes nothing,
    every request gets a clean 90 or 91, and an established tunnel survives.
    """
    first, second = echoes
    rules = tmp_path / "rules.conf"
    rules.write_text(allowOnly(first.port))
    server = startServer(tmp_path, "--rules", str(rules))
    stop = threading.Event()
    outcomes: list[bytes] = []
    errors: list[BaseException] = []

    def load() -> None:
        while not stop.is_set():
            try:
                for port in (first.port, second.port):
                    outcomes.append(verdict(server.port, port))
            except BaseException as e:
                errors.append(e)
                return

    try:
        reply, tunnel = request(server.port, first.port)
        assert reply == GRANTED
        assert verdict(server.port, second.port) == REJECTED
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        # The reloads happen under load: the client is already requesting.
        waitUntil(lambda: len(outcomes) >= 4, what="the first requests")
        for round in range(6):
            allowed, denied = (second, first) if round % 2 == 0 else (first, second)
            writeRules(rules, allowOnly(allowed.port))
            os.kill(server.process.pid, signal.SIGHUP)
            waitUntil(lambda a=allowed: verdict(server.port, a.port) == GRANTED)
            assert verdict(server.port, denied.port) == REJECTED
            if round == 2:
                before = server.log().count("rules not reloaded")
                writeRules(rules, "allow 127.0.0.0 255.0.300.0\n")
                os.kill(server.process.pid, signal.SIGHUP)
                waitUntil(lambda b=before: server.log().count("rules not reloaded") > b)
                assert verdict(server.port, allowed.port) == GRANTED
                assert verdict(server.port, denied.port) == REJECTED
        # However quickly the reloads went, the load has made its requests.
        waitUntil(lambda: len(outcomes) > 20 or bool(errors), what="20 requests")
        stop.set()
        loader.join(30)
        assert errors == []
        assert len(outcomes) > 20
        assert set(outcomes) <= {GRANTED, REJECTED}
        assert GRANTED in outcomes and REJECTED in outcomes
        # The tunnel opened under the first rules still works.
        tunnel.sendall(b"still here")
        assert tunnel.recv(100) == b"still here"
        tunnel.close()
        assert f"{rules}:2" in server.log()  # denials name the rule
    finally:
        stop.set()
        stopServer(server)


@pytest.mark.interop
def test_curlThroughRulesDeniedPortFailsAllowedPortWorks(
    tmp_path: Path, echoes: tuple[EchoServer, EchoServer]
) -> None:
    """
    With rules that allow one destination port only, curl through the proxy
    to another port fails with curl's SOCKS rejection (exit 97), and to the
    allowed port it gets the page.
    """
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("curl is not installed (./dev test installs it)")
        pytest.skip("curl is not installed")
    (tmp_path / "page.txt").write_text("hello through the rules\n")
    web = subprocess.Popen(
        ["python3", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    server: Server | None = None
    try:
        line = web.stdout.readline()  # type: ignore[union-attr]
        webPort = int(line.split(" port ")[1].split(" ")[0])
        rules = tmp_path / "rules.conf"
        rules.write_text(allowOnly(webPort))
        server = startServer(tmp_path, "--rules", str(rules))
        base = [
            curl,
            "-q",
            "-sS",
            "--max-time",
            "20",
            "--socks4",
            f"127.0.0.1:{server.port}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        good = subprocess.run(
            [*base, f"http://127.0.0.1:{webPort}/page.txt"],
            capture_output=True,
            timeout=30,
            env=env,
        )
        assert (good.returncode, good.stdout) == (0, b"hello through the rules\n")
        bad = subprocess.run(
            [*base, f"http://127.0.0.1:{echoes[0].port}/page.txt"],
            capture_output=True,
            timeout=30,
            env=env,
        )
        assert bad.returncode == 97
        assert b"(91)" in bad.stderr
    finally:
        if server is not None:
            stopServer(server)
        web.terminate()
        web.wait(10)


def test_ruleCommandRunsWithQuotedTokens(
    tmp_path: Path, echoes: tuple[EchoServer, EchoServer]
) -> None:
    """
    A rule's `: command` runs when the rule decides, with its tokens
    replaced; a hostile USERID arrives as text and runs nothing.
    """
    first, second = echoes
    out = tmp_path / "actions.log"
    pwned = tmp_path / "pwned"
    rules = tmp_path / "rules.conf"
    rules.write_text(
        f"allow 127.0.0.0/8 0/0 eq {first.port} : echo allow %c %a %s %u >> {out}\n"
        f"deny 0/0 : echo deny %z %s %u >> {out}\n"
    )
    server = startServer(tmp_path, "--rules", str(rules))
    try:
        hostile = f"x; touch {pwned}"
        for port, user in ((first.port, "alice"), (second.port, hostile)):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(
                encodeRequest(
                    Command.CONNECT,
                    port,
                    IPv4Address("127.0.0.1"),
                    userid=user.encode(),
                )
            )
            sock.recv(8)
            sock.close()
        waitUntil(lambda: out.exists() and len(out.read_text().splitlines()) == 2)
        assert sorted(out.read_text().splitlines()) == sorted(
            [
                f"allow connect 127.0.0.1 {first.port} alice",
                f"deny 127.0.0.1 {second.port} {hostile}",
            ]
        )
        assert not pwned.exists()
    finally:
        stopServer(server)


@pytest.mark.parametrize("name", ["::1", "::ffff:127.0.0.1"])
def test_classicLoopbackDenyRefusesIPv6Loopback(tmp_path: Path, name: str) -> None:
    """
    With README's loopback deny written for IPv4 and a classic catch-all
    permit, a SOCKS4A request for IPv6 loopback (or an IPv4-mapped loopback
    address) is refused with 91 and never reaches the ::1 listener.
    """
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    listener.setblocking(False)
    rules = tmp_path / "rules.conf"
    rules.write_text(
        "deny 0.0.0.0 0.0.0.0 127.0.0.0 255.0.0.0\npermit 0.0.0.0 0.0.0.0\n"
    )
    server = startServer(tmp_path, "--rules", str(rules))
    try:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(encodeRequest(Command.CONNECT, port, hostname=name))
            assert recvUpTo(sock, 8) == REJECTED
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        stopServer(server)
        listener.close()


def descendants(pid: int) -> list[int]:
    """The processes below C{pid} (children, grandchildren...), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def openDescriptors(pid: int) -> int:
    """How many descriptors C{pid} holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_ruleCommandsAreCappedUnderAFloodOfRefusals(tmp_path: Path) -> None:
    """
    1,000 requests refused by a rule whose command sleeps 5 s: with the
    default cap (16) the server has at most a cap's worth of commands (a
    shell and its sleep each) and of pipe descriptors, logs the drops in a
    line or two rather than one per request, and once the commands end it
    has reaped them all and holds no more descriptors than before.
    """
    rules = tmp_path / "rules.conf"
    rules.write_text("deny 0/0 : sleep 5\n")
    server = startServer(tmp_path, "--rules", str(rules))
    pid = server.process.pid
    try:
        before = openDescriptors(pid)
        most = 0
        for i in range(1000):
            assert verdict(server.port, 9) == REJECTED
            if i % 100 == 99:
                most = max(most, len(descendants(pid)))
        processes = len(descendants(pid))
        descriptors = openDescriptors(pid)
        print(
            f"after 1,000 refused requests: {processes} processes below the "
            f"server (at most {most} seen), {descriptors} descriptors "
            f"(before: {before})"
        )
        # A shell and its "sleep" per running command (setsid execs the
        # shell, dash does not exec its last command).
        assert max(processes, most) <= 2 * 16
        assert descriptors <= before + 2 * 16 + 4
        waitUntil(lambda: "shell actions:" in server.log(), what="the drops logged")
        drops = [line for line in server.log().splitlines() if "dropped (" in line]
        assert 1 <= len(drops) <= 3
        waitUntil(lambda: not descendants(pid), timeout=20, what="the commands reaped")
        waitUntil(lambda: openDescriptors(pid) <= before, what="pipes closed")
    finally:
        stopServer(server)


def test_sighupStormOnABigFileParsesTwiceAndTunnelsKeepMoving(
    tmp_path: Path, echoes: tuple[EchoServer, EchoServer]
) -> None:
    """
    With 100,000 rules, ten quick SIGHUPs make at most two parses (one, and
    one more for the requests that came during it), in a thread: a tunnel
    echoing one byte at a time meanwhile never waits half a second. Then a
    half-written file (no final newline) is not applied, and the log says
    why.
    """
    first, second = echoes
    rules = tmp_path / "rules.conf"
    filler = "".join(
        f"allow 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32 0/0 eq {1 + i % 60000}\n"
        for i in range(100_000)
    )
    writeRules(rules, allowOnly(first.port) + filler)
    server = startServer(tmp_path, "--rules", str(rules))
    stop = threading.Event()
    gaps: list[float] = []
    errors: list[BaseException] = []

    def echoLoop(sock: socket.socket) -> None:
        last = time.monotonic()
        try:
            while not stop.is_set():
                sock.sendall(b"x")
                if sock.recv(1) != b"x":
                    raise AssertionError("the tunnel closed")
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        except BaseException as e:
            errors.append(e)

    try:
        reply, tunnel = request(server.port, first.port)
        assert reply == GRANTED
        loop = threading.Thread(target=echoLoop, args=(tunnel,), daemon=True)
        loop.start()
        waitUntil(lambda: len(gaps) > 100, what="the echo loop")
        # Spaced a little: signals sent back to back merge into one.
        for _ in range(10):
            os.kill(server.process.pid, signal.SIGHUP)
            time.sleep(0.03)
        waitUntil(
            lambda: server.log().count("rules reloaded from") >= 2,
            timeout=60,
            what="the reloads",
        )
        time.sleep(1)  # room for a third parse, if there were one
        stop.set()
        loop.join(10)
        tunnel.close()
        parses = server.log().count("rules reloaded from")
        longest = max(gaps)
        print(
            f"10 SIGHUPs, 100,000 rules: {parses} parses, longest gap {longest:.3f} s"
        )
        assert errors == []
        assert parses == 2
        assert server.log().count("requested during a reload") == 1
        assert longest < 0.5

        # Half-written: a prefix that parses, denying nothing yet.
        rules.write_text(f"allow 127.0.0.0/8 0/0 eq {second.port}\ndeny 0/")
        os.kill(server.process.pid, signal.SIGHUP)
        waitUntil(lambda: "does not end with a newline" in server.log())
        assert (
            f"rules not reloaded, previous rules stay in force: {rules}:2: the "
            "last line does not end with a newline"
        ) in server.log()
        assert verdict(server.port, second.port) == REJECTED
        assert verdict(server.port, first.port) == GRANTED
    finally:
        stop.set()
        stopServer(server)
