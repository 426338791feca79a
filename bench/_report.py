"""
Summaries, the results tables and C{bench/RESULTS.md}.

The raw results (one record per run) are summarised per target into a flat
dict of metric key to value: the median over the runs (peak memory: the
highest run; errors: the sum), with the spread (min, median, max) alongside.
A metric that failed for a target is the string C{"FAIL"}; one that does not
apply (a direct connection has no server CPU) is missing.  The issue's
targets (L{GOALS}) are judged on the medians and, run by run, on run I{i} of
ours against run I{i} of the peer.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GOALS",
    "METRICS",
    "goal_lines",
    "markdown_results",
    "spreads",
    "summarise",
    "text_table",
]

REFERENCE = "ours"
FAIL = "FAIL"
#: A cell of a target that does not take part in the figure's section (a
#: variant of ours measured only where it differs), as opposed to C{n/a}: a
#: figure that does not apply (a direct connection has no server CPU).
NOT_MEASURED = "—"
#: The multi-core comparison: ours with C{--workers 2} against ours.
WORKERS = "ours-w2"
#: Ours under C{twistd -n socks}, against the launcher (C{ours}).
TWISTD = "ours-twistd"
#: Ours as an earlier source tree has it (C{bench.py --baseline TREE}).
BASELINE = "ours-base"
#: How much more than the baseline a change may cost in server CPU per
#: session and memory per idle tunnel (the reshape issue's "within 5%").
BASELINE_LIMIT = 1.05
#: The most CPU per session L{TWISTD} may use, as a multiple of ours'.
TWISTD_CPU_LIMIT = 1.05
#: Metric sections (where the runs are in the results) by the name of the
#: benchmark section (C{--only}) that measures them.
_SECTION_OF = {"idle": "memory", "throughput_machine_cc": "throughput"}
#: What the rows measured under the machine's own congestion control
#: (when it is not the reference, CUBIC) are labelled with.
MACHINE_CC = "machine's TCP CC"


@dataclass(frozen=True)
class Metric:
    """
    One row of the table.

    @ivar key: the summary key.
    @ivar label: the row heading.
    @ivar digits: decimal places shown.
    @ivar better: C{"higher"}, C{"lower"} or L{None} (not a performance
        figure; no ratio).
    @ivar section: where its runs are in the results (C{"throughput"},
        C{"slowread"}, C{"handshake"}, C{"idle"}).
    @ivar sub: the direction or mode within the section, if any.
    @ivar field: the field of each run.
    @ivar scale: what each run's value is multiplied by.
    @ivar aggregate: how the runs make the figure: C{"median"}; C{"max"}
        (peak memory: Python keeps memory it has freed, so only the run that
        grew the heap shows the growth); C{"sum"} (error counts); C{"min"}.
    """

    key: str
    label: str
    digits: int
    better: str | None
    section: str
    sub: str | None
    field: str
    scale: float = 1.0
    aggregate: str = "median"


_KIB_TO_MIB = 1 / 1024

METRICS = [
    Metric(
        "upload_mib_s", "upload MiB/s", 0, "higher", "throughput", "upload", "mib_s"
    ),
    Metric(
        "download_mib_s",
        "download MiB/s",
        0,
        "higher",
        "throughput",
        "download",
        "mib_s",
    ),
    Metric(
        "upload_cpu_s_per_gib",
        "server CPU s/GiB, upload",
        2,
        "lower",
        "throughput",
        "upload",
        "server_cpu_s_per_gib",
    ),
    Metric(
        "download_cpu_s_per_gib",
        "server CPU s/GiB, download",
        2,
        "lower",
        "throughput",
        "download",
        "server_cpu_s_per_gib",
    ),
    Metric(
        "upload_peak_rss_mib",
        "server peak RSS MiB, upload (max)",
        1,
        "lower",
        "throughput",
        "upload",
        "server_peak_rss_kib",
        _KIB_TO_MIB,
        "max",
    ),
    Metric(
        "download_peak_rss_mib",
        "server peak RSS MiB, download (max)",
        1,
        "lower",
        "throughput",
        "download",
        "server_peak_rss_kib",
        _KIB_TO_MIB,
        "max",
    ),
    # The same four throughput figures under the machine's own congestion
    # control, when the run also measured under the reference (_netcc).
    *(
        Metric(
            f"{key}_machine_cc",
            f"{label}, {MACHINE_CC}",
            digits,
            better,
            "throughput_machine_cc",
            direction,
            field,
        )
        for key, label, digits, better, direction, field in (
            ("upload_mib_s", "upload MiB/s", 0, "higher", "upload", "mib_s"),
            ("download_mib_s", "download MiB/s", 0, "higher", "download", "mib_s"),
            (
                "upload_cpu_s_per_gib",
                "server CPU s/GiB, upload",
                2,
                "lower",
                "upload",
                "server_cpu_s_per_gib",
            ),
            (
                "download_cpu_s_per_gib",
                "server CPU s/GiB, download",
                2,
                "lower",
                "download",
                "server_cpu_s_per_gib",
            ),
        )
    ),
    Metric(
        "slow_mib_s",
        "slow reader: MiB/s reached",
        0,
        None,
        "slowread",
        None,
        "mib_s",
    ),
    Metric(
        "slow_peak_rss_mib",
        "slow reader: server peak RSS MiB (max)",
        1,
        "lower",
        "slowread",
        None,
        "server_peak_rss_kib",
        _KIB_TO_MIB,
        "max",
    ),
    Metric(
        "slow_growth_mib",
        "slow reader: server RSS growth MiB (max)",
        1,
        "lower",
        "slowread",
        None,
        "server_rss_growth_kib",
        _KIB_TO_MIB,
        "max",
    ),
    Metric(
        "slow_peak_pss_mib",
        "slow reader: server peak PSS MiB (max)",
        1,
        "lower",
        "slowread",
        None,
        "server_sampled_peak_pss_kib",
        _KIB_TO_MIB,
        "max",
    ),
    Metric(
        "socks4_sessions_s",
        "SOCKS4 sessions/s",
        0,
        "higher",
        "handshake",
        "socks4",
        "sessions_s",
    ),
    Metric(
        "socks4_p50_ms", "SOCKS4 p50 ms", 2, "lower", "handshake", "socks4", "p50_ms"
    ),
    Metric(
        "socks4_p99_ms", "SOCKS4 p99 ms", 2, "lower", "handshake", "socks4", "p99_ms"
    ),
    Metric(
        "socks4_cpu_us",
        "SOCKS4 server CPU us/session",
        0,
        "lower",
        "handshake",
        "socks4",
        "server_cpu_us_per_session",
    ),
    Metric(
        "socks4_errors",
        "SOCKS4 errors (all runs)",
        0,
        None,
        "handshake",
        "socks4",
        "error_count",
        aggregate="sum",
    ),
    Metric(
        "socks4a_sessions_s",
        "SOCKS4A sessions/s",
        0,
        "higher",
        "handshake",
        "socks4a",
        "sessions_s",
    ),
    Metric(
        "socks4a_p50_ms",
        "SOCKS4A p50 ms",
        2,
        "lower",
        "handshake",
        "socks4a",
        "p50_ms",
    ),
    Metric(
        "socks4a_p99_ms",
        "SOCKS4A p99 ms",
        2,
        "lower",
        "handshake",
        "socks4a",
        "p99_ms",
    ),
    Metric(
        "socks4a_cpu_us",
        "SOCKS4A server CPU us/session",
        0,
        "lower",
        "handshake",
        "socks4a",
        "server_cpu_us_per_session",
    ),
    Metric(
        "socks4a_errors",
        "SOCKS4A errors (all runs)",
        0,
        None,
        "handshake",
        "socks4a",
        "error_count",
        aggregate="sum",
    ),
    Metric(
        "idle_kib_per_tunnel",
        "idle KiB/tunnel, RSS (after echo)",
        2,
        "lower",
        "idle",
        None,
        "kib_per_tunnel",
    ),
    Metric(
        "idle_pss_kib_per_tunnel",
        "idle KiB/tunnel, PSS (after echo)",
        2,
        "lower",
        "idle",
        None,
        "pss_kib_per_tunnel",
    ),
    Metric(
        "idle_tunnels",
        "idle tunnels verified (fewest of the runs)",
        0,
        None,
        "idle",
        None,
        "echoed",
        aggregate="min",
    ),
]
_BY_KEY = {metric.key: metric for metric in METRICS}


def _record(
    results: dict[str, Any], metric: Metric, name: str
) -> dict[str, Any] | None:
    record = results.get(metric.section, {}).get(name)
    if record is not None and metric.sub is not None:
        record = record.get(metric.sub)
    return record


def run_values(
    results: dict[str, Any], metric: Metric, name: str
) -> list[tuple[int, float]] | str | None:
    """
    C{(repeat, value)} of each run of C{metric} for target C{name}; C{FAIL}
    if any run failed (error counts: never); L{None} if not measured.
    """
    record = _record(results, metric, name)
    if record is None:
        return None
    runs = record.get("runs", [])
    if metric.aggregate != "sum" and (record.get("failures") or not runs):
        return FAIL
    values = [
        (run.get("repeat", index + 1), run[metric.field] * metric.scale)
        for index, run in enumerate(runs)
        if run.get(metric.field) is not None
    ]
    return values or None


def _aggregate(metric: Metric, values: list[float]) -> float:
    if metric.aggregate == "max":
        return max(values)
    if metric.aggregate == "min":
        return min(values)
    if metric.aggregate == "sum":
        return sum(values)
    return statistics.median(values)


def summarise(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target name, metric key to its figure (or C{"FAIL"})."""
    summary: dict[str, dict[str, Any]] = {}
    for target in results["targets"]:
        name = target["name"]
        row: dict[str, Any] = {}
        for metric in METRICS:
            values = run_values(results, metric, name)
            if values is None:
                continue
            if isinstance(values, str):
                row[metric.key] = values
            else:
                row[metric.key] = _aggregate(metric, [v for _, v in values])
        summary[name] = row
    return summary


def spreads(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, ...]]]:
    """Per target name, metric key to (min, median, max) of its runs."""
    out: dict[str, dict[str, tuple[float, ...]]] = {}
    for target in results["targets"]:
        name = target["name"]
        row: dict[str, tuple[float, ...]] = {}
        for metric in METRICS:
            if metric.better is None:
                continue
            values = run_values(results, metric, name)
            if not isinstance(values, list):
                continue
            numbers = [v for _, v in values]
            row[metric.key] = (min(numbers), statistics.median(numbers), max(numbers))
        out[name] = row
    return out


# -- the targets ----------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """
    One target of the issue: C{ours} (divided by C{peer}'s, if any) must
    stand in C{relation} to C{threshold}.
    """

    key: str
    peer: str | None
    relation: str  # ">=", "<=" or "<"
    threshold: float
    text: str


GOALS = [
    Goal("upload_mib_s", "dante", ">=", 2.0, "≥ 2x dante"),
    Goal("download_mib_s", "dante", ">=", 2.0, "≥ 2x dante"),
    Goal("upload_mib_s_machine_cc", "dante", ">=", 2.0, "≥ 2x dante"),
    Goal("download_mib_s_machine_cc", "dante", ">=", 2.0, "≥ 2x dante"),
    Goal("upload_cpu_s_per_gib", "dante", "<=", 0.5, "≤ 0.5x dante"),
    Goal("download_cpu_s_per_gib", "dante", "<=", 0.5, "≤ 0.5x dante"),
    Goal("slow_peak_rss_mib", None, "<", 40.0, "< 40 MiB"),
    Goal("socks4_sessions_s", "dante", ">=", 1.2, "≥ 1.2x dante"),
    Goal("socks4_p99_ms", "dante", "<=", 1.0, "≤ 1x dante"),
    Goal("socks4a_sessions_s", "twisted-builtin", ">=", 1.5, "≥ 1.5x twisted-builtin"),
    Goal("idle_kib_per_tunnel", None, "<=", 3.0, "≤ 3 KiB at 10,000 tunnels"),
]


def _holds(value: float, relation: str, threshold: float) -> bool:
    if relation == ">=":
        return value >= threshold
    if relation == "<=":
        return value <= threshold
    return value < threshold


def _idle_note(results: dict[str, Any]) -> str:
    """Why the idle test counted fewer tunnels than the issue asks, if it did."""
    record = results.get("idle", {}).get(REFERENCE)
    if not record or not record.get("runs"):
        return ""
    runs = record["runs"]
    fewest = min(run.get("echoed", 0) for run in runs)
    if fewest >= 10000:
        return ""
    if any(run.get("echoed", 0) < run.get("requested", 0) for run in runs):
        limit = runs[0].get("fd_limit")
        why = f" (its open-file limit {limit:,} holds no more)" if limit else ""
    else:
        why = f" (--tunnels {runs[0].get('requested', fewest):,})"
    return f", at {fewest:,} tunnels{why}"


def evaluate(goal: Goal, results: dict[str, Any], summary: dict[str, Any]) -> str:
    """C{goal}'s cell: the figure, ✓ or ✗ on the medians, and runs that met it."""
    metric = _BY_KEY[goal.key]
    mine = summary.get(REFERENCE, {}).get(goal.key)
    theirs = summary.get(goal.peer, {}).get(goal.key) if goal.peer else None
    if not isinstance(mine, (int, float)):
        return f"{goal.text}: {'failed' if mine == FAIL else 'not measured'} ✗"
    if goal.peer is not None:
        if not isinstance(theirs, (int, float)) or theirs == 0:
            state = "failed" if theirs == FAIL else "not measured"
            return f"{goal.text}: {goal.peer} {state}"
        value = mine / theirs
        shown = f"{value:.2f}x"
    else:
        value = mine
        shown = f"{value:,.{metric.digits}f}"
    met = _holds(value, goal.relation, goal.threshold)
    # Run by run: run i of ours against run i of the peer (interleaved).
    mine_runs = run_values(results, metric, REFERENCE)
    theirs_runs = run_values(results, metric, goal.peer) if goal.peer else None
    runs = ""
    if isinstance(mine_runs, list):
        if goal.peer is None:
            checks = [_holds(v, goal.relation, goal.threshold) for _, v in mine_runs]
        elif isinstance(theirs_runs, list):
            peer = dict(theirs_runs)
            checks = [
                _holds(v / peer[r], goal.relation, goal.threshold)
                for r, v in mine_runs
                if peer.get(r)
            ]
        else:
            checks = []
        if checks:
            runs = f" ({sum(checks)}/{len(checks)} runs)"
    note = _idle_note(results) if goal.key == "idle_kib_per_tunnel" else ""
    note += _unsteady(results, metric, [REFERENCE, goal.peer])
    return f"{goal.text}: {shown} {'✓' if met else '✗'}{runs}{note}"


#: Runs of one figure further apart than this (highest / lowest) were
#: disturbed: a verdict resting on them is flagged.
UNSTEADY = 1.5


def _unsteady(results: dict[str, Any], metric: Metric, names: list[str | None]) -> str:
    """A warning when the runs of C{metric} of C{names} vary beyond L{UNSTEADY}."""
    parts = []
    for name in names:
        if name is None:
            continue
        values = run_values(results, metric, name)
        if not isinstance(values, list):
            continue
        numbers = [v for _, v in values]
        if min(numbers) > 0 and max(numbers) / min(numbers) > UNSTEADY:
            parts.append(f"runs of {name} vary {max(numbers) / min(numbers):.1f}x")
    return f" ⚠ {', '.join(parts)}: disturbed" if parts else ""


def goal_lines(results: dict[str, Any]) -> list[str]:
    """
    One line per issue target: the metric, the target and whether it is
    met; then the multi-core comparison (L{multicore_line}) and twistd
    against the launcher (L{twistd_line}).
    """
    summary = summarise(results)
    return [
        f"{_BY_KEY[goal.key].label}: {evaluate(goal, results, summary)}"
        for goal in GOALS
        # The second congestion-control pass runs only on machines whose
        # default is not the reference.
        if _BY_KEY[goal.key].section != "throughput_machine_cc"
        or "throughput_machine_cc" in results
    ] + [
        multicore_line(results, summary),
        twistd_line(results, summary),
        *baseline_lines(summary),
    ]


def baseline_lines(summary: dict[str, Any]) -> list[str]:
    """
    Ours against L{BASELINE} (an earlier tree, when the run measured one):
    per-session CPU and memory per idle tunnel as ratios with ✓/✗ against
    L{BASELINE_LIMIT}, throughput and CPU per GiB as plain ratios (noise).
    """
    if BASELINE not in summary:
        return []
    lines = []
    for key, limit in (
        ("socks4_cpu_us", BASELINE_LIMIT),
        ("socks4a_cpu_us", BASELINE_LIMIT),
        ("idle_kib_per_tunnel", BASELINE_LIMIT),
        ("upload_mib_s", None),
        ("download_mib_s", None),
        ("upload_cpu_s_per_gib", None),
        ("download_cpu_s_per_gib", None),
    ):
        metric = _BY_KEY.get(key)
        if metric is None:
            continue
        mine = summary.get(REFERENCE, {}).get(key)
        theirs = summary[BASELINE].get(key)
        head = f"ours / {BASELINE}, {metric.label}"
        if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)):
            lines.append(f"{head}: not measured")
            continue
        ratio = mine / theirs if theirs else float("inf")
        text = f"{head}: {mine:,.2f} / {theirs:,.2f} = {ratio:.3f}x"
        if limit is not None:
            text += f" (≤ {limit:.2f}x) {'✓' if ratio <= limit else '✗'}"
        lines.append(text)
    return lines


def twistd_line(results: dict[str, Any], summary: dict[str, Any]) -> str:
    """
    Ours under C{twistd -n socks} against the launcher: server CPU per
    session of L{TWISTD} over ours (medians, and run by run), SOCKS4 and
    SOCKS4A, with ✓/✗ against L{TWISTD_CPU_LIMIT}.
    """
    head = (
        f"`twistd socks` against the launcher ({TWISTD} / ours, server CPU "
        f"per session, ≤ {TWISTD_CPU_LIMIT:.2f}x)"
    )
    if TWISTD not in summary:
        return f"{head}: not measured in this run (target {TWISTD} not selected)"
    parts = []
    for mode, label in (("socks4", "SOCKS4"), ("socks4a", "SOCKS4A")):
        metric = _BY_KEY[f"{mode}_cpu_us"]
        mine = summary.get(REFERENCE, {}).get(metric.key)
        theirs = summary[TWISTD].get(metric.key)
        if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)):
            state = FAIL if FAIL in (mine, theirs) else "not measured"
            parts.append(f"{label} {state}")
            continue
        ratio = theirs / mine if mine else float("inf")
        mark = "✓" if ratio <= TWISTD_CPU_LIMIT else "✗"
        text = f"{label} {theirs:,.0f} / {mine:,.0f} us = {ratio:.2f}x {mark}"
        mine_runs = run_values(results, metric, REFERENCE)
        theirs_runs = run_values(results, metric, TWISTD)
        if isinstance(mine_runs, list) and isinstance(theirs_runs, list):
            one = dict(mine_runs)
            ratios = [f"{v / one[r]:.2f}" for r, v in theirs_runs if one.get(r)]
            if len(ratios) > 1:
                text += f" (runs {', '.join(ratios)})"
        parts.append(text)
    return f"{head}: {'; '.join(parts)}"


def _mean_pct(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [run[field] for run in runs if run.get(field) is not None]
    return statistics.mean(values) if values else None


def multicore_line(results: dict[str, Any], summary: dict[str, Any]) -> str:
    """
    C{--workers 2} against one process: sessions/s of L{WORKERS} over ours
    (medians, and run by run), with the CPU per session, the machine's cores
    and what else used them meanwhile.  A figure, not a verdict: on a
    machine with few cores the load generator and the destination take the
    cores the workers would use.
    """
    head = "multi-core, `--workers 2` against 1 (ours-w2 / ours)"
    if WORKERS not in summary:
        return f"{head}: not measured in this run (target {WORKERS} not selected)"
    parts = []
    for mode, label in (("socks4", "SOCKS4"), ("socks4a", "SOCKS4A")):
        metric = _BY_KEY[f"{mode}_sessions_s"]
        mine = summary.get(REFERENCE, {}).get(metric.key)
        theirs = summary[WORKERS].get(metric.key)
        if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)):
            state = FAIL if FAIL in (mine, theirs) else "not measured"
            parts.append(f"{label} sessions/s {state}")
            continue
        text = f"{label} sessions/s {theirs:,.0f} / {mine:,.0f} = {theirs / mine:.2f}x"
        mine_runs = run_values(results, metric, REFERENCE)
        theirs_runs = run_values(results, metric, WORKERS)
        if isinstance(mine_runs, list) and isinstance(theirs_runs, list):
            one = dict(mine_runs)
            ratios = [f"{v / one[r]:.2f}" for r, v in theirs_runs if one.get(r)]
            if len(ratios) > 1:
                text += f" (runs {', '.join(ratios)})"
        cpu_key = f"{mode}_cpu_us"
        cpu_mine = summary.get(REFERENCE, {}).get(cpu_key)
        cpu_theirs = summary[WORKERS].get(cpu_key)
        if isinstance(cpu_mine, (int, float)) and isinstance(cpu_theirs, (int, float)):
            text += (
                f", server CPU {cpu_theirs:,.0f} vs {cpu_mine:,.0f} us/session "
                "(the supervisor included)"
            )
        parts.append(text)
    # Dante is a tree of processes too: the like-for-like comparison.
    metric = _BY_KEY["socks4_sessions_s"]
    workers = summary[WORKERS].get(metric.key)
    dante = summary.get("dante", {}).get(metric.key)
    if isinstance(workers, (int, float)) and isinstance(dante, (int, float)) and dante:
        parts.append(
            f"against Dante (also several processes): SOCKS4 sessions/s "
            f"{workers:,.0f} / {dante:,.0f} = {workers / dante:.2f}x"
        )
    cores = results["meta"].get("nproc", "?")
    runs = results.get("handshake", {}).get(WORKERS, {}).get("socks4", {})
    shares = {
        field: _mean_pct(runs.get("runs", []), f"{field}_cpu_pct")
        for field in ("server", "client", "destination")
    }
    context = f"on {cores} cores"
    if None not in shares.values():
        context += (
            f", shared during ours-w2's SOCKS4 runs by the server tree "
            f"({shares['server']:.0f}% of a core), the load generator "
            f"({shares['client']:.0f}%) and the echo destination "
            f"({shares['destination']:.0f}%)"
        )
    if isinstance(cores, int) and cores <= 4:
        context += (
            ": the load generator and the destination run on the same cores "
            "as the workers, so this shows what a second worker gains on this "
            "machine, not how the server scales with cores"
        )
    return f"{head}: {'; '.join(parts)}; {context}"


# -- tables -------------------------------------------------------------------------


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


def _measures(results: dict[str, Any], name: str, metric: Metric) -> bool:
    """
    Whether target C{name} takes part in C{metric}'s section (results
    written before targets had sections: every target takes part in all).
    """
    for target in results["targets"]:
        if target["name"] == name and "sections" in target:
            section = _SECTION_OF.get(metric.section, metric.section)
            return section in target["sections"]
    return True


def _rows(
    results: dict[str, Any], names: list[str]
) -> tuple[list[str], list[list[str]]]:
    summary = summarise(results)
    others = [name for name in names if name != REFERENCE]
    goals = {goal.key: goal for goal in GOALS}
    header = ["metric", *names]
    if REFERENCE in names:
        header += [f"{REFERENCE} / {other}" for other in others]
        header.append("issue #8 target")
    rows = []
    for metric in METRICS:
        values = [summary.get(name, {}).get(metric.key) for name in names]
        if all(value is None for value in values):
            continue
        row = [metric.label] + [
            _format(value, metric.digits)
            if value is not None or _measures(results, name, metric)
            else NOT_MEASURED
            for name, value in zip(names, values, strict=True)
        ]
        if REFERENCE in names:
            mine = summary.get(REFERENCE, {}).get(metric.key)
            for other in others:
                theirs = summary.get(other, {}).get(metric.key)
                row.append(_ratio(mine, theirs) if metric.better else "")
            goal = goals.get(metric.key)
            row.append(evaluate(goal, results, summary) if goal else "")
        rows.append(row)
    return header, rows


def _spread_rows(
    results: dict[str, Any], names: list[str]
) -> tuple[list[str], list[list[str]]]:
    spread = spreads(results)
    header = ["metric (min / median / max)", *names]
    rows = []
    for metric in METRICS:
        cells = []
        for name in names:
            triple = spread.get(name, {}).get(metric.key)
            if triple is None:
                cells.append("")
            else:
                cells.append(" / ".join(_format(v, metric.digits) for v in triple))
        if any(cells):
            rows.append([metric.label, *cells])
    return header, rows


def _text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(results: dict[str, Any], names: list[str]) -> str:
    """The tables (medians and ratios; the spread) as plain text."""
    return (
        _text(*_rows(results, names))
        + "\n\nspread of the runs\n"
        + _text(*_spread_rows(results, names))
    )


def markdown_table(results: dict[str, Any], names: list[str]) -> str:
    """The table of medians and ratios in Markdown."""
    return _markdown(*_rows(results, names))


def markdown_spread(results: dict[str, Any], names: list[str]) -> str:
    """The table of spreads in Markdown."""
    return _markdown(*_spread_rows(results, names))


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
    throughput = [
        (name, direction, record, suffix)
        for section, suffix in (
            ("throughput", ""),
            ("throughput_machine_cc", f", {MACHINE_CC}"),
        )
        for name, directions in results.get(section, {}).items()
        for direction, record in directions.items()
    ]
    for name, direction, record, suffix in throughput:
        runs = record["runs"]
        if not runs or "other_cpu_pct" not in runs[0]:
            continue
        text = f"{name} {direction}{suffix}: "
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


_PROFILE_TITLES = {
    "socks4": "SOCKS4 handshakes",
    "socks4a": "SOCKS4A handshakes",
    "socks5": "SOCKS5 sessions (no auth)",
    "throughput": "Throughput",
}


def _profile_markdown(results: dict[str, Any]) -> list[str]:
    profiles = results.get("profile") or {}
    if not profiles:
        return ["(not run)", ""]
    out = [
        "py-spy sampled a fresh server of ours (not one of the timed ones) "
        "while the load generator ran each load; the figures measured meanwhile "
        "are not reported. Only samples in which a thread was running count "
        "(time idle in `epoll_wait` does not), and a C function such as a "
        "socket `send` is charged to the Python function calling it. "
        "**Inclusive** is the share of samples with the function anywhere on "
        "the stack (cProfile's cumulative time); **self** the share with it at "
        "the top. Functions of this project are in bold. Raw stacks: the "
        "`profile-*.txt` files of the run directory (collapsed-stack format, "
        "for `flamegraph.pl` or speedscope).",
        "",
    ]
    for name, profile in profiles.items():
        out += [
            f"### {_PROFILE_TITLES.get(name, name)}",
            "",
            f"Load: {profile['load']}. {profile['samples']:,} samples at "
            f"{profile['rate']}/s over {profile['seconds']:.1f} s "
            f"({profile['busy_pct']:.0f}% of the time running, all threads); "
            f"{profile['ours_inclusive_pct']:.0f}% of the samples have a frame "
            "of `twisted_socks` on the stack.",
            "",
            "| where the time goes | share of samples |",
            "|:---|---:|",
        ]
        out += [f"| {area} | {pct:.1f}% |" for area, pct in profile["areas"]]
        for kind, limit in (("inclusive", 20), ("self", 15)):
            rows = profile[kind]
            heading = f"Top {limit} by {kind} share"
            if kind == "inclusive" and rows:
                # The start-up frames (launcher or twistd) and the reactor's
                # main loop are on every stack of the main thread: no
                # information.
                top = rows[0][2]
                rows = [row for row in rows if row[2] < 0.99 * top]
                heading += (
                    " (left out: the start-up and main-loop frames, on "
                    f"every stack of the main thread, {top:.0f}% of the samples)"
                )
            out += [
                "",
                heading + ":",
                "",
                f"| # | function | file | {kind} |",
                "|---:|:---|:---|---:|",
            ]
            for rank, (function, file, pct) in enumerate(rows[:limit], start=1):
                cell = f"`{function}`"
                if file.startswith("twisted_socks/"):
                    cell = f"**{cell}**"
                out.append(f"| {rank} | {cell} | `{file}` | {pct:.1f}% |")
        out.append("")
    return out


def _idle_counts(results: dict[str, Any]) -> str:
    parts = []
    for name, record in results.get("idle", {}).items():
        runs = record.get("runs", [])
        if runs:
            counts = sorted({run.get("echoed", 0) for run in runs})
            processes = max(run.get("processes", 1) for run in runs)
            text = f"{name} {', '.join(f'{c:,}' for c in counts)}"
            if processes > 1:
                text += f" ({processes:,} processes)"
            parts.append(text)
    return "; ".join(parts)


#: Other processes using more than this (% of one core, on average over the
#: timed runs) make the run a disturbed one.
DISTURBED_PCT = 25.0


def disturbance_line(results: dict[str, Any]) -> str:
    """A warning when other processes used much CPU during the timed runs."""
    shares: dict[str, list[float]] = {}
    for section in ("throughput", "handshake"):
        for modes in results.get(section, {}).values():
            for record in modes.values():
                shares.setdefault(section, []).extend(
                    run["other_cpu_pct"]
                    for run in record.get("runs", [])
                    if "other_cpu_pct" in run
                )
    means = {k: statistics.mean(v) for k, v in shares.items() if v}
    if not means or max(means.values()) <= DISTURBED_PCT:
        return ""
    during = ", ".join(
        f"{mean:.0f}% in the {name} runs" for name, mean in means.items()
    )
    return (
        f"Disturbed run: other processes used on average {during} (% of one "
        "core; see CPU use below). Rates and latencies are held back unevenly; "
        "the CPU-per-work and memory figures are the ones to trust."
    )


def _congestion_note(meta: dict[str, Any]) -> str:
    """Which TCP congestion control the throughput rows were measured under."""
    info = meta.get("congestion_control")
    if not info or not info.get("throughput"):
        return ""
    text = f", under TCP congestion control {info['throughput']}"
    if info.get("throughput_machine_cc"):
        text += (
            f" (Linux's and Debian's default), and again under this machine's "
            f"default, {info['throughput_machine_cc']} (the rows marked "
            f'"{MACHINE_CC}"): see the README on why'
        )
    elif info.get("error"):
        text += f" (this machine's default; switching failed: {info['error']})"
    return text


def _version(text: str) -> str:
    """The version number in a tool's C{--version} line (or the line)."""
    match = re.search(r"\d+\.\d+(\.\d+)?", text)
    return match.group(0) if match else text


def _slow_baselines(results: dict[str, Any]) -> str:
    parts = []
    for name, record in results.get("slowread", {}).items():
        values = [run["server_rss_before_kib"] for run in record.get("runs", [])]
        if values:
            parts.append(f"{name} {statistics.median(values) / 1024:.1f} MiB")
    return "; ".join(parts)


def _launcher_note(results: dict[str, Any]) -> str:
    """
    The lean launcher against twistd: their idle RSS if this run measured
    them; nothing for results older than the launcher.
    """
    if "launchers" not in results:
        return ""
    text = (
        "- The `ours` columns run the lean launcher (`python -m twisted_socks "
        "serve`). Under `twistd -n socks` the same server also carries what "
        "twistd's plugin scan imports: every plugin module and, through "
        "Twisted's endpoints, the TLS stack (pyOpenSSL, cryptography)"
    )
    measured = results["launchers"]
    if {"launcher", "twistd"} <= measured.keys():
        launcher, twistd = measured["launcher"], measured["twistd"]
        text += (
            f". Measured in this run, a fresh server each after "
            f"{launcher['warmup']} warm-up tunnels: launcher "
            f"{launcher['rss_kib'] / 1024:.1f} MiB RSS "
            f"({launcher['pss_kib'] / 1024:.1f} MiB PSS), twistd "
            f"{twistd['rss_kib'] / 1024:.1f} MiB RSS "
            f"({twistd['pss_kib'] / 1024:.1f} MiB PSS)."
        )
    else:
        text += " (not measured in this run: the memory section measures both)."
    return text


def markdown_results(results: dict[str, Any]) -> str:
    """The whole of C{bench/RESULTS.md} for one run."""
    meta, params = results["meta"], results["params"]
    names = [target["name"] for target in results["targets"]]
    arguments = meta["command"].removeprefix("bench/bench.py").strip()
    command = ".venv/bin/python bench/bench.py" + (f" {arguments}" if arguments else "")
    peers = meta.get("peers", {})
    repeats = params["repeats"]
    memory_repeats = params.get("memory_repeats", repeats)
    out = [
        "# Benchmark results",
        "",
        f"Generated by `{command}` on {meta['date']}, in "
        f"{meta['wall_seconds'] / 60:.1f} minutes. What each figure "
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
        f"- Memory: {meta['mem_total_mib']:,} MiB; kernel {meta['kernel']}; "
        f"open-file limit {meta.get('fd_limit', '?'):,} (hard "
        f"{meta.get('fd_hard_limit', meta.get('fd_limit', 0)):,})",
        f"- Python {meta['python']}, Twisted {meta['twisted']}, "
        f"twisted-socks {meta['twisted_socks']} at {meta['git']}",
    ]
    if peers:
        out.append(
            "- Peers: "
            + ", ".join(f"{name} {_version(text)}" for name, text in peers.items())
        )
    out += [
        "",
        "## Parameters",
        "",
        f"- throughput: one stream of {params['size_mib']:,} MiB per direction, "
        f"SOCKS4 CONNECT to 127.0.0.1, {repeats} runs{_congestion_note(meta)}",
        f"- slow reader: one download of {params.get('slow_size_mib', 0):,} MiB "
        f"read by the client at {params.get('slow_rate_mib_s', 0):g} MiB/s "
        f"through a fresh server per target, {repeats} runs",
        f"- handshakes: {params['concurrency']} concurrent clients for "
        f"{params['duration']:g} s per run, {repeats} runs; "
        "a session is connect, request, 8-byte reply, 1-byte echo of `q`, "
        "after which the destination closes and the proxy passes the close "
        "on; latency covers all of it",
        f"- idle memory: {params['tunnels']:,} tunnels requested, server memory "
        "delta over a fresh server's baseline (taken after 20 warm-up "
        f"tunnels), {memory_repeats} runs, each with fresh servers; every "
        "tunnel must echo a byte before the second reading",
        f"- profile: py-spy at {params.get('profile_rate', 0)} samples/s",
        "",
        "## Targets",
        "",
    ]
    out += [f"- **{t['name']}**: {t['description']}" for t in results["targets"]]
    out += [
        "",
        "## Issue #8 targets",
        "",
        "Each judged on the medians of this run (✓ met, ✗ not met); in "
        "brackets, in how many runs it held, run *i* of ours against run *i* "
        f"of the peer; ⚠ where the runs of a side vary more than {UNSTEADY}x "
        "(the machine was busy: see CPU use below).",
        "",
    ]
    disturbance = disturbance_line(results)
    if disturbance:
        out += [f"**{disturbance}**", ""]
    out += [f"- {line}" for line in goal_lines(results)]
    out += [
        "",
        "## Results",
        "",
        "Medians of the runs (peak memory: the highest run; errors: the sum). "
        "Ratio columns divide the `ours` column by each other column: above 1 "
        "is better for rates (MiB/s, sessions/s), below 1 is better for times, "
        "CPU and memory. A server's CPU and memory are those of its whole "
        f"process tree. {NOT_MEASURED}: not measured for that target (the "
        "variants of ours are measured only where they differ from it).",
        "",
        markdown_table(results, names),
        "",
        "## Spread of the runs",
        "",
        "min / median / max of the runs of each figure.",
        "",
        markdown_spread(results, names),
        "",
        "## Notes on this run",
        "",
    ]
    counts = _idle_counts(results)
    if counts:
        out.append(
            f"- Idle tunnels verified per run: {counts}. A one-process server "
            "needs two descriptors per tunnel; the open-file hard limit "
            f"({meta.get('fd_hard_limit', '?'):,}) cannot be raised here (no "
            "CAP_SYS_RESOURCE), so those servers hold as many tunnels as it "
            "allows, a few short of 10,000."
        )
    launcher = _launcher_note(results)
    if launcher:
        out.append(launcher)
    baselines = _slow_baselines(results)
    if baselines:
        out.append(
            "- Server RSS just before the slow download (a fresh server, after "
            f"an 8 MiB warm-up): {baselines}. The peak includes it; the growth "
            "row is the peak less it, i.e. what the transfer itself buffered."
        )
    out += [
        "- Dante's RSS is summed over its processes (mother, negotiate, "
        "request and one I/O child per 32 sessions), so pages its processes "
        "share (libc, the binary) count once per process; PSS shares them out "
        "and is the fairer figure for a forking server. For a one-process "
        "server RSS is the figure (PSS moves with other processes mapping the "
        "same libraries).",
        "- pproxy answers 90 before it connects to the destination and "
        "closes both sides on the first EOF (no half-close); it has no "
        "SOCKS4A. Dante has no SOCKS4A either.",
        "",
        "## Profile of our server",
        "",
    ]
    out += _profile_markdown(results)
    out += [
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
    out += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "./dev bench --write-results        # or:",
        f"{command}",
        "```",
        "",
    ]
    return "\n".join(out)
