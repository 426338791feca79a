"""Tests of the project's shape: the sans-IO core, the public API, packaging."""

from __future__ import annotations

import ast
from pathlib import Path

import twisted_socks

PACKAGE = Path(twisted_socks.__file__).parent
ROOT = PACKAGE.parent

#: Modules that import nothing from Twisted: the wire codec, the log
#: escaping and the %-token quoting are pure functions of bytes and text
#: (not even zope); the rules grammar and the policy values may use
#: zope.interface to declare what they provide.
PURE = ["_codec.py", "_logfields.py", "_outcome.py", "_percent.py", "_statusauth.py"]
TWISTED_FREE = [
    *PURE,
    "_rules.py",
    "_policy.py",
    "interfaces.py",
    "_check.py",
    "_sessionscli.py",
]


def importedModules(path: Path) -> set[str]:
    """
    Every module a file imports at run time (imports guarded by
    C{if TYPE_CHECKING:} are for the type checker only and are skipped).
    """
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


def test_libraryNeverImportsTheGlobalReactor() -> None:
    """
    Library modules take the reactor as an argument; only the twistd
    application module may use the global one.
    """
    for path in PACKAGE.glob("*.py"):
        if path.name == "_tap.py":
            continue
        source = path.read_text()
        assert "from twisted.internet import reactor" not in source, path.name
        assert "twisted.internet.reactor" not in source, path.name


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
