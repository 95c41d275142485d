"""Runs the agent over benchmark items, judges each answer, and appends one result row per item as it finishes.

An evaluation of SAGE-Bench takes hours and fails in the middle for ordinary reasons (a server
restarts, the machine is preempted), so every finished item is on disk at once (appended and
fsynced) and a rerun of the same command skips the ids that already have a row. The episode's
trajectory is written before its answer is judged, so when the judge is what failed, the rerun
judges the stored answer instead of running the episode again. Rows carry the field names of the
reference code's result files (``question``, ``answer``, ``correct_answer``, ``full_answer``,
``is_correct``, ``evaluation_reasoning``, ``none_prediction``, ``could_not_produce``,
``used_tool_calls``, ``tool_call_types``, ``ques_type``, ``difficulty``, ``modality``, ``duration``,
``video_path``) with the same meanings, so a run compares row by row with the published SAGE-MM
results; our additions: ``id``, ``gt_answer``, ``raw_output``, ``num_tool_calls``, ``tool_calls``,
``direct``, ``turns``, ``seconds``, ``tokens_in``, ``tokens_out``, ``error``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_fast.agent.trajectory import Trajectory, append_jsonl, read_jsonl
from sage_fast.eval.datasets import EvalItem
from sage_fast.eval.judge import Judge, JudgeConfig, Verdict
from sage_fast.jsonl import append_lines, read_lines, seal

NO_ANSWER = "The agent gave no answer within its step limit, so it cannot match the ground truth."


@dataclass
class EvalConfig:
    """Where results go and how many episodes run at once."""

    output: str = field(metadata={"help": "results JSONL, one row per item; rerunning resumes it"})
    concurrency: int = field(default=4, metadata={"help": "episodes in flight at once"})
    limit: int | None = field(default=None, metadata={"help": "only the first N items (None: all)"})
    judge: JudgeConfig | None = field(default=None, metadata={
        "help": "the judge to build when run_eval is not handed one"})
    retry_errors: bool = field(default=False, metadata={
        "help": "on resume, run again the items whose episode failed (their rows are replaced), e.g. after "
                "the orchestrator server was down"})
    write_trajectories: bool = field(default=True, metadata={
        "help": "also append each episode's trajectory to <output stem>.trajectories.jsonl (needed to "
                "re-judge without rerunning episodes)"})

    def __post_init__(self) -> None:
        if isinstance(self.judge, dict):  # from a YAML / JSON overlay
            self.judge = JudgeConfig(**self.judge)
        if not self.output:
            raise ValueError("name the results file (output / --out)")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")

    @property
    def trajectories_path(self) -> Path:
        path = Path(self.output)
        stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
        return path.with_name(f"{stem}.trajectories.jsonl")


# ---- result files ------------------------------------------------------------------------------
def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Result rows from our JSONL (a torn last line, left by a crash mid-write, is skipped) or
    from a reference-code results ``.json`` list."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such results file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a JSON list of result rows")
        return rows
    return [row for _, row in read_lines(path, what="JSON result row")]


def _append_row(path: Path, row: dict[str, Any]) -> None:
    append_lines(path, [json.loads(json.dumps(row, default=str))])  # values JSON cannot hold become text


def _stored_trajectories(path: Path) -> dict[str, Trajectory]:
    """Finished episodes of earlier runs by item id (the last one wins); failed ones run again."""
    if not path.is_file():
        return {}
    return {str(t.metadata["id"]): t for t in read_jsonl(path) if "id" in t.metadata and t.error is None}


def _drop_error_rows(path: Path) -> int:
    """Rewrites ``path`` (atomically) without the rows of failed episodes; returns how many went."""
    rows = read_rows(path)
    keep = [row for row in rows if not row.get("error")]
    if len(keep) < len(rows):
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(partial, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in keep)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    return len(rows) - len(keep)


# ---- rows ----------------------------------------------------------------------------------------
def mcq_truth(item: EvalItem) -> tuple[str | None, str]:
    """(option letter or None, answer text) of an item's ground truth, as the reference rows store
    them in ``correct_answer`` and ``full_answer``."""
    options = item.options or []
    letter = item.answer.strip("() .").upper()
    if len(letter) == 1 and 0 <= ord(letter) - ord("A") < len(options):
        return letter, options[ord(letter) - ord("A")]
    for index, option in enumerate(options):
        if option.strip().lower() == item.answer.strip().lower():
            return chr(ord("A") + index), option
    return None, item.answer


def make_row(item: EvalItem, trajectory: Trajectory, verdict: Verdict) -> dict[str, Any]:
    """One result row (see the module docstring for the fields)."""
    names = [call.name for call in trajectory.tool_calls]
    letter, truth = mcq_truth(item)
    duration = item.duration_seconds or (trajectory.duration_seconds if trajectory.duration_seconds > 0 else None)
    answer = None if trajectory.error else trajectory.answer
    return {
        "id": item.id,
        "question": item.prompt,
        "answer": answer,
        "correct_answer": letter,
        "full_answer": truth,
        "gt_answer": item.answer,
        "is_correct": verdict.correct,
        "evaluation_reasoning": verdict.reasoning,
        "none_prediction": answer is None,
        "could_not_produce": trajectory.could_not_produce,
        "used_tool_calls": bool(names),
        "tool_call_types": dict(Counter(names)),
        "num_tool_calls": len(names),
        "tool_calls": names,
        "ques_type": item.ques_type,
        "difficulty": item.difficulty,
        "modality": item.modality,
        "duration": duration,
        "video_path": item.video_path,
        "direct": trajectory.answer_stage == "stage1",
        "turns": len(trajectory.turns),
        "seconds": round(trajectory.cost.seconds, 3),
        "tokens_in": trajectory.cost.tokens_in,
        "tokens_out": trajectory.cost.tokens_out,
        "raw_output": trajectory.turns[-1].raw_output if trajectory.turns else None,
        "error": trajectory.error,
    }


async def judge_episode(judge: Judge, item: EvalItem, trajectory: Trajectory) -> Verdict:
    """The judge's verdict on an episode's answer; failed episodes and give-ups are wrong without a request."""
    if trajectory.error:
        return Verdict(correct=False, reasoning=f"The episode failed: {trajectory.error}", raw="")
    if trajectory.could_not_produce:  # the fixed give-up text is not an answer: no request for it
        return Verdict(correct=False, reasoning=NO_ANSWER, raw="")
    return await judge.ajudge_answer(item.prompt, item.answer, trajectory.answer, options=item.options)


# ---- the run -------------------------------------------------------------------------------------
class _Progress:
    """A tqdm bar on stderr with the accuracy so far; when stderr is not a terminal (a log file of a
    long run), a plain line every ``every_s`` seconds and at the end instead."""

    def __init__(self, total: int, done: int, correct: int, enabled: bool, every_s: float = 30.0) -> None:
        from tqdm.auto import tqdm

        self.total, self.done, self.correct = total, done, correct
        self.lines = enabled and not sys.stderr.isatty()
        self.every_s, self.last = every_s, time.monotonic()
        self.bar = tqdm(total=total, initial=done, unit="item", desc="eval", file=sys.stderr,
                        disable=not enabled or self.lines)
        self._show()

    def _accuracy(self) -> str:
        return f"acc {100 * self.correct / self.done:.1f}% ({self.correct}/{self.done})" if self.done else "acc -"

    def _show(self) -> None:
        if self.done:
            self.bar.set_postfix_str(self._accuracy())

    def add(self, correct: bool) -> None:
        self.done += 1
        self.correct += int(correct)
        self._show()
        self.bar.update(1)
        if self.lines and (time.monotonic() - self.last >= self.every_s or self.done == self.total):
            self.last = time.monotonic()
            print(f"eval: {self.done}/{self.total} items, {self._accuracy()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


async def _episode(agent: Any, item: EvalItem) -> Trajectory:
    metadata = {"id": item.id, "gt_answer": item.answer, "ques_type": item.ques_type, "options": item.options}
    try:
        return await agent.arun(item.video_path, item.prompt, metadata=metadata)
    except Exception as exc:  # one bad video must not sink the run: it becomes an error row
        return Trajectory(video_path=item.video_path, question=item.prompt, error=f"{type(exc).__name__}: {exc}",
                          metadata=metadata)


async def arun_eval(agent: Any, items: list[EvalItem], judge: Judge | None, config: EvalConfig,
                    progress: bool = True) -> list[dict[str, Any]]:
    """:func:`run_eval` as a coroutine."""
    if judge is None:
        if config.judge is None:
            raise ValueError("no judge: pass a Judge or set EvalConfig.judge (CLI: --judge URL)")
        judge = Judge(config.judge)
    items = items[: config.limit] if config.limit is not None else list(items)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    seal(output)
    if config.retry_errors and output.is_file():
        _drop_error_rows(output)
    finished = {str(row.get("id")): row for row in read_rows(output)} if output.is_file() else {}
    todo = [item for item in items if item.id not in finished]
    stored = _stored_trajectories(config.trajectories_path) if config.write_trajectories and todo else {}
    already = [finished[item.id] for item in items if item.id in finished]
    bar = _Progress(len(items), len(already), sum(bool(r.get("is_correct")) for r in already), progress)
    gate = asyncio.Semaphore(config.concurrency)
    new_rows: dict[str, dict[str, Any]] = {}
    failures: list[str] = []

    async def one(item: EvalItem) -> None:
        trajectory = stored.get(item.id)
        if trajectory is None:
            async with gate:
                if failures:  # the judge is failing: start no more episodes, report it once
                    return
                trajectory = await _episode(agent, item)
            if config.write_trajectories:
                append_jsonl(config.trajectories_path, [trajectory])
        try:
            verdict = await judge_episode(judge, item, trajectory)
        except RuntimeError as exc:
            failures.append(str(exc))
            return
        row = make_row(item, trajectory, verdict)
        _append_row(output, row)
        new_rows[item.id] = row
        bar.add(verdict.correct)

    try:
        await asyncio.gather(*(one(item) for item in todo))
    finally:
        bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} answer(s) could not be judged, the first: {failures[0]}. Finished rows "
                           f"are in {output}; rerun the same command to judge the rest (stored episodes are "
                           "not run again)")
    return [finished.get(item.id) or new_rows[item.id] for item in items]


def run_eval(agent: Any, items: list[EvalItem], judge: Judge | None, config: EvalConfig,
             progress: bool = True) -> list[dict[str, Any]]:
    """Runs and judges every item not yet in ``config.output``; returns the rows of all items in
    input order (earlier runs' rows included). An episode that fails becomes a row with its
    ``error``; a judge that keeps failing stops the run with a RuntimeError, finished rows kept."""
    from sage_fast.agent.loop import run_blocking

    return run_blocking(arun_eval(agent, items, judge, config, progress))

