"""The lock-step baseline: every live episode's turn k as one batch, then every tool, then turn k+1.

This is how common multi-turn RL frameworks roll out (and SAGE's reference code): generation
waits for the batch's slowest tool. It runs on the same engines, episodes and limits as the
scheduler (at most ``max_seqs`` requests in flight, the same turn cap and tool time-out), so the
two differ only in scheduling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from sage_fast.rollout.driver import RolloutResult, _describe
from sage_fast.rollout.engines import BusyMeter, Engine
from sage_fast.rollout.episodes import Episode
from sage_fast.rollout.types import FinishReason, SchedulerConfig, TurnAction


async def run_lockstep(groups: Sequence[Sequence[Episode]], engine: Engine, config: SchedulerConfig) -> RolloutResult:
    """Runs the episodes turn by turn across the whole batch (groups only name the episodes)."""
    meter = engine if isinstance(engine, BusyMeter) else BusyMeter(engine)
    busy0 = meter.busy_s
    episodes = [ep for g in groups for ep in g]
    reasons: list[FinishReason | None] = [None] * len(episodes)
    errors: list[str | None] = [None] * len(episodes)
    slots = asyncio.Semaphore(config.max_seqs)
    started = time.perf_counter()
    turns = tool_calls = timeouts = 0

    async def generate(e: int):  # noqa: ANN202
        async with slots:
            return await meter.generate(episodes[e].request())

    async def tool(e: int) -> bool:
        try:
            await asyncio.wait_for(episodes[e].run_tool(), config.tool_timeout or None)
            return False
        except asyncio.TimeoutError:
            episodes[e].on_tool_timeout(config.tool_timeout)
            return True

    live = list(range(len(episodes)))
    for k in range(config.max_turns):
        if not live:
            break
        turns += len(live)
        outputs = await asyncio.gather(*(generate(e) for e in live), return_exceptions=True)
        needs_tool, survivors = [], []
        for e, out in zip(live, outputs, strict=True):
            if isinstance(out, BaseException):
                reasons[e], errors[e] = FinishReason.FAILED, _describe(out)
                continue
            try:
                action = episodes[e].on_generation(out)
            except Exception as exc:
                reasons[e], errors[e] = FinishReason.FAILED, _describe(exc)
                continue
            if action == TurnAction.ANSWER:
                reasons[e] = FinishReason.ANSWERED
            elif k + 1 >= config.max_turns:
                reasons[e] = FinishReason.TURN_CAP
            else:
                survivors.append(e)
                if action == TurnAction.TOOL:
                    needs_tool.append(e)
        tool_calls += len(needs_tool)
        results = await asyncio.gather(*(tool(e) for e in needs_tool), return_exceptions=True)
        for e, res in zip(needs_tool, results, strict=True):
            if isinstance(res, BaseException):
                reasons[e], errors[e] = FinishReason.FAILED, _describe(res)
                survivors.remove(e)
            elif res:
                timeouts += 1
        live = survivors
    seconds = time.perf_counter() - started
    return RolloutResult("lockstep", [r if r is not None else FinishReason.CANCELLED for r in reasons], errors,
                         seconds, meter.busy_s - busy0, turns, tool_calls, timeouts)
