"""
Summaries, the results table and C{bench/RESULTS.md}.

The raw results (one record per run) are summarised per target into a flat
dict of metric key to value: the median over the runs (errors are summed).
A metric that failed for a target is the string C{"FAIL"}; one that does not
apply (a direct connection has no server CPU) is missing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "markdown_results", "summarise", "text_table"]

REFERENCE = "ours"
FAIL = "FAIL"


@dataclass(frozen=True)
class Metric:
    """
    One row of the table.

    @ivar key: the summary key.
    @ivar label: the row heading.
    @ivar digits: decimal places shown.
    @ivar better: C{"higher"}, C{"lower"} or L{None} (not a performance
        figure; no ratio).
    """

    key: str
    label: str
    digits: int
    better: str | None


METRICS = [
    Metric("upload_mib_s", "upload MiB/s", 0, "higher"),
    Metric("download_mib_s", "download MiB/s", 0, "higher"),
    Metric("upload_cpu_s_per_gib", "server CPU s/GiB, upload", 2, "lower"),
    Metric("download_cpu_s_per_gib", "server CPU s/GiB, download", 2, "lower"),
    Metric("upload_peak_rss_mib", "server peak RSS MiB, upload (max)", 1, "lower"),
    Metric("download_peak_rss_mib", "server peak RSS MiB, download (max)", 1, "lower"),
    Metric("socks4_sessions_s", "SOCKS4 sessions/s", 0, "higher"),
    Metric("socks4_p50_ms", "SOCKS4 p50 ms", 2, "lower"),
    Metric("socks4_p99_ms", "SOCKS4 p99 ms", 2, "lower"),
    Metric("socks4_cpu_us", "SOCKS4 server CPU us/session", 0, "lower"),
    Metric("socks4_errors", "SOCKS4 errors (all runs)", 0, None),
    Metric("socks4a_sessions_s", "SOCKS4A sessions/s", 0, "higher"),
    Metric("socks4a_p50_ms", "SOCKS4A p50 ms", 2, "lower"),
    Metric("socks4a_p99_ms", "SOCKS4A p99 ms", 2, "lower"),
    Metric("socks4a_cpu_us", "SOCKS4A server CPU us/session", 0, "lower"),
    Metric("socks4a_errors", "SOCKS4A errors (all runs)", 0, None),
    Metric("idle_kib_per_tunnel", "idle KiB/tunnel (after echo)", 1, "lower"),
    Metric("idle_tunnels", "idle tunnels verified", 0, None),
]


def _median(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [run[field] for run in runs if run.get(field) is not None]
    return statistics.median(values) if values else None


def summarise(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target name, metric key to its median (or C{"FAIL"})."""
    summary: dict[str, dict[str, Any]] = {}
    for target in results["targets"]:
        name = target["name"]
        row: dict[str, Any] = {}
        for direction in ("upload", "download"):
            record = results["throughput"].get(name, {}).get(direction)
            if record is None:
                continue
            runs = record["runs"]
            if record["failures"] or not runs:
                row[f"{direction}_mib_s"] = FAIL
                continue
            row[f"{direction}_mib_s"] = _median(runs, "mib_s")
            cpu = _median(runs, "server_cpu_s_per_gib")
            if cpu is not None:
                row[f"{direction}_cpu_s_per_gib"] = cpu
            # The highest, not the median: Python keeps memory it has freed,
            # so only the run that grew the heap shows the growth.
            peaks = [
                run["server_peak_rss_kib"]
                for run in runs
                if "server_peak_rss_kib" in run
            ]
            peak = max(peaks) if peaks else None
            if peak is not None:
                row[f"{direction}_peak_rss_mib"] = peak / 1024
        for mode in ("socks4", "socks4a"):
            record = results["handshake"].get(name, {}).get(mode)
            if record is None:
                continue
            runs = record["runs"]
            errors = sum(run["error_count"] for run in runs)
            row[f"{mode}_errors"] = errors
            if record["failures"] or not runs:
                row[f"{mode}_sessions_s"] = FAIL
                continue
            row[f"{mode}_sessions_s"] = _median(runs, "sessions_s")
            row[f"{mode}_p50_ms"] = _median(runs, "p50_ms")
            row[f"{mode}_p99_ms"] = _median(runs, "p99_ms")
            cpu = _median(runs, "server_cpu_us_per_session")
            if cpu is not None:
                row[f"{mode}_cpu_us"] = cpu
        idle = results["idle"].get(name)
        if idle is not None:
            if idle.get("failure"):
                row["idle_kib_per_tunnel"] = FAIL
                row["idle_tunnels"] = idle.get("echoed", idle.get("established", 0))
            else:
                row["idle_kib_per_tunnel"] = idle["kib_per_tunnel"]
                row["idle_kib_per_tunnel_open"] = idle["kib_per_tunnel_open"]
                row["idle_tunnels"] = idle["echoed"]
        summary[name] = row
    return summary


def _format(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def _ratio(mine: Any, theirs: Any) -> str:
    if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)):
        return ""
    if theirs == 0:
        return ""
    return f"{mine / theirs:.2f}"


def _rows(
    summary: dict[str, dict[str, Any]], names: list[str]
) -> tuple[list[str], list[list[str]]]:
    others = [name for name in names if name != REFERENCE]
    header = ["metric", *names]
    if REFERENCE in names:
        header += [f"{REFERENCE} / {other}" for other in others]
    rows = []
    for metric in METRICS:
        values = [summary.get(name, {}).get(metric.key) for name in names]
        if all(value is None for value in values):
            continue
        row = [metric.label] + [_format(value, metric.digits) for value in values]
        if REFERENCE in names:
            mine = summary.get(REFERENCE, {}).get(metric.key)
            for other in others:
                theirs = summary.get(other, {}).get(metric.key)
                row.append(_ratio(mine, theirs) if metric.better else "")
        rows.append(row)
    return header, rows


def text_table(summary: dict[str, dict[str, Any]], names: list[str]) -> str:
    """The table as aligned plain text, for the terminal."""
    header, rows = _rows(summary, names)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(summary: dict[str, dict[str, Any]], names: list[str]) -> str:
    """The table in Markdown."""
    header, rows = _rows(summary, names)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def failure_lines(results: dict[str, Any]) -> list[str]:
    """Every failure and session error of the run, one line each."""
    lines = [f"{f['target']}: {f['what']}: {f['error']}" for f in results["failures"]]
    for name, modes in results["handshake"].items():
        for mode, record in modes.items():
            counts: dict[str, int] = {}
            for run in record["runs"]:
                for kind, count in run["errors"].items():
                    counts[kind] = counts.get(kind, 0) + count
            for kind, count in sorted(counts.items()):
                lines.append(f"{name} {mode} handshake: {count} x {kind}")
    return lines


def spread_lines(results: dict[str, Any]) -> list[str]:
    """Per target, the lowest and highest run of each rate."""
    lines = []
    for target in results["targets"]:
        name = target["name"]
        parts = []
        for direction, record in results["throughput"].get(name, {}).items():
            values = [run["mib_s"] for run in record["runs"]]
            if values:
                parts.append(f"{direction} {min(values):,.0f}-{max(values):,.0f} MiB/s")
        for mode, record in results["handshake"].get(name, {}).items():
            values = [run["sessions_s"] for run in record["runs"]]
            if values:
                label = mode.upper()
                parts.append(f"{label} {min(values):,.0f}-{max(values):,.0f}/s")
                cpu = [run.get("server_cpu_us_per_session") for run in record["runs"]]
                if all(value is not None for value in cpu):
                    parts.append(f"{label} server CPU {min(cpu):.0f}-{max(cpu):.0f} us")
        if parts:
            lines.append(f"{name}: " + "; ".join(parts))
    return lines


def _span(runs: list[dict[str, Any]], field: str) -> str:
    return _span_of([run[field] for run in runs])


def _span_of(values: list[float]) -> str:
    low, high = min(values), max(values)
    if round(low) == round(high):
        return f"{low:.0f}%"
    return f"{low:.0f}-{high:.0f}%"


def load_lines(results: dict[str, Any]) -> list[str]:
    """
    CPU use during the runs, in % of one core (2 cores fully busy is 200%):
    the harness's processes and everything else on the machine.
    """
    lines = []
    for name, directions in results["throughput"].items():
        for direction, record in directions.items():
            runs = record["runs"]
            if not runs or "other_cpu_pct" not in runs[0]:
                continue
            text = f"{name} {direction}: "
            if "server_cpu_s" in runs[0]:
                server = [100 * run["server_cpu_s"] / run["seconds"] for run in runs]
                text += f"server {_span_of(server)}, "
            text += f"other processes {_span(runs, 'other_cpu_pct')}"
            lines.append(text)
    for name, modes in results["handshake"].items():
        for mode, record in modes.items():
            runs = record["runs"]
            if not runs:
                continue
            text = f"{name} {mode}: load generator {_span(runs, 'client_cpu_pct')}"
            if runs[0].get("server_cpu_pct") is not None:
                text += f", server {_span(runs, 'server_cpu_pct')}"
            text += f", echo destination {_span(runs, 'destination_cpu_pct')}"
            if "other_cpu_pct" in runs[0]:
                text += f", other processes {_span(runs, 'other_cpu_pct')}"
            lines.append(text)
    return lines


def markdown_results(results: dict[str, Any]) -> str:
    """The whole of C{bench/RESULTS.md} for one run."""
    meta, params = results["meta"], results["params"]
    names = [target["name"] for target in results["targets"]]
    summary = summarise(results)
    arguments = meta["command"].removeprefix("bench/bench.py").strip()
    out = [
        "# Benchmark results",
        "",
        f"Generated by `./dev bench {arguments}` on {meta['date']}, in "
        f"{meta['wall_seconds']:.0f} s. What each figure "
        "means and how far to trust it: [README.md](README.md). Raw results: "
        f"`bench/out/{meta['json_name']}` (not committed).",
        "",
        "**This machine is shared and noisy: compare columns of the same run "
        "(the ratios), not absolute figures across runs or machines.**",
        "",
        "## Machine",
        "",
        f"- CPU: {meta['cpu_model']}, {meta['nproc']} cores available "
        f"(load average at start: {meta['loadavg']})",
        f"- Memory: {meta['mem_total_mib']:,} MiB; kernel {meta['kernel']}",
        f"- Python {meta['python']}, Twisted {meta['twisted']}, "
        f"twisted-socks {meta['twisted_socks']} at {meta['git']}",
        "",
        "## Parameters",
        "",
        f"- throughput: one stream of {params['size_mib']:,} MiB per direction, "
        f"SOCKS4 CONNECT to 127.0.0.1, median of {params['repeats']} runs",
        f"- handshakes: {params['concurrency']} concurrent clients for "
        f"{params['duration']:g} s per run, median of {params['repeats']} runs; "
        "a session is connect, request, 8-byte reply, 1-byte echo, close "
        "(FIN, then wait for the proxy's close); latency covers all of it",
        f"- idle memory: {params['tunnels']:,} tunnels, server RSS delta over a "
        "fresh server's baseline (taken after 20 warm-up tunnels)",
        "",
        "## Targets",
        "",
    ]
    out += [f"- **{t['name']}**: {t['description']}" for t in results["targets"]]
    out += [
        "",
        "## Results",
        "",
        "Medians of the runs. Ratio columns divide the `ours` column by each "
        "other column: above 1 is better for rates (MiB/s, sessions/s), below "
        "1 is better for times, CPU and memory.",
        "",
        markdown_table(summary, names),
        "",
    ]
    out += ["## Run-to-run spread (min-max of the runs)", ""]
    out += [f"- {line}" for line in spread_lines(results)] or ["- (not run)"]
    out += [
        "",
        "## CPU use during the runs",
        "",
        'In % of one core (2 cores fully busy is 200%). "Other processes" '
        "is the machine's busy time that the harness's processes do not "
        "account for: anything high there disturbed the run.",
        "",
    ]
    background = meta.get("background_cpu_pct")
    if background is not None:
        out.append(f"- before the run (nothing of ours running): {background:.0f}%")
    out += [f"- {line}" for line in load_lines(results)]
    out += ["", "## Failures and errors", ""]
    out += [f"- {line}" for line in failure_lines(results)] or ["- none"]
    out.append("")
    return "\n".join(out)
