"""Tests of the project's shape: the sans-IO core, the public API, packaging."""

from __future__ import annotations

import ast
from pathlib import Path

import twisted_socks

PACKAGE = Path(twisted_socks.__file__).parent
ROOT = PACKAGE.parent

#: Modules that must run without Twisted: the wire codec and the escaping of
#: log fields are pure functions of bytes.
SANS_IO = ["_codec.py", "_logfields.py"]


def importedModules(path: Path) -> set[str]:
    """Every module name a file imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_sansIOModulesImportNothingFromTwisted() -> None:
    """The codec and the log escaping import neither Twisted nor zope."""
    for name in SANS_IO:
        imported = importedModules(PACKAGE / name)
        offending = {m for m in imported if m.split(".")[0] in {"twisted", "zope"}}
        assert offending == set(), name


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
