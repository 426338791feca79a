"""
Start-up's garbage collected and its freed heap handed back, once the server
runs: what both ways of starting it (the launcher, twistd) do.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["releaseFreedMemory"]


def releaseFreedMemory() -> None:
    """
    Collect start-up's garbage and hand the freed heap back to the system.

    Importing and setting up leave megabytes of freed memory inside the C
    heap (compiled code read from disk, option parsing); glibc keeps it
    mapped unless asked.  Other C libraries have no C{malloc_trim}.

    The collection also moves everything start-up made into the oldest
    generation at once, so the first sessions do not pay for a full
    collection of it (about 15,000 instructions per session over the first
    thousand under twistd, whose plugin scan leaves more to collect).
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)
