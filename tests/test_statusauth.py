"""
Who may read the status page: C{--status PORT} is loopback; off loopback a
token (C{--status-auth FILE}) or C{--status-insecure} is required, and a
request without the token gets 401.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests._support import spawnTwistd, twistd
from twisted_socks.app._statusauth import (
    StatusToken,
    isLocalEndpoint,
    loadStatusToken,
    statusDescription,
)

TOKEN = "5f0c2d9e8b7a6f4e3d2c1b0a99887766"


def get(url: str, authorization: str | None = None) -> tuple[int, dict[str, list[str]]]:
    """GET C{url} (blocking): the status code and the headers."""
    request = urllib.request.Request(url)  # noqa: S310
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()
            return response.status, {}
    except urllib.error.HTTPError as e:
        headers: dict[str, list[str]] = {}
        for name, value in e.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return e.code, headers


def tokenFile(folder: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    """A token file with C{text}, with permissions C{mode}."""
    path = folder / "status.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_requestsWithoutTheTokenGet401(tmp_path: Path) -> None:
    """
    With C{--status-auth}, every page answers 401 (with bearer and basic
    challenges) to a request without the token or with a wrong one, and 200
    to the token as a bearer token or as a basic-authentication password.
    """
    token = tokenFile(tmp_path)
    process, _, _, status = spawnTwistd(
        tmp_path,
        "--status",
        "tcp:0:interface=127.0.0.1",
        "--status-auth",
        str(token),
        wantStatus=True,
    )
    try:
        base = f"http://127.0.0.1:{status}"
        basic = base64.b64encode(f"monitor:{TOKEN}".encode()).decode()
        wrongBasic = base64.b64encode(b"monitor:" + b"x" * 32).decode()
        for path in ("/", "/sessions", "/metrics", "/nothing"):
            code, headers = get(base + path)
            assert code == 401, path
            challenges = " ".join(headers["www-authenticate"])
            assert "Bearer" in challenges and "Basic" in challenges
            assert get(base + path, "Bearer " + TOKEN[:-1] + "0")[0] == 401
            assert get(base + path, "Basic " + wrongBasic)[0] == 401
            assert get(base + path, "Basic !!notbase64")[0] == 401
        for path in ("/", "/sessions", "/metrics"):
            assert get(base + path, "Bearer " + TOKEN)[0] == 200, path
            assert get(base + path, "Basic " + basic)[0] == 200, path
        # The sessions command: refused without the token, and says why;
        # reads the table with it.
        sessions = [sys.executable, "-m", "twisted_socks", "sessions", base]
        refused = subprocess.run(sessions, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "HTTP 401" in refused.stderr and "--token-file" in refused.stderr
        read = subprocess.run(
            [*sessions, "--token-file", str(token)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert read.returncode == 0, read.stderr
        assert read.stdout.startswith("no sessions\n0 active;")
    finally:
        process.terminate()
        process.wait(10)


def test_barePortIsLoopback(tmp_path: Path) -> None:
    """
    C{--status 0} (a bare port number) listens on 127.0.0.1, with no token
    needed there.
    """
    process, log, _, status = spawnTwistd(tmp_path, "--status", "0", wantStatus=True)
    try:
        assert "(tcp:0:interface=127.0.0.1)" in log.read_text()
        assert get(f"http://127.0.0.1:{status}/sessions")[0] == 200
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    "args",
    [
        ["--status", "tcp:0"],
        ["--status", "tcp6:0"],
        ["--status", "tcp:0:interface=0.0.0.0"],
    ],
)
def test_twistdRefusesAnOpenStatusPage(tmp_path: Path, args: list[str]) -> None:
    """
    Under twistd too, a status endpoint that is not certainly local, with
    neither C{--status-auth} nor C{--status-insecure}, stops start-up with
    a message that names both.
    """
    result = subprocess.run(
        [twistd(), "-n", "--pidfile=", "socks", "--port", "0", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr  # twistd prints errors on stdout
    assert result.returncode != 0
    assert "not on loopback or a UNIX socket" in output
    assert "--status-auth" in output
    assert "Traceback" not in output


def test_insecureIsExplicit(tmp_path: Path) -> None:
    """
    C{--status-insecure} is accepted and serves the page without a token
    (on loopback here: tests stay there; it is the flag that lets a
    non-loopback endpoint start, see L{test_twistdRefusesAnOpenStatusPage}).
    """
    process, _, _, status = spawnTwistd(
        tmp_path,
        "--status",
        "tcp:0:interface=127.0.0.1",
        "--status-insecure",
        wantStatus=True,
    )
    try:
        assert get(f"http://127.0.0.1:{status}/sessions")[0] == 200
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    ("description", "local"),
    [
        ("tcp:9180:interface=127.0.0.1", True),
        ("tcp:9180:interface=127.5.0.1", True),
        ("tcp:9180:127.0.0.1", True),
        ("tcp6:9180:interface=\\:\\:1", True),
        ("tcp6:9180:interface=\\:\\:ffff\\:127.0.0.1", True),
        ("TCP:9180:interface=127.0.0.1", True),
        ("unix:/run/socks-status.sock", True),
        ("unix:status.sock:mode=600", True),
        ("tcp:9180", False),
        ("tcp6:9180", False),
        ("tcp:9180:interface=0.0.0.0", False),
        ("tcp:9180:interface=192.0.2.1", False),
        ("tcp:9180:interface=localhost", False),
        ("tcp6:9180:interface=\\:\\:", False),
        ("ssl:9180:privateKey=k.pem", False),
        ("ssl:9180:privateKey=k.pem:interface=127.0.0.1", True),
        ("systemd:domain=INET:index=0", False),
        ("onion:80", False),
    ],
)
def test_whichEndpointsAreLocal(description: str, local: bool) -> None:
    """
    Loopback interfaces and UNIX sockets are local; no interface (every
    address), a name, C{systemd:} and unknown types are not.
    """
    assert isLocalEndpoint(description) is local


def test_barePortDescription() -> None:
    """A bare port is loopback; a description is kept as given."""
    assert statusDescription("9180") == "tcp:9180:interface=127.0.0.1"
    assert statusDescription("0") == "tcp:0:interface=127.0.0.1"
    assert statusDescription("tcp:9180") == "tcp:9180"


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        (TOKEN + "\n", 0o644, "readable by every user (chmod o-r"),
        ("", 0o600, "on one line"),
        (TOKEN + "\n" + TOKEN + "\n", 0o600, "on one line"),
        ("short\n", 0o600, "shorter than 16 characters"),
        ("has a space in it, long enough\n", 0o600, "printable ASCII without spaces"),
        ("tok\x1ben-that-is-long-enough\n", 0o600, "printable ASCII"),
    ],
)
def test_badTokenFilesAreRefused(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    """A token file that is unsafe or malformed is refused, naming the file."""
    path = tokenFile(tmp_path, text, mode)
    with pytest.raises(ValueError) as raised:
        loadStatusToken(str(path))
    assert str(raised.value).startswith(f"--status-auth {path}: ")
    assert message in str(raised.value)


def test_tokenComparison() -> None:
    """
    The token is accepted as a bearer token or as the password of basic
    authentication (any user name); a prefix, an extension, another scheme
    or no header are not; its repr does not show it.
    """
    token = StatusToken.fromText(TOKEN)
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert token.allows("Bearer " + TOKEN)
    assert token.allows("bearer  " + TOKEN + " ")
    assert token.allows("Basic " + basic)
    for header in (
        None,
        "",
        TOKEN,
        "Bearer " + TOKEN[:-1],
        "Bearer " + TOKEN + "0",
        "Token " + TOKEN,
        "Basic " + base64.b64encode(TOKEN.encode()).decode(),
        "Basic \u00e9",
        "Bearer \udcff",
    ):
        assert not token.allows(header), header
    assert TOKEN not in repr(token)


def test_statusAuthFileIsReadByTheLauncher(tmp_path: Path) -> None:
    """
    The launcher checks the token file at start-up like any option: one
    line on standard error, exit status 2.
    """
    path = tokenFile(tmp_path, TOKEN + "\n", 0o604)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted_socks",
            "serve",
            "--status",
            "0",
            "--status-auth",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "readable by every user" in line


def test_workersStatusNeedsTheTokenToo(tmp_path: Path) -> None:
    """
    Under C{--workers}, the supervisor's status site asks for the token as
    a single server's does: 401 without it, 200 with it.
    """
    from tests.test_workers import launchWorkers

    token = tokenFile(tmp_path)
    server = launchWorkers(
        tmp_path,
        "--status",
        "tcp:0:interface=127.0.0.1",
        "--status-auth",
        str(token),
    )
    try:
        match = re.search(r"status page on (http://127\.0\.0\.1:\d+)/", server.log())
        assert match is not None
        base = match.group(1)
        assert get(base + "/sessions")[0] == 401
        assert get(base + "/sessions", "Bearer " + TOKEN)[0] == 200
        assert get(base + "/metrics", "Bearer " + TOKEN)[0] == 200
    finally:
        server.stop()
