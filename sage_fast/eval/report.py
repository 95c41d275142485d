"""Accuracy tables from result rows: overall, by video duration, question type, difficulty, modality, direct vs multi-turn.

SAGE-Bench results are read by duration bucket (the paper's claim is about long videos) and by
whether the agent answered at Stage-1 or went on with tools (DESIGN.md §2), so those are the cells
here, each with its count: an accuracy over three questions is not one over three hundred. Works on
our rows and on the reference code's per-sample results (the cells their fields allow).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

# [low, high) seconds, as the reference code buckets them
DURATION_BUCKETS: tuple[tuple[float, float, str], ...] = (
    (0, 60, "0-60s"), (60, 180, "60-180s"), (180, 300, "180-300s"), (300, 600, "300-600s"),
    (600, 1200, "600-1200s"), (1200, 2400, "1200-2400s"), (2400, math.inf, "2400+s"))
UNKNOWN = "unknown"
GROUPS = (("by_duration", "By video duration"), ("by_ques_type", "By question type"),
          ("by_difficulty", "By difficulty"), ("by_modality", "By modality"),
          ("by_answer_stage", "Direct (Stage-1) vs multi-turn"))


def duration_bucket(duration: Any) -> str:
    """The bucket label of a duration in seconds; ``unknown`` when missing or not positive."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0:
        return UNKNOWN
    return next(label for low, high, label in DURATION_BUCKETS if low <= duration < high)


def tool_call_count(row: dict[str, Any]) -> int:
    """Tool calls of a row: ours count them, the reference rows only keep per-type counts."""
    if isinstance(row.get("num_tool_calls"), int):
        return row["num_tool_calls"]
    types = row.get("tool_call_types")
    if isinstance(types, dict):
        return sum(int(v) for v in types.values())
    return len(types) if isinstance(types, list) else 0


def answer_stage(row: dict[str, Any]) -> str | None:
    """``direct``, ``multi-turn`` or ``error``; None for rows that do not record it."""
    if row.get("error"):
        return "error"
    if "direct" not in row:
        return None
    return "direct" if row["direct"] else "multi-turn"


def _cell(correct: int, total: int) -> dict[str, Any]:
    return {"correct": correct, "total": total, "accuracy": correct / total if total else None}


def _group(rows: list[dict[str, Any]], key_of: Any, order: list[str] | None = None) -> dict[str, dict[str, Any]]:
    totals: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for row in rows:
        key = key_of(row)
        if key is None:
            continue
        totals[key] += 1
        correct[key] += bool(row.get("is_correct"))
    keys = [k for k in (order or []) if k in totals] + sorted(k for k in totals if k not in (order or []))
    return {key: _cell(correct[key], totals[key]) for key in keys}


def _field(name: str) -> Any:
    def key_of(row: dict[str, Any]) -> str:
        value = row.get(name)
        return UNKNOWN if value is None or value == "" else str(value)
    return key_of


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and accuracies (fractions in [0, 1]) of result rows; every cell has ``correct``,
    ``total`` and ``accuracy``."""
    rows = list(rows)
    correct = sum(bool(r.get("is_correct")) for r in rows)
    seconds = [float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), (int, float))]
    tools: Counter[str] = Counter()
    for row in rows:
        types = row.get("tool_call_types")
        tools.update(types if isinstance(types, dict) else Counter(types or []))
    return {
        "overall": _cell(correct, len(rows)),
        "none_predictions": sum(r.get("answer") is None for r in rows),
        "could_not_produce": sum(bool(r.get("could_not_produce")) for r in rows),
        "errors": sum(bool(r.get("error")) for r in rows),
        "mean_tool_calls": sum(tool_call_count(r) for r in rows) / len(rows) if rows else None,
        "mean_seconds": sum(seconds) / len(seconds) if seconds else None,
        "tool_types": dict(tools.most_common()),
        "by_duration": _group(rows, lambda r: duration_bucket(r.get("duration")),
                              [label for _, _, label in DURATION_BUCKETS] + [UNKNOWN]),
        "by_ques_type": _group(rows, _field("ques_type"), ["mcq", "open_ended"]),
        "by_difficulty": _group(rows, _field("difficulty"), ["easy", "medium", "hard", "very hard"]),
        "by_modality": _group(rows, _field("modality"), ["visual", "verbal", "both"]),
        "by_answer_stage": _group(rows, answer_stage, ["direct", "multi-turn", "error"]),
    }


def _percent(cell: dict[str, Any]) -> str:
    accuracy = "   -  " if cell["accuracy"] is None else f"{100 * cell['accuracy']:5.1f}%"
    return f"{accuracy}  ({cell['correct']}/{cell['total']})"


def format_report(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table for a terminal."""
    lines = [f"Accuracy {_percent(summary['overall'])}",
             f"no answer {summary['none_predictions']}, could not produce {summary['could_not_produce']}, "
             f"episode errors {summary['errors']}"]
    if summary["mean_tool_calls"] is not None:
        lines.append(f"mean tool calls {summary['mean_tool_calls']:.2f}"
                     + (f", mean seconds {summary['mean_seconds']:.1f}" if summary["mean_seconds"] is not None else ""))
    if summary["tool_types"]:
        lines.append("tools: " + ", ".join(f"{name} {count}" for name, count in summary["tool_types"].items()))
    for key, title in GROUPS:
        cells = summary[key]
        if not cells:
            continue
        width = max(len(name) for name in cells)
        lines += ["", title] + [f"  {name:<{width}}  {_percent(cell)}" for name, cell in cells.items()]
    return "\n".join(lines)
