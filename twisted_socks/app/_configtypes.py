"""
The server's configuration as data: frozen values, one per part of the
server (listening, ident, status page, rules, authentication, outbound),
and L{ServerConfig}, the whole.  L{twisted_socks.app._config} validates the
options into them; the composition root (L{twisted_socks.app._compose})
builds the server from them.  No validation here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any

from ..server._authfailures import DEFAULT_AUTH_FAILURES

if TYPE_CHECKING:
    from ..policy._policy import IdentMode
    from ..server._authfailures import AuthFailureLimit
    from ..server._factory import Limits
    from ._statusauth import StatusToken
    from ._workerspec import WorkerSpec

__all__ = [
    "RELAYS",
    "AuthConfig",
    "IdentConfig",
    "ListenConfig",
    "OutboundConfig",
    "RulesConfig",
    "ServerConfig",
    "StatusConfig",
]

#: --relay: the factory's splice argument for each value.
RELAYS: Mapping[str, bool | None] = {"auto": None, "splice": True, "copy": False}


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """
    Where the server listens.

    @ivar descriptions: the endpoint descriptions (C{--listen}, or the one
        C{--port}/C{--interface} make), or a worker's inherited sockets'.
    @ivar trustedProxies: who may send PROXY headers to C{haproxy:}
        listeners (C{--proxy-protocol-from}).
    @ivar endpoints: each description with its endpoint.  Built while the
        options are checked, because only parsing a description proves it
        valid; kept so that it is parsed once (a C{systemd:} one names the
        sockets of this process only).  Not compared: endpoints have no
        equality of their own.
    """

    descriptions: tuple[str, ...]
    trustedProxies: tuple[IPv4Network | IPv6Network, ...]
    endpoints: tuple[tuple[str, Any], ...] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class IdentConfig:
    """
    The RFC 1413 lookups (C{--ident}, C{--ident-port}, C{--ident-timeout}).
    """

    mode: IdentMode
    port: int
    timeout: float


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """
    The status page (C{--status}, C{--status-auth}, C{--status-insecure}).

    @ivar description: its endpoint description (a bare port made a
        loopback one), or L{None} for no page.
    @ivar token: the credential requests must present, if any.
    @ivar insecure: C{--status-insecure}.
    """

    description: str | None
    token: StatusToken | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """
    The rules file (C{--rules}, L{None} for the built-in loopback-only
    policy) and how many of its commands may run at once.
    """

    path: str | None
    maxCommands: int


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """
    Which SOCKS versions are served and who may log in.

    @ivar protocols: C{--protocols}: the versions served (4, 5).
    @ivar users: C{--users}, the password file, or L{None} (SOCKS5 without
        authentication).
    @ivar failures: C{--auth-failures}: failed logins per client and window.
    @ivar strictReload: C{--users-strict-reload}: a users reload cuts the
        live sessions of users it removed or whose password changed.
    """

    protocols: frozenset[int] = frozenset({4, 5})
    users: str | None = None
    failures: AuthFailureLimit = DEFAULT_AUTH_FAILURES
    strictReload: bool = False


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """
    How the server reaches destinations and relays to them.

    @ivar address: C{--outbound-address}, the local address outbound
        connections come from, or L{None} for the kernel's choice.
    @ivar bindAddress: C{--bind-address}, the IPv4 address BIND listeners
        use and announce, or L{None}.
    @ivar relay: C{--relay}: C{auto}, C{splice} or C{copy}.
    @ivar nameCacheTTL: C{--name-cache-ttl} in seconds (0: no cache).
    @ivar udpAddress: C{--udp-address}, the address UDP ASSOCIATE grants
        name, or L{None} (the address the client reached).
    """

    address: str | None
    bindAddress: str | None
    relay: str
    nameCacheTTL: float
    udpAddress: str | None = None

    @property
    def splice(self) -> bool | None:
        """The server factory's C{splice} argument for L{relay}."""
        return RELAYS[self.relay]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """
    Everything the server is built from, validated.

    @ivar programName: how messages name the command (C{twistd socks},
        C{twisted-socks}).
    @ivar argv: the arguments as given: worker processes are started with
        them.
    @ivar limits: the server's timeouts and limits (a worker's share of
        C{--max-connections} in a worker).
    @ivar logFormat: C{--log-format}: C{text} or C{json}.
    @ivar shutdownGrace: C{--shutdown-grace} in seconds.
    @ivar workers: C{--workers}.
    @ivar worker: in a worker process, what its supervisor told it.
    @ivar auth: C{--protocols}, C{--users} and C{--auth-failures}.
    @ivar routes: C{--routes}, the routes file, or L{None} (all direct).
    """

    programName: str
    argv: tuple[str, ...]
    listen: ListenConfig
    limits: Limits
    ident: IdentConfig
    status: StatusConfig
    rules: RulesConfig
    outbound: OutboundConfig
    logFormat: str
    shutdownGrace: float
    workers: int
    worker: WorkerSpec | None = None
    auth: AuthConfig = AuthConfig()
    routes: str | None = None

    @property
    def supervises(self) -> bool:
        """Whether this process runs worker processes rather than serving."""
        return self.workers > 1 and self.worker is None

    @property
    def wantsMetrics(self) -> bool:
        """
        Whether the server keeps counters: only a status page reads them
        (this process's, or, in a worker, its supervisor's).
        """
        if self.worker is not None:
            return self.worker.wantsMetrics
        return self.status.description is not None
