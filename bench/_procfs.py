"""
What the benchmark reads about a process from C{/proc} (Linux only).

CPU time is C{utime + stime} of C{/proc/PID/stat}, which covers every thread
of the process; memory is C{VmRSS}/C{VmHWM} of C{/proc/PID/status} and
C{Pss} of C{/proc/PID/smaps_rollup}.

A server may be several processes (Dante forks children), so the C{tree_*}
functions add up a process and all its descendants, found by walking the
parent pid (field 4) of every C{/proc/*/stat}.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MachineCPU",
    "cpu_seconds",
    "fd_limit",
    "open_fds",
    "peak_rss_kib",
    "pss_kib",
    "reset_peak_rss",
    "rss_kib",
    "tree",
    "tree_cpu_seconds",
    "tree_peak_rss_kib",
    "tree_pss_kib",
    "tree_reset_peak_rss",
    "tree_rss_kib",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields 3 onwards of C{/proc/PID/stat} (index 0 is field 3, the state)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces, so
    # split after its closing parenthesis: the rest starts at field 3 (state).
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """
    User plus system CPU seconds used so far by process C{pid}; with
    C{children}, plus those of its children it has reaped (C{cutime + cstime}).
    """
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15
    if children:
        ticks += int(fields[13]) + int(fields[14])  # fields 16 and 17
    return ticks / _CLOCK_TICKS


def tree(pid: int) -> list[int]:
    """
    C{pid} and all its living descendants, C{pid} first (parent-pid walk over
    C{/proc}; a process that exits during the walk is left out).
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])  # field 4
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [pid], [pid]
    while queue:
        for child in children.get(queue.pop(), ()):
            found.append(child)
            queue.append(child)
    return found


def _sum_over(pids: list[int], read: Callable[[int], float]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += read(pid)
        except (OSError, RuntimeError, ValueError):
            pass  # it exited meanwhile
    return total


def tree_cpu_seconds(pid: int) -> float:
    """
    CPU seconds of C{pid}'s whole tree: every living process's own time plus
    what it has reaped of its children, so a child that exits between two
    readings is still counted (in its parent's C{cutime}).
    """
    return _sum_over(tree(pid), lambda p: cpu_seconds(p, children=True))


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


def pss_kib(pid: int) -> int:
    """
    The proportional set size of C{pid} now, in KiB: pages shared with other
    processes count by share (fairer than RSS for a forking server).
    """
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def tree_rss_kib(pid: int) -> int:
    """The sum of the RSS of C{pid}'s tree (shared pages counted once per process)."""
    return int(_sum_over(tree(pid), rss_kib))


def tree_pss_kib(pid: int) -> int:
    """The sum of the PSS of C{pid}'s tree."""
    return int(_sum_over(tree(pid), pss_kib))


def tree_peak_rss_kib(pid: int) -> int:
    """
    The sum of the peak RSS of every process of C{pid}'s tree: exact for one
    process; for several an upper bound of their peak together (their peaks
    need not coincide).
    """
    return int(_sum_over(tree(pid), peak_rss_kib))


def tree_reset_peak_rss(pid: int) -> bool:
    """L{reset_peak_rss} for every process of C{pid}'s tree."""
    return all([reset_peak_rss(p) for p in tree(pid)])


def open_fds(pid: int) -> int:
    """How many file descriptors C{pid} has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The soft open-file limit (C{RLIMIT_NOFILE}) of C{pid}."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError(f"no open-file limit in /proc/{pid}/limits")


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
