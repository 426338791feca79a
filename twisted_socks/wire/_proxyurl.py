"""
SOCKS proxy URLs, C{socks5h://alice:s3cret@proxy.example:1080}, as curl and
urllib3 read C{ALL_PROXY}; no I/O and no Twisted imports.

The scheme says the protocol and where names are resolved, as curl has it:

  - C{socks4://}: SOCKS4, names resolved here (the first IPv4 address);
  - C{socks4a://}: SOCKS4A, names sent to the proxy;
  - C{socks5://}: SOCKS5, names resolved here (ATYP 1 or 4);
  - C{socks5h://}: SOCKS5, names sent to the proxy (ATYP 3).

(Chromium, Go's C{x/net/proxy} and python-socks send names to the proxy for
plain C{socks5://} too; curl and urllib3 do not, and this follows them.)

The userinfo is percent-decoded (C{%40} for C{@}, C{%3A} for C{:}): the
username and password for SOCKS5, the USERID for SOCKS4.  The port defaults
to 1080.  Errors never repeat the URL, which may hold a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

__all__ = ["DEFAULT_PORT", "SCHEMES", "ProxyURL", "hidePasswords", "parseProxyURL"]

DEFAULT_PORT = 1080

#: Each scheme's SOCKS version and whether names go to the proxy.
SCHEMES: dict[str, tuple[int, bool]] = {
    "socks4": (4, False),
    "socks4a": (4, True),
    "socks5": (5, False),
    "socks5h": (5, True),
}


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """
    A parsed proxy URL.

    @ivar scheme: C{socks4}, C{socks4a}, C{socks5} or C{socks5h}.
    @ivar host: the proxy's host name or address (an IPv6 one without
        brackets).
    @ivar port: the proxy's port.
    @ivar user: the decoded username (SOCKS4: the USERID), or L{None}.
    @ivar password: the decoded password, or L{None}; never shown by
        C{repr}.
    """

    scheme: str
    host: str
    port: int = DEFAULT_PORT
    user: bytes | None = None
    password: bytes | None = field(default=None, repr=False)

    @property
    def version(self) -> int:
        """4 or 5."""
        return SCHEMES[self.scheme][0]

    @property
    def remoteResolve(self) -> bool:
        """Whether names go to the proxy (C{socks4a}, C{socks5h})."""
        return SCHEMES[self.scheme][1]

    def __str__(self) -> str:
        """The URL with the password hidden, for messages and logs."""
        userinfo = ""
        if self.user is not None:
            userinfo = self.user.decode("utf-8", "replace")
            if self.password is not None:
                userinfo += ":***"
            userinfo += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{userinfo}{host}:{self.port}"


def parseProxyURL(text: str) -> ProxyURL:
    """
    Parse C{scheme://[user[:password]@]host[:port][/]}.

    @raise ValueError: naming what is wrong, never quoting the URL.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(
            "not a proxy URL (expected socks5h://[user:password@]host[:port])"
        )
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown scheme {scheme[:20]!r} (expected {', '.join(SCHEMES)})"
        )
    # A trailing slash is what urllib3 and curl users often write.
    if rest.endswith("/"):
        rest = rest[:-1]
    if any(c in rest for c in "/?#"):
        raise ValueError("a proxy URL has no path, query or fragment")
    userinfo, at, hostport = rest.rpartition("@")
    user: bytes | None = None
    password: bytes | None = None
    if at:
        rawUser, colon, rawPassword = userinfo.partition(":")
        user = unquote_to_bytes(rawUser)
        if colon:
            password = unquote_to_bytes(rawPassword)
        if not user:
            raise ValueError("empty username in the proxy URL")
        if colon and not password:
            raise ValueError("empty password in the proxy URL")
    host, port = _hostPort(hostport)
    if SCHEMES[scheme][0] == 4 and password is not None:
        raise ValueError(f"{scheme}:// carries a USERID but no password")
    return ProxyURL(scheme, host, port, user, password)


def _hostPort(text: str) -> tuple[str, int]:
    """C{host[:port]}, the host an IPv6 address in brackets."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket:
            raise ValueError("unclosed [ in the proxy URL's host")
        if after and not after.startswith(":"):
            raise ValueError("junk after the proxy URL's ]")
        portText = after[1:] if after else None
    else:
        host, colon, portText_ = text.partition(":")
        portText = portText_ if colon else None
    if not host:
        raise ValueError("no host in the proxy URL")
    if portText is None:
        return host, DEFAULT_PORT
    if not (portText.isascii() and portText.isdigit() and 1 <= int(portText) <= 65535):
        raise ValueError(f"proxy URL port {portText[:10]!r} is not a number 1..65535")
    return host, int(portText)


# The userinfo's password: after the first ":" following "://", up to the
# last "@" before the URL ends (at a space or a comma, as in a server list),
# the "@" parseProxyURL splits at.
_PASSWORD = re.compile(r"(://[^:@\s,/]*:)[^\s,]*@")


def hidePasswords(text: str) -> str:
    """C{text} with the password of every proxy URL in it replaced by C{***}."""
    return _PASSWORD.sub(r"\1***@", text)
