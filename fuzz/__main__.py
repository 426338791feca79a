"""
The long fuzzing run: C{python -m fuzz} from the checkout's root.

For each target (C{codec}, C{ident}, C{rules}, and the SOCKS5 ones:
C{socks5-greeting}, C{socks5-auth}, C{socks5-request}, C{socks5-udp},
C{socks5-reply}) it runs a coverage-guided
phase, then a faster mutation phase that continues from the corpus the first
phase built, and writes one JSON report with the inputs tried, the time
taken, the outcomes and every contract violation found (the first input of
each distinct one).  The exit status is 1 if anything was found.

    .venv/bin/python -m fuzz                               # 5,000,000 per target
    .venv/bin/python -m fuzz --inputs 200000 --target codec
    .venv/bin/python -m fuzz --output fuzz/results/run.json --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fuzz.targets import ROOT, TARGETS, Report, fuzz


def _commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "twisted_socks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return result.stdout.strip() + (" (library code modified)" if dirty else "")


def _progress(phase: str) -> Any:
    def show(report: Report) -> None:
        rate = report.inputs / report.seconds if report.seconds else 0
        print(
            f"  {report.target} {phase}: {report.inputs:,} inputs, "
            f"{report.seconds:.0f} s ({rate:,.0f}/s), corpus {report.corpus}, "
            f"violations {report.violations}",
            flush=True,
        )

    return show


def main(argv: list[str] | None = None) -> int:
    """Run the long fuzzing campaign; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument(
        "--target",
        action="append",
        choices=sorted(TARGETS),
        help="a target to fuzz (repeatable; default: all)",
    )
    parser.add_argument(
        "--inputs", type=int, default=5_000_000, help="inputs per target, in all"
    )
    parser.add_argument(
        "--coverage-inputs",
        type=int,
        default=1_000_000,
        help="of those, how many the coverage-guided phase tries",
    )
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "fuzz" / "results" / "long-run.json",
        help="where to write the JSON report",
    )
    args = parser.parse_args(argv)
    names = args.target or list(TARGETS)
    started = time.monotonic()
    record: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "seed": args.seed,
        "targets": {},
    }
    found = 0
    for name in names:
        target = TARGETS[name]
        coverageInputs = min(args.coverage_inputs, args.inputs)
        corpus: list[bytes] = []
        phases = []
        modes = []
        print(f"{name}: {args.inputs:,} inputs", flush=True)
        if coverageInputs:
            modes.append("coverage-guided")
            phases.append(
                fuzz(
                    target,
                    coverageInputs,
                    args.seed,
                    coverage=True,
                    progress=_progress("coverage-guided"),
                    corpus=corpus,
                )
            )
        rest = args.inputs - coverageInputs
        if rest:
            modes.append("mutation")
            phases.append(
                fuzz(
                    target,
                    rest,
                    args.seed + 1,
                    progress=_progress("mutation"),
                    progressEvery=500_000,
                    corpus=corpus,
                )
            )
        findings: dict[str, Any] = {}
        for phase in phases:
            for finding in phase.asDict()["findings"]:
                findings.setdefault(finding["key"], finding)
        record["targets"][name] = {
            "inputs": sum(p.inputs for p in phases),
            "seconds": round(sum(p.seconds for p in phases), 1),
            "violations": sum(p.violations for p in phases),
            "findings": list(findings.values()),
            "phases": [
                {"mode": mode}
                | {k: v for k, v in p.asDict().items() if k != "findings"}
                for mode, p in zip(modes, phases, strict=True)
            ],
        }
        found += len(findings)
        summary = record["targets"][name]
        print(
            f"{name}: {summary['inputs']:,} inputs in {summary['seconds']} s, "
            f"{summary['violations']} violations, {len(findings)} distinct",
            flush=True,
        )
        for key in findings:
            print(f"  found: {key}", flush=True)
    record["seconds"] = round(time.monotonic() - started, 1)
    record["inputs"] = sum(t["inputs"] for t in record["targets"].values())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"report: {args.output}", flush=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
