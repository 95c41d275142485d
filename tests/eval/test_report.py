"""Accuracy tables checked against a plain loop written here, independently of the module's grouping code."""

from __future__ import annotations

import random

from sage_fast.eval.report import format_report, summarize

EDGES = [0, 60, 180, 300, 600, 1200, 2400]
LABELS = ["0-60s", "60-180s", "180-300s", "300-600s", "600-1200s", "1200-2400s", "2400+s"]


def make_rows(seed: int = 7, n: int = 300) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        names = rng.choices(["extract_parts_from_timestamp", "verbal_transcript", "unified_web_search"],
                            k=rng.randrange(0, 4))
        error = "RuntimeError: broken video" if rng.random() < 0.05 else None
        rows.append({
            "id": str(k), "is_correct": rng.random() < 0.6 and error is None,
            "answer": None if error else f"a{k}",
            "duration": rng.choice([None, 0, 59.999, 60, 179.5, 180, 299, 300, 600, 1199, 1200, 2399.9, 2400, 7200,
                                    rng.uniform(1, 5000)]),
            "ques_type": rng.choice(["mcq", "open_ended"]), "difficulty": rng.choice(["easy", "medium", "hard", None]),
            "modality": rng.choice(["visual", "verbal", "both"]), "direct": rng.random() < 0.3,
            "num_tool_calls": len(names), "tool_call_types": {n: names.count(n) for n in set(names)},
            "seconds": rng.uniform(1, 100), "error": error, "could_not_produce": rng.random() < 0.1,
        })
    return rows


def reference_bucket(duration) -> str:  # noqa: ANN001
    if duration is None or duration <= 0:
        return "unknown"
    label = LABELS[0]
    for edge, name in zip(EDGES, LABELS, strict=True):
        if duration >= edge:
            label = name
    return label


def reference_cells(rows: list[dict], key) -> dict:  # noqa: ANN001
    cells: dict = {}
    for row in rows:
        name = key(row)
        correct, total = cells.get(name, (0, 0))
        cells[name] = (correct + (1 if row["is_correct"] else 0), total + 1)
    return cells


def as_pairs(group: dict) -> dict:
    return {name: (cell["correct"], cell["total"]) for name, cell in group.items()}


def test_summary_equals_a_plain_loop() -> None:
    rows = make_rows()
    summary = summarize(rows)
    n = len(rows)
    assert summary["overall"]["total"] == n
    assert summary["overall"]["correct"] == len([r for r in rows if r["is_correct"]])
    assert summary["overall"]["accuracy"] == summary["overall"]["correct"] / n
    assert as_pairs(summary["by_duration"]) == reference_cells(rows, lambda r: reference_bucket(r["duration"]))
    assert as_pairs(summary["by_ques_type"]) == reference_cells(rows, lambda r: r["ques_type"])
    assert as_pairs(summary["by_difficulty"]) == reference_cells(rows, lambda r: r["difficulty"] or "unknown")
    assert as_pairs(summary["by_modality"]) == reference_cells(rows, lambda r: r["modality"])
    stage = reference_cells(rows, lambda r: "error" if r["error"] else "direct" if r["direct"] else "multi-turn")
    assert as_pairs(summary["by_answer_stage"]) == stage
    for cells in (summary["by_duration"], summary["by_modality"]):
        for cell in cells.values():
            assert cell["accuracy"] == cell["correct"] / cell["total"]
    total_calls = 0
    for row in rows:
        total_calls += row["num_tool_calls"]
    assert abs(summary["mean_tool_calls"] - total_calls / n) < 1e-12
    assert abs(summary["mean_seconds"] - sum(r["seconds"] for r in rows) / n) < 1e-9
    assert summary["errors"] == len([r for r in rows if r["error"]])
    assert summary["none_predictions"] == summary["errors"]
    assert summary["could_not_produce"] == len([r for r in rows if r["could_not_produce"]])
    assert sum(summary["tool_types"].values()) == total_calls


def test_bucket_edges_follow_the_reference() -> None:
    rows = [{"is_correct": True, "duration": d} for d in (59.9, 60, 600, 2399, 2400)]
    assert as_pairs(summarize(rows)["by_duration"]) == {"0-60s": (1, 1), "60-180s": (1, 1), "600-1200s": (1, 1),
                                                        "1200-2400s": (1, 1), "2400+s": (1, 1)}
    assert list(summarize(rows)["by_duration"]) == ["0-60s", "60-180s", "600-1200s", "1200-2400s", "2400+s"]


def test_reference_code_rows() -> None:
    # the published per-sample files: tool counts only per type, no direct flag, no timings
    rows = [{"is_correct": True, "answer": "x", "tool_call_types": {"unified_web_search": 2, "perform_reasoning": 1},
             "used_tool_calls": True, "duration": 95, "ques_type": "open_ended", "difficulty": "hard",
             "modality": "visual"},
            {"is_correct": False, "answer": "y", "tool_call_types": {}, "used_tool_calls": False, "duration": 3317,
             "ques_type": "mcq", "difficulty": "easy", "modality": "both"}]
    summary = summarize(rows)
    assert summary["mean_tool_calls"] == 1.5 and summary["mean_seconds"] is None
    assert summary["by_answer_stage"] == {} and summary["tool_types"] == {"unified_web_search": 2, "perform_reasoning": 1}
    report = format_report(summary)
    assert "Accuracy  50.0%  (1/2)" in report and "Direct" not in report
    assert "60-180s" in report and "2400+s" in report


def test_report_text_carries_every_cell() -> None:
    rows = make_rows(seed=3, n=40)
    summary = summarize(rows)
    report = format_report(summary)
    correct = len([r for r in rows if r["is_correct"]])
    assert f"Accuracy {100 * correct / 40:5.1f}%  ({correct}/40)" in report
    for title in ("By video duration", "By question type", "By difficulty", "By modality", "Direct (Stage-1)"):
        assert title in report
    for name, (right, total) in reference_cells(rows, lambda r: r["modality"]).items():
        line = next(line for line in report.splitlines() if line.strip().startswith(name + " "))
        assert line.strip().endswith(f"{100 * right / total:5.1f}%  ({right}/{total})")


def test_empty() -> None:
    summary = summarize([])
    assert summary["overall"] == {"correct": 0, "total": 0, "accuracy": None}
    assert "(0/0)" in format_report(summary)
