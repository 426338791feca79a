"""
The report of the C{socks5} section (issue 17): a table of medians per peer
with the ratios of ours to each peer, the spread of the runs, the issue's
targets judged on the medians and run by run, and the session errors.

Rows come from the workloads of L{_section5}; a cell is C{—} where a peer
does not take part (microsocks' throughput), C{not supported} where it
refused (UDP: 07), C{not measured} with the reason where it could not run
(Dante's username method without a system account).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from _report import _format, _markdown, _ratio, _text

__all__ = [
    "failure_lines5",
    "goal_lines5",
    "markdown_section5",
    "text_section5",
]

REFERENCE = "ours"
NOT_MEASURED = "—"
#: Issue 17: authenticated sessions/s at least this share of unauthenticated.
AUTH_RATIO = 0.8
#: Issue 17 (as issue #8 for SOCKS4): single-stream throughput against Dante.
THROUGHPUT_RATIO = 2.0


@dataclass(frozen=True)
class Row:
    """
    One row: C{field} of the runs of C{workload}, median over the runs.

    @ivar better: C{"higher"} or C{"lower"}; the ratio ours / peer is shown
        for both (above 1 is better for rates, below 1 for CPU and latency);
        C{""}: no ratio (the machine's state, not the server's figure).
    """

    label: str
    workload: str
    field: str
    digits: int
    better: str


ROWS = [
    Row("CONNECT sessions/s (no auth)", "connect", "sessions_s", 0, "higher"),
    Row("  server CPU us/session", "connect", "server_cpu_us_per_session", 0, "lower"),
    Row("  p99 ms", "connect", "p99_ms", 2, "lower"),
    Row("  other processes' CPU %", "connect", "other_cpu_pct", 0, ""),
    Row("CONNECT sessions/s (user/pass)", "connect-auth", "sessions_s", 0, "higher"),
    Row(
        "  server CPU us/session",
        "connect-auth",
        "server_cpu_us_per_session",
        0,
        "lower",
    ),
    Row("  p99 ms", "connect-auth", "p99_ms", 2, "lower"),
    Row("  other processes' CPU %", "connect-auth", "other_cpu_pct", 0, ""),
    Row("CONNECT by name sessions/s", "connect-name", "sessions_s", 0, "higher"),
    Row(
        "  server CPU us/session",
        "connect-name",
        "server_cpu_us_per_session",
        0,
        "lower",
    ),
    Row("upload MiB/s", "upload", "mib_s", 0, "higher"),
    Row("  server CPU s/GiB", "upload", "server_cpu_s_per_gib", 3, "lower"),
    Row("  other processes' CPU %", "upload", "other_cpu_pct", 0, ""),
    Row("download MiB/s", "download", "mib_s", 0, "higher"),
    Row("  server CPU s/GiB", "download", "server_cpu_s_per_gib", 3, "lower"),
    Row("  other processes' CPU %", "download", "other_cpu_pct", 0, ""),
    Row("UDP round trips/s (512 B)", "udp", "round_trips_s", 0, "higher"),
    Row(
        "  server CPU us/round trip",
        "udp",
        "server_cpu_us_per_round_trip",
        1,
        "lower",
    ),
]


def _section(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("socks5") or {}


def _names(results: dict[str, Any]) -> list[str]:
    return [peer["name"] for peer in _section(results).get("peers", [])]


def _record(results: dict[str, Any], name: str, workload: str) -> dict[str, Any]:
    return _section(results).get("table", {}).get(name, {}).get(workload) or {}


def _values(results: dict[str, Any], name: str, row: Row) -> list[float]:
    runs = _record(results, name, row.workload).get("runs", [])
    return [run[row.field] for run in runs if run.get(row.field) is not None]


def median(results: dict[str, Any], name: str, workload: str, field: str) -> Any:
    """The median of C{field} over C{name}'s runs of C{workload}, or L{None}."""
    runs = _record(results, name, workload).get("runs", [])
    values = [run[field] for run in runs if run.get(field) is not None]
    return statistics.median(values) if values else None


def _cell(results: dict[str, Any], name: str, row: Row) -> str:
    values = _values(results, name, row)
    if values:
        return _format(statistics.median(values), row.digits)
    record = _record(results, name, row.workload)
    if not record:
        return NOT_MEASURED
    if record.get("skipped"):
        text = str(record["skipped"])
        if text.startswith("not supported ("):
            return f"not supported ({text[len('not supported (') :][:2]})"
        return "not measured"
    return "FAIL"


def _rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = _names(results)
    others = [name for name in names if name != REFERENCE]
    header = ["SOCKS5", *names]
    if REFERENCE in names:
        header += [f"{REFERENCE} / {other}" for other in others]
    rows = []
    for row in ROWS:
        if not any(_record(results, name, row.workload) for name in names):
            continue
        cells = [row.label] + [_cell(results, name, row) for name in names]
        if REFERENCE in names:
            mine = median(results, REFERENCE, row.workload, row.field)
            for other in others:
                theirs = median(results, other, row.workload, row.field)
                cells.append(_ratio(mine, theirs) if row.better else "")
        rows.append(cells)
    return header, rows


def _spread_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = _names(results)
    header = ["SOCKS5 (min / median / max)", *names]
    rows = []
    for row in ROWS:
        cells = []
        for name in names:
            values = _values(results, name, row)
            if not values:
                cells.append("")
                continue
            triple = (min(values), statistics.median(values), max(values))
            cells.append(" / ".join(_format(v, row.digits) for v in triple))
        if any(cells):
            rows.append([row.label, *cells])
    return header, rows


def _by_run(
    results: dict[str, Any],
    mine: tuple[str, str],
    theirs: tuple[str, str],
    field: str,
) -> list[float]:
    """Run i of C{mine} (name, workload) over run i of C{theirs}."""
    left = {
        run["repeat"]: run[field]
        for run in _record(results, *mine).get("runs", [])
        if run.get(field)
    }
    right = {
        run["repeat"]: run[field]
        for run in _record(results, *theirs).get("runs", [])
        if run.get(field)
    }
    return [left[i] / right[i] for i in sorted(left) if i in right]


def _judge(
    label: str,
    results: dict[str, Any],
    mine: tuple[str, str],
    theirs: tuple[str, str],
    field: str,
    relation: str,
    threshold: float,
) -> str:
    """One goal line: the median ratio, each run's, and a mark."""
    a = median(results, *mine, field)
    b = median(results, *theirs, field)
    if a is None or b is None or b == 0:
        missing = theirs if b is None else mine
        return f"{label}: not measured ({missing[0]} {missing[1]}: no runs)"
    ratio = a / b
    met = ratio >= threshold if relation == ">=" else ratio <= threshold
    runs = ", ".join(f"{r:.2f}" for r in _by_run(results, mine, theirs, field))
    held = ""
    if runs:
        by_run = _by_run(results, mine, theirs, field)
        count = sum(
            (r >= threshold if relation == ">=" else r <= threshold) for r in by_run
        )
        held = f"; run by run {runs} ({count} of {len(by_run)} met)"
    mark = "✓" if met else "✗"
    return f"{mark} {label}: {ratio:.2f} (target {relation} {threshold:g}){held}"


def goal_lines5(results: dict[str, Any]) -> list[str]:
    """The issue 17 targets, judged on the medians and run by run."""
    names = _names(results)
    if REFERENCE not in names:
        return ["(ours is not among the SOCKS5 peers: no targets judged)"]
    lines = []
    if "dante" in names:
        lines.append(
            _judge(
                "SOCKS5 CPU per session, no auth, ours / dante",
                results,
                ("ours", "connect"),
                ("dante", "connect"),
                "server_cpu_us_per_session",
                "<=",
                1.0,
            )
        )
        lines.append(
            _judge(
                "SOCKS5 CPU per session, user/pass, ours / dante",
                results,
                ("ours", "connect-auth"),
                ("dante", "connect-auth"),
                "server_cpu_us_per_session",
                "<=",
                1.0,
            )
        )
    lines.append(
        _judge(
            "ours authenticated / unauthenticated sessions/s",
            results,
            ("ours", "connect-auth"),
            ("ours", "connect"),
            "sessions_s",
            ">=",
            AUTH_RATIO,
        )
    )
    # The same cost read from the CPU per session, which the machine's other
    # load barely moves: the rate ratio a CPU-bound server would reach.
    lines.append(
        _judge(
            "the same from CPU per session (unauthenticated / authenticated)",
            results,
            ("ours", "connect"),
            ("ours", "connect-auth"),
            "server_cpu_us_per_session",
            ">=",
            AUTH_RATIO,
        )
    )
    if "dante" in names:
        congestion = _section(results).get("congestion_control") or "unknown"
        for direction in ("upload", "download"):
            lines.append(
                _judge(
                    f"SOCKS5 {direction} MiB/s, ours / dante ({congestion})",
                    results,
                    ("ours", direction),
                    ("dante", direction),
                    "mib_s",
                    ">=",
                    THROUGHPUT_RATIO,
                )
            )
    for name in names:
        record = _record(results, name, "udp")
        if record.get("skipped"):
            lines.append(f"  UDP through {name}: {record['skipped']}")
        record = _record(results, name, "connect-auth")
        if record.get("skipped"):
            lines.append(f"  {name} with user/pass: not measured: {record['skipped']}")
    return lines


def failure_lines5(results: dict[str, Any]) -> list[str]:
    """The session errors of the section by peer, workload and kind."""
    return section_failures(_section(results), "socks5")


def section_failures(section: dict[str, Any], label: str) -> list[str]:
    """
    The session errors of a section's table (peer or path, workload,
    kind), summed over its runs; C{label} names the section in each line.
    """
    lines = []
    for name, workloads in section.get("table", {}).items():
        for workload, record in workloads.items():
            counts: dict[str, int] = {}
            for run in record["runs"]:
                for kind, count in run.get("errors", {}).items():
                    counts[kind] = counts.get(kind, 0) + count
                if run.get("malformed"):
                    counts["malformed UDP reply"] = (
                        counts.get("malformed UDP reply", 0) + run["malformed"]
                    )
            for kind, count in sorted(counts.items()):
                lines.append(f"{name} {label} {workload}: {count} x {kind}")
    return lines


def _udp_note(results: dict[str, Any]) -> str:
    lost = {
        name: sum(run["lost"] for run in _record(results, name, "udp").get("runs", []))
        for name in _names(results)
        if _record(results, name, "udp").get("runs")
    }
    if not lost:
        return ""
    text = ", ".join(f"{name} {count:,}" for name, count in lost.items())
    return f"UDP datagrams lost (sent, not answered, summed over the runs): {text}"


def text_section5(results: dict[str, Any]) -> str:
    """The SOCKS5 tables and targets as plain text; empty without the section."""
    if not _section(results).get("peers"):
        return ""
    parts = [
        _text(*_rows(results)),
        "\nspread of the SOCKS5 runs\n" + _text(*_spread_rows(results)),
        "\nissue 17 targets (SOCKS5):",
        *(f"  {line}" for line in goal_lines5(results)),
    ]
    note = _udp_note(results)
    if note:
        parts.append(f"  {note}")
    return "\n".join(parts)


def markdown_section5(results: dict[str, Any]) -> str:
    """The SOCKS5 part of RESULTS.md; empty without the section."""
    section = _section(results)
    if not section.get("peers"):
        return ""
    lines = [
        "## SOCKS5 (issue 17)",
        "",
        _markdown(*_rows(results)),
        "",
        _markdown(*_spread_rows(results)),
        "",
        "Targets:",
        "",
        *(f"- {line.strip()}" for line in goal_lines5(results)),
    ]
    note = _udp_note(results)
    if note:
        lines += ["", note]
    lines += ["", "Peers:", ""]
    lines += [f"- `{p['name']}`: {p['description']}" for p in section["peers"]]
    return "\n".join(lines) + "\n"
