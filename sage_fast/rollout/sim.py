"""Virtual-clock rollout simulation: scripted SAGE-like episodes on a modelled engine, scheduled
asynchronously (the scheduler core) or lock-step, in seconds of wall time.

THIS IS A SIMULATION. Generation cost comes from a model of a continuous-batching engine (an
iteration costs ``step_base_s + step_per_seq_s * decoding_sequences + prefill_chunk /
prefill_tokens_per_s``; admission only at iteration boundaries; chunked prefill in FIFO order;
optionally automatic prefix caching, on by default in vLLM V1 and SGLang: a prompt prefix that a
finished prefill computed is not computed again), and tool latency from a log-normal
distribution. Episodes are pre-scripted from a seed (turn
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
from typing import Any

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
    # Stage-2's system prompt and tool schemas, the same text in every episode's every Stage-2
    # prompt (a prefix a prefix-caching engine computes once). A GRPO group's 8 Stage-1 prompts are
    # identical as a whole (same question, same uniformly sampled frames), so they share all of it.
    stage2_shared_tokens: int = 1_000

    def __post_init__(self) -> None:
        if self.groups < 1 or self.group_size < 1 or self.max_turns < 1:
            raise ValueError("groups, group_size and max_turns must be >= 1")
        if not 0 <= self.stage2_shared_tokens <= self.stage2_prompt_tokens:
            raise ValueError(f"stage2_shared_tokens must be in [0, stage2_prompt_tokens="
                             f"{self.stage2_prompt_tokens}], got {self.stage2_shared_tokens}")
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
    # Automatic prefix caching: once a request's prefill has computed a shared prefix, requests
    # with that prefix that have not started their prefill skip it (FIFO prefill means a GRPO
    # group's followers queue behind its leader and hit). Off keeps every prompt computed in full.
    prefix_caching: bool = False

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s <= 0 or self.step_base_s <= 0 or self.step_per_seq_s < 0 or self.chunk_tokens < 1:
            raise ValueError("prefill_tokens_per_s, step_base_s, chunk_tokens must be > 0 and step_per_seq_s >= 0")


@dataclass
class Script:
    """One episode's pre-drawn turns: prompt tokens, output tokens, action and tool latency each,
    and each prompt's shared prefix (key, tokens) that a prefix-caching engine may reuse."""

    prompt: list[int]
    output: list[int]
    action: list[int]
    tool_s: list[float]
    prefix_key: list[int] = field(default_factory=list)  # per turn; -1 = shared by every Stage-2 prompt
    prefix_tokens: list[int] = field(default_factory=list)

    def prefix(self, turn: int) -> tuple[int | None, int]:
        """(key, tokens) of turn ``turn``'s shared prompt prefix; (None, 0) when it has none."""
        if turn < len(self.prefix_key) and self.prefix_tokens[turn] > 0:
            return self.prefix_key[turn], self.prefix_tokens[turn]
        return None, 0


def make_workload(config: WorkloadConfig, seed: int = 0) -> list[Script]:
    """Episodes in group order (group g holds episodes g*size ... g*size+size-1)."""
    rng = np.random.default_rng(seed)
    scripts = []
    for index in range(config.groups * config.group_size):
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
        # Stage-1 prompts are shared whole within the group (key = group index); every Stage-2
        # prompt starts with the same system prompt (key -1).
        prefix_key = [index // config.group_size] + [-1] * (n - 1)
        prefix_tokens = [config.stage1_prompt_tokens] + [config.stage2_shared_tokens] * (n - 1)
        scripts.append(Script(prompt, output, actions, tools, prefix_key, prefix_tokens))
    return scripts


class EngineSim:
    """Iteration-level engine model with O(log n) fast-forward: decoding sequences finish at a known
    iteration; prefill is a FIFO of requests, each with the tokens it still has to compute."""

    def __init__(self, model: EngineModel) -> None:
        self.model = model
        self.iteration = 0
        self.busy_s = 0.0
        self.prefill_tokens = 0  # tokens actually computed by prefill (after prefix-cache hits)
        self.cached_tokens = 0  # prompt tokens served from the prefix cache
        # [tokens left, key, decode tokens, prefix key, prefix tokens, tokens computed]
        self._prefill: deque[list] = deque()
        self._pf_pending = 0
        self._cache: dict[int, int] = {}  # prefix key -> tokens of it computed and cached
        self._decode: list[tuple[int, int, int]] = []  # (finish iteration, order, key)
        self._decoding: set[int] = set()
        self._dropped: set[int] = set()
        self._order = 0

    def add(self, key: int, prompt: int, decode: int, prefix_key: int | None = None, prefix_tokens: int = 0) -> None:
        self._dropped.discard(key)
        request = [prompt, key, decode, prefix_key, min(prefix_tokens, prompt), 0]
        self._prefill.append(request)
        self._pf_pending += prompt
        self._hit(request)

    def _hit(self, request: list) -> None:
        """Skips the cached part of a request's shared prefix, if its prefill has not started.
        At least one token is always computed (an engine recomputes the last prompt token)."""
        if not self.model.prefix_caching or request[3] is None or request[5] > 0:
            return
        cached = min(self._cache.get(request[3], 0), request[4])
        skip = min(cached, request[0] - 1)
        if skip > 0:
            request[0] -= skip
            self._pf_pending -= skip
            self.cached_tokens += skip
            request[4] = 0  # served; nothing more to skip

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
        pending = self._pf_pending
        k = math.inf
        chunk = 0
        if pending > 0:
            if pending <= m.chunk_tokens:
                chunk, k = pending, 1
            else:
                chunk = m.chunk_tokens
                k = max(1, math.ceil(self._prefill[0][0] / chunk))
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
        budget = k * chunk
        while budget > 0 and self._prefill:
            request = self._prefill[0]
            take = min(budget, request[0])
            request[0] -= take
            request[5] += take
            budget -= take
            self._pf_pending -= take
            self.prefill_tokens += take
            if request[0] > 0:
                break
            self._prefill.popleft()
            _, key, decode, prefix_key, prefix_tokens, _ = request
            if prefix_key is not None and prefix_tokens > 0 and self._cache.get(prefix_key, 0) < prefix_tokens:
                self._cache[prefix_key] = prefix_tokens
                for waiting in self._prefill:  # requests behind it now find the prefix cached
                    if waiting[3] == prefix_key:
                        self._hit(waiting)
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
                   impl: Impl = "auto", record: bool = False, max_new_tokens: int = 1024,
                   scheduler: Any = None) -> tuple[SimResult, Scheduler]:
    """The scheduler's schedule: each episode's next turn is queued as soon as its tool returns.
    ``scheduler`` drives a ready object with the Scheduler API instead of a new one (the overhead
    benchmark passes a tape of recorded answers, to time this loop without any scheduling)."""
    if len(scripts) % group_size:
        raise ValueError(f"len(scripts)={len(scripts)} is not a multiple of group_size={group_size}")
    sched = scheduler if scheduler is not None else Scheduler(config, impl=impl, record=record)
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
                sim.add(e, s.prompt[aux], s.output[aux], *s.prefix(aux))
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
                sim.add(e, scripts[e].prompt[k], scripts[e].output[k], *scripts[e].prefix(k))
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
