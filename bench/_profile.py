"""
A profile of a running server with py-spy (a sampling profiler that reads
the process's Python stacks from outside, so the server runs unmodified).

L{record} attaches C{py-spy record} to a server's pid while a load runs,
stops it with SIGINT (py-spy then writes its file) and summarises the raw
("collapsed stacks") output: per function, the share of samples in which it
is on the stack (inclusive, like cProfile's cumulative time) and at the top
of the stack (self); and the share of samples per area (L{AREAS}: name
resolution, logging, this project's code, Twisted's reactor and TCP code,
...).

py-spy records only samples in which a thread is running (not idle in
C{epoll_wait}), and without C{--native} a C function (a syscall such as
C{send}) is charged to the Python function that called it.
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["AREAS", "missing", "py_spy", "record", "summarise_raw"]

#: How many functions each top list keeps.
TOP = 40

#: Where a sample's time goes: (area, rule, pattern).  The first area that
#: matches wins; rule C{"any"} matches a frame anywhere on the stack (the time
#: is spent on behalf of that code, whatever it calls), C{"leaf"} only the
#: frame at the top (the code running).  Patterns match "function (file)".
AREAS: list[tuple[str, str, re.Pattern[str]]] = [
    (
        "name resolution (getaddrinfo, thread pool)",
        "any",
        re.compile(r"^getaddrinfo \(socket\.py\)$"),
    ),
    (
        "Twisted logger: formatting and writing log lines",
        "any",
        re.compile(r"\(twisted/logger/"),
    ),
    ("prometheus_client (metrics)", "any", re.compile(r"\(prometheus_client/")),
    ("this project's code (twisted_socks)", "leaf", re.compile(r"\(twisted_socks/")),
    ("Twisted Deferreds", "leaf", re.compile(r"\(twisted/internet/defer\.py\)")),
    (
        "Twisted reactor and TCP (incl. the socket syscalls)",
        "leaf",
        re.compile(
            r"\(twisted/internet/(tcp|abstract|epollreactor|posixbase|base|"
            r"main|fdesc|address|_resolver|task|_signals)\.py\)"
        ),
    ),
    (
        "Twisted per-event wrappers (log.callWithLogger, context)",
        "leaf",
        re.compile(r"\(twisted/python/(log|context)\.py\)"),
    ),
    ("Twisted, other", "leaf", re.compile(r"\(twisted/")),
    ("zope.interface", "leaf", re.compile(r"\(zope/")),
]
OTHER_AREA = "Python standard library and other"
#: An area with frames of this project (for the "ours on the stack" share).
_OURS = re.compile(r"\(twisted_socks/")

#: Leaf frames of a thread that waits (a thread pool's idle workers): py-spy
#: does not always see these as idle; they are counted apart, not as work.
_WAITING = {
    ("Condition.wait", "threading.py"),
    ("Event.wait", "threading.py"),
    ("Thread.join", "threading.py"),
    ("Queue.get", "queue.py"),
}

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")


def py_spy() -> str | None:
    """The py-spy executable: the virtualenv's, or one on C{PATH}."""
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def missing() -> str | None:
    """Why no profile can be taken, or L{None}."""
    if py_spy() is None:
        return "py-spy is not installed: .venv/bin/pip install py-spy (the bench extra)"
    return None


def record(
    pid: int, output: Path, rate: int, load: Callable[[], None]
) -> dict[str, Any]:
    """
    Sample C{pid} at C{rate} per second while C{load} runs; write the raw
    stacks to C{output} and return their summary (L{summarise_raw}).
    """
    binary = py_spy()
    if binary is None:
        raise RuntimeError(missing())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    log_path = output.with_suffix(".log")
    argv = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nolineno",
        "--output",
        str(output),
    ]
    with log_path.open("wb") as log:
        spy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        time.sleep(1.0)  # py-spy attaches
        if spy.poll() is not None:
            raise RuntimeError(
                f"py-spy exited with status {spy.returncode}: "
                + log_path.read_text(errors="replace").strip()[-500:]
            )
        started = time.monotonic()
        load()
        seconds = time.monotonic() - started
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    finally:
        if spy.poll() is None:
            with contextlib.suppress(OSError):
                spy.kill()
            spy.wait(10)
    if not output.exists():
        raise RuntimeError(
            "py-spy wrote no profile: "
            + log_path.read_text(errors="replace").strip()[-500:]
        )
    summary = summarise_raw(output.read_text(errors="replace"), TOP)
    # The samples also cover the second or so around the load.
    summary["seconds"] = seconds
    summary["rate"] = rate
    summary["busy_pct"] = 100 * summary["samples"] / max(1.0, rate * seconds)
    return summary


def _area(stack: list[str]) -> str:
    """The area of one sample (frames as "function (file)", outermost first)."""
    for area, rule, pattern in AREAS:
        frames = stack if rule == "any" else stack[-1:]
        if any(pattern.search(frame) for frame in frames):
            return area
    return OTHER_AREA


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match.group("function"), match.group("file")


#: Thin wrappers around a syscall whose cost belongs to their caller: in the
#: summary they are named after it, e.g. Twisted's C{untilConcludes} (which
#: retries on EINTR) as C{untilConcludes<-Connection.writeSomeData} (the
#: C{send} of a TCP write) or C{<-FileLogObserver...} (a log file write).
_WRAPPERS = {("untilConcludes", "twisted/python/util.py")}


def _name_wrappers(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    named = list(frames)
    for index in range(1, len(frames)):
        if frames[index] in _WRAPPERS:
            caller_function, caller_file = frames[index - 1]
            named[index] = (f"{frames[index][0]}<-{caller_function}", caller_file)
    return named


def summarise_raw(raw: str, top: int = TOP) -> dict[str, Any]:
    """
    Summarise py-spy's raw output (one C{frame;frame;...;leaf COUNT} line per
    distinct stack, outermost frame first).

    Samples of a thread waiting on a lock (L{_WAITING}) are left out and
    counted as C{waiting_samples}.

    @return: C{samples}; C{inclusive} and C{self}, the C{top} functions as
        C{[function, file, percent]} (inclusive counts a function once per
        sample however often it is on the stack); C{areas}, the share of
        samples per area (L{AREAS}); C{ours_inclusive_pct}, the share of samples with a
        frame of this project on the stack.
    """
    inclusive: collections.Counter[tuple[str, str]] = collections.Counter()
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = ours = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(frame) for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        frames = _name_wrappers(frames)
        if frames[-1] in _WAITING:
            waiting += count
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        texts = [f"{function} ({file})" for function, file in frames]
        areas[_area(texts)] += count
        if any(_OURS.search(text) for text in texts):
            ours += count

    def percent(counter: collections.Counter[Any]) -> list[list[Any]]:
        return [
            [function, file, 100 * count / total]
            for (function, file), count in counter.most_common(top)
        ]

    return {
        "samples": total,
        "inclusive": percent(inclusive) if total else [],
        "self": percent(own) if total else [],
        "areas": [[area, 100 * count / total] for area, count in areas.most_common()]
        if total
        else [],
        "ours_inclusive_pct": 100 * ours / total if total else 0.0,
        "waiting_samples": waiting,
    }
