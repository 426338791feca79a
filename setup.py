"""Packaging for twisted-socks.

The metadata lives here rather than in pyproject.toml's [project] table because
the twistd plugin has to ship as plain data inside Twisted's namespace
directory ``twisted/plugins`` (which must never get an ``__init__.py``), and
``py_modules``/``package_data`` for a namespace directory are clearest in
setup.py.
"""

from setuptools import setup

#: The package's layers, one subpackage each (see docs/design.md); every one
#: must be listed, or an installed (non-editable) copy would miss it.
_SUBPACKAGES = (
    "wire",
    "policy",
    "server",
    "relay",
    "outbound",
    "client",
    "ident",
    "app",
)

setup(
    name="twisted-socks",
    version="0.1.0.dev0",
    description="A SOCKS4/SOCKS4A proxy server and client library for Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=[
        "twisted_socks",
        *(f"twisted_socks.{sub}" for sub in _SUBPACKAGES),
        "twisted.plugins",
    ],
    # Every package lives at its natural place under the project root.
    # Said explicitly, it also makes setuptools' default (lenient) editable
    # install a static .pth of the project root, as for a src layout:
    # Twisted's plugin scan then finds twisted/plugins/ in the checkout
    # (setuptools' import-hook finder for other layouts serves only the
    # listed packages, and twistd would not see the plugin).
    package_dir={"": "."},
    package_data={"twisted_socks": ["py.typed"]},
    # The lean launcher: the server without twistd's plugin scan.
    entry_points={
        "console_scripts": ["twisted-socks = twisted_socks.app._serve:console"]
    },
    install_requires=[
        # The [tls] extra brings pyOpenSSL: Twisted's TLS (tls=true on the client
        # endpoints, optionsForClientTLS) cannot work without it.
        "twisted[tls]>=24.7",
        "zope.interface>=6",
        "service-identity>=24.1",
        # The issue asks for Prometheus' own library for /metrics rather
        # than writing the exposition format by hand.
        "prometheus-client>=0.20",
        # SOCKS5 username/password (--users): the password file holds bcrypt
        # hashes, as htpasswd -B writes them; pyca's bcrypt checks them and
        # releases the GIL while it works.
        "bcrypt>=4.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            # Drives Debian's headless Chromium in the status page test.
            "selenium>=4.11",
            # Python SOCKS5 client libraries the interop tests run against
            # our server (tests/test_socks5libraries.py): PySocks (what
            # requests[socks] uses), python-socks (asyncio; what
            # aiohttp-socks uses) and httpx with socksio.
            "PySocks>=1.7",
            "python-socks>=2.4",
            "httpx[socks]>=0.27",
            # The documentation site: Sphinx, Markdown pages (MyST), and the
            # API reference from our epytext docstrings by pydoctor (Twisted's
            # own tool; autodoc does not read epytext).
            "sphinx>=8.1,<10",
            "myst-parser>=4.0,<6",
            "pydoctor>=25.10,<26",
            # A second UDP ASSOCIATE client for the server's relay (its "0"
            # name in the request is a quirk the relay must accept).
            "PySocks>=1.7",
        ],
        "bench": ["pproxy==2.7.9", "py-spy>=0.3.14", "uvloop>=0.19"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
        "Topic :: System :: Networking :: Firewalls",
    ],
)
