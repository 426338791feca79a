"""
What a worker process of C{--workers} is told by its supervisor, and which
listeners can be shared (see L{twisted_socks.app._workers} for the processes).

Free of Twisted: the launcher reads a worker's spec before it decides what
the process may import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "FIRST_INHERITED_FD",
    "SHAREABLE_TYPES",
    "WORKER_ENVIRONMENT",
    "InheritedListener",
    "WorkerSpec",
    "checkShareable",
    "endpointTypes",
    "shareOf",
]

#: The environment variable that makes the launcher a worker: its value is
#: the worker's L{WorkerSpec} as JSON.
WORKER_ENVIRONMENT = "TWISTED_SOCKS_WORKER"

#: The descriptor number of a worker's first inherited listening socket
#: (0, 1 and 2 are its standard streams).
FIRST_INHERITED_FD = 3

#: Listener types a worker can adopt: each is one plain listening socket.
SHAREABLE_TYPES = ("tcp", "tcp6", "unix", "systemd")

#: The wrapper type whose inner listener can be shared; the worker wraps
#: its adopted socket again.
HAPROXY = "haproxy"


def endpointTypes(description: str) -> list[str]:
    """
    The endpoint types a server endpoint description names, outermost
    first: C{["tcp"]} for C{tcp:1080}, C{["haproxy", "tcp6"]} for
    C{haproxy:tcp6:1080}.
    """
    kinds = []
    rest = description
    while True:
        kind, _, rest = rest.partition(":")
        kinds.append(kind.strip().lower())
        if kinds[-1] != HAPROXY:
            return kinds


def checkShareable(description: str) -> str | None:
    """
    Why worker processes cannot share the listener of C{description}, or
    L{None} if they can.
    """
    kinds = endpointTypes(description)
    if kinds[-1] in SHAREABLE_TYPES and len(kinds) <= 2:
        return None
    return (
        f"--listen {description!r} cannot be shared by --workers processes: "
        f"only {', '.join(SHAREABLE_TYPES)} listeners (also inside haproxy:) can"
    )


def shareOf(total: int, workers: int, index: int) -> int:
    """
    Worker C{index}'s (1-based) share of a limit of C{total} split across
    C{workers}: the shares differ by at most one and add up to C{total}.
    """
    return total // workers + (1 if index <= total % workers else 0)


@dataclass(frozen=True, slots=True)
class InheritedListener:
    """
    A listening socket a worker inherits.

    @ivar fd: its descriptor number in the worker.
    @ivar family: its address family (C{socket.AF_INET}, C{AF_INET6},
        C{AF_UNIX}).
    @ivar description: the endpoint description it was bound from (a
        C{haproxy:} one makes the worker read PROXY headers on it).
    """

    fd: int
    family: int
    description: str


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """One field of a decoded JSON object, of the expected type."""
    value = data.get(name)
    # JSON's true and false are Python bools, which are ints too.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"{WORKER_ENVIRONMENT}: bad or missing {name!r}")
    return value


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """
    What a worker process is told by its supervisor.

    @ivar index: its number, 1 to C{count}: the same for the worker that
        replaces it after a restart.
    @ivar count: how many workers there are.
    @ivar maxConnections: its share of C{--max-connections}.
    @ivar listeners: the listening sockets it inherits.
    @ivar snapshotPath: the UNIX socket it answers snapshots on for the
        supervisor's status site, or L{None} without C{--status}.
    """

    index: int
    count: int
    maxConnections: int
    listeners: tuple[InheritedListener, ...]
    snapshotPath: str | None = None

    def toJSON(self) -> str:
        """The spec as the value of L{WORKER_ENVIRONMENT}."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def fromJSON(cls, text: str) -> WorkerSpec:
        """
        Read a spec written by L{toJSON}.

        @raise ValueError: naming what is wrong.
        """
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(f"{WORKER_ENVIRONMENT} is not JSON") from None
        if not isinstance(data, dict):
            raise ValueError(f"{WORKER_ENVIRONMENT} is not a JSON object")
        listeners = []
        for item in _field(data, "listeners", list):
            if not isinstance(item, dict):
                raise ValueError(f"{WORKER_ENVIRONMENT}: bad listener {item!r}")
            listeners.append(
                InheritedListener(
                    fd=_field(item, "fd", int),
                    family=_field(item, "family", int),
                    description=_field(item, "description", str),
                )
            )
        snapshotPath = data.get("snapshotPath")
        if snapshotPath is not None:
            snapshotPath = _field(data, "snapshotPath", str)
        spec = cls(
            index=_field(data, "index", int),
            count=_field(data, "count", int),
            maxConnections=_field(data, "maxConnections", int),
            listeners=tuple(listeners),
            snapshotPath=snapshotPath,
        )
        if not 1 <= spec.index <= spec.count or spec.maxConnections < 1:
            raise ValueError(f"{WORKER_ENVIRONMENT}: inconsistent numbers")
        return spec

    @classmethod
    def fromEnvironment(
        cls, environ: MutableMapping[str, str] = os.environ
    ) -> WorkerSpec | None:
        """
        The spec in L{WORKER_ENVIRONMENT}, if there is one; the variable is
        removed, so that commands the worker runs (rule actions) do not
        inherit it.

        @raise ValueError: if it is there but invalid.
        """
        text = environ.pop(WORKER_ENVIRONMENT, None)
        return None if text is None else cls.fromJSON(text)

    @property
    def wantsMetrics(self) -> bool:
        """Whether the worker keeps counters (its supervisor shows them)."""
        return self.snapshotPath is not None
