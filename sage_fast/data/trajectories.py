"""SFT data from trajectories: run the agent on synthesized questions, keep the correct episodes, one record per turn.

The paper builds SAGE-MM's SFT set by running the agent with a strong orchestrator on the
synthesized questions and keeping only the trajectories whose final answer the LLM judge accepts
(DESIGN.md §2); every model turn of a kept trajectory becomes one
:class:`sage_fast.data.sft_records.SFTRecord`. Every trajectory, kept or not, also goes to a
trajectories JSONL with its verdict, so the filter can be audited and the accuracy of the
orchestrator read off.

This is hours of model time, so it resumes by question id. A trajectory line is written (fsynced)
once its answer is judged, and its records right after: on a rerun, a judged question is skipped,
a judged-correct one whose records a crash prevented is turned into records from the stored
trajectory (no request), an episode whose judge failed is judged without being run again, and a
failed episode (its ``error`` set) runs again. Records and trajectories are appended, never
rewritten, so a long run never loses finished work.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_fast.agent.trajectory import Trajectory, append_jsonl, read_jsonl
from sage_fast.data.sft_records import append_records, read_records, records_from_trajectory
from sage_fast.eval.datasets import EvalItem
from sage_fast.eval.judge import Judge
from sage_fast.eval.runner import judge_episode
from sage_fast.jsonl import seal


@dataclass
class TrajectoryCounts:
    """What one call did (earlier runs' work is only in ``skipped``)."""

    questions: int = 0  # questions given
    skipped: int = 0  # judged by an earlier run
    run: int = 0  # episodes run now
    judged: int = 0  # answers judged now (episodes of this run, and stored ones a failed judge left)
    correct: int = 0  # of those, accepted by the judge
    records: int = 0  # SFT records written now
    errors: int = 0  # episodes that failed now (run again by the next call)


def _items(questions: Sequence[Any]) -> list[EvalItem]:
    """EvalItems from EvalItems or SynthQuestions; ids must be unique (they key the resume)."""
    items = [q if isinstance(q, EvalItem) else q.to_item() for q in questions]
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"question id {item.id!r} appears twice; ids must be unique (runs resume by id)")
        seen.add(item.id)
    return items


async def _episode(agent: Any, item: EvalItem) -> Trajectory:
    metadata = {"id": item.id, "gt_answer": item.answer, "ques_type": item.ques_type, "options": item.options}
    try:
        return await agent.arun(item.video_path, item.prompt, metadata=metadata)
    except Exception as exc:  # one bad video must not sink the run
        return Trajectory(video_path=item.video_path, question=item.prompt, error=f"{type(exc).__name__}: {exc}",
                          metadata=metadata)


class _Progress:
    """A tqdm bar on stderr with the share of correct episodes so far."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, unit="question", desc="synth trajectories", file=sys.stderr,
                        disable=not enabled)
        self.correct = self.judged = self.records = 0

    def add(self, correct: bool, records: int) -> None:
        self.judged += 1
        self.correct += int(correct)
        self.records += records
        self.bar.set_postfix_str(f"correct {self.correct}/{self.judged}, records {self.records}")
        self.bar.update(1)


async def amake_sft_records(agent: Any, questions: Sequence[Any], judge: Judge, out_records: str | Path,
                            out_trajectories: str | Path, *, concurrency: int = 4, orchestrator: str | None = None,
                            progress: bool = True) -> TrajectoryCounts:
    """:func:`make_sft_records` as a coroutine."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    items = _items(questions)
    records_path, trajectories_path = Path(out_records), Path(out_trajectories)
    for path in (records_path, trajectories_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        seal(path)
    stored = {str(t.metadata["id"]): t for t in read_jsonl(trajectories_path)
              if "id" in t.metadata} if trajectories_path.is_file() else {}
    with_records = {str(r.metadata.get("question_id")) for r in read_records(records_path)} \
        if records_path.is_file() else set()
    name = orchestrator or str(getattr(getattr(agent, "orchestrator", None), "name", "") or "orchestrator")
    counts = TrajectoryCounts(questions=len(items))
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    def write_records(item: EvalItem, trajectory: Trajectory) -> int:
        verdict = trajectory.metadata["verdict"]
        records = records_from_trajectory(trajectory, episode_id=item.id, metadata={
            "question_id": item.id, "orchestrator": trajectory.metadata.get("orchestrator", name),
            "verdict": verdict, "judge_model": trajectory.metadata.get("judge_model"), "gt_answer": item.answer})
        append_records(records_path, records)
        return len(records)

    todo: list[tuple[EvalItem, Trajectory | None]] = []
    for item in items:
        previous = stored.get(item.id)
        if previous is not None and previous.error is None and "verdict" in previous.metadata:
            counts.skipped += 1
            if previous.metadata["verdict"].get("correct") and item.id not in with_records:
                counts.records += write_records(item, previous)  # a crash came between the two writes
        else:  # new, failed (run again), or run but not judged (judged now)
            todo.append((item, previous if previous is not None and previous.error is None else None))
    bar = _Progress(len(items), counts.skipped, progress)

    async def one(item: EvalItem, trajectory: Trajectory | None) -> None:
        if trajectory is None:
            async with gate:
                if failures:  # the judge is failing: start no more episodes
                    return
                trajectory = await _episode(agent, item)
            counts.run += 1
            counts.errors += trajectory.error is not None
            trajectory.metadata["orchestrator"] = name
        try:
            verdict = await judge_episode(judge, item, trajectory)
        except RuntimeError as exc:  # stored unjudged: the rerun judges it without running it again
            failures.append(str(exc))
            append_jsonl(trajectories_path, [trajectory])
            return
        trajectory.metadata["verdict"] = {"correct": verdict.correct, "reasoning": verdict.reasoning}
        trajectory.metadata["judge_model"] = judge.config.model
        append_jsonl(trajectories_path, [trajectory])
        counts.judged += 1
        written = 0
        if verdict.correct:  # the paper's filter: only episodes that reached the right answer teach
            counts.correct += 1
            written = write_records(item, trajectory)
            counts.records += written
        bar.add(verdict.correct, written)

    try:
        await asyncio.gather(*(one(item, stored_trajectory) for item, stored_trajectory in todo))
    finally:
        bar.bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} answer(s) could not be judged, the first: {failures[0]}. Finished "
                           f"records are in {records_path}; rerun the same command to judge the rest (stored "
                           "episodes are not run again)")
    return counts


def make_sft_records(agent: Any, questions: Sequence[Any], judge: Judge, out_records: str | Path,
                     out_trajectories: str | Path, *, concurrency: int = 4, orchestrator: str | None = None,
                     progress: bool = True) -> TrajectoryCounts:
    """Runs ``agent`` on every question not judged yet (at most ``concurrency`` episodes at once),
    judges each answer against the ground truth, appends every trajectory (with its verdict) to
    ``out_trajectories`` and the per-turn SFT records of the correct ones to ``out_records``.
    ``questions``: :class:`~sage_fast.data.questions.SynthQuestion` or
    :class:`~sage_fast.eval.datasets.EvalItem`; ``orchestrator`` names the source model in the
    records (default: the agent's orchestrator's name)."""
    from sage_fast.agent.loop import run_blocking

    return run_blocking(amake_sft_records(agent, questions, judge, out_records, out_trajectories,
                                          concurrency=concurrency, orchestrator=orchestrator, progress=progress))
