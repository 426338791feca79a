"""Tests of the project's shape: the sans-IO core, the public API, packaging."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import twisted_socks

PACKAGE = Path(twisted_socks.__file__).parent
ROOT = PACKAGE.parent

#: Modules that import nothing from Twisted, not even zope: pure functions
#: of bytes and text.  Every module of C{wire/} (the codecs of SOCKS4,
#: SOCKS5 and RFC 1929, the client's side of them, the ident response
#: parser, outcomes, requests and proxy URLs: see
#: L{test_wireModulesArePure}), and elsewhere the log escaping, the status
#: page's token, the password file's reader, the %-token quoting with its
#: shell scan and list of evaluating commands, the rule patterns and the
#: fields of the rules grammar.  The rules grammar, the rule set and the
#: policy values may use zope.interface to declare what they provide, and
#: the check of the proxy's own addresses asks the kernel through the
#: socket module alone (L{TWISTED_FREE}).
PURE = sorted(
    [
        *(
            path.relative_to(PACKAGE).as_posix()
            for path in (PACKAGE / "wire").glob("*.py")
        ),
        "_logfields.py",
        "app/_statusauth.py",
        "client/_hostport.py",
        "policy/_evaluators.py",
        "policy/_fields.py",
        "policy/_passwords.py",
        "policy/_patterns.py",
        "policy/_percent.py",
        "policy/_shellquote.py",
    ]
)
TWISTED_FREE = [
    *PURE,
    "policy/_rules.py",
    "policy/_ruleset.py",
    "policy/_policy.py",
    "interfaces.py",
    "policy/_check.py",
    "app/_passwdcli.py",
    "outbound/_selfaddress.py",
    "outbound/_udproute.py",
    "app/_sessionscli.py",
]


def runtimeNodes(path: Path) -> list[ast.AST]:
    """
    Every syntax node of a file but those under C{if TYPE_CHECKING:}, which
    are for the type checker only and never run.
    """
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def importedModules(path: Path) -> set[str]:
    """
    Every module a file imports at run time (imports guarded by
    C{if TYPE_CHECKING:} are for the type checker only and are skipped).
    """
    names: set[str] = set()
    for node in runtimeNodes(path):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_coreModulesImportNothingFromTwisted() -> None:
    """The codec, the rules grammar and their helpers run without Twisted."""
    for name in TWISTED_FREE:
        imported = importedModules(PACKAGE / name)
        offending = {m for m in imported if m.split(".")[0] == "twisted"}
        assert offending == set(), name
    for name in PURE:
        imported = importedModules(PACKAGE / name)
        assert not {m for m in imported if m.split(".")[0] == "zope"}, name


def test_wireModulesArePure() -> None:
    """
    C{wire/} is the sans-IO layer: its package and every module in it
    import neither Twisted nor zope, so a parser can be tested, fuzzed and
    reused without a reactor.
    """
    wire = sorted((PACKAGE / "wire").glob("*.py"))
    assert len(wire) > 5
    for path in wire:
        imported = importedModules(path)
        offending = {m for m in imported if m.split(".")[0] in ("twisted", "zope")}
        assert offending == set(), path.name


def test_libraryNeverImportsTheGlobalReactor() -> None:
    """
    Library modules take the reactor as an argument; only the twistd
    application module may use the global one.
    """
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "app/_tap.py":
            continue
        source = path.read_text()
        assert "from twisted.internet import reactor" not in source, name
        assert "twisted.internet.reactor" not in source, name


def test_publicNamesAreExportedAndDocumented() -> None:
    """Everything in __all__ exists and has a docstring."""
    for name in twisted_socks.__all__:
        value = getattr(twisted_socks, name)
        if callable(value) or isinstance(value, type):
            assert (value.__doc__ or "").strip(), name


def test_pluginDirectoryIsANamespace() -> None:
    """
    twisted/plugins/ has no __init__.py (Twisted would skip it) and no file
    named like Twisted's own legacy plugin (it would be shadowed).
    """
    plugins = ROOT / "twisted" / "plugins"
    assert not (plugins / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (plugins / "twisted_socks.py").exists()
    assert (plugins / "twisted_socks4a.py").exists()


def _moduleName(path: Path) -> str:
    """The dotted name of a file of the package (a package: its own name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def packageImports(path: Path, modules: set[str]) -> set[str]:
    """
    The package's modules that a file imports at run time: at module level
    and inside functions (a lazy import is still a dependency; it only
    runs later), but not under C{if TYPE_CHECKING:}, which never runs.
    The package's C{__init__} also imports, on first use, every module its
    table of public names (C{_ORIGINS}) names.
    """
    name = _moduleName(path)
    isPackage = path.name == "__init__.py"
    here = name if isPackage else name.rpartition(".")[0]
    found: set[str] = set()
    for node in runtimeNodes(path):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            # "from . import _x" imports the module _x.
            found.update(f"{source}.{alias.name}" for alias in node.names)
        elif (
            isPackage
            and isinstance(node, ast.AnnAssign)
            and ast.unparse(node.target) == "_ORIGINS"
            and isinstance(node.value, ast.Dict)
        ):
            for origin in node.value.values:
                assert isinstance(origin, ast.Constant)
                found.add(f"{here}{origin.value}")
    return (found & modules) - {name}


def importCycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of C{graph} (each module, then the first again), or []."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return []


def importGraph() -> dict[str, set[str]]:
    """Each module of the package, and the package modules it imports."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_moduleName(path) for path in files}
    return {_moduleName(path): packageImports(path, modules) for path in files}


def test_noImportCycles() -> None:
    """
    No module of the package imports, directly or through others, a module
    that imports it back, counting lazy imports inside functions (they stay
    lazy, to keep the launcher's start-up small, but a cycle through one is
    still two modules depending on each other's insides).
    """
    graph = importGraph()
    # The walk sees the imports it must (a sanity check of the parser).
    assert "twisted_socks.server._factory" in graph["twisted_socks.app._metrics"]
    assert "twisted_socks.app._compose" in graph["twisted_socks.app._tap"]
    assert "twisted_socks.server._factory" in graph["twisted_socks"]
    assert importCycle(graph) == []


def test_importCycleFindsACycle() -> None:
    """The cycle finder reports a cycle, and none in a graph without one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert importCycle(graph) == ["a", "b", "c", "a"]
    assert importCycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_testsReadAdmissionThroughItsPublicAPI() -> None:
    """
    No test reads admission's private tables (the lookup queues, the rate
    windows, the negotiating sessions): they use L{Admission}'s and
    L{LookupBudget}'s documented reads, so admission can change inside.
    """
    private = re.compile(
        r"\b(admission|lookups|budget)\._[A-Za-z]"
        r"|_lookupQueues|_recentByClient|\b_negotiating\b|\b_queues\b"
    )
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == "test_layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not private.search(line), f"{path.name}:{number}: {line.strip()}"
