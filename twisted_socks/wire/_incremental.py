"""
One incremental parser for every SOCKS5 message read from a TCP stream.

A parse function takes the bytes received so far and answers "need more"
(L{None}), raises its protocol's error, or returns the message and how many
bytes it occupied; L{IncrementalParser} turns it into an object that is fed
chunks as TCP delivers them.  Re-parsing from the start on each chunk is
cheap because every SOCKS5 message is at most a few hundred bytes, and it
keeps the parse functions stateless, so a message split at any byte parses
exactly as if it came whole.

No Twisted imports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["IncrementalParser"]

_T = TypeVar("_T")


class IncrementalParser(Generic[_T]):
    """
    Accumulates bytes until one message is complete.

    Feed it chunks with L{feed}; it returns the message once, after which
    L{trailingData} holds whatever bytes followed it (the next message of a
    pipelining client, or stream data).
    """

    __slots__ = ("_buffer", "_parse", "result", "trailingData")

    def __init__(self, parse: Callable[[bytes], tuple[_T, int] | None]) -> None:
        self._parse = parse
        self._buffer = b""
        #: The parsed message, once there is one.
        self.result: _T | None = None
        #: Bytes received after the message.
        self.trailingData = b""

    def feed(self, data: bytes) -> _T | None:
        """
        Add C{data}; return the message once it is complete, else L{None}.

        @raise Exception: whatever the parse function raises for bytes that
            cannot be a valid message (its protocol's error type).
        @raise ValueError: if called again after a message was returned (the
            caller must hand later bytes to the next parser or the stream).
        """
        if self.result is not None:
            raise ValueError("message already parsed; later bytes are not its own")
        self._buffer += data
        parsed = self._parse(self._buffer)
        if parsed is None:
            return None
        result, used = parsed
        self.result = result
        self.trailingData = self._buffer[used:]
        self._buffer = b""
        return result

    @property
    def bufferedSize(self) -> int:
        """How many bytes of an incomplete message are held."""
        return len(self._buffer)
