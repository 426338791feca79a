"""
Sphinx configuration for the twisted-socks documentation.

Build (warnings are errors; the output directory must be outside docs/)::

    .venv/bin/python -m sphinx -W --keep-going -b html docs /tmp/twisted-socks-docs

The narrative pages are Markdown, read by MyST. The API reference comes from
the docstrings, which are epytext (as in Twisted): pydoctor, Twisted's own API
documentation tool, renders them into ``<outdir>/api/`` during the Sphinx build
(``pydoctor.sphinx_ext.build_apidocs``), and its object inventory is fed to
intersphinx, so the narrative pages link into it with the ``py`` roles
(``{py:class}`twisted_socks.SOCKSv4ServerFactory```).

The build needs no network: no external inventories are fetched (see
C{DocsSystem} below for what that means for links to Python and Twisted).
"""

from __future__ import annotations

import builtins
import importlib
import re
import sys
import types
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import twisted_socks  # noqa: E402  (needs ROOT on sys.path)

# -- Project -----------------------------------------------------------------

project = "twisted-socks"
author = "the twisted-socks authors"
copyright = "the twisted-socks authors"
release = twisted_socks.__version__
version = release

# -- General -----------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
# Every cross-reference must resolve: a py role naming an API that was renamed
# or removed fails the build.
nitpicky = True
# Markdown code fences carry their own language; plain ``` blocks (config
# files, log lines) are shown as text, not guessed at.
highlight_language = "text"

# Anchors for ## and ### headings, so pages can link to sections (page.md#slug).
myst_heading_anchors = 3

# No remote inventories: the build must work offline. The pydoctor extension
# adds the API reference's own inventory here when the builder starts.
intersphinx_mapping: dict[str, Any] = {}

# -- HTML --------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"twisted-socks {release}"
html_theme_options = {
    "description": "SOCKS4/4A proxy server and client library for Twisted",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "show_relbars": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}

# -- API reference (pydoctor) -------------------------------------------------


#: The module under which L{_installPydoctorSystem} publishes pydoctor's system
#: class: pydoctor takes it by dotted name, and this configuration file is not
#: an importable module.
_SYSTEM_MODULE = "_twisted_socks_docs_pydoctor"
_UNRESOLVED = re.compile(
    r'^(?P<path>.+?):(?:\d+|\?\?\?): Cannot find link target for "(?P<name>[^"]+)"'
)
#: Modules whose names docstrings may mention without importing them.
_TWISTED_MODULES = (
    "twisted.internet.defer",
    "twisted.internet.error",
    "twisted.internet.interfaces",
)


def _installPydoctorSystem() -> None:
    """
    Define pydoctor's system class for this project and make it importable.

    pydoctor is imported here, from C{setup()}, not at the top of this file:
    importing it registers docutils directives (C{versionadded}, ...) that
    would collide with Sphinx's own if Sphinx had not set those up yet.
    """
    from pydoctor import astbuilder, model

    class ReexportingVisitor(astbuilder.ModuleVistor):
        """
        Document each public name where users import it from.

        The package re-exports its API from C{_}-prefixed modules, which list
        the same names in their own C{__all__}; pydoctor moves a re-exported
        object into the re-exporting module only when the origin module does
        not export it too. Here an object re-exported from a private module is
        always moved: C{twisted_socks.server._factory.SOCKSv4ServerFactory} is
        documented as C{twisted_socks.SOCKSv4ServerFactory}, and the test
        doubles C{twisted_socks.testing} re-exports under that module.
        """

        def _handleReExport(
            self,
            curr_mod_exports: Any,
            origin_name: str,
            as_name: str,
            origin_module: Any,
        ) -> bool:
            current = self.builder.current
            if (
                as_name in curr_mod_exports
                and isinstance(current, model.Module)
                # Only a public module takes a name in: a private one that
                # re-exports a sibling's name (_rules exports RuleSet for
                # its users) must not take it first.
                and not current.name.startswith("_")
                and origin_module.name.startswith("_")
            ):
                ob = origin_module.contents.get(origin_name)
                if ob is not None:
                    ob.reparent(current, as_name)
                    return True
            return bool(
                super()._handleReExport(
                    curr_mod_exports, origin_name, as_name, origin_module
                )
            )

    class ReexportingBuilder(astbuilder.ASTBuilder):
        ModuleVistor = ReexportingVisitor

    class DocsSystem(model.System):
        """
        pydoctor's system with the re-exports above, and a link policy for a
        build without network.

        Without the inventories of Python's and Twisted's documentation, an
        C{L{...}} naming C{None}, C{ValueError} or Twisted's C{Deferred}
        cannot become a link: it is shown as code, and that is not reported.
        Every other link must resolve, so a typo, or a link to one of our
        names that no longer exists, fails the build. Names are looked up in
        the module the docstring was written in: once an object has been
        moved into the package, pydoctor looks its links up there (pydoctor
        issue 295), where the private module's own names and imports are not
        visible.
        """

        defaultBuilder = ReexportingBuilder

        def msg(
            self,
            section: str,
            msg: str,
            thresh: int = 0,
            topthresh: int = 100,
            nonl: bool = False,
            wantsnl: bool = True,
            once: bool = False,
        ) -> None:
            if section == "resolve_identifier_xref" and self._tolerated(msg):
                thresh = 2  # shown with -vv only, and not counted as a warning
            super().msg(section, msg, thresh, topthresh, nonl, wantsnl, once)

        def _tolerated(self, message: str) -> bool:
            match = _UNRESOLVED.match(message)
            if match is None:
                return False
            name = match["name"]
            module = self._moduleAt(match["path"])
            if module is not None:
                expanded = module.expandName(name)
                if "." not in name and expanded != name:
                    # Defined or imported right there, so it exists: a
                    # private name, one from another project, or an alias
                    # pydoctor cannot follow (REPLY_SIZE = _REPLY.size).
                    return True
                name = expanded
            if name.split(".", 1)[0] in self.root_names:
                try:
                    return self.find_object(name) is not None  # ours, private
                except LookupError:
                    return False  # ours, and missing: a broken link
            if "." in name:
                return True  # imported from another project
            return hasattr(builtins, name) or any(
                hasattr(importlib.import_module(m), name) for m in _TWISTED_MODULES
            )

        def _moduleAt(self, path: str) -> Any:
            for module in self.objectsOfType(model.Module):
                if str(module.source_path) == path:
                    return module
            return None

    module = types.ModuleType(_SYSTEM_MODULE)
    module.DocsSystem = DocsSystem  # type: ignore[attr-defined]
    sys.modules[_SYSTEM_MODULE] = module


pydoctor_args = [
    "--project-name=twisted-socks",
    f"--project-version={release}",
    # The header's project link leads back to the narrative documentation.
    "--project-url=../index.html",
    f"--project-base-dir={ROOT}",
    "--docformat=epytext",
    "--html-output={outdir}/api",
    f"--system-class={_SYSTEM_MODULE}.DocsSystem",
    # The public API is twisted_socks (its __all__), twisted_socks.interfaces
    # and twisted_socks.testing; the _-prefixed modules are implementation.
    # (pydoctor always lists __main__, as private.)
    "--privacy=HIDDEN:twisted_socks._*",
    "--sidebar-expand-depth=1",
    str(ROOT / "twisted_socks"),
]
# Where the API reference is, relative to the site's root (intersphinx).
pydoctor_url_path = "api/"


def setup(app: Any) -> None:
    """Called by Sphinx once the extensions are loaded."""
    _installPydoctorSystem()
