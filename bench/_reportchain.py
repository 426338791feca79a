"""
The report of the C{chain} section (issue 19): a table of medians per path
with each chained path's ratio to its peer's direct path, the spread of the
runs, the same ratios run by run (run i against run i), and the session
errors.
"""

from __future__ import annotations

import statistics
from typing import Any

from _report import _format, _markdown, _ratio, _text
from _report5 import Row, section_failures

__all__ = [
    "failure_lines_chain",
    "markdown_chain",
    "ratio_lines",
    "text_chain",
]

ROWS = [
    Row("CONNECT sessions/s (SOCKS5)", "connect", "sessions_s", 0, "higher"),
    Row("  front CPU us/session", "connect", "server_cpu_us_per_session", 0, "lower"),
    Row(
        "  upstream CPU us/session",
        "connect",
        "upstream_cpu_us_per_session",
        0,
        "lower",
    ),
    Row(
        "  both servers' CPU us/session",
        "connect",
        "total_cpu_us_per_session",
        0,
        "lower",
    ),
    Row("  p50 ms", "connect", "p50_ms", 2, "lower"),
    Row("  p99 ms", "connect", "p99_ms", 2, "lower"),
    Row("  other processes' CPU %", "connect", "other_cpu_pct", 0, ""),
    Row("upload MiB/s", "upload", "mib_s", 0, "higher"),
    Row("  front CPU s/GiB", "upload", "server_cpu_s_per_gib", 3, "lower"),
    Row("  both servers' CPU s/GiB", "upload", "total_cpu_s_per_gib", 3, "lower"),
    Row("  other processes' CPU %", "upload", "other_cpu_pct", 0, ""),
    Row("download MiB/s", "download", "mib_s", 0, "higher"),
    Row("  front CPU s/GiB", "download", "server_cpu_s_per_gib", 3, "lower"),
    Row("  both servers' CPU s/GiB", "download", "total_cpu_s_per_gib", 3, "lower"),
    Row("  other processes' CPU %", "download", "other_cpu_pct", 0, ""),
]

#: The rows whose chained / direct ratio is spelled out run by run.
RATIO_ROWS = (
    ("CONNECT sessions/s", "connect", "sessions_s"),
    ("front CPU per session", "connect", "server_cpu_us_per_session"),
    ("upload MiB/s", "upload", "mib_s"),
    ("download MiB/s", "download", "mib_s"),
)


def _section(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("chain") or {}


def _paths(results: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_section(results).get("paths", []))


def _direct(results: dict[str, Any], peer: str) -> str | None:
    """The name of C{peer}'s direct path, if it is in the results."""
    for path in _paths(results):
        if path["peer"] == peer and not path["scheme"]:
            return str(path["name"])
    return None


def _chained(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(chained path, its peer's direct path) for every chained path."""
    pairs = []
    for path in _paths(results):
        direct = _direct(results, path["peer"])
        if path["scheme"] and direct is not None:
            pairs.append((str(path["name"]), direct))
    return pairs


def _runs(results: dict[str, Any], name: str, workload: str) -> list[dict[str, Any]]:
    table = _section(results).get("table", {})
    return list(table.get(name, {}).get(workload, {}).get("runs", []))


def _values(
    results: dict[str, Any], name: str, workload: str, field: str
) -> list[float]:
    return [
        run[field]
        for run in _runs(results, name, workload)
        if run.get(field) is not None
    ]


def _median(results: dict[str, Any], name: str, workload: str, field: str) -> Any:
    values = _values(results, name, workload, field)
    return statistics.median(values) if values else None


def _rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [str(path["name"]) for path in _paths(results)]
    pairs = _chained(results)
    header = ["one chained hop", *names, *(f"{a} / {b}" for a, b in pairs)]
    rows = []
    for row in ROWS:
        cells = [row.label]
        for name in names:
            value = _median(results, name, row.workload, row.field)
            if value is None and not _runs(results, name, row.workload):
                cells.append("FAIL")
            elif value is None:
                cells.append("—")
            else:
                cells.append(_format(value, row.digits))
        for chained, direct in pairs:
            mine = _median(results, chained, row.workload, row.field)
            theirs = _median(results, direct, row.workload, row.field)
            cells.append(_ratio(mine, theirs) if row.better else "")
        rows.append(cells)
    return header, rows


def _spread_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [str(path["name"]) for path in _paths(results)]
    rows = []
    for row in ROWS:
        cells = []
        for name in names:
            values = _values(results, name, row.workload, row.field)
            if not values:
                cells.append("")
                continue
            triple = (min(values), statistics.median(values), max(values))
            cells.append(" / ".join(_format(v, row.digits) for v in triple))
        if any(cells):
            rows.append([row.label, *cells])
    return ["one chained hop (min / median / max)", *names], rows


def _by_run(
    results: dict[str, Any], chained: str, direct: str, workload: str, field: str
) -> list[float]:
    """Run i of C{chained} over run i of C{direct}."""
    mine = {
        run["repeat"]: run[field]
        for run in _runs(results, chained, workload)
        if run.get(field)
    }
    theirs = {
        run["repeat"]: run[field]
        for run in _runs(results, direct, workload)
        if run.get(field)
    }
    return [mine[i] / theirs[i] for i in sorted(mine) if i in theirs]


def ratio_lines(results: dict[str, Any]) -> list[str]:
    """Each chained path over its direct path: medians, then run by run."""
    lines = []
    for chained, direct in _chained(results):
        parts = []
        for label, workload, field in RATIO_ROWS:
            mine = _median(results, chained, workload, field)
            theirs = _median(results, direct, workload, field)
            if mine is None or not theirs:
                parts.append(f"{label} not measured")
                continue
            runs = ", ".join(
                f"{r:.2f}" for r in _by_run(results, chained, direct, workload, field)
            )
            parts.append(f"{label} {mine / theirs:.2f} ({runs})")
        lines.append(f"{chained} / {direct}: " + "; ".join(parts))
    return lines


def failure_lines_chain(results: dict[str, Any]) -> list[str]:
    """The session errors of the section by path, workload and kind."""
    return section_failures(_section(results), "chain")


def _congestion(results: dict[str, Any]) -> str:
    congestion = _section(results).get("congestion_control")
    return f"under TCP {congestion}" if congestion else "under the machine's TCP CC"


def text_chain(results: dict[str, Any]) -> str:
    """The chain tables and ratios as plain text; empty without the section."""
    if not _paths(results):
        return ""
    return "\n".join(
        [
            _text(*_rows(results)),
            "\nspread of the chain runs\n" + _text(*_spread_rows(results)),
            f"\none chained hop / direct (medians; run by run in brackets; "
            f"throughput {_congestion(results)}):",
            *(f"  {line}" for line in ratio_lines(results)),
        ]
    )


def markdown_chain(results: dict[str, Any]) -> str:
    """The chain part of RESULTS.md; empty without the section."""
    if not _paths(results):
        return ""
    lines = [
        "## One chained hop (issue 19)",
        "",
        "SOCKS5 clients (no auth, CONNECT by address) against each path; "
        "front = the server the client talks to, upstream = the server it "
        f"chains to; throughput {_congestion(results)}.",
        "",
        _markdown(*_rows(results)),
        "",
        _markdown(*_spread_rows(results)),
        "",
        "One chained hop / direct, medians (run by run in brackets):",
        "",
        *(f"- {line}" for line in ratio_lines(results)),
        "",
        "Paths:",
        "",
        *(f"- `{p['name']}`: {p['description']}" for p in _paths(results)),
    ]
    return "\n".join(lines) + "\n"
