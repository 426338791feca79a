"""
What a newcomer runs first works as written: README's client program
(examples/client.py, quoted whole) and its offline "Try it" lines, against a
real server and a local web server on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests._support import Server, closedPort, startServer, stopServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLIENT = ROOT / "examples" / "client.py"


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without logging each request to standard error."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def website(tmp_path: Path) -> Iterator[int]:
    """A web server on 127.0.0.1 serving a known page; its port."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "index.html").write_text("<p>served through the proxy</p>\n")
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Server]:
    """C{twistd socks} with its defaults (loopback clients only)."""
    folder = tmp_path / "proxy"
    folder.mkdir()
    server = startServer(folder)
    try:
        yield server
    finally:
        stopServer(server)


def fences(text: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of C{language} in Markdown C{text}."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def test_readmeQuotesTheClientProgramWhole() -> None:
    """README's client code is examples/client.py, every line of it."""
    assert CLIENT.read_text() in fences(README.read_text(), "python")


def test_clientProgramFetchesAPageThroughTheProxy(proxy: Server, website: int) -> None:
    """
    examples/client.py, run as README says, fetches a page from a local web
    server by name (SOCKS4A, the proxy resolves localhost) and prints its
    status line; the server logged the session.
    """
    result = subprocess.run(
        [
            sys.executable,
            str(CLIENT),
            f"http://localhost:{website}/",
            f"127.0.0.1:{proxy.port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"HTTP/1\.0 200 OK \(\d+ bytes through 127\.0\.0\.1:{proxy.port}\)\n",
        result.stdout,
    )
    assert f"connect localhost:{website}" in proxy.log()


def test_clientProgramWithoutArgumentsPrintsItsUsage() -> None:
    """Without a URL the program prints how to run it, and fails."""
    result = subprocess.run(
        [sys.executable, str(CLIENT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "python examples/client.py http://" in result.stderr


def test_offlineTryItLinesWork(proxy: Server, tmp_path: Path) -> None:
    """
    README's offline "Try it" lines, run by bash with only the two port
    numbers changed (1080: the test's proxy; 8000: a free port), start a
    local web server and fetch its listing through the proxy with curl,
    by SOCKS4A and by SOCKS4.
    """
    if shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail("curl is not installed (./dev test installs it)")
        pytest.skip("curl is not installed")
    [block] = [b for b in fences(README.read_text(), "sh") if "http.server" in b]
    assert block.count("1080") == 2 and block.count("8000") == 3
    web = closedPort()
    script = block.replace("1080", str(proxy.port)).replace("8000", str(web))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "marker.txt").write_text("offline\n")
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path / "www",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group: whatever the script leaves behind (the web
        # server, if a line fails) is killed with it.
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == 0, err
    # The directory listing, once per curl.
    assert out.count("<h1>Directory listing for /</h1>") == 2, out
    assert out.count('<a href="marker.txt">') == 2, out
    records = [line for line in proxy.log().splitlines() if " session " in line]
    assert len(records) == 2
    assert all("reply=90" in line for line in records)
