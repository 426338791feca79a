"""
Who may read the status page (C{--status}, C{--status-auth},
C{--status-insecure}).

The page names every client, user and destination, so it is served without
a credential only where no one else can reach it: on loopback or a UNIX
socket.  Anywhere else it needs a token (C{--status-auth FILE}), or an
explicit C{--status-insecure}.  This module decides which endpoint
descriptions are local, reads the token file and checks C{Authorization}
headers; it imports nothing from Twisted (the launcher reads C{--status}
before it decides what the process may import).
"""

from __future__ import annotations

import binascii
import hmac
import os
import stat
from base64 import b64decode
from dataclasses import dataclass
from hashlib import sha256
from ipaddress import IPv6Address, ip_address

__all__ = [
    "MIN_TOKEN_LENGTH",
    "StatusToken",
    "isLocalEndpoint",
    "loadStatusToken",
    "statusDescription",
]

#: The shortest token accepted: a guessable token is no credential.
MIN_TOKEN_LENGTH = 16

#: Endpoint types whose listening address comes from C{interface=}.
_INET_TYPES = ("tcp", "tcp6", "ssl")


def statusDescription(value: str) -> str:
    """
    The endpoint description C{--status VALUE} means: a bare port number is
    that port on IPv4 loopback (as C{--port} listens on loopback by
    default); anything else is an endpoint description, as given.
    """
    text = value.strip()
    if text.isdigit():
        return f"tcp:{int(text)}:interface=127.0.0.1"
    return value


def _split(description: str) -> list[str]:
    """The colon-separated fields of a description, backslash escapes undone."""
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def isLocalEndpoint(description: str) -> bool:
    """
    Whether a server endpoint description certainly listens where only this
    host can connect: a UNIX socket, or C{tcp:}/C{tcp6:}/C{ssl:} with a
    loopback C{interface}.  Without an interface a TCP endpoint listens on
    every address; any other type (C{systemd:}, a plugin's) is not known to
    be local, so it counts as reachable from the network.
    """
    kind, *fields = _split(description)
    kind = kind.strip().lower()
    if kind == "unix":
        return True
    if kind not in _INET_TYPES:
        return False
    positional = [f for f in fields if "=" not in f]
    named = dict(f.partition("=")[::2] for f in fields if "=" in f)
    interface = named.get("interface")
    if interface is None and kind != "ssl" and len(positional) > 1:
        # tcp:PORT:INTERFACE, as Twisted's parser takes it.
        interface = positional[1]
    if not interface:
        return False
    try:
        address = ip_address(interface.strip().partition("%")[0])
    except ValueError:
        # A name (even "localhost") may resolve anywhere.
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True, slots=True, repr=False)
class StatusToken:
    """
    The secret a status request must present: as C{Authorization: Bearer
    TOKEN}, or as the password of HTTP basic authentication (any user
    name), which browsers ask for themselves.
    """

    #: SHA-256 of the token: requests are compared digest to digest, in
    #: constant time, so neither the token nor its length leaks.
    digest: bytes

    @classmethod
    def fromText(cls, token: str) -> StatusToken:
        """The credential for this token."""
        return cls(sha256(token.encode("utf-8")).digest())

    def allows(self, authorization: str | None) -> bool:
        """Whether an C{Authorization} header value presents the token."""
        if authorization is None:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            presented = value.encode("utf-8", "surrogateescape")
        elif scheme == "basic":
            try:
                decoded = b64decode(value.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                return False
            presented = decoded.partition(b":")[2]
        else:
            return False
        return hmac.compare_digest(sha256(presented).digest(), self.digest)

    def __repr__(self) -> str:
        return "StatusToken(<hidden>)"


def loadStatusToken(path: str) -> StatusToken:
    """
    Read the token of C{--status-auth}: one line of at least
    L{MIN_TOKEN_LENGTH} printable ASCII characters without spaces (for
    example from C{openssl rand -hex 32}), in a file that other users
    cannot read.

    @raise ValueError: naming the file and what is wrong with it.
    """
    where = f"--status-auth {path}"
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(4097)
    except OSError as e:
        raise ValueError(f"{where}: cannot read: {e.strerror or e}") from None
    if mode & stat.S_IROTH:
        raise ValueError(
            f"{where}: the token file is readable by every user (chmod o-r {path})"
        )
    lines = raw.splitlines()
    if len(raw) > 4096 or len(lines) != 1:
        raise ValueError(f"{where}: the file must hold the token on one line")
    token = lines[0].strip()
    if not all(0x21 <= b <= 0x7E for b in token):
        raise ValueError(f"{where}: the token must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} characters "
            "(e.g. openssl rand -hex 32 > FILE)"
        )
    return StatusToken.fromText(token.decode("ascii"))
