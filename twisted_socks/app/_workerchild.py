"""
The worker side of C{--workers} (L{twisted_socks.app._workers} is the
supervisor's): what a worker runs besides its server.  It stops
(gracefully) when its supervisor is gone, however that went, and with
C{--status} it answers its supervisor's snapshot requests
(L{twisted_socks.app._snapshots}).  Its listeners are the sockets it inherited
(L{twisted_socks.app._listeners}).

A worker notices that its supervisor is gone through its standard input: a
pipe from the supervisor, which only the supervisor's death closes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._services import OneLineListenErrors
from ._workerspec import WorkerSpec

if TYPE_CHECKING:
    from ..server._factory import SOCKSv4ServerFactory
    from ._metrics import ServerMetrics

__all__ = ["addWorkerServices"]

# The namespace these services logged under in twisted_socks.app._workers.
_log = Logger(namespace="twisted_socks.workers")


def addWorkerServices(
    spec: WorkerSpec,
    reactor: Any,
    parent: service.MultiService,
    factory: SOCKSv4ServerFactory,
    metrics: ServerMetrics | None,
) -> None:
    """Add what a worker runs besides the server to C{parent}."""
    _log.info(
        "worker {worker} of {count}: at most {maxConnections} concurrent clients "
        "(its share of --max-connections)",
        worker=spec.index,
        count=spec.count,
        maxConnections=spec.maxConnections,
    )
    _WatchSupervisor(reactor).setServiceParent(parent)
    if spec.snapshotPath is not None and metrics is not None:
        from ._snapshots import snapshotService

        OneLineListenErrors(
            snapshotService(reactor, spec, factory, metrics),
            f"unix:{spec.snapshotPath}",
            f"twisted-socks worker {spec.index}",
        ).setServiceParent(parent)


@implementer(IReadDescriptor)
class _SupervisorPipe:
    """
    The read end of the pipe from the supervisor (the worker's standard
    input): the supervisor never writes to it, so it becomes readable only
    at end of file, when the supervisor has exited, however it exited.
    """

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone

    def fileno(self) -> int:
        """The descriptor watched."""
        return self._fd

    def logPrefix(self) -> str:
        """How the reactor names this in its log."""
        return "supervisor pipe"

    def doRead(self) -> None:
        """Read what there is; end of file (or an error) means it is gone."""
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the pipe hang up (epoll reports a pipe whose writer
        has gone as a hang-up, without a read event) and dropped it.
        """
        self._gone()


class _WatchSupervisor(service.Service):
    """Stops the worker (gracefully, as SIGTERM does) if its supervisor dies."""

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self._reactor = reactor
        self._pipe = _SupervisorPipe(fd, self._supervisorGone)
        self._watching = False

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self._pipe.fileno(), False)
        self._reactor.addReader(self._pipe)
        self._watching = True

    def stopService(self) -> Any:
        self._unwatch()
        return super().stopService()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self._pipe)

    def _supervisorGone(self) -> None:
        if not self._watching:
            return
        self._unwatch()
        _log.warn("the supervisor is gone: stopping")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass
