"""
A session's request sequence as one coroutine, driven by the Deferreds it
waits on: each wait hands its Deferred to L{Sequence.step}, which sends the
result back (or throws the failure in) unless the session closed
meanwhile, which closes the sequence where it waits.  That is the one
check of "am I closed?" there is; closing the session cancels what the
sequence waits for, which brings it to that check.
"""

from __future__ import annotations

from collections.abc import Coroutine
from types import coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from twisted.logger import Logger
from twisted.python.failure import Failure

from ..wire._outcome import Outcome
from ._records import SessionState

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from twisted.internet.defer import Deferred

    from ._session import ServerSession

__all__ = ["Sequence"]

_log = Logger(namespace="twisted_socks.server")

_T = TypeVar("_T")


class _Closed(BaseException):
    """
    The sequence ended the session (L{Sequence._end}): it stops there.

    A C{BaseException}, as asyncio's C{CancelledError} is, so that no step's
    C{except Exception} (a failed connect, a failing policy) takes it for
    its own failure: it unwinds the whole sequence, through its C{finally}s.
    """


class Sequence:
    """
    Drives one coroutine for a session (L{begin}, then L{step}); its steps
    wait with L{_settle} and end the request with L{_end}.
    """

    __slots__ = ("_release", "_sequence", "_session")

    _sequence: Coroutine[Any, Any, None]

    def __init__(self, session: ServerSession) -> None:
        self._session = session
        # What disposes of a result that comes after the session closed.
        self._release: Callable[[Any], object] | None = None

    def begin(self, sequence: Coroutine[Any, Any, None]) -> None:
        """Take C{sequence} to drive (L{step} starts it)."""
        self._sequence = sequence

    def step(self, result: object) -> None:
        """
        Run the sequence on to its next wait, or to its end: called once to
        start it, then as the callback of each Deferred it waits on.  The
        one place that checks whether the session closed meanwhile: if it
        did, the sequence is closed where it waits, through its
        C{finally}s.
        """
        # A driver of its own rather than Deferred.fromCoroutine: the
        # sequence needs no Deferred of its own, no context copy and no
        # cancellation bookkeeping, and the difference was measured on
        # every session's handshake.
        session = self._session
        session.wait(None)
        if session.state is SessionState.CLOSED:
            release = self._release
            if release is not None and not isinstance(result, Failure):
                release(result)
            self._sequence.close()
            return
        try:
            if isinstance(result, Failure):
                # Raised where the sequence awaits, as inlineCallbacks does.
                waitingOn = result.throwExceptionIntoGenerator(self._sequence)
            else:
                waitingOn = self._sequence.send(result)
        except (StopIteration, _Closed):
            return
        except Exception:
            _log.failure("session failed")
            session.fail(Outcome.FAILURE, "internal error")
            return
        finally:
            if isinstance(result, Failure) and result.value is not None:
                # Thrown in, the exception's traceback took the sequence's
                # frames; the Failure (still held where it came from) would
                # keep them, the pipeline and the session in a cycle.
                result.value.__traceback__ = None
        # Closing the session cancels what the sequence waits for, which
        # brings the sequence back here.
        session.wait(waitingOn)
        # This callback leaves the Deferred None, so that a failure the
        # sequence has taken is not logged again as unhandled.
        waitingOn.addBoth(self.step)

    @coroutine
    def _settle(
        self, d: Deferred[_T], release: Callable[[Any], object] | None = None
    ) -> Generator[Deferred[_T], Any, _T]:
        """
        Wait for C{d}: hand it to L{step}, which sends its result back here
        or throws its failure in.  Should the session close while it waits,
        and a result come anyway, C{release} disposes of it.
        """
        self._release = release
        if d.called and not d.paused and not isinstance(d.result, Failure):
            # Fired already (a name answered from memory, a lookup turn):
            # nothing can have closed the session meanwhile, and the round
            # trip through step would cost every such session.  (A failure
            # still goes through step, which throws it in.)
            done = cast("_T", d.result)
            return done
        result: _T = yield d
        return result

    def _end(self, outcome: Outcome, reason: str) -> NoReturn:
        """Refuse the request with C{outcome}, and stop."""
        self._session.fail(outcome, reason)
        raise _Closed()
