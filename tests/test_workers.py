"""
`--workers N`: a supervisor and N worker processes sharing the listening
sockets, in real processes on loopback.

What is checked: tunnels are served by every worker, a killed worker is
replaced, SIGHUP reaches every worker, SIGTERM stops them all with exit
status 0 and no process left behind, workers stop when their supervisor
dies, the status site shows every worker's sessions, and the pure parts
(shares, specs, merged counters and metrics) compute what the
documentation says.  Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests._support import (
    EchoDestination,
    closedPort,
    recvUpTo,
    socksConnect,
    twistdCommand,
    waitUntil,
)
from tests.test_serve import (
    Launched,
    echoThrough,
    environment,
    launch,
    reply,
    request,
    runPython,
)
from twisted_socks.app._metrics import ServerMetrics
from twisted_socks.app._upstreammetrics import combineUpstreams, upstreamSnapshot
from twisted_socks.app._workers import WorkerState
from twisted_socks.app._workerspec import (
    WORKER_ENVIRONMENT,
    InheritedListener,
    WorkerSpec,
    checkShareable,
    endpointTypes,
    shareOf,
)
from twisted_socks.app._workerstatus import mergeMetrics, sumCounters

GRANTED = b"\x00\x5a"
REFUSED = b"\x00\x5b"
STARTED = r"worker (\d+) started: pid (\d+)"


def workerPids(server: Launched) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    return {int(w): int(p) for w, p in re.findall(STARTED, server.log())}


def alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def launchWorkers(tmp: Path, *args: str, workers: int = 2) -> Launched:
    """The launcher with C{--workers}, once every worker listens too."""
    server = launch(tmp, "--workers", str(workers), *args)
    try:
        server.waitFor(r"worker=\d+\] SOCKS4/4A server listening on", count=workers)
    except BaseException:
        server.stop()
        raise
    return server


def sessionsBy(log: str) -> dict[int, int]:
    """How many session records each worker logged."""
    counts: dict[int, int] = {}
    for worker in re.findall(r"\[twisted_socks\.session#info worker=(\d+)\]", log):
        counts[int(worker)] = counts.get(int(worker), 0) + 1
    return counts


def fetch(url: str) -> bytes:
    """A page of a status site."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        body: bytes = response.read()
        return body


# -- the processes -----------------------------------------------------------


def test_fortyConcurrentTunnelsAreSharedByBothWorkers(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    With --workers 2, 40 tunnels opened at once all work, byte-exact, and
    both workers (two processes besides the supervisor) served some of them.
    """
    server = launchWorkers(tmp_path)
    try:
        pids = workerPids(server)
        assert sorted(pids) == [1, 2]
        assert len({*pids.values(), server.process.pid}) == 3
        errors: list[BaseException] = []

        def tunnel(number: int) -> None:
            try:
                echoThrough(server.port, echo.port, os.urandom(1000 + number))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=tunnel, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        log = server.waitFor(r"session .* reply=90 ", count=40)
        counts = sessionsBy(log)
        assert sum(counts.values()) == 40
        assert counts.get(1, 0) > 0 and counts.get(2, 0) > 0, counts
    finally:
        assert server.stop() == 0


def test_killedWorkerIsReplacedAndServiceContinues(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    A worker killed with SIGKILL is reported and replaced by a new process
    with the same number; the other keeps serving meanwhile, and afterwards
    tunnels work again.
    """
    server = launchWorkers(tmp_path)
    try:
        first = workerPids(server)
        os.kill(first[1], signal.SIGKILL)
        log = server.waitFor(r"worker 1 started: pid", count=2)
        assert f"worker 1 (pid {first[1]}) was killed by SIGKILL" in log
        replacement = workerPids(server)[1]
        assert replacement != first[1]
        assert alive(replacement) and alive(first[2])
        server.waitFor(r"worker=1\] SOCKS4/4A server listening on", count=2)
        for _ in range(10):
            echoThrough(server.port, echo.port, b"still here")
    finally:
        assert server.stop() == 0


def test_hangupReloadsTheRulesOfEveryWorker(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    SIGHUP to the supervisor makes every worker reload the rules: after a
    change that denies everything, no worker grants a request any more.
    """
    rules = tmp_path / "rules.conf"
    rules.write_text("allow 127.0.0.0/8 0/0\n")
    server = launchWorkers(tmp_path, "--rules", str(rules))
    try:
        assert reply(server.port, echo.port) == GRANTED
        rules.write_text("deny 0/0\n")
        server.process.send_signal(signal.SIGHUP)
        log = server.waitFor(r"rules reloaded from", count=2)
        reloaded = re.findall(r"rules#info worker=(\d+)\] rules reloaded", log)
        assert sorted(reloaded) == ["1", "2"]
        answers = {reply(server.port, echo.port) for _ in range(30)}
        assert answers == {REFUSED}
        log = server.waitFor(r"reply=91 ", count=30)
        assert set(sessionsBy(log)) == {1, 2}
    finally:
        assert server.stop() == 0


def test_hangupRightAfterStartKillsNoWorker(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    SIGHUP reaching workers that are still starting (sent as soon as the
    supervisor listens) or that have no rules to reload kills none of them.
    """
    rules = tmp_path / "rules.conf"
    rules.write_text("allow 127.0.0.0/8 0/0\n")
    server = launch(tmp_path, "--workers", "2", "--rules", str(rules))
    try:
        server.process.send_signal(signal.SIGHUP)
        server.waitFor(r"worker=\d+\] SOCKS4/4A server listening on", count=2)
        server.waitFor(r"rules reloaded from", count=2)
        assert "restarting" not in server.log()
        echoThrough(server.port, echo.port, b"alive")
    finally:
        assert server.stop() == 0
    plainDirectory = tmp_path / "plain"
    plainDirectory.mkdir()
    plain = launchWorkers(plainDirectory)
    try:
        plain.process.send_signal(signal.SIGHUP)
        plain.waitFor("there is no --rules file to reload")
        time.sleep(0.5)
        assert "restarting" not in plain.log()
        echoThrough(plain.port, echo.port, b"alive")
    finally:
        assert plain.stop() == 0


def test_sigtermStopsEveryWorkerAndExits0(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    SIGTERM to the supervisor: the workers drain (an established tunnel
    still relays), every process exits, the supervisor with status 0.
    """
    server = launchWorkers(tmp_path)
    try:
        pids = workerPids(server)
        with socksConnect(server.port, echo.port) as sock:
            sock.sendall(b"before")
            assert sock.recv(6) == b"before"
            server.process.send_signal(signal.SIGTERM)
            server.waitFor("draining sessions", count=3)
            sock.sendall(b"during")
            assert sock.recv(6) == b"during"
        assert server.process.wait(30) == 0
    finally:
        # Whatever failed, leave nothing running (the workers follow their
        # supervisor).
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
    for pid in pids.values():
        assert not alive(pid), pid
    log = server.log()
    exited = re.findall(r"worker (\d) \(pid \d+\) exited with status 0", log)
    assert sorted(exited) == ["1", "2"]
    assert "restarting" not in log
    assert "Traceback" not in log + server.errPath.read_text()


def test_workersStopWhenTheSupervisorDies(tmp_path: Path) -> None:
    """
    A supervisor killed outright (SIGKILL: no chance to stop its workers)
    leaves no worker behind: each sees its pipe from the supervisor close.
    """
    server = launchWorkers(tmp_path)
    pids = workerPids(server)
    server.process.kill()
    server.process.wait(10)
    waitUntil(
        lambda: not any(alive(pid) for pid in pids.values()),
        timeout=20,
        what="workers gone",
    )


def test_statusShowsTheSessionsOfEveryWorker(
    tmp_path: Path, echo: EchoDestination
) -> None:
    """
    With --status the supervisor serves one status site for all workers:
    /sessions lists every worker's sessions with its number and sums the
    counters, /metrics labels every series with its worker, / shows a
    worker column, and the sessions command reads it.
    """
    server = launchWorkers(tmp_path, "--status", "tcp:0:interface=127.0.0.1")
    match = re.search(r"status page on (http://127\.0\.0\.1:\d+)/", server.log())
    assert match is not None
    base = match.group(1)
    held: list[socket.socket] = []
    try:
        # Tunnels stay open until both workers hold some (the kernel decides
        # which worker accepts; a handful is always enough).
        while len(held) < 200:
            sock = socksConnect(server.port, echo.port)
            held.append(sock)
            if len(held) >= 4 and len(set(sessionsBy(liveWorkers(base)))) == 2:
                break
        answer = json.loads(fetch(base + "/sessions"))
        workersSeen = {s["worker"] for s in answer["sessions"]}
        assert workersSeen == {1, 2}
        assert len(answer["sessions"]) == len(held)
        assert answer["counters"]["active"] == len(held)
        assert answer["counters"]["activeByState"]["relaying"] == len(held)
        pids = workerPids(server)
        assert [(w["worker"], w["pid"], w["error"]) for w in answer["workers"]] == [
            (1, pids[1], None),
            (2, pids[2], None),
        ]
        metrics = fetch(base + "/metrics").decode()
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        active = {
            (s.labels["worker"], s.value)
            for s in families["socks_sessions_active"].samples
            if s.labels["state"] == "relaying"
        }
        assert sum(value for _, value in active) == len(held)
        assert {worker for worker, _ in active} == {"1", "2"}
        assert {s.labels["worker"] for s in families["socks_worker_up"].samples} == {
            "1",
            "2",
        }
        page = fetch(base + "/").decode()
        assert 'id="session-1-' in page and 'id="session-2-' in page
        assert '<th class="num">worker</th>' in page
        table = subprocess.run(
            [sys.executable, "-m", "twisted_socks", "sessions", base],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(),
            check=True,
        )
        assert f"{len(held)} active" in table.stdout
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0


def test_upstreamsOfEveryWorkerAreOnOnePage(tmp_path: Path) -> None:
    """
    With --routes under --workers each worker keeps its own upstream state:
    /metrics carries each worker's upstream series (labelled), and the
    supervisor's page shows one row per upstream, up at first, then bad in
    one of two workers after one worker's failed attempt, then bad (in
    both) once each worker has failed through it.
    """
    dead = closedPort()
    routes = tmp_path / "routes"
    routes.write_text(f"route.maxfail: 1\nsockd @=127.0.0.1:{dead} 0/0\n")
    server = launchWorkers(
        tmp_path, "--status", "tcp:0:interface=127.0.0.1", "--routes", str(routes)
    )
    try:
        match = re.search(r"status page on (http://127\.0\.0\.1:\d+)/", server.log())
        assert match is not None
        base = match.group(1)
        upstream = f"127.0.0.1:{dead}"
        metrics = fetch(base + "/metrics").decode()
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        up = {
            (s.labels["worker"], s.labels["upstream"], s.value)
            for s in families["socks_upstream_up"].samples
        }
        assert up == {("1", upstream, 1.0), ("2", upstream, 1.0)}
        assert _upstreamRow(fetch(base + "/").decode(), upstream) == ("up", "0")
        states = []
        for _ in range(200):
            assert reply(server.port, 9) == REFUSED
            state, sessions = _upstreamRow(fetch(base + "/").decode(), upstream)
            assert sessions == "0"
            states.append(re.sub(r"\d\d:\d\d:\d\d", "T", state))
            if not state.startswith("bad in"):
                break
        assert states[0] == "bad in 1 of 2 workers until T UTC"
        assert states[-1] == "bad until T UTC"
    finally:
        assert server.stop() == 0


def _upstreamRow(page: str, name: str) -> tuple[str, str]:
    """The state and sessions of upstream C{name} in the page's table."""
    table = page[page.index('<table id="upstreams">') :]
    match = re.search(
        rf'<tr><td class="text">{re.escape(name)}</td>'
        r'<td class="text">([^<]*)</td><td class="num">(\d+)</td></tr>',
        table,
    )
    assert match is not None, table
    return match.group(1), match.group(2)


def liveWorkers(base: str) -> str:
    """The workers of the live sessions, as fake log lines for L{sessionsBy}."""
    answer = json.loads(fetch(base + "/sessions"))
    return "".join(
        f"[twisted_socks.session#info worker={s['worker']}]\n"
        for s in answer["sessions"]
    )


def test_maxConnectionsIsSharedOut(tmp_path: Path, echo: EchoDestination) -> None:
    """
    --max-connections is split between the workers (3 over 2: 2 and 1), so
    the server as a whole never holds more than 3; each worker says its
    share.
    """
    server = launchWorkers(tmp_path, "--max-connections", "3")
    held: list[socket.socket] = []
    try:
        log = server.log()
        assert "worker=1] worker 1 of 2: at most 2 concurrent clients" in log
        assert "worker=2] worker 2 of 2: at most 1 concurrent clients" in log
        granted = 0
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            held.append(sock)
            sock.sendall(request(echo.port))
            granted += recvUpTo(sock, 8)[:2] == GRANTED
        # Which worker accepts is the kernel's choice: at least one share
        # fills up, and together they never exceed the total.
        assert 1 <= granted <= 3
        server.waitFor(r"reply=91 .* reason=max-connections reached", 12 - granted)
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0


def test_twistdRunsWorkersToo(tmp_path: Path, echo: EchoDestination) -> None:
    """
    `twistd -n socks --workers 2` supervises launcher workers; their session
    records (JSON here) land in twistd's log file; SIGTERM exits 0.
    """
    logPath = tmp_path / "twistd.log"
    process = subprocess.Popen(
        twistdCommand(logPath, "--port", "0", "--workers", "2", "--log-format", "json"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    try:
        waitUntil(
            lambda: (
                logPath.exists()
                and logPath.read_text().count("SOCKS4/4A server listening") >= 3
            ),
            timeout=20,
            what="twistd and both workers listening",
        )
        records = [json.loads(line) for line in logPath.read_text().splitlines()]
        [shared] = [r for r in records if "shared by 2 workers" in r["text"]]
        port = int(re.search(r"port=(\d+)", shared["text"]).group(1))  # type: ignore[union-attr]
        echoThrough(port, echo.port, b"via twistd")
        waitUntil(lambda: '"twisted_socks.session"' in logPath.read_text(), timeout=20)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise
    assert status == 0
    records = [json.loads(line) for line in logPath.read_text().splitlines()]
    [session] = [r for r in records if r["namespace"] == "twisted_socks.session"]
    assert session["worker"] in (1, 2)
    assert session["reply"] == 90


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--workers", "2", "--listen", "onion:80"],
            "bad --listen description 'onion:80'",
        ),
        (
            ["--workers", "2", "--max-connections", "1"],
            "--max-connections (1) must be at least --workers (2)",
        ),
    ],
)
def test_workerOptionErrorsAreOneLine(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Options --workers cannot honour are refused in one line, status 2."""
    result = runPython(tmp_path, "-m", "twisted_socks", "serve", *args)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert message in line


@pytest.mark.filterwarnings("ignore:dump_privatekey is deprecated:DeprecationWarning")
def test_unshareableListenerIsRefused(tmp_path: Path) -> None:
    """
    A listener that is not a plain socket (here TLS) cannot be handed to
    workers: one line, naming the types that can.
    """
    from tests.test_client import makeCertificates

    _, leaf = makeCertificates()
    certificate = tmp_path / "server.pem"
    certificate.write_bytes(leaf.dumpPEM())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted_socks",
            "serve",
            "--workers",
            "2",
            "--listen",
            f"ssl:0:interface=127.0.0.1:privateKey={certificate}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "cannot be shared by --workers processes" in line
    assert "tcp, tcp6, unix, systemd" in line


# -- the pure parts ------------------------------------------------------------


def test_specAndLauncherImportNoTwisted() -> None:
    """
    The worker spec and the launcher's module import nothing from Twisted:
    the launcher decides what the process may import before Twisted loads.
    """
    import ast

    from tests.test_layout import PACKAGE

    for name in ("app/_workerspec.py", "app/_serve.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        # Only what importing the module runs: its top-level statements.
        imported = {
            alias.name
            for node in tree.body
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not {m for m in imported if m.split(".")[0] in ("twisted", "zope")}


@pytest.mark.parametrize(("total", "workers"), [(200, 2), (200, 3), (3, 2), (7, 7)])
def test_sharesAddUpAndDifferByOneAtMost(total: int, workers: int) -> None:
    """The workers' shares of a limit add up to it and are nearly equal."""
    shares = [shareOf(total, workers, index) for index in range(1, workers + 1)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1
    assert min(shares) >= 1


@pytest.mark.parametrize(
    ("description", "shareable"),
    [
        ("tcp:1080", True),
        ("tcp6:1080", True),
        ("unix:/run/socks.sock", True),
        ("systemd:domain=INET:index=0", True),
        ("haproxy:tcp:1080", True),
        ("ssl:443", False),
        ("haproxy:ssl:443", False),
        ("onion:80", False),
    ],
)
def test_onlyPlainSocketsAreShareable(description: str, shareable: bool) -> None:
    """Which listener types a worker can adopt."""
    assert (checkShareable(description) is None) is shareable


def test_endpointTypesLookInsideHAProxy() -> None:
    """The types of a description, through haproxy: wrappers."""
    assert endpointTypes("haproxy:tcp6:1080") == ["haproxy", "tcp6"]
    assert endpointTypes("TCP:1080") == ["tcp"]


def test_workerSpecRoundTripsThroughTheEnvironment() -> None:
    """A spec survives the environment variable and is removed from it."""
    spec = WorkerSpec(
        index=2,
        count=3,
        maxConnections=67,
        listeners=(InheritedListener(3, socket.AF_INET6, "tcp6:1080"),),
        snapshotPath="/tmp/x/worker-2.sock",
    )
    environ = {WORKER_ENVIRONMENT: spec.toJSON(), "OTHER": "1"}
    assert WorkerSpec.fromEnvironment(environ) == spec
    assert environ == {"OTHER": "1"}
    assert WorkerSpec.fromEnvironment(environ) is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"index": 1}',
        '{"index": 3, "count": 2, "maxConnections": 1, "listeners": []}',
        '{"index": true, "count": 2, "maxConnections": 1, "listeners": []}',
        '{"index": 1, "count": 2, "maxConnections": 1, "listeners": [{"fd": 3}]}',
    ],
)
def test_badWorkerSpecIsAClearError(text: str) -> None:
    """A garbled spec is a ValueError naming the variable, never a crash."""
    with pytest.raises(ValueError, match=WORKER_ENVIRONMENT):
        WorkerSpec.fromJSON(text)


def test_badWorkerSpecStopsTheLauncherInOneLine(tmp_path: Path) -> None:
    """The launcher started with a garbled spec says so and exits 2."""
    result = subprocess.run(
        [sys.executable, "-m", "twisted_socks", "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment(), WORKER_ENVIRONMENT: "{"},
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"python -m twisted_socks serve: {WORKER_ENVIRONMENT} is not JSON\n"
    )


def test_countersAreSummed() -> None:
    """The status page's counters over workers are the sums, state by state."""
    one = ServerMetrics().summary([]).asDict()
    two = dict(one, active=2, sessionsStarted=5, bytesUp=10, handshakeSecondsTotal=0.5)
    two["activeByState"] = dict(one["activeByState"], relaying=2)
    total = sumCounters([dict(one, active=1, sessionsStarted=1), two])
    assert total.active == 3
    assert total.sessionsStarted == 6
    assert total.bytesUp == 10
    assert total.handshakeSecondsTotal == 0.5
    assert total.activeByState["relaying"] == 2
    assert total.activeByState["negotiating"] == 0
    assert sumCounters([]).active == 0


def test_metricsAreLabelledByWorker() -> None:
    """
    Every worker's series comes out with its worker label (counters keep
    their _created samples); a worker that did not answer is down.
    """
    first, second = ServerMetrics(), ServerMetrics()
    first.handshake(0.01)
    second.handshake(0.02)
    second.handshake(0.03)
    states = [
        WorkerState(1, 100, 0, snapshot={"metrics": snapshotMetrics(first)}),
        WorkerState(2, 101, 1, snapshot={"metrics": snapshotMetrics(second)}),
        WorkerState(3, None, 4, error="not running"),
    ]
    text = generate_latest(mergeMetrics(states)).decode()
    families = {f.name: f for f in openmetrics.text_string_to_metric_families(text)}
    counts = {
        s.labels["worker"]: s.value
        for s in families["socks_handshake_seconds"].samples
        if s.name == "socks_handshake_seconds_count"
    }
    assert counts == {"1": 1, "2": 2}
    up = {s.labels["worker"]: s.value for s in families["socks_worker_up"].samples}
    assert up == {"1": 1, "2": 1, "3": 0}
    restarts = {
        s.labels["worker"]: s.value
        for s in families["socks_worker_restarts"].samples
        if s.name == "socks_worker_restarts_total"
    }
    assert restarts == {"1": 0, "2": 1, "3": 4}


def snapshotMetrics(metrics: ServerMetrics) -> str:
    """A worker's metrics as its snapshot carries them."""
    return generate_latest(metrics.registry).decode()


def test_upstreamsOfTheWorkersAreCombined() -> None:
    """
    The supervisor's upstream table: sessions summed over the workers; up
    when no worker has it marked; bad until the latest expiry when every
    worker listing it does; else in how many; entries that do not fit are
    passed over.
    """
    now = 1000.0
    one = [
        {"name": "a:1", "sessions": 2, "badUntil": None},
        {"name": "b:1", "sessions": 1, "badUntil": 1300.0},
        {"name": "c:1", "sessions": 0, "badUntil": 1100.0},
    ]
    two = [
        {"name": "a:1", "sessions": 5, "badUntil": 900.0},
        {"name": "b:1", "sessions": 0, "badUntil": None},
        {"name": "c:1", "sessions": 4, "badUntil": 1200.0},
        {"name": "d:1"},
        "junk",
    ]
    rows = combineUpstreams([one, two, "not a list"], now)  # type: ignore[list-item]
    assert rows == [
        ("a:1", "up", 7),
        ("b:1", "bad in 1 of 2 workers until 00:21:40 UTC", 1),
        ("c:1", "bad until 00:20:00 UTC", 4),
    ]


def test_snapshotCarriesTheUpstreams() -> None:
    """
    A worker's snapshot lists its upstreams with their counters and, only
    while marked bad, when the mark expires: what the supervisor combines.
    """
    from twisted.internet.task import Clock

    from twisted_socks.client._routes import parseRoutes
    from twisted_socks.outbound._routed import Router

    clock = Clock()
    clock.advance(1000)
    table = parseRoutes(
        "route.badexpire: 60\nsockd @=127.0.0.1:1,socks5://u:pw@127.0.0.1:2 0/0\n",
        "routes",
        server=True,
    )
    router = Router(clock, table, clock=clock)
    first, second = table.routes[0].servers
    router.failed(first)
    router.state(second).sessions = 3
    assert upstreamSnapshot(router, clock.seconds()) == [
        {
            "name": "127.0.0.1:1",
            "sessions": 0,
            "failures": 1,
            "failovers": 0,
            "badUntil": 1060.0,
        },
        {
            "name": "socks5://u:***@127.0.0.1:2",
            "sessions": 3,
            "failures": 0,
            "failovers": 0,
            "badUntil": None,
        },
    ]
    assert upstreamSnapshot(router, 1060.0)[0]["badUntil"] is None
    assert upstreamSnapshot(None, 0.0) == []
