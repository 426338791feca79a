"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.interfaces import IListeningPort


@pytest.fixture
def ports() -> Iterator[list[IListeningPort]]:
    """Listening ports to close after the test."""
    opened: list[IListeningPort] = []
    yield opened
    for port in opened:
        port.stopListening()
