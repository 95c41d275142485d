"""Turns a pytest-benchmark JSON of bench_decode.py into the Markdown tables of bench/RESULTS.md.

Ratios, not raw times, are what carry over between machines, so every row says how many times
faster sage_fast's reference path is than that provider; the machine and library versions go
above the tables because the ratios still depend on them (cores, FFmpeg builds).

    python -m pytest bench/bench_decode.py --benchmark-only --benchmark-json out.json
    python bench/report.py out.json > tables.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PUBLIC_PREFIXES = ("torchcodec", "decord", "pyav")  # the alternatives the targets are measured against


def machine_section(data: dict) -> list[str]:
    m = data.get("machine_info", {})
    lines = ["### Machine", ""]
    lines.append(f"- CPU: {m.get('cpu_model', m.get('processor', '?'))}, {m.get('cores', '?')} cores; "
                 f"Python {m.get('python_version', '?')}; run {data.get('datetime', '?')}")
    for name, version in m.get("library_versions", {}).items():
        lines.append(f"- {name}: {version}")
    if m.get("small_videos"):
        lines.append("- **SAGE_BENCH_SMALL=1: tiny stand-in videos, not the real benchmark**")
    return [*lines, ""]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def timing_table(group: str, rows: list[dict]) -> list[str]:
    """One case's providers, fastest first, with the reference path's speed-up over each."""
    reference = rows[0]["extra_info"].get("reference")
    ref = next((r for r in rows if r["extra_info"].get("provider") == reference), None)
    out = [f"### {group}", "",
           f"| provider | mean (s) | min (s) | rounds | frames/s | {reference} speed-up over it | frames decoded | check |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in sorted(rows, key=lambda r: r["stats"]["mean"]):
        info, mean = row["extra_info"], row["stats"]["mean"]
        speedup = f"{mean / ref['stats']['mean']:.2f}x" if ref else "-"
        decoded = (info.get("decode_stats") or {}).get("frames_decoded", "-")
        check = info.get("check", "")
        if info.get("max_abs_diff"):
            check += f" (max diff {info['max_abs_diff']}, mean {info.get('mean_abs_diff')})"
        out.append(f"| {info.get('provider', row['name'])} | {_fmt(mean)} | {_fmt(row['stats']['min'])} | {row['stats']['rounds']} | "
                   f"{_fmt(info.get('frames_per_s'), 1)} | {speedup} | {decoded} | {check} |")
    return [*out, ""]


def rss_table(group: str, rows: list[dict]) -> list[str]:
    out = [f"### {group}", "", "| provider | peak RSS (MB) | after imports (MB) | peak above imports (MB) | call (s) |",
           "|---|---:|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: r["extra_info"].get("peak_mb", 0)):
        i = row["extra_info"]
        out.append(f"| {i.get('provider')} | {_fmt(i.get('peak_mb'), 0)} | {_fmt(i.get('baseline_mb'), 0)} | "
                   f"{_fmt(i.get('peak_above_baseline_mb'), 0)} | {_fmt(i.get('seconds'), 2)} |")
    return [*out, ""]


def targets_section(groups: dict[str, list[dict]]) -> list[str]:
    """The issue's targets, each with the measured ratio and whether it is met."""
    lines = ["### Targets (issue 3, item 7)", ""]

    def mean(rows: list[dict], provider: str) -> float | None:
        return next((r["stats"]["mean"] for r in rows if r["extra_info"].get("provider") == provider), None)

    def check(label: str, value: float | None, ok: bool | None, unit: str = "x", indent: str = "") -> None:
        verdict = "-" if ok is None else ("met" if ok else "**not met**")
        lines.append(f"{indent}- {label}: {_fmt(value, 2)}{unit if value is not None else ''} ({verdict})")

    for group, rows in groups.items():
        case = rows[0]["extra_info"].get("case")
        if case == "A":
            exact, warm, skim = (mean(rows, p) for p in ("sage_fast exact", "sage_fast exact (warm reader)",
                                                         "sage_fast skim"))
            public = [r for r in rows if r["extra_info"].get("provider", "").startswith(PUBLIC_PREFIXES)]
            best = min(public, key=lambda r: r["stats"]["mean"], default=None)
            floors = [r["stats"]["mean"] for r in rows if r["extra_info"].get("provider", "").startswith("floor")]
            lines.append(f"- {group}:")
            indent = "  "
            if exact and best:
                ratio = best["stats"]["mean"] / exact
                check(f"exact vs best public ({best['extra_info']['provider']}), want >= 1.5", ratio, ratio >= 1.5, indent=indent)
            if exact and floors:
                check("exact (cold) / floor, want <= 1.2", exact / min(floors), exact / min(floors) <= 1.2, indent=indent)
            if warm and floors:
                check("exact (warm reader) / floor, want <= 1.2", warm / min(floors), warm / min(floors) <= 1.2, indent=indent)
            if skim and best:
                ratio = best["stats"]["mean"] / skim
                check(f"skim vs best public ({best['extra_info']['provider']}), want >= 10", ratio, ratio >= 10, indent=indent)
        elif case == "B":
            cached, reopen = mean(rows, "sage_fast open_video (cached)"), mean(rows, "sage_fast reopen per call")
            if cached and reopen:
                check(f"{group}: cached vs reopening per call, want >= 5", reopen / cached, reopen / cached >= 5)
        elif case == "C":
            for row in rows:
                peak = row["extra_info"].get("peak_mb")
                ok = peak is not None and peak < 1536 if row["extra_info"].get("provider") == "sage_fast" else None
                check(f"{group}: {row['extra_info'].get('provider')} peak RSS (sage_fast wants < 1536 MB)",
                      peak, ok, unit=" MB")
    return [*lines, ""]


def render(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench.get("group") or bench["name"]].append(bench)
    lines = machine_section(data)
    for group in sorted(groups):
        rows = groups[group]
        lines += rss_table(group, rows) if rows[0]["extra_info"].get("case") == "C" else timing_table(group, rows)
    lines += targets_section(dict(sorted(groups.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="file written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    print(render(json.loads(args.json.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
