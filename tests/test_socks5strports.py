"""
SOCKS5 endpoint strings (C{socks5h:}, C{socks5:}) and proxy URLs
(C{url=socks5h://user:pass@host:port}), parsed and used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.internet.protocol import Factory
from twisted.plugin import getPlugins

from tests._support import Echo, listen
from tests.test_client import makeCertificates, roundTrip
from tests.test_socks5interop import PASSWORD, USER, microsocks
from twisted_socks import SOCKS4ClientEndpoint, SOCKS5ClientEndpoint
from twisted_socks.wire._proxyurl import ProxyURL, parseProxyURL

# The imported fixtures are used by name, which linters cannot see: listing
# them here marks them as used.
__all__ = ["microsocks"]

#: A password that must never appear in a message or a repr.
SECRET = "Zz-never-shown-9"


def parse(description: str) -> Any:
    """clientFromString, as a program would call it."""
    return clientFromString(reactor, description)


def test_pluginsAreFound() -> None:
    """Twisted's plugin scan finds the socks5h and socks5 prefixes."""
    prefixes = {
        getattr(plugin, "prefix", None)
        for plugin in getPlugins(IStreamClientEndpointStringParserWithReactor)
    }
    assert {"socks5h", "socks5", "socks4a", "socks4"} <= prefixes


@pytest.mark.parametrize(("prefix", "remote"), [("socks5h", True), ("socks5", False)])
def test_fullDescription(prefix: str, remote: bool) -> None:
    """
    Every option lands where it belongs; C{socks5h:} sends names to the
    proxy and C{socks5:} resolves them here, as curl's schemes do.
    """
    endpoint = parse(
        f"{prefix}:host=example.com:port=443:proxyHost=127.0.0.1:proxyPort=1081"
        f":user=alice:password={SECRET}:timeout=12.5"
    )
    assert isinstance(endpoint, SOCKS5ClientEndpoint)
    assert (endpoint._host, endpoint._port, endpoint._timeout) == (
        "example.com",
        443,
        12.5,
    )
    assert endpoint._credentials == (b"alice", SECRET.encode())
    assert endpoint._remoteResolve is remote
    assert endpoint._proxyEndpoint._hostText == "127.0.0.1"
    assert endpoint._proxyEndpoint._port == 1081
    assert SECRET not in repr(endpoint)


def test_withoutCredentialsAndWithTLS(tmp_path: Path) -> None:
    """No user means no authentication offered; tls=true wraps the tunnel."""
    authority, _ = makeCertificates()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.dumpPEM())
    endpoint = parse(
        f"socks5h:localhost:443:proxyHost=127.0.0.1:tls=true:trustRoots={ca}"
    )
    inner = endpoint._wrappedEndpoint
    assert isinstance(inner, SOCKS5ClientEndpoint)
    assert inner._credentials is None
    assert inner._proxyEndpoint._port == 1080


def test_urlGivesTheProxyAndPercentDecodedCredentials() -> None:
    """
    C{url=} (its colons escaped) gives the proxy's host and port and the
    percent-decoded user and password (C{%3A} is C{:}, C{%40} is C{@}).
    """
    endpoint = parse(
        r"socks5h:host=example.com:port=80"
        r":url=socks5h\://al%40ce\:s3cr%3At%40x@127.0.0.1\:1081"
    )
    assert isinstance(endpoint, SOCKS5ClientEndpoint)
    assert endpoint._credentials == (b"al@ce", b"s3cr:t@x")
    assert endpoint._remoteResolve is True
    assert isinstance(endpoint._proxyEndpoint, HostnameEndpoint)
    assert endpoint._proxyEndpoint._port == 1081


@pytest.mark.parametrize(
    ("url", "kind", "remote"),
    [
        ("socks5://h", SOCKS5ClientEndpoint, False),
        ("socks5h://h", SOCKS5ClientEndpoint, True),
        ("socks4://u@h", SOCKS4ClientEndpoint, False),
        ("socks4a://h", SOCKS4ClientEndpoint, True),
    ],
)
def test_urlSchemeDecidesTheProtocol(url: str, kind: type, remote: bool) -> None:
    """
    With C{url=}, the URL's scheme says the version and where names are
    resolved, whatever the prefix: an C{ALL_PROXY} value works pasted after
    any of them.
    """
    for prefix in ("socks5h", "socks4"):
        escaped = url.replace(":", "\\:")
        endpoint = parse(f"{prefix}:host=example.com:port=80:url={escaped}")
        assert type(endpoint) is kind
        assert endpoint._remoteResolve is remote


def test_chainOfSOCKS5Descriptions() -> None:
    """A socks5h: description inside proxy= makes a chain."""
    chain = parse(
        r"socks5h:host=example.com:port=80"
        r":proxy=socks4a\:host=127.0.0.2\:port=1081\:proxyHost=127.0.0.1"
    )
    assert isinstance(chain._proxyEndpoint, SOCKS4ClientEndpoint)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("socks5h:host=x:port=80:proxyHost=h:user=alice", "both a username"),
        (f"socks5h:host=x:port=80:proxyHost=h:password={SECRET}", "both a username"),
        (f"socks4a:host=x:port=80:proxyHost=h:password={SECRET}", "needs SOCKS5"),
        (
            f"socks5h:host=x:port=80:proxyHost=h:user=a:password={SECRET * 20}",
            "password must be 1..255 bytes",
        ),
        (
            rf"socks5h:host=x:port=80:proxyHost=h:url=socks5h\://a\:{SECRET}@h",
            "only one of them",
        ),
        (
            rf"socks5h:host=x:port=80:user=a:url=socks5h\://a\:{SECRET}@h",
            "in url= or as user=/password=, not both",
        ),
        (rf"socks5h:host=x:port=80:url=http\://a\:{SECRET}@h", "unknown scheme 'http'"),
        (rf"socks5h:host=x:port=80:url=socks5h\://a\:{SECRET}@h\:99999", "port"),
        (rf"socks5h:host=x:port=80:url=socks4\://a\:{SECRET}@h", "no password"),
        (rf"socks5h:host=x:port=80:url=socks5h\://a\:{SECRET}@", "no host"),
        (
            rf"socks5h:host=x:port=80:proxy=socks5h\:host=y\:port=1\:password={SECRET}",
            "url=) is required",
        ),
        ("socks5h:host=x:port=80:proxy=nonsense\\:1", "proxy='nonsense:1'"),
    ],
)
def test_badDescriptionsNameTheFieldAndHideThePassword(
    description: str, message: str
) -> None:
    """A bad string raises L{ValueError} naming the problem, never the password."""
    with pytest.raises(ValueError) as caught:
        parse(description)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


# The URL parser.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socks5h://proxy.example", ProxyURL("socks5h", "proxy.example")),
        ("SOCKS5://10.0.0.1:1081/", ProxyURL("socks5", "10.0.0.1", 1081)),
        ("socks5h://[::1]:9050", ProxyURL("socks5h", "::1", 9050)),
        ("socks4a://bob@h", ProxyURL("socks4a", "h", 1080, b"bob")),
        (
            "socks5h://%C3%A9lise:p%3Aw%40d%25@h:1",
            ProxyURL("socks5h", "h", 1, "élise".encode(), b"p:w@d%"),
        ),
        ("socks5h://a:b:c@h", ProxyURL("socks5h", "h", 1080, b"a", b"b:c")),
    ],
)
def test_proxyURLs(text: str, expected: ProxyURL) -> None:
    """
    The scheme (any case), host (IPv6 bracketed), default port 1080 and
    the percent-decoded userinfo; the password may hold unescaped colons.
    """
    assert parseProxyURL(text) == expected


def test_proxyURLHidesThePassword() -> None:
    """C{repr} and C{str} of a parsed URL never show the password."""
    url = parseProxyURL(f"socks5h://alice:{SECRET}@h")
    assert SECRET not in repr(url) and SECRET not in str(url)
    assert str(url) == "socks5h://alice:***@h:1080"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy.example:1080", "not a proxy URL"),
        ("https://h", "unknown scheme"),
        (f"socks5h://:{SECRET}@h", "empty username"),
        ("socks5h://a:@h", "empty password"),
        (f"socks5h://a:{SECRET}@h/path", "no path"),
        (f"socks5h://a:{SECRET}@h:0", "not a number 1..65535"),
        (f"socks5h://a:{SECRET}@[::1", "unclosed ["),
        (f"socks4a://a:{SECRET}@h", "no password"),
    ],
)
def test_badProxyURLs(text: str, message: str) -> None:
    """Each bad URL says what is wrong without quoting the password."""
    with pytest.raises(ValueError) as caught:
        parseProxyURL(text)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


# Real tunnels.


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_stringsReachMicrosocks(
    microsocks: int, ports: list[IListeningPort]
) -> None:
    """
    A C{socks5h:} string with user=/password= and one with a percent-encoded
    C{url=} both carry a stream through microsocks with its password.
    """
    echo = listen(ports, Factory.forProtocol(Echo))
    encoded = PASSWORD.replace(":", "%3A").replace("@", "%40").replace(" ", "%20")
    escaped = PASSWORD.replace(":", "\\:")
    descriptions = [
        f"socks5h:host=localhost:port={echo}:proxyHost=127.0.0.1"
        f":proxyPort={microsocks}:user={USER}:password={escaped}",
        f"socks5:host=localhost:port={echo}"
        f":url=socks5\\://{USER}\\:{encoded}@127.0.0.1\\:{microsocks}",
    ]
    payload = os.urandom(20_000)
    for description in descriptions:
        endpoint = parse(description)
        assert await roundTrip(endpoint, payload) == payload
