"""
What each kind of server process listens on, from the C{--listen}
descriptions: a serving process parses them into endpoints (a C{haproxy:}
one behind this project's PROXY-header gate); a supervisor of C{--workers}
binds them and holds them without accepting; a worker adopts the sockets it
inherited from its supervisor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ._services import ListenService
from ._workerspec import HAPROXY, InheritedListener, WorkerSpec, endpointTypes

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

__all__ = [
    "endpointError",
    "listenEndpoint",
    "sharedListenService",
    "workerEndpoints",
]

# The namespace the shared listeners logged under in twisted_socks.app._workers.
_log = Logger(namespace="twisted_socks.workers")


def endpointError(error: Exception) -> str:
    """Why an endpoint description could not be parsed, in words."""
    if isinstance(error, IndexError):
        # Twisted's systemd: parser indexes the inherited sockets.
        return "no inherited socket (LISTEN_FDS) has that index"
    return str(error)


def listenEndpoint(reactor: Any, description: str, trusted: Any) -> Any:
    """
    The endpoint of a C{--listen} description.  Twisted's own C{haproxy:}
    parser would believe a PROXY header from anyone: a C{haproxy:}
    description gets the gate of L{twisted_socks.app._proxyprotocol} instead,
    around its inner endpoint.
    """
    from twisted.internet.endpoints import serverFromString

    from ._workerspec import HAPROXY, endpointTypes

    if endpointTypes(description)[0] != HAPROXY:
        return serverFromString(reactor, description)
    from ._proxyprotocol import proxyProtocolEndpoint

    inner = description.partition(":")[2]
    return proxyProtocolEndpoint(listenEndpoint(reactor, inner, trusted), trusted)


def workerEndpoints(
    spec: WorkerSpec, reactor: Any, trustedProxies: Sequence[Any] | None = None
) -> list[tuple[str, IStreamServerEndpoint]]:
    """
    A worker's endpoints: its inherited sockets, with their descriptions.

    @param trustedProxies: who may send PROXY headers to its C{haproxy:}
        listeners (L{twisted_socks.app._proxyprotocol}); loopback by default.
    """
    from ._proxyprotocol import DEFAULT_TRUSTED_PROXIES, proxyProtocolEndpoint

    result: list[tuple[str, IStreamServerEndpoint]] = []
    for listener in spec.listeners:
        # Adopted once, then the inherited descriptor is closed (the port
        # holds a duplicate), so it cannot leak into commands the worker runs.
        endpoint: IStreamServerEndpoint = AdoptedStreamServerEndpoint(
            reactor, listener.fd, listener.family
        )
        if endpointTypes(listener.description)[0] == HAPROXY:
            endpoint = proxyProtocolEndpoint(
                endpoint, trustedProxies or DEFAULT_TRUSTED_PROXIES
            )
        result.append((listener.description, endpoint))
    return result


class _HeldOnly(Factory):
    """The factory of a listener the supervisor holds: it never accepts."""

    noisy = False

    def logPrefix(self) -> str:
        """How Twisted's log names the listener."""
        return "listener shared by the workers"

    def buildProtocol(self, addr: IAddress | None) -> None:
        """Never called: the supervisor does not read its listeners."""
        return None


def sharedListenService(
    description: str, endpoint: IStreamServerEndpoint, workers: int, programName: str
) -> Any:
    """
    The supervisor's listener for one description: bound like a server's
    (before privileges are dropped, one line if it fails), then never read.
    """

    class SharedListenService(ListenService):
        """Binds a listener for the workers and holds it."""

        #: The bound port, once listening.
        port: Any = None

        def _listening(self, port: Any) -> Any:
            # Not reading it: accepting is the workers' job.  The socket
            # stays open and listening; connections queue in the kernel.
            port.stopReading()
            self.port = port
            _log.info(
                "SOCKS4/4A server listening on {address} ({description}), "
                "shared by {workers} workers",
                address=port.getHost(),
                description=self.description,
                workers=workers,
            )
            return port

        def inherited(self, fd: int) -> tuple[InheritedListener, int]:
            """What a worker is told about it, and the supervisor's descriptor."""
            listener = InheritedListener(
                fd=fd, family=self.port.socket.family, description=self.description
            )
            return listener, int(self.port.fileno())

    return SharedListenService(description, endpoint, _HeldOnly(), programName)
