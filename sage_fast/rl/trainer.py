"""Multi-turn GRPO for SAGE-MM: rollouts under the scheduler, the paper's rewards, packed updates.

One optimizer step (DESIGN.md §2, "RL"):

1. **Rollout.** ``prompts_per_step`` questions, each run ``group_size`` times by the SAGE agent
   (Stage-1 + Stage-2 loop, real tools) on the policy itself, every turn admitted by the rollout
   scheduler (:func:`~sage_fast.rollout.agent_rollout.run_agent_rollout`), so an episode's next
   turn starts as soon as its tool returns instead of waiting for the batch. Sampling temperature
   0.7; the Stage-2 cap is 5 for the first 100 steps, then 10.
2. **Rewards.** The judge (an OpenAI-compatible model at temperature 0) says whether each answer
   means the ground truth, and, per tool call, whether the call was a reasonable next step; the
   paper's rewards (:mod:`sage_fast.rl.rewards`) sum per episode.
3. **Advantages.** GRPO: each episode's reward against its group's mean and std; the episode's
   advantage is put on every one of its turns (each turn is its own training sample whose prompt,
   tool observations included, is masked out of the loss).
4. **Update.** Turn-samples are re-tokenized from the trajectories (Stage-1 frames re-decoded at
   their recorded times), packed into token-budget rows (:mod:`sage_fast.rollout.packing`) and run
   through the policy with the ``sage_varlen`` attention; samples with one identical prompt (a
   group's Stage-1 turns) share it, computed once per row (:mod:`sage_fast.rl.shared_prefix`);
   PPO-clipped loss plus the low-variance
   KL to the frozen initial model, token-mean over the whole step, one AdamW step under a cosine
   schedule with 10 % warm-up.

Nothing is lost: every step's trajectories (with rewards and advantages) are written atomically,
checkpoints (model folder, optimizer, schedule, data cursor, RNG) are renamed into place only when
complete, and ``train`` resumes from the newest one, redoing at most the step that was cut off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sage_fast.agent.loop import Agent, AgentConfig, default_tools, run_blocking
from sage_fast.agent.samples import sample_frames, tokenize_sample, turn_samples
from sage_fast.agent.trajectory import Trajectory, read_jsonl
from sage_fast.eval.datasets import EvalItem, items_from_records
from sage_fast.models import packed_attention
from sage_fast.rl.grpo import (
    GRPOLossConfig,
    group_advantages,
    grpo_loss,
    packed_token_logprobs,
    token_advantages,
)
from sage_fast.rl.rewards import RewardBreakdown, RewardConfig, episode_reward, turn_cap_for_step
from sage_fast.rl.run_folder import RunFolder
from sage_fast.rl.shared_prefix import Family, find_families, lone_families, pack_families, plan_micro_batches


@dataclass
class GRPOConfig:
    """One GRPO run; the defaults are the paper's (DESIGN.md §2)."""

    output_dir: str = field(default="sage_rl", metadata={"help": "checkpoints, rollouts and metrics go here"})
    group_size: int = field(default=8, metadata={"help": "episodes per question (the GRPO group)"})
    prompts_per_step: int = field(default=16, metadata={"help": "questions per optimizer step"})
    epochs: int = field(default=1, metadata={"help": "passes over the questions"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (None: all epochs)"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW peak learning rate"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps with linear warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    temperature: float = field(default=0.7, metadata={"help": "rollout sampling temperature"})
    max_new_tokens: int = field(default=1024, metadata={"help": "tokens per model call in rollouts"})
    micro_batch_tokens: int = field(default=32768, metadata={
        "help": "tokens per packed row; a sample longer than this is an error (raise it)"})
    shared_prefix: bool = field(default=True, metadata={
        "help": "turn-samples with one identical prompt (a GRPO group's Stage-1 turns: same question, same frames) "
                "put it in the row once, before their responses: the same log-probs and gradient, the prompt and its "
                "vision tower computed once instead of group_size times (exact match required; False: pack every "
                "sample whole)"})
    step_reward: bool = field(default=True, metadata={
        "help": "ask the judge whether each tool call was reasonable (the ±0.1 step reward)"})
    save_every: int = field(default=10, metadata={"help": "steps between checkpoints (the last step always)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept on disk"})
    seed: int = field(default=0, metadata={"help": "data order and sampling seed"})
    engine: str = field(default="static", metadata={
        "help": "local rollout engine: static (padded batches of the waiting turns) or continuous (transformers' "
                "continuous batching with a paged KV cache, better on a GPU)"})
    engine_max_batch: int = field(default=16, metadata={"help": "turns batched into one generate call"})
    max_seqs: int = field(default=64, metadata={"help": "turns generating at once (scheduler admission)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for activation memory"})
    lora_rank: int = field(default=0, metadata={
        "help": "0: train every weight (the paper); > 0: LoRA adapters of this rank on the language model, the "
                "frozen base as the KL reference (no second copy): GRPO of an 8B model on one GPU"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scale numerator (scale = alpha / rank)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = GRPOLossConfig(**self.loss)
        if isinstance(self.rewards, dict):
            self.rewards = RewardConfig(**self.rewards)
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares episodes of one question), got {self.group_size}")
        for name in ("prompts_per_step", "epochs", "save_every", "keep_checkpoints", "engine_max_batch",
                     "max_seqs", "max_new_tokens", "micro_batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.engine not in ("static", "continuous"):
            raise ValueError(f"engine must be 'static' or 'continuous', got {self.engine!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.lora_rank < 0 or (self.lora_rank and not (self.lora_alpha > 0 and 0 <= self.lora_dropout < 1)):
            raise ValueError(f"need lora_rank >= 0, and with LoRA lora_alpha > 0 and 0 <= lora_dropout < 1; got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        if not (self.learning_rate > 0 and 0 <= self.warmup_ratio < 1 and self.max_grad_norm >= 0):
            raise ValueError("need learning_rate > 0, 0 <= warmup_ratio < 1 and max_grad_norm >= 0")


@dataclass
class StepResult:
    """What one step produced: its episodes (by group), their rewards and the update's statistics."""

    step: int
    groups: list[list[Trajectory]]
    rewards: list[list[RewardBreakdown]]
    stats: dict[str, float]


class GRPOTrainer:
    """``GRPOTrainer(vlm, judge, GRPOConfig(...)).train(items)`` on a local transformers policy.

    ``vlm`` is a :class:`~sage_fast.models.transformers_backend.TransformersVLM`: its model both
    generates the rollouts and is trained, so rollouts are always on-policy. ``judge`` is a
    :class:`sage_fast.eval.judge.Judge`. ``tools`` default to the agent's (the policy shared as the
    tool VLM, as the paper's first runs on one GPU).
    """

    def __init__(self, vlm: Any, judge: Any, config: GRPOConfig | None = None, *,
                 agent_config: AgentConfig | None = None, tools: list | None = None,
                 reference_model: torch.nn.Module | None = None) -> None:
        self.vlm = vlm
        self.judge = judge
        self.config = config or GRPOConfig()
        agent_config = agent_config or AgentConfig()
        if agent_config.token_pruning is not None:
            raise ValueError("AgentConfig.token_pruning must be None for RL: the update re-tokenizes each turn "
                             "with all its video tokens, so pruned rollouts would train on inputs the policy never saw")
        self.agent_config = dataclasses.replace(
            agent_config, sampling=dataclasses.replace(agent_config.sampling, temperature=self.config.temperature,
                                                       max_tokens=self.config.max_new_tokens))
        self.tools = tools if tools is not None else default_tools(vlm)
        self.model: torch.nn.Module = vlm.model
        self.generate_attention = self.model.config._attn_implementation
        self.source_folder = Path(getattr(self.model, "name_or_path", "") or ".")
        self.lora = None
        if self.config.lora_rank > 0:  # adapters injected into vlm.model: rollouts and updates both use them
            from sage_fast.rl.lora import apply_lora

            self.lora = apply_lora(self.model, self.config.lora_rank, self.config.lora_alpha, self.config.lora_dropout)
            if self.config.gradient_checkpointing:
                self.model.enable_input_require_grads()
        self.use_kl = self.config.loss.kl_coef > 0 and self.config.loss.kl_estimator != "none"
        self.reference = reference_model
        if self.reference is None and self.use_kl and self.lora is None:
            self.reference = self._load_reference(self.source_folder)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.config.learning_rate,
                                           weight_decay=self.config.weight_decay)
        self.scheduler: Any = None
        self.step = 0
        self.output = Path(self.config.output_dir)
        self.run_folder = RunFolder(self.output, keep=self.config.keep_checkpoints)
        self._frames: dict[tuple, Any] = {}
        self._agents: dict[int, Agent] = {}
        self._resumed_at: int | None = None

    # ---- set-up --------------------------------------------------------------------------------

    def _load_reference(self, folder: Path) -> torch.nn.Module:
        """The frozen initial policy for the KL term (a second copy of the weights)."""
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation=packed_attention.ATTN_NAME,
                                                            dtype=self.model.dtype)
        return model.to(self.model.device).eval().requires_grad_(False)

    def _schedule(self, total_steps: int) -> None:
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=int(self.config.warmup_ratio * total_steps),
            num_training_steps=total_steps)

    def _agent(self, step: int) -> Agent:
        """The agent for ``step`` (one per turn cap, so its frame cache lives across steps)."""
        cap = turn_cap_for_step(step, self.config.rewards)
        if cap not in self._agents:
            config = dataclasses.replace(self.agent_config, max_stage2_steps=cap)
            self._agents[cap] = Agent(self.vlm, tools=self.tools, config=config)
        return self._agents[cap]

    # ---- one step ------------------------------------------------------------------------------

    async def rollout(self, items: Sequence[EvalItem], step: int) -> list[list[Trajectory]]:
        """``group_size`` episodes of every item, under the scheduler, on the policy."""
        from sage_fast.rollout import SchedulerConfig
        from sage_fast.rollout.agent_rollout import run_agent_rollout
        from sage_fast.rollout.engines import ContinuousTransformersEngine, TransformersEngine

        agent = self._agent(step)
        groups = [[{"video": item.video_path, "question": item.prompt,
                    "metadata": {"id": item.id, "ground_truth": item.answer, "rl_step": step}}] * self.config.group_size
                  for item in items]
        if self.config.engine == "continuous":
            engine: Any = ContinuousTransformersEngine(self.vlm, sampling=agent.config.sampling,
                                                       max_requests=self.config.max_seqs)
        else:
            engine = TransformersEngine(self.vlm, max_batch=self.config.engine_max_batch)
        self.model.eval()
        try:
            result = await run_agent_rollout(agent, groups, engine, SchedulerConfig(max_seqs=self.config.max_seqs))
        finally:
            await engine.aclose()
        return result.trajectories

    async def score(self, items: Sequence[EvalItem], groups: list[list[Trajectory]]) -> list[list[RewardBreakdown]]:
        """The judge's verdicts turned into the paper's episode rewards."""

        async def one(item: EvalItem, trajectory: Trajectory) -> RewardBreakdown:
            correct = None
            if trajectory.answer is not None and not trajectory.could_not_produce:
                verdict = await self.judge.ajudge_answer(item.prompt, item.answer, trajectory.answer,
                                                         options=item.options)
                correct = verdict.correct
            steps: list[bool] = []
            if self.config.step_reward:  # each call judged with the calls before it, all at once
                calls = [{"name": c.name, "arguments": c.arguments, "result": c.result} for c in trajectory.tool_calls]
                verdicts = await asyncio.gather(*(
                    self.judge.ajudge_tool_step(item.prompt, calls[:k], {"name": c["name"], "arguments": c["arguments"]})
                    for k, c in enumerate(calls)))
                steps = [v.correct for v in verdicts]
            return episode_reward(trajectory, correct, steps, self.config.rewards)

        jobs = [asyncio.gather(*(one(item, t) for t in group)) for item, group in zip(items, groups, strict=True)]
        return [list(r) for r in await asyncio.gather(*jobs)]

    def _frames_for(self, sample: Any, trajectory: Trajectory) -> Any:
        """A Stage-1 sample's frames, decoded once per step for all episodes of one video."""
        if not sample.has_frames:
            return None
        from sage_fast.video import open_video

        reader = open_video(trajectory.video_path, backend=self.agent_config.video_backend)
        size = self._agent(self.step).resize.output_size(reader.metadata.height, reader.metadata.width)
        key = (trajectory.video_path, sample.frame_pts, size)
        if key not in self._frames:
            self._frames[key] = sample_frames(sample, reader, size)
        return self._frames[key]

    def training_samples(self, groups: list[list[Trajectory]], advantages: torch.Tensor
                         ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """Every turn of every episode as a tokenized sample, with its episode's advantage."""
        samples, sample_advantages, episode = [], [], 0
        self._frames.clear()
        for group in groups:
            for trajectory in group:
                for sample in turn_samples(trajectory):
                    samples.append(tokenize_sample(self.vlm, sample, self._frames_for(sample, trajectory)))
                    sample_advantages.append(float(advantages[episode]))
                episode += 1
        self._frames.clear()
        return samples, torch.tensor(sample_advantages, dtype=torch.float32)

    def advantages(self, groups: list[list[Trajectory]], rewards: list[list[RewardBreakdown]]) -> torch.Tensor:
        """GRPO advantages, one per episode. An episode that failed for a reason outside the policy
        (``Trajectory.error``: a video that would not open, an engine that stayed down) is left out
        of its group's statistics and gets 0: it says nothing about the policy."""
        totals = [r.total for group in rewards for r in group]
        failed = [t.error is not None for group in groups for t in group]
        group_ids = [g for g, group in enumerate(groups) for _ in group]
        lone = len(groups)
        for k, is_failed in enumerate(failed):
            if is_failed:  # a group of its own, of one: advantage 0
                group_ids[k], lone = lone, lone + 1
        return group_advantages(torch.tensor(totals, dtype=torch.float32), group_ids, self.config.loss)

    def update(self, groups: list[list[Trajectory]], advantages: torch.Tensor) -> dict[str, float]:
        """One optimizer step on the step's episodes (failed ones skipped); returns the loss statistics."""
        stats = self.accumulate_gradients(groups, advantages)
        stats["lr"] = float(self.optimizer.param_groups[0]["lr"])  # the rate this step used
        if stats["samples"]:
            grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
                         if self.config.max_grad_norm > 0 else torch.tensor(0.0))
            self.optimizer.step()
            stats["grad_norm"] = float(grad_norm)
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def accumulate_gradients(self, groups: list[list[Trajectory]], advantages: torch.Tensor) -> dict[str, float]:
        """The step's loss gradient, accumulated into the parameters' ``.grad`` (no optimizer step):
        the token-mean GRPO loss over every trained token of the step."""
        kept = [[t for t in group if t.error is None] for group in groups]
        live = torch.tensor([t.error is None for group in groups for t in group])
        samples, sample_advantages = self.training_samples(kept, advantages[live])
        stats: dict[str, float] = {"samples": float(len(samples))}
        if not samples:
            return stats
        lengths = [int(s["input_ids"].numel()) for s in samples]
        too_long = [n for n in lengths if n > self.config.micro_batch_tokens]
        if too_long:
            raise ValueError(f"a turn-sample has {max(too_long)} tokens, more than micro_batch_tokens="
                             f"{self.config.micro_batch_tokens}: raise GRPOConfig.micro_batch_tokens")
        families = find_families(samples) if self.config.shared_prefix else lone_families(samples)
        for family in families:  # members' equal pixel tensors become one (a Stage-1 sample's are ~100 MB)
            for i in family.indices[1:]:
                samples[i].update({k: v for k, v in samples[family.indices[0]].items() if "pixel" in k})
        batches = plan_micro_batches(families, self.config.micro_batch_tokens)
        trained = [int((s["labels"][1:] != -100).sum()) for s in samples]  # response tokens per sample
        total_tokens = max(1, sum(trained))
        self.model.set_attn_implementation(packed_attention.ATTN_NAME)
        if self.reference is not None:  # only the update uses it, on the same (maybe shared-prefix) rows
            self.reference.set_attn_implementation(packed_attention.ATTN_NAME)
        self.model.train()
        if self.config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        sums: dict[str, float] = {}
        row_tokens = 0
        try:
            for blocks in batches:
                sums = self._micro_batch(blocks, samples, sample_advantages, trained, total_tokens, sums)
                row_tokens += sum(block.tokens for block in blocks)
        finally:
            self.model.eval()
            self.model.set_attn_implementation(self.generate_attention)
            if self.config.gradient_checkpointing:
                self.model.gradient_checkpointing_disable()
        stats.update({k: v / total_tokens for k, v in sums.items()})
        stats.update(tokens=float(total_tokens), micro_batches=float(len(batches)), row_tokens=float(row_tokens),
                     prefix_tokens_saved=float(sum(len(s["input_ids"]) for s in samples) - row_tokens))
        return stats

    def _micro_batch(self, blocks: list[Family], samples: list[dict[str, torch.Tensor]],
                     sample_advantages: torch.Tensor, trained: list[int], total_tokens: int,
                     sums: dict[str, float]) -> dict[str, float]:
        """Forward + backward of one packed row, its loss weighted by its share of the step
        (``_row_share``) so the accumulated gradient is the whole step's aggregation."""
        device = self.model.device
        if any(block.shared for block in blocks):
            # A family's vision tensors are read from its first member only: the others' stay put.
            items = {i: {key: value.to(device) for key, value in samples[i].items() if m == 0 or "pixel" not in key}
                     for block in blocks for m, i in enumerate(block.indices)}
            packed = pack_families(self.model, items, blocks)
            row, indices, lengths = packed.row, packed.order, packed.spans
        else:  # every sample whole: the plain packed row
            indices = [block.indices[0] for block in blocks]
            plain = [{k: v.to(device) for k, v in samples[i].items()} for i in indices]
            row = packed_attention.pack_samples(self.model, plain)
            lengths = [int(s["input_ids"].numel()) for s in plain]
            row.update(packed_attention.packed_kwargs(lengths, device))
        # Log-probabilities of the distribution the rollouts sampled from: logits / temperature (verl).
        temperature = self.config.temperature
        logprobs, mask = packed_token_logprobs(self.model, row, temperature=temperature)
        ref = None
        if self.use_kl and self.lora is not None:  # the reference: this model with its adapters off
            from sage_fast.rl.lora import adapters_off

            with torch.no_grad(), adapters_off(self.lora):
                ref, _ = packed_token_logprobs(self.model, row, temperature=temperature)
        elif self.reference is not None:
            with torch.no_grad():
                ref, _ = packed_token_logprobs(self.reference, row, temperature=temperature)
        advantages = token_advantages(sample_advantages[indices].to(device), lengths, mask)
        sample_index = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                               torch.tensor(lengths, device=device))
        # One update per rollout batch: the sampling policy is the current one (ratio 1, clip inert).
        loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, advantages, mask, self.config.loss,
                                sample_index=sample_index)
        (loss * self._row_share(indices, trained, total_tokens)).backward()
        tokens = sum(trained[i] for i in indices)
        for key, value in stats.items():
            if key != "tokens":
                sums[key] = sums.get(key, 0.0) + float(value) * tokens
        return sums

    def _row_share(self, indices: list[int], trained: list[int], total_tokens: int) -> float:
        """The weight of one row's loss in the step, so the step's gradient does not depend on how
        samples were packed into rows: its share of the step's trained tokens (token-mean), or of
        its samples that have trained tokens (seq-mean-token-mean: a row's loss is the mean over
        its own samples)."""
        if self.config.loss.loss_agg == "seq-mean-token-mean":
            scored = sum(1 for n in trained if n > 0)
            return sum(1 for i in indices if trained[i] > 0) / max(1, scored)
        return sum(trained[i] for i in indices) / total_tokens

    # ---- the loop ------------------------------------------------------------------------------

    def train(self, items: Sequence[EvalItem | dict[str, Any]], *, progress: bool = True,
              on_step: Callable[[StepResult], None] | None = None) -> list[dict[str, float]]:
        """Runs (or resumes) the whole schedule over ``items``; returns every step's metrics."""
        # benchmark-style records are checked like eval's: fields, videos, unique ids (the resume key)
        items = list(items) if all(isinstance(i, EvalItem) for i in items) else items_from_records(list(items))
        if not items:
            raise ValueError("no RL items: give at least one question")
        per_epoch = math.ceil(len(items) / self.config.prompts_per_step)
        total = min(self.config.max_steps or per_epoch * self.config.epochs, per_epoch * self.config.epochs)
        self._schedule(total)
        self.output.mkdir(parents=True, exist_ok=True)
        self._resume()
        metrics = self.run_folder.read_metrics(self.step)
        while self.step < total:
            epoch, index = divmod(self.step, per_epoch)
            order = list(range(len(items)))
            random.Random(self.config.seed + epoch).shuffle(order)
            batch = [items[i] for i in order[index * self.config.prompts_per_step:(index + 1) * self.config.prompts_per_step]]
            result = self.train_step(batch)
            metrics.append({"step": result.step, **result.stats})
            self.run_folder.write_metrics(metrics)
            if progress:
                s = result.stats
                print(f"[rl] step {result.step}/{total}: reward {s['reward_mean']:+.3f} "
                      f"(accuracy {s.get('accuracy', 0):.2f}), loss {s.get('pg_loss', 0):+.4f}, "
                      f"kl {s.get('kl', 0):.4f}, {s['seconds']:.1f} s", file=sys.stderr, flush=True)
            if on_step is not None:
                on_step(result)
            if self.step % self.config.save_every == 0 or self.step == total:
                self.save_checkpoint()
        return metrics

    def train_step(self, items: Sequence[EvalItem]) -> StepResult:
        """Rollout, score, update: one optimizer step on ``items``."""
        started = time.perf_counter()
        torch.manual_seed(self.config.seed * 1_000_003 + self.step)
        groups = self._stored_rollouts(items)
        if groups is None:
            groups = run_blocking(self.rollout(items, self.step))
            # on disk before the judge runs: a judge that fails or a crash in the update costs no rollouts
            self.run_folder.write_rollouts(self.step, [t for group in groups for t in group])
        rolled = time.perf_counter()
        rewards = run_blocking(self.score(items, groups))
        scored = time.perf_counter()
        advantages = self.advantages(groups, rewards)
        stats = self.update(groups, advantages)
        flat = [r for group in rewards for r in group]
        totals = torch.tensor([r.total for r in flat])
        answered = [t for group in groups for t in group if t.answer is not None and not t.could_not_produce]
        for term in ("format", "tool_repeat", "invalid_args", "tool_step", "accuracy"):
            stats[f"reward_{term}"] = sum(getattr(r, term) for r in flat) / len(flat)
        stats.update(reward_mean=float(totals.mean()), reward_std=float(totals.std(unbiased=False)),
                     failed=float(sum(t.error is not None for group in groups for t in group)),
                     accuracy=sum(r.accuracy > 0 for r in flat) / len(flat),
                     answered=len(answered) / max(1, len(flat)),
                     turns=sum(len(t.turns) for group in groups for t in group) / len(flat),
                     turn_cap=float(turn_cap_for_step(self.step, self.config.rewards)),
                     rollout_s=rolled - started, judge_s=scored - rolled,
                     update_s=time.perf_counter() - scored, seconds=time.perf_counter() - started)
        episodes = [t for group in groups for t in group]
        for k, (trajectory, reward) in enumerate(zip(episodes, flat, strict=True)):
            trajectory.metadata.update(reward=reward.to_dict(), advantage=float(advantages[k]), rl_step=self.step)
        self.run_folder.write_rollouts(self.step, episodes)
        self.step += 1
        return StepResult(self.step, groups, rewards, stats)

    # ---- persistence ---------------------------------------------------------------------------

    def _stored_rollouts(self, items: Sequence[EvalItem]) -> list[list[Trajectory]] | None:
        """This step's rollouts from an earlier attempt, when they were made by the policy as it is
        now (the step the run resumed at, whose checkpoint holds those very weights) for these
        questions; a later step's file came from weights that were not saved and is rolled again."""
        if self.step != self._resumed_at:
            return None
        path = self.run_folder.rollouts_path(self.step)
        if not path.is_file():
            return None
        episodes = list(read_jsonl(path))
        size = self.config.group_size
        expected = [item.id for item in items for _ in range(size)]
        if [str(t.metadata.get("id")) for t in episodes] != expected or \
                any(t.metadata.get("rl_step") != self.step for t in episodes):
            return None
        for trajectory in episodes:  # scored again below; rewards of the earlier attempt are dropped
            trajectory.metadata.pop("reward", None)
            trajectory.metadata.pop("advantage", None)
        print(f"[rl] step {self.step}: reusing the {len(episodes)} rollouts stored at {path}", file=sys.stderr)
        return [episodes[k:k + size] for k in range(0, len(episodes), size)]

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return self.run_folder.checkpoints()

    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>/``: a model folder, plus the optimizer, schedule and data cursor."""
        save_model = None
        if self.lora is not None:
            from sage_fast.rl.lora import save_lora

            def save_model(folder: Path) -> None:
                save_lora(self.lora, folder)
        return self.run_folder.save(self.step, self.model, self.vlm.tokenizer, self.optimizer, self.scheduler,
                                    self.source_folder, self.config, save_model=save_model)

    def _resume(self) -> None:
        load_model = None
        if self.lora is not None:
            from sage_fast.rl.lora import load_lora

            def load_model(folder: Path) -> None:
                load_lora(self.lora, folder)
        latest = self.run_folder.load_latest(self.model, self.optimizer, self.scheduler, load_model=load_model)
        self._resumed_at = 0  # with no checkpoint the policy is the initial model: step 0's rollouts fit
        if latest is not None:
            self.step = self._resumed_at = self.run_folder.step_of(latest)
            print(f"[rl] resumed from {latest} (step {self.step})", file=sys.stderr)
