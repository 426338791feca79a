"""
The snapshots a worker process of C{--workers} answers its supervisor with,
both ends: the worker serves its live sessions, counters and metrics as one
JSON object on a private UNIX socket; the supervisor reads it (capped in
size and time) for the status site over all workers
(L{twisted_socks.app._workerstatus}).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

    from ..server._factory import SOCKSv4ServerFactory
    from ._metrics import ServerMetrics
    from ._workerspec import WorkerSpec

__all__ = ["fetchSnapshot", "snapshotService"]


class _SnapshotProtocol(Protocol):
    """Writes the worker's snapshot and closes: one per supervisor request."""

    def __init__(self, snapshot: bytes) -> None:
        self._snapshot = snapshot

    def connectionMade(self) -> None:
        """Answer at once; the supervisor reads to end of file."""
        if self.transport is not None:
            self.transport.write(self._snapshot)
            self.transport.loseConnection()


class _SnapshotFactory(Factory):
    """
    Answers the supervisor's snapshot requests: the worker's live sessions,
    its counters and its Prometheus metrics, as one JSON object.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
        spec: WorkerSpec,
        factory: SOCKSv4ServerFactory,
        metrics: ServerMetrics,
    ) -> None:
        self._reactor = reactor
        self._spec = spec
        self._factory = factory
        self._metrics = metrics

    def logPrefix(self) -> str:
        """How Twisted's log names the snapshot socket."""
        return "snapshots for the supervisor"

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """A protocol that answers with the snapshot as of now."""
        return _SnapshotProtocol(self.snapshot())

    def snapshot(self) -> bytes:
        """The snapshot, encoded."""
        # OpenMetrics rather than the classic text format: it keeps each
        # counter's _created sample in its family, so the supervisor can
        # parse and merge the families without renaming anything.
        from prometheus_client.openmetrics.exposition import generate_latest

        from ._upstreammetrics import upstreamSnapshot

        sessions = self._factory.sessions()
        now = self._reactor.seconds()
        answer = {
            "worker": self._spec.index,
            "pid": os.getpid(),
            "now": now,
            "sessions": [asdict(info) for info in sessions],
            "counters": self._metrics.summary(sessions).asDict(),
            "metrics": generate_latest(self._metrics.registry).decode("utf-8"),
            # Each worker has its own upstream state (--routes): the
            # supervisor's page combines them.
            "upstreams": upstreamSnapshot(getattr(self._factory, "router", None), now),
        }
        return json.dumps(answer, separators=(",", ":")).encode("ascii")


def snapshotService(
    reactor: Any,
    spec: WorkerSpec,
    factory: SOCKSv4ServerFactory,
    metrics: ServerMetrics,
) -> Any:
    """
    A worker's listening service for its snapshot socket (C{spec}'s
    C{snapshotPath}, readable by this user only) that fails start-up loudly.
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import UNIXServerEndpoint

    if spec.snapshotPath is None:
        raise ValueError(f"worker {spec.index} was given no snapshot socket")
    endpoint = UNIXServerEndpoint(reactor, spec.snapshotPath, mode=0o600)
    snapshots = StreamServerEndpointService(
        endpoint, _SnapshotFactory(reactor, spec, factory, metrics)
    )
    snapshots._raiseSynchronously = True
    return snapshots


# -- the supervisor's end ------------------------------------------------------


class _SnapshotReader(Protocol):
    """Reads one snapshot to end of file, capped in size."""

    #: Far more than the JSON of any real server's sessions (each a few
    #: hundred bytes).
    maxBytes = 64 << 20

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[dict[str, Any]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Keep it, unless there is too much."""
        self._size += len(data)
        if self._size > self.maxBytes:
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """End of file: decode what came."""
        if self.done.called:
            return
        if self._size > self.maxBytes:
            self.done.errback(ValueError("snapshot too large"))
            return
        try:
            snapshot = json.loads(b"".join(self._chunks))
        except ValueError:
            self.done.errback(ValueError("snapshot is not JSON"))
            return
        if not isinstance(snapshot, dict) or not isinstance(
            snapshot.get("sessions"), list
        ):
            self.done.errback(ValueError("snapshot has no sessions"))
            return
        self.done.callback(snapshot)


class _SnapshotClient(Factory):
    """Connects one L{_SnapshotReader}; quietly (one per worker per request)."""

    noisy = False

    def __init__(self, reader: _SnapshotReader) -> None:
        self._reader = reader

    def buildProtocol(self, addr: IAddress | None) -> _SnapshotReader:
        """The reader."""
        return self._reader


def fetchSnapshot(reactor: Any, path: str, timeout: float) -> Deferred[dict[str, Any]]:
    """A worker's snapshot, read from its UNIX socket at C{path}."""
    from twisted.internet.endpoints import UNIXClientEndpoint

    reader = _SnapshotReader()
    connecting = UNIXClientEndpoint(reactor, path, timeout=timeout).connect(
        _SnapshotClient(reader)
    )
    result: Deferred[dict[str, Any]] = connecting.addCallback(lambda _: reader.done)

    def tooSlow() -> None:
        if reader.transport is not None:
            reader.transport.abortConnection()  # type: ignore[attr-defined]
        elif not connecting.called:
            connecting.cancel()

    timer = reactor.callLater(timeout, tooSlow)

    def stopTimer(outcome: object) -> object:
        if timer.active():
            timer.cancel()
        return outcome

    return result.addBoth(stopTimer)
