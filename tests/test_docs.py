"""
The documentation: Sphinx builds it with warnings as errors, the pages and
the API reference are all there, and the examples in it are true.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

import twisted_socks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Narrative pages that must come out of the build.
PAGES = [
    "index",
    "quickstart",
    "rules",
    "ident",
    "bind",
    "client",
    "routing",
    "embedding",
    "operations",
    "reliability",
    "api",
    "design",
    "protocol",
]

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```$", re.S | re.M)


def fences(page: str, language: str | None = None) -> list[str]:
    """The code blocks of a Markdown page, optionally of one language."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [
        m["body"]
        for m in FENCE.finditer(text)
        if language is None or m["info"].strip() == language
    ]


def section(page: str, heading: str) -> str:
    """The text of one C{## heading} section of a Markdown page."""
    text = (DOCS / page).read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML documentation, built once with warnings as errors."""
    out = tmp_path_factory.mktemp("docs-html")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, (
        f"sphinx-build failed ({result.returncode}):\n{result.stderr}{result.stdout}"
    )
    return out


def test_everyPageIsBuilt(site: Path) -> None:
    """Each narrative page, and pydoctor's API reference, is in the output."""
    missing = [page for page in PAGES if not (site / f"{page}.html").is_file()]
    assert missing == []
    for page in [
        "api/index.html",
        "api/twisted_socks.SOCKSv4ServerFactory.html",
        "api/twisted_socks.interfaces.IAccessPolicy.html",
        "api/twisted_socks.interfaces.IIdentResolver.html",
        "api/twisted_socks.testing.html",
    ]:
        assert (site / page).is_file(), page


def inventory(path: Path) -> dict[str, str]:
    """Names to URIs from a Sphinx objects.inv (version 2)."""
    data = path.read_bytes()
    start = 0
    for _ in range(4):  # the four header lines
        start = data.index(b"\n", start) + 1
    names = {}
    for line in zlib.decompress(data[start:]).decode().splitlines():
        name, _, _, uri = line.split(" ", 4)[:4]
        names[name] = uri
    return names


def test_publicNamesAreDocumentedWhereTheyAreImportedFrom(site: Path) -> None:
    """
    The API reference documents every name of C{twisted_socks.__all__}: as
    C{twisted_socks.NAME} when a private module defines it, else under its
    public module (the interfaces); and the test doubles under
    C{twisted_socks.testing}.
    """
    names = inventory(site / "api" / "objects.inv")
    missing = []
    for name in twisted_socks.__all__:
        module = getattr(twisted_socks, name).__module__
        # Defined in a private module (twisted_socks.policy._policy): shown
        # where users import it from, the package itself.
        private = any(part.startswith("_") for part in module.split("."))
        public = "twisted_socks" if private else module
        if f"{public}.{name}" not in names:
            missing.append(f"{public}.{name}")
    assert missing == []
    for name in [
        "twisted_socks.interfaces.IAccessPolicy",
        "twisted_socks.interfaces.IIdentResolver",
        "twisted_socks.interfaces.IOutboundConnector",
        "twisted_socks.testing.FakeConnector",
        "twisted_socks.testing.FakeIdentResolver",
    ]:
        assert name in names, name


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)


def test_localLinksResolve(site: Path) -> None:
    """
    Every link from the narrative pages to another file of the site exists:
    the pages, the downloads, and the API reference pages pydoctor wrote.
    """
    broken = []
    for page in sorted(site.glob("*.html")):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for target in parser.targets:
            if re.match(r"[a-z]+:", target) or target.startswith(("#", "//")):
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.name}: {target}")
    assert broken == []


def test_pythonExamplesCompile() -> None:
    """Every Python block of every page is valid Python (top-level await allowed)."""
    for page in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(fences(page.name, "python")):
            compile(
                block,
                f"{page.name} (python block {i + 1})",
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )


#: Runs the embedding page's program on a memory reactor, drives sessions
#: through the factory it built, and runs the page's own test.
EMBEDDING_CHECK = """
import sys
from ipaddress import IPv4Address

from twisted.internet import address
from twisted.internet.main import installReactor
from twisted.internet.testing import MemoryReactorClock

reactor = MemoryReactorClock()
installReactor(reactor)

from twisted_socks import Command, encodeRequest
from twisted_socks.testing import HalfCloseableStringTransport

program, tests = sys.argv[1], sys.argv[2:]
namespace = {"__name__": "embedding_example"}
exec(compile(program, "docs/embedding.md", "exec"), namespace)

assert reactor.hasRun
assert [server[0] for server in reactor.tcpServers] == [1080]
factory = namespace["factory"]


def session(client, request):
    peer = address.IPv4Address("TCP", client, 40000)
    protocol = factory.buildProtocol(peer)
    transport = HalfCloseableStringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    return transport.value()


def connect(port, host, user=b""):
    return encodeRequest(Command.CONNECT, port, IPv4Address(host), userid=user)


# Not from the office: 91.
assert session("192.0.2.1", connect(443, "93.184.215.14")) == b"\\0\\x5b" + b"\\0" * 6
# The office: HTTPS to the internet is connected to; internal addresses and
# other ports are refused.
before = len(reactor.tcpClients)
assert session("10.1.2.3", connect(443, "93.184.215.14")) == b""
assert reactor.tcpClients[before][:2] == ("93.184.215.14", 443)
assert session("10.1.2.3", connect(443, "10.9.9.9"))[:2] == b"\\0\\x5b"
assert session("10.1.2.3", connect(22, "93.184.215.14"))[:2] == b"\\0\\x5b"
# An administrator: anything, as the workstation's owner (strict ident
# from the inventory): the owner is connected, another USERID gets 93, a
# workstation missing from the inventory 92.
before = len(reactor.tcpClients)
assert session("10.1.9.10", connect(22, "10.9.9.9", b"alice")) == b""
assert reactor.tcpClients[before][:2] == ("10.9.9.9", 22)
assert session("10.1.9.10", connect(22, "10.9.9.9", b"bob"))[:2] == b"\\0\\x5d"
assert session("10.1.9.99", connect(22, "10.9.9.9", b"carol"))[:2] == b"\\0\\x5c"

for i, block in enumerate(tests):
    exec(compile(block, f"docs/embedding.md (test block {i + 1})", "exec"), namespace)
ran = [name for name in namespace if name.startswith("test_")]
assert ran, "the page's test block defines no test"
for name in ran:
    namespace[name]()
print("ran", *ran)
"""


def test_embeddingExampleWorks() -> None:
    """
    The embedding page's program, run on a memory reactor, listens on port
    1080 and its policy and ident resolver behave as the page says; the
    page's test of the policy passes.
    """
    blocks = fences("embedding.md", "python")
    [program] = [b for b in blocks if "reactor.run()" in b]
    tests = [b for b in blocks if re.search(r"^def test_", b, re.M)]
    assert tests
    result = subprocess.run(
        [sys.executable, "-c", EMBEDDING_CHECK, program, *tests],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "ran test_" in result.stdout


def test_rulesExtensionExamplesAreTrue(tmp_path: Path) -> None:
    """
    The rules page's example file is valid, and the rule tester answers
    exactly as the page's transcript says.
    """
    text = section("rules.md", "The extensions, by example")
    blocks = [m["body"] for m in FENCE.finditer(text)]
    [rules] = [b for b in blocks if not b.startswith("$ ")]
    [transcript] = [b for b in blocks if b.startswith("$ ")]
    (tmp_path / "rules.conf").write_text(rules)
    (tmp_path / "staff").write_text("alice\nbob\n")
    runs = re.split(r"^\$ ", transcript, flags=re.M)[1:]
    assert len(runs) >= 5
    for run in runs:
        command, _, expected = run.partition("\n")
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "twisted_socks"], command
        result = subprocess.run(
            [sys.executable, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert result.stdout == expected, command
        assert result.returncode == (0 if expected.endswith("-> allow\n") else 1)


#: Builds the API reference of a package (a doctored copy of ours) with the
#: documentation's pydoctor settings; pydoctor prints what it reports.
LINK_CHECK = """
import runpy, sys
from pydoctor.driver import main

conf = runpy.run_path(sys.argv[1])
conf["_installPydoctorSystem"]()
args = [a.format(outdir=sys.argv[3]) for a in conf["pydoctor_args"][:-1]]
args = [a for a in args if not a.startswith("--project-base-dir")]
main([*args, "--make-html", "-q", sys.argv[2]])
"""


def test_apiReferenceReportsBrokenLinks(tmp_path: Path) -> None:
    """
    A docstring link to one of our names that does not exist is reported
    (so the Sphinx build fails); links to Python's and Twisted's names, which
    cannot be resolved without their inventories, are not.
    """
    package = tmp_path / "twisted_socks"
    source = Path(twisted_socks.__file__).parent
    for path in source.rglob("*.py"):
        copy = package / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text(encoding="utf-8"))
    policy = package / "policy/_policy.py"
    text = policy.read_text(encoding="utf-8")
    marker = '"""Whether C{address} is known (always, except SOCKS4A before lookup)."""'
    assert marker in text
    policy.write_text(
        text.replace(
            marker,
            '"""See L{Decison}, L{AccessRequest.adress}, L{None}, L{ValueError}, '
            'L{Deferred}."""',
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LINK_CHECK,
            str(DOCS / "conf.py"),
            str(package),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    reported = re.findall(r'Cannot find link target for "([^"]+)"', result.stdout)
    assert sorted(reported) == ["Decison", "twisted_socks.AccessRequest.adress"], (
        result.stdout + result.stderr
    )
