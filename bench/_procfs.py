"""
What the benchmark reads about a process from C{/proc} (Linux only).

CPU time is C{utime + stime} of C{/proc/PID/stat}, which covers every thread
of the process; memory is C{VmRSS}/C{VmHWM} of C{/proc/PID/status}.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MachineCPU",
    "cpu_seconds",
    "peak_rss_kib",
    "reset_peak_rss",
    "rss_kib",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process C{pid}."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces, so
    # split after its closing parenthesis: the rest starts at field 3 (state).
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15
    return (utime + stime) / _CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise RuntimeError(f"unexpected unit in /proc/{pid}/status: {line!r}")
            return int(value)
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    """The resident set size of process C{pid} now, in KiB."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size of C{pid} (since start or the last reset)."""
    return _status_kib(pid, "VmHWM")


def reset_peak_rss(pid: int) -> bool:
    """
    Reset the peak RSS of C{pid} to its current RSS (C{clear_refs} value 5).

    @return: whether it worked; without it the peak covers the process's
        whole life.
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class MachineCPU:
    """The machine-wide CPU counters of C{/proc/stat}, in clock ticks."""

    busy: int
    steal: int
    total: int

    @classmethod
    def now(cls) -> MachineCPU:
        """Read them."""
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice]
        # (guest time is already counted in user and nice).
        total = sum(fields[:8])
        idle = fields[3] + fields[4]
        return cls(busy=total - idle, steal=fields[7], total=total)

    def percent_since(self, earlier: MachineCPU) -> tuple[float, float]:
        """
        (busy, steal) since C{earlier}, in % of one CPU: on 2 CPUs fully busy
        is 200.
        """
        cpus = os.cpu_count() or 1
        total = max(1, self.total - earlier.total)
        return (
            100 * cpus * (self.busy - earlier.busy) / total,
            100 * cpus * (self.steal - earlier.steal) / total,
        )
