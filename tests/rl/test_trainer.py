"""GRPO trainer: real rollouts of a tiny Qwen-VL policy, the real openai client judging on a local
stub, the packed update checked against a per-sample REINFORCE gradient, checkpoints and resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from sage_fast.agent.loop import AgentConfig, run_blocking
from sage_fast.agent.samples import IGNORE_INDEX, sample_frames, tokenize_sample, turn_samples
from sage_fast.agent.trajectory import Trajectory, read_jsonl
from sage_fast.eval.datasets import EvalItem
from sage_fast.eval.judge import Judge, JudgeConfig
from sage_fast.models.base import SamplingConfig
from sage_fast.models.tiny import build_tiny_model
from sage_fast.models.transformers_backend import TransformersVLM
from sage_fast.rl.grpo import GRPOLossConfig
from sage_fast.rl.trainer import GRPOConfig, GRPOTrainer
from sage_fast.testing import OpenAIStub
from sage_fast.video import open_video
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("rl")
    folder = build_tiny_model(root / "tiny", "qwen2_5_vl")
    video = make_indexed_video(root / "v.mp4", IndexedVideoSpec(num_frames=40, fps=4.0))
    items = [EvalItem(id=f"q{i}", question=f"Which number is shown at second {i}?", answer=str(4 * i),
                      video_path=str(video)) for i in range(3)]
    return root, folder, items


@pytest.fixture(autouse=True)
def per_segment_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer is under test here, not the Triton kernel (tests/kernels): its per-segment
    reference path is fast on CPU, where the kernel would run in Triton's interpreter."""
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")


@pytest.fixture()
def judge():  # noqa: ANN201
    stub = OpenAIStub()
    stub.reply = "Reasoning: compared.\nVerdict: True"
    yield Judge(JudgeConfig(base_url=stub.url, model="judge", timeout_s=10.0)), stub
    stub.close()


def tiny_policy(folder: Path) -> TransformersVLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformersVLM(folder)


AGENT = AgentConfig(num_frames=4, max_stage2_steps=2, sampling=SamplingConfig(max_tokens=10))


def make_trainer(folder: Path, judge: Judge, out: Path, **overrides) -> GRPOTrainer:  # noqa: ANN003
    settings = dict(group_size=2, prompts_per_step=1, max_new_tokens=10, micro_batch_tokens=4096, save_every=1)
    config = GRPOConfig(output_dir=str(out), **{**settings, **overrides})
    return GRPOTrainer(tiny_policy(folder), judge, config, agent_config=AGENT)


def reference_gradients(folder: Path, trainer: GRPOTrainer, groups: list[list[Trajectory]],
                        advantages: torch.Tensor, loss_agg: str = "token-mean") -> dict[str, torch.Tensor]:
    """The obviously-right version: every turn-sample on its own through an sdpa copy of the
    policy; on-policy PPO without KL is REINFORCE on the tempered policy:
    loss = -sum_s A_s sum_t log softmax(logits / T)_t / tokens (token-mean), or
    -1/samples sum_s A_s mean_t log softmax(logits / T)_t (seq-mean-token-mean)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    model = model.to(trainer.model.device)
    model.load_state_dict(trainer.model.state_dict())
    terms, tokens, episode = [], 0, 0
    for group in groups:
        for trajectory in group:
            reader = open_video(trajectory.video_path)
            size = trainer._agent(0).resize.output_size(reader.metadata.height, reader.metadata.width)
            for sample in turn_samples(trajectory):
                item = tokenize_sample(trainer.vlm, sample, sample_frames(sample, reader, size))
                item = {k: v.to(model.device) for k, v in item.items()}
                batch = {k: (v.unsqueeze(0) if k in ("input_ids", "mm_token_type_ids") else v)
                         for k, v in item.items() if k != "labels"}
                logits = model(**batch).logits[0, :-1].float() / trainer.config.temperature  # sampled at T
                targets = item["labels"][1:]
                keep = targets != IGNORE_INDEX
                logp = torch.log_softmax(logits, -1)[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
                if loss_agg == "token-mean":
                    terms.append(-float(advantages[episode]) * logp.sum())
                    tokens += int(keep.sum())
                elif keep.any():  # a sample without trained tokens is left out of the mean
                    terms.append(-float(advantages[episode]) * logp.mean())
                    tokens += 1
            episode += 1
    (torch.stack(terms).sum() / tokens).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("device", "loss_agg"), [("cpu", "token-mean"), ("cpu", "seq-mean-token-mean"),
                                                  pytest.param("cuda", "token-mean", marks=pytest.mark.gpu)])
def test_packed_update_is_the_per_sample_policy_gradient(world, judge, tmp_path: Path, device: str,  # noqa: ANN001
                                                         loss_agg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Either aggregation gives the per-sample reference's gradient whatever rows the samples were
    packed into (seq-mean-token-mean weights each row by its share of the step's samples)."""
    if device == "cuda":  # the compiled Triton kernel, forward and backward, in the trainer's packed rows
        monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "kernel")
    _, folder, items = world
    judge_, _ = judge
    config = GRPOConfig(output_dir=str(tmp_path / "run"), group_size=2, prompts_per_step=1, max_new_tokens=10,
                        micro_batch_tokens=4096,
                        loss=GRPOLossConfig(kl_estimator="none", kl_coef=0.0, loss_agg=loss_agg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = TransformersVLM(folder, device=device, dtype=torch.float32)
    trainer = GRPOTrainer(policy, judge_, config, agent_config=AGENT)
    groups = run_blocking(trainer.rollout(items[:2], 0))
    assert [len(g) for g in groups] == [2, 2] and all(t.error is None for g in groups for t in g)
    assert all(t.turns[0].stage == "stage1" and t.turns[0].frames == 4 for g in groups for t in g)
    advantages = torch.tensor([1.0, -0.5, 0.25, -2.0])
    want = reference_gradients(folder, trainer, groups, advantages, loss_agg)
    stats = trainer.accumulate_gradients(groups, advantages)
    assert stats["micro_batches"] >= 2  # the Stage-1 samples alone exceed one row's budget
    # each group's two Stage-1 samples share their prompt (shared_prefix is on by default)
    assert stats["prefix_tokens_saved"] > 0
    got = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-4, msg=name)


def test_failed_episodes_get_no_advantage_and_no_samples(world, judge, tmp_path: Path) -> None:  # noqa: ANN001
    _, folder, items = world
    trainer = make_trainer(folder, judge[0], tmp_path / "run")
    from sage_fast.rl.rewards import RewardBreakdown

    ok = Trajectory(video_path=items[0].video_path, question="q")
    failed = Trajectory(video_path=items[0].video_path, question="q", error="OSError: engine down")
    groups = [[ok, failed, ok]]
    rewards = [[RewardBreakdown(accuracy=1.0), RewardBreakdown(accuracy=-0.5), RewardBreakdown(accuracy=0.0)]]
    advantages = trainer.advantages(groups, rewards)
    assert advantages[1] == 0
    # the other two are normalised against each other only: +-1/sqrt(2) with the unbiased std
    torch.testing.assert_close(advantages[[0, 2]], torch.tensor([0.5, -0.5]) / (0.5 ** 0.5 + 1e-6))


def test_train_checkpoints_and_resumes(world, judge, tmp_path: Path) -> None:  # noqa: ANN001
    _, folder, items = world
    judge_, stub = judge
    out = tmp_path / "run"
    trainer = make_trainer(folder, judge_, out, max_steps=2, learning_rate=1e-3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.train(items, progress=False)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["turn_cap"] == 5 for m in metrics)  # the paper's early cap
    assert [p.name for p in trainer.checkpoints()] == ["checkpoint-1", "checkpoint-2"]
    rows = list(read_jsonl(out / "rollouts" / "step-000001.jsonl"))
    assert len(rows) == 2 and all({"reward", "advantage", "rl_step"} <= set(r.metadata) for r in rows)
    assert all(abs(sum(r.metadata["reward"][k] for k in ("format", "tool_repeat", "invalid_args", "tool_step",
                                                          "accuracy")) - r.metadata["reward"]["total"]) < 1e-9
               for r in rows)
    # A checkpoint is a model folder the agent loads as it is.
    reloaded = tiny_policy(out / "checkpoint-2")
    for name, tensor in reloaded.model.state_dict().items():
        torch.testing.assert_close(tensor, trainer.model.state_dict()[name])
    changed = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert changed == any(m.get("grad_norm", 0) > 0 for m in metrics)

    # A run cut off while writing step 3's checkpoint resumes from step 2.
    (out / ".checkpoint-3.partial").mkdir()
    resumed = make_trainer(folder, judge_, out, max_steps=3, learning_rate=1e-3)
    assert resumed.step == 0
    metrics = resumed.train(items, progress=False)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3
    assert [p.name for p in resumed.checkpoints()] == ["checkpoint-2", "checkpoint-3"]  # keep_checkpoints=2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_config_and_item_errors_name_the_fix(world, judge, tmp_path: Path) -> None:  # noqa: ANN001
    _, folder, _ = world
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    trainer = make_trainer(folder, judge[0], tmp_path / "run")
    with pytest.raises(ValueError, match="record 0"):  # records are checked like eval's: the answer is missing
        trainer.train([{"id": "x", "video_path": str(folder), "question": "q"}], progress=False)
    from sage_fast.models.token_pruning import TokenPruningConfig

    with pytest.raises(ValueError, match="token_pruning"):
        GRPOTrainer(tiny_policy(folder), judge[0], GRPOConfig(),
                    agent_config=AgentConfig(token_pruning=TokenPruningConfig(keep_ratio=0.5)))


def test_rl_command_runs_resumes_and_explains_bad_input(world, judge, tmp_path: Path, capsys,  # noqa: ANN001
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_fast.cli.main import main

    root, folder, items = world
    monkeypatch.setenv("SAGE_FAST_CACHE", str(root / "cache"))
    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps({"id": i.id, "question": i.question, "answer": i.answer,
                                        "video_path": i.video_path}) + "\n" for i in items))
    out = tmp_path / "run"
    argv = ["rl", str(data), "--model", "tiny", "--judge", judge[1].url, "--judge-model", "judge", "--out", str(out),
            "--group-size", "2", "--prompts-per-step", "2", "--num-frames", "4", "--max-new-tokens", "8"]
    assert main([*argv, "--steps", "1"]) == 0
    assert "done: 1 steps" in capsys.readouterr().out
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    assert main([*argv, "--steps", "2"]) == 0  # resumes at step 1, runs step 2 (the last: 3 questions, 2 a step)
    captured = capsys.readouterr()
    assert "resumed from" in captured.err and "done: 2 steps" in captured.out
    assert main([*argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "group_size: 2" in printed and f"base_url: {judge[1].url}" in printed

    assert main(["rl", str(data), "--model", "tiny", "--out", str(out)]) == 1
    assert "give the judge" in capsys.readouterr().err
    assert main(["rl", str(data), "--model", "tiny", "--judge", judge[1].url, "--group-size", "1"]) == 1
    assert "group_size must be >= 2" in capsys.readouterr().err


def test_a_step_cut_off_after_its_rollouts_reuses_them(world, judge, tmp_path: Path,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder, items = world
    out = tmp_path / "run"
    crashing = make_trainer(folder, judge[0], out, max_steps=1)

    def crash(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("the update died (out of memory, a pre-empted node)")

    monkeypatch.setattr(crashing, "update", crash)
    with pytest.raises(RuntimeError, match="update died"):
        crashing.train(items, progress=False)
    stored = list(read_jsonl(out / "rollouts" / "step-000000.jsonl"))
    assert len(stored) == 2 and not crashing.checkpoints() and all("reward" not in t.metadata for t in stored)

    resumed = make_trainer(folder, judge[0], out, max_steps=1)

    async def no_rollouts(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("step 0's rollouts are on disk: they must be reused, not generated again")

    monkeypatch.setattr(resumed, "rollout", no_rollouts)
    metrics = resumed.train(items, progress=False)
    assert [m["step"] for m in metrics] == [1]
    again = list(read_jsonl(out / "rollouts" / "step-000000.jsonl"))
    assert [t.turns[-1].raw_output for t in again] == [t.turns[-1].raw_output for t in stored]
    assert all({"reward", "advantage"} <= set(t.metadata) for t in again)



def test_only_rollouts_of_the_checkpointed_policy_are_reused(world, judge, tmp_path: Path,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints every 2 steps; the run dies in step 3's update. Step 2's rollouts came from the
    weights in checkpoint-2 (reused); step 3's from weights no checkpoint holds (rolled again)."""
    _, folder, items = world
    out = tmp_path / "run"
    first = make_trainer(folder, judge[0], out, max_steps=4, save_every=2, prompts_per_step=1, epochs=2)
    update = first.update
    done: list[int] = []

    def update_then_die(groups, advantages):  # noqa: ANN001, ANN202
        if len(done) == 3:
            raise RuntimeError("node pre-empted")
        done.append(1)
        return update(groups, advantages)

    monkeypatch.setattr(first, "update", update_then_die)
    with pytest.raises(RuntimeError, match="pre-empted"):
        first.train(items, progress=False)
    assert [p.name for p in first.checkpoints()] == ["checkpoint-2"]
    assert (out / "rollouts" / "step-000003.jsonl").is_file()

    second = make_trainer(folder, judge[0], out, max_steps=4, save_every=2, prompts_per_step=1, epochs=2)
    rolled: list[int] = []
    rollout = second.rollout

    async def counted(batch, step):  # noqa: ANN001, ANN202
        rolled.append(step)
        return await rollout(batch, step)

    monkeypatch.setattr(second, "rollout", counted)
    metrics = second.train(items, progress=False)
    assert rolled == [3] and [m["step"] for m in metrics] == [1, 2, 3, 4]


def test_lora_trains_adapters_only_with_the_base_as_reference(world, judge, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder, items = world
    out = tmp_path / "run"
    trainer = make_trainer(folder, judge[0], out, max_steps=2, learning_rate=5e-2, lora_rank=4)
    # a random tiny policy's episodes often tie on reward (advantage 0, nothing to learn): fixed advantages
    monkeypatch.setattr(trainer, "advantages", lambda groups, rewards: torch.tensor([1.0, -1.0] * len(groups)))
    assert trainer.reference is None  # no second copy of the weights
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train(items, progress=False)
    assert metrics[0]["kl"] == 0.0 and metrics[1]["kl"] > 0  # the adapters start at zero, then move the policy
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)  # the base is frozen
    assert any(not torch.equal(before[n], after[n]) for n in trainable)

    # the checkpoint is a plain model folder with the adapters merged in, plus the adapters to resume from
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    merged = tiny_policy(checkpoint)
    probe = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        # merged W + BA against W x + B(A x): float rounding only (a failed merge is off by O(1))
        torch.testing.assert_close(merged.model(input_ids=probe).logits, trainer.model(input_ids=probe).logits,
                                   atol=2e-4, rtol=1e-3)
    resumed = make_trainer(folder, judge[0], out, max_steps=3, learning_rate=5e-2, lora_rank=4, epochs=2)
    resumed._schedule(3)
    resumed._resume()
    assert resumed.step == 2
    for name in trainable:
        torch.testing.assert_close(dict(resumed.model.named_parameters())[name], after[name])


def test_shared_prefix_update_gives_the_unshared_update(world, judge, tmp_path: Path,  # noqa: ANN001
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """One update (``GRPOTrainer.update``: gradient, clipping, AdamW step) of the same rollouts with
    shared_prefix on and off, the step split into several rows, differently in each case
    (token-mean: the aggregation that does not depend on which samples share a row): the same
    gradient, then the same weights, on rows shorter by the shared prompts."""
    _, folder, items = world
    settings = dict(learning_rate=1e-3, micro_batch_tokens=4096, group_size=3)
    shared = make_trainer(folder, judge[0], tmp_path / "on", shared_prefix=True, **settings)
    whole = make_trainer(folder, judge[0], tmp_path / "off", shared_prefix=False, **settings)
    groups = run_blocking(shared.rollout(items[:1], 0))
    advantages = torch.tensor([1.0, -0.5, 0.25])
    grads: list[dict[str, torch.Tensor]] = []
    for trainer in (shared, whole):  # the gradient the optimizer is about to apply
        step = trainer.optimizer.step

        def recorded(*args, _step=step, _model=trainer.model, **kwargs):  # noqa: ANN002, ANN003, ANN202
            grads.append({n: p.grad.clone() for n, p in _model.named_parameters() if p.grad is not None})
            return _step(*args, **kwargs)

        monkeypatch.setattr(trainer.optimizer, "step", recorded)
    stats = [trainer.update(groups, advantages) for trainer in (shared, whole)]
    assert stats[0]["prefix_tokens_saved"] > 0 and stats[1]["prefix_tokens_saved"] == 0
    assert stats[0]["row_tokens"] == stats[1]["row_tokens"] - stats[0]["prefix_tokens_saved"]
    assert stats[0]["micro_batches"] >= 2
    torch.testing.assert_close(stats[0]["grad_norm"], stats[1]["grad_norm"], atol=1e-6, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and any("visual" in n for n in grads[0])
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=2e-5, rtol=1e-4, msg=name)
    before = dict(tiny_policy(folder).model.named_parameters())
    after = [dict(t.model.named_parameters()) for t in (shared, whole)]
    moved = [n for n in before if not torch.equal(before[n], after[1][n])]
    assert len(moved) > 10
    for name in moved:  # lr 1e-3: a wrong gradient moves weights ~1e-3 apart (Adam's first step ~ lr * sign)
        torch.testing.assert_close(after[0][name], after[1][name], atol=1e-5, rtol=1e-5, msg=name)
