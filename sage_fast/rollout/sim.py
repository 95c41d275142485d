"""Virtual-clock rollout simulation: scripted SAGE-like episodes on a modelled engine, scheduled
asynchronously (the scheduler core) or lock-step, in seconds of wall time.

THIS IS A SIMULATION. Generation cost comes from a model of a continuous-batching engine (an
iteration costs ``step_base_s + step_per_seq_s * decoding_sequences + prefill_chunk /
prefill_tokens_per_s``; admission only at iteration boundaries; chunked prefill in FIFO order),
and tool latency from a log-normal distribution. Episodes are pre-scripted from a seed (turn
count, prompt and output lengths, tool or not, tool latency), so both schedules run exactly the
same work and the comparison isolates scheduling. The defaults model an 8B Qwen-VL orchestrator
on one H100 under vLLM; bench/bench_scheduler.py and bench/RESULTS.md state them.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sage_fast.rollout.scheduler import Impl, Scheduler
from sage_fast.rollout.types import DecisionKind, SchedulerConfig, TurnAction


@dataclass(frozen=True)
class WorkloadConfig:
    """Scripted episodes. Defaults: the issue's 128 episodes (16 prompts x GRPO groups of 8), up to
    11 turns, tool latency log-normal with median 2 s and p99 60 s."""

    groups: int = 16
    group_size: int = 8
    max_turns: int = 11
    stage1_prompt_tokens: int = 11_000  # 128 frames at ~160 visual tokens, 2 frames per temporal patch, + text
    stage2_prompt_tokens: int = 1_500  # system + query + context, before tool results
    tokens_per_result: int = 300  # each kept tool result (the last 10) adds this much
    output_median: int = 250
    output_sigma: float = 0.5
    max_new_tokens: int = 1024
    p_stage1_answer: float = 0.2  # answered at once, one turn
    p_stage2_answer: float = 0.25  # each Stage-2 turn answers with this probability
    p_tool: float = 0.9  # a non-answer turn asks for a tool (else a no-tool note, no wait)
    tool_median_s: float = 2.0
    tool_p99_s: float = 60.0

    def __post_init__(self) -> None:
        if self.groups < 1 or self.group_size < 1 or self.max_turns < 1:
            raise ValueError("groups, group_size and max_turns must be >= 1")
        if not 0 < self.tool_median_s < self.tool_p99_s:
            raise ValueError(f"need 0 < tool_median_s < tool_p99_s, got {self.tool_median_s}, {self.tool_p99_s}")
        for name in ("p_stage1_answer", "p_stage2_answer", "p_tool"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    @property
    def tool_sigma(self) -> float:
        return math.log(self.tool_p99_s / self.tool_median_s) / 2.3263478740408408  # z of the 99th percentile


@dataclass(frozen=True)
class EngineModel:
    """Cost model of a continuous-batching engine (vLLM-like). Defaults: 8B VLM, bf16, one H100."""

    prefill_tokens_per_s: float = 12_000.0
    step_base_s: float = 0.015  # one decode iteration at batch 1 (weights read once)
    step_per_seq_s: float = 0.0003  # each decoding sequence adds this (KV reads, sampling)
    chunk_tokens: int = 8192  # prefill tokens per iteration (chunked prefill)

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s <= 0 or self.step_base_s <= 0 or self.step_per_seq_s < 0 or self.chunk_tokens < 1:
            raise ValueError("prefill_tokens_per_s, step_base_s, chunk_tokens must be > 0 and step_per_seq_s >= 0")


@dataclass
class Script:
    """One episode's pre-drawn turns: prompt tokens, output tokens, action and tool latency each."""

    prompt: list[int]
    output: list[int]
    action: list[int]
    tool_s: list[float]


def make_workload(config: WorkloadConfig, seed: int = 0) -> list[Script]:
    """Episodes in group order (group g holds episodes g*size ... g*size+size-1)."""
    rng = np.random.default_rng(seed)
    scripts = []
    for _ in range(config.groups * config.group_size):
        if rng.random() < config.p_stage1_answer:
            n = 1
        else:
            n = 1 + int(rng.geometric(config.p_stage2_answer)) if config.p_stage2_answer > 0 else config.max_turns
        capped = n > config.max_turns
        n = min(n, config.max_turns)
        actions = [int(TurnAction.TOOL) if rng.random() < config.p_tool else int(TurnAction.CONTINUE)
                   for _ in range(n)]
        if not capped:
            actions[-1] = int(TurnAction.ANSWER)
        prompt = [config.stage1_prompt_tokens] + [
            config.stage2_prompt_tokens + config.tokens_per_result * min(k, 10) for k in range(1, n)]
        output = np.clip(np.round(config.output_median * np.exp(config.output_sigma * rng.standard_normal(n))),
                         16, config.max_new_tokens).astype(int).tolist()
        tools = (config.tool_median_s * np.exp(config.tool_sigma * rng.standard_normal(n))).tolist()
        scripts.append(Script(prompt, output, actions, tools))
    return scripts


class EngineSim:
    """Iteration-level engine model with O(log n) fast-forward: decoding sequences finish at a known
    iteration, prefill is a FIFO of cumulative token offsets."""

    def __init__(self, model: EngineModel) -> None:
        self.model = model
        self.iteration = 0
        self.busy_s = 0.0
        self._prefill: deque[tuple[int, int, int]] = deque()  # (end offset, key, decode tokens)
        self._pf_total = 0
        self._pf_done = 0
        self._decode: list[tuple[int, int, int]] = []  # (finish iteration, order, key)
        self._decoding: set[int] = set()
        self._dropped: set[int] = set()
        self._order = 0

    def add(self, key: int, prompt: int, decode: int) -> None:
        self._dropped.discard(key)
        self._pf_total += prompt
        self._prefill.append((self._pf_total, key, decode))

    def drop(self, key: int) -> None:
        """Aborts a request (its prefill work already queued is still spent, as in a real engine)."""
        self._dropped.add(key)
        self._decoding.discard(key)

    @property
    def active(self) -> bool:
        return bool(self._prefill) or bool(self._decoding)

    def step(self, now: float, until: float) -> tuple[float, list[int]]:
        """Runs iterations from ``now`` up to the first one where a request finishes prefill or
        decoding, or the first iteration boundary at or after ``until``; returns (time, finished keys)."""
        m = self.model
        pending = self._pf_total - self._pf_done
        k = math.inf
        chunk = 0
        if pending > 0:
            if pending <= m.chunk_tokens:
                chunk, k = pending, 1
            else:
                chunk = m.chunk_tokens
                head = self._prefill[0][0] - self._pf_done
                k = max(1, math.ceil(head / chunk))
                if k * chunk > pending:
                    k -= 1
        while self._decode and self._decode[0][2] not in self._decoding:
            heapq.heappop(self._decode)
        if self._decode:
            k = min(k, self._decode[0][0] - self.iteration)
        dt = m.step_base_s + m.step_per_seq_s * len(self._decoding) + chunk / m.prefill_tokens_per_s
        if until < math.inf:
            k = min(k, max(1, math.ceil((until - now) / dt)))
        k = int(k)
        now += k * dt
        self.busy_s += k * dt
        self.iteration += k
        self._pf_done += k * chunk
        while self._prefill and self._prefill[0][0] <= self._pf_done:
            _, key, decode = self._prefill.popleft()
            if key in self._dropped:
                continue
            self._decoding.add(key)
            heapq.heappush(self._decode, (self.iteration + decode, self._order, key))
            self._order += 1
        finished = []
        while self._decode and self._decode[0][0] <= self.iteration:
            _, _, key = heapq.heappop(self._decode)
            if key in self._decoding:
                self._decoding.discard(key)
                finished.append(key)
        return now, finished


@dataclass
class SimResult:
    """What a simulated rollout cost."""

    schedule: str
    episodes: int
    makespan_s: float
    engine_busy_s: float
    turns: int
    tool_calls: int
    tool_timeouts: int = 0
    decisions: int = 0
    scheduler_wall_s: float = 0.0  # real time spent inside scheduler calls
    decision_log: list[tuple[int, int, int, int, float]] = field(default_factory=list, repr=False)
    group_done_s: list[float] = field(default_factory=list, repr=False)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.makespan_s

    @property
    def engine_busy(self) -> float:
        return self.engine_busy_s / self.makespan_s

    @property
    def overhead_per_decision_us(self) -> float:
        return 1e6 * self.scheduler_wall_s / max(self.decisions, 1)


def _cost(script: Script, turn: int, max_new: int) -> int:
    return script.prompt[turn] + max_new if turn < len(script.prompt) else 0


def simulate_async(scripts: list[Script], group_size: int, engine: EngineModel, config: SchedulerConfig, *,
                   impl: Impl = "auto", record: bool = False, max_new_tokens: int = 1024) -> tuple[SimResult, Scheduler]:
    """The scheduler's schedule: each episode's next turn is queued as soon as its tool returns."""
    if len(scripts) % group_size:
        raise ValueError(f"len(scripts)={len(scripts)} is not a multiple of group_size={group_size}")
    sched = Scheduler(config, impl=impl, record=record)
    sim = EngineSim(engine)
    now = 0.0
    tools: list[tuple[float, int, int, int]] = []  # (finish time, order, episode, tool id)
    tool_id = [0] * len(scripts)
    order = 0
    log: list[tuple[int, int, int, int, float]] = []
    groups_done: list[float] = []
    wall = 0.0
    stats_turns = 0

    def act(decisions: list) -> None:
        nonlocal order, stats_turns
        for d in decisions:
            kind, e, _, aux, t = d
            if kind == DecisionKind.ADMIT:
                s = scripts[e]
                sim.add(e, s.prompt[aux], s.output[aux])
                stats_turns += 1
            elif kind == DecisionKind.START_TOOL:
                tool_id[e] += 1
                heapq.heappush(tools, (t + scripts[e].tool_s[aux], order, e, tool_id[e]))
                order += 1
            elif kind == DecisionKind.TOOL_TIMEOUT:
                tool_id[e] += 1  # the pending completion becomes stale
            elif kind == DecisionKind.FINISH:
                sim.drop(e)
            elif kind == DecisionKind.GROUP_COMPLETE:
                groups_done.append(t)
        if record:
            log.extend(decisions)

    for g in range(len(scripts) // group_size):
        t0 = time.perf_counter()
        _, decisions = sched.add_group(group_size, _cost(scripts[g * group_size], 0, max_new_tokens), now)
        wall += time.perf_counter() - t0
        act(decisions)
    n_groups = len(scripts) // group_size
    while len(groups_done) < n_groups:
        while tools and tool_id[tools[0][2]] != tools[0][3]:
            heapq.heappop(tools)
        t0 = time.perf_counter()
        deadline = sched.next_deadline()
        wall += time.perf_counter() - t0
        external = min(tools[0][0] if tools else math.inf, deadline)
        if sim.active:
            now, finished = sim.step(now, external)
        elif external < math.inf:
            now = max(now, external)
            finished = []
        else:
            raise RuntimeError("simulation stalled: nothing generating, no tool running, groups incomplete")
        # External events due by now, in time order, then the turns that finished at `now`.
        while True:
            while tools and tool_id[tools[0][2]] != tools[0][3]:
                heapq.heappop(tools)
            t0 = time.perf_counter()
            deadline = sched.next_deadline()
            wall += time.perf_counter() - t0
            t_tool = tools[0][0] if tools else math.inf
            if min(t_tool, deadline) > now:
                break
            t0 = time.perf_counter()
            if t_tool <= deadline:
                _, _, e, _ = heapq.heappop(tools)
                decisions = sched.tool_finished(e, _cost(scripts[e], sched.turns(e), max_new_tokens), t_tool)
            else:
                decisions = sched.advance(deadline)
            wall += time.perf_counter() - t0
            act(decisions)
        for e in finished:
            s = scripts[e]
            turn = sched.turns(e) - 1
            t0 = time.perf_counter()
            decisions = sched.turn_finished(e, s.action[turn], _cost(s, turn + 1, max_new_tokens), now)
            wall += time.perf_counter() - t0
            act(decisions)
    st = sched.stats()
    return SimResult("async", len(scripts), now, sim.busy_s, stats_turns, st["tool_calls"], st["tool_timeouts"],
                     st["decisions"], wall, log, groups_done), sched


def simulate_lockstep(scripts: list[Script], engine: EngineModel, config: SchedulerConfig, *,
                      max_new_tokens: int = 1024) -> SimResult:
    """The reference RL loop: every live episode's turn k is generated as one batch (the engine
    still batches continuously under the same sequence/token limits), then every tool of the
    batch runs concurrently, and turn k+1 starts when the slowest tool returns or is cut."""
    sim = EngineSim(engine)
    now = 0.0
    live = list(range(len(scripts)))
    turns = tool_calls = timeouts = 0
    for k in range(config.max_turns):
        if not live:
            break
        queue = deque(live)
        generating: dict[int, int] = {}
        while queue or generating:
            while queue and len(generating) < config.max_seqs:
                e = queue[0]
                cost = _cost(scripts[e], k, max_new_tokens)
                if generating and sum(generating.values()) + cost > config.max_tokens:
                    break
                queue.popleft()
                generating[e] = cost
                sim.add(e, scripts[e].prompt[k], scripts[e].output[k])
                turns += 1
            now, finished = sim.step(now, math.inf)
            for e in finished:
                del generating[e]
        slowest = 0.0
        survivors = []
        for e in live:
            s = scripts[e]
            if s.action[k] == TurnAction.ANSWER or k + 1 >= min(config.max_turns, len(s.prompt)):
                continue
            survivors.append(e)
            if s.action[k] == TurnAction.TOOL:
                tool_calls += 1
                latency = s.tool_s[k]
                if config.tool_timeout > 0 and latency >= config.tool_timeout:
                    latency = config.tool_timeout
                    timeouts += 1
                slowest = max(slowest, latency)
        now += slowest
        live = survivors
    return SimResult("lockstep", len(scripts), now, sim.busy_s, turns, tool_calls, timeouts)
