"""train_sft on the tiny model: it learns exact responses, resumes at the right step, and saves a loadable model."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from sage_fast.agent.samples import IGNORE_INDEX
from sage_fast.data.sft_records import write_records
from sage_fast.models.base import SamplingConfig
from sage_fast.models.transformers_backend import TransformersVLM
from sage_fast.sft import PromptBuilder, SFTConfig, SFTDataset, train_sft


@pytest.fixture(autouse=True)
def per_segment_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    # the trainer is under test here, not the kernel (tests/kernels): the per-sample path, fast on CPU
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")


def fast(tmp_path, name: str, **changes) -> SFTConfig:  # noqa: ANN001, ANN003
    """The paper's config where it matters, made quick for a tiny model on two CPU cores."""
    settings = dict(output_dir=str(tmp_path / name), device="cpu", num_workers=0, gradient_checkpointing=False,
                    warmup_ratio=0.0, lr_scheduler_type="constant", logging_steps=1, save_steps=1000, seed=3)
    return SFTConfig(**{**settings, **changes})


def logged(run_dir, key: str = "loss") -> list[float]:  # noqa: ANN001
    state = json.loads((run_dir / "sage_sft_result.json").read_text())
    checkpoint = run_dir / f"checkpoint-{state['global_step']}" / "trainer_state.json"
    return [entry[key] for entry in json.loads(checkpoint.read_text())["log_history"] if key in entry]


class StepLog(TrainerCallback):
    """Records the step a run starts from and each step it runs."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.steps: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.start = state.global_step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.steps.append(state.global_step)


def test_defaults_are_the_papers() -> None:
    config = SFTConfig()
    assert (config.learning_rate, config.num_train_epochs, config.batch_size) == (1e-5, 1.0, 64)
    assert (config.lr_scheduler_type, config.min_frame_tokens, config.max_frame_tokens) == ("cosine", 128, 192)
    assert config.accumulation_steps(1) == 64 and config.accumulation_steps(8) == 8
    with pytest.raises(ValueError, match="batch_size=64 is not a multiple"):
        SFTConfig(per_device_batch_size=3).accumulation_steps(1)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=4 gives an effective batch of 8"):
        SFTConfig(per_device_batch_size=2, gradient_accumulation_steps=4).accumulation_steps(1)
    assert SFTConfig(batch_size=None, gradient_accumulation_steps=4).accumulation_steps(2) == 4
    for bad, field in [({"learning_rate": 0}, "learning_rate"), ({"truncation": "cut"}, "truncation"), ({"precision": "fp8"}, "precision"),
                       ({"device": "cuda:1"}, "device"), ({"attn_implementation": "sdpa"}, "attn_implementation"),
                       ({"max_steps": 0}, "max_steps"), ({"warmup_ratio": 1.0}, "warmup_ratio"),
                       ({"batch_size": None}, "batch_size"), ({"min_frame_tokens": 300}, "min_frame_tokens")]:
        with pytest.raises(ValueError, match=field):
            SFTConfig(**bad)


def test_tiny_model_learns_exact_responses(material, make_stage2, tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoModelForImageTextToText

    records = [make_stage2("hand/a", '<json>{"final_answer": "7"}</json>'),
               make_stage2("hand/b", '<json>{"final_answer": null}</json>', question="Who scores?")]
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    # one step = both records packed in one row; 40 steps at a high lr memorise them
    config = fast(tmp_path, "run", learning_rate=3e-3, max_steps=40, batch_size=2, per_device_batch_size=2)
    final = train_sft(material.folder, path, config)
    losses = logged(tmp_path / "run")
    assert len(losses) == 40 and losses[-1] < 0.1 * losses[0], losses

    # the first logged loss is the token mean over the batch's response tokens (the untrained model, sdpa)
    sdpa = AutoModelForImageTextToText.from_pretrained(material.folder, attn_implementation="sdpa", dtype=torch.float32)
    dataset = SFTDataset(records, PromptBuilder(material.folder))
    with torch.no_grad():
        per_record = [(sdpa(input_ids=item["input_ids"][None], labels=item["labels"][None]).loss,
                       int((item["labels"][1:] != IGNORE_INDEX).sum())) for item in (dataset[0], dataset[1])]
    want = sum(loss * n for loss, n in per_record) / sum(n for _, n in per_record)
    assert losses[0] == pytest.approx(float(want), abs=2e-3)

    assert final == tmp_path / "run" / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json", "sage_fast_tiny.json"} <= {p.name for p in final.iterdir()}
    assert not list((tmp_path / "run").glob(".final*"))  # written beside, then renamed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = TransformersVLM(final)
    for record in records:
        assert vlm.generate(record.messages, None, SamplingConfig(max_tokens=40, temperature=0)).text == record.response


def test_interrupted_run_resumes_at_the_right_step(material, make_stage2, tmp_path) -> None:  # noqa: ANN001
    # a Stage-1 record with frames goes through the trainer too
    path = tmp_path / "records.jsonl"
    write_records(path, [*material.episode, make_stage2()])
    common = dict(learning_rate=1e-3, batch_size=2, per_device_batch_size=1, save_steps=2)

    first = StepLog()
    train_sft(material.folder, path, fast(tmp_path, "run", max_steps=2, **common), callbacks=[first])
    assert (first.start, first.steps) == (0, [1, 2])
    assert (tmp_path / "run" / "checkpoint-2" / "optimizer.pt").is_file()

    second = StepLog()
    final = train_sft(material.folder, path, fast(tmp_path, "run", max_steps=4, **common), callbacks=[second])
    assert (second.start, second.steps) == (2, [3, 4])
    result = json.loads((tmp_path / "run" / "sage_sft_result.json").read_text())
    assert result["resumed_from"].endswith("checkpoint-2") and result["global_step"] == 4

    straight = train_sft(material.folder, path, fast(tmp_path, "straight", max_steps=4, **common))
    resumed, reference = load_file(final / "model.safetensors"), load_file(straight / "model.safetensors")
    initial = load_file(material.folder / "model.safetensors")  # the same (original) key layout
    assert not torch.equal(reference["lm_head.weight"], initial["lm_head.weight"])  # it trained
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=1e-5, msg=key)

    never = StepLog()
    train_sft(material.folder, path, fast(tmp_path, "run", max_steps=1, resume="never", **common), callbacks=[never])
    assert never.start == 0
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        train_sft(material.folder, path, fast(tmp_path, "run", max_steps=1, resume=str(tmp_path), **common))


def test_bad_inputs_fail_before_training(material, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="no such SFT records file"):
        train_sft(material.folder, tmp_path / "none.jsonl", fast(tmp_path, "run"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n{"id": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing video_path, stage, step, messages, response"):
        train_sft(material.folder, bad, fast(tmp_path, "run"))
    with pytest.raises(ValueError, match="not a local model folder"):
        train_sft(tmp_path / "no-model", bad, fast(tmp_path, "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_bf16_run_on_a_gpu_with_the_kernel_learns(material, make_stage2, tmp_path, precision: str,  # noqa: ANN001
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path: bf16 autocast and the compiled Triton varlen kernel inside TRL's loop."""
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "kernel")
    records = [make_stage2("hand/a", '<json>{"final_answer": "7"}</json>'),
               make_stage2("hand/b", '<json>{"final_answer": null}</json>', question="Who scores?")]
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    config = fast(tmp_path, "run", device="cuda", precision=precision, learning_rate=3e-3, max_steps=40, batch_size=2,
                  per_device_batch_size=2)
    train_sft(material.folder, path, config)
    losses = logged(tmp_path / "run")
    assert len(losses) == 40 and losses[-1] < 0.2 * losses[0], losses


def test_lora_sft_learns_and_the_final_model_has_the_adapters_merged(material, make_stage2, tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoModelForImageTextToText

    records = [make_stage2("hand/a", '<json>{"final_answer": "7"}</json>'),
               make_stage2("hand/b", '<json>{"final_answer": null}</json>', question="Who scores?")]
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    config = fast(tmp_path, "run", learning_rate=2e-2, max_steps=2, batch_size=2, per_device_batch_size=2,
                  lora_rank=8, save_steps=2, gradient_checkpointing=False)
    train_sft(material.folder, path, config)
    assert (tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors").is_file()  # adapters only
    config = fast(tmp_path, "run", learning_rate=2e-2, max_steps=30, batch_size=2, per_device_batch_size=2,
                  lora_rank=8, save_steps=2, gradient_checkpointing=False)
    final = train_sft(material.folder, path, config)  # resumes at step 2
    losses = logged(tmp_path / "run")
    # the adapters alone move a random 64-wide model slowly: a clear, steady drop is what is asked
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.25 and losses[-1] < min(losses[:10]), losses
    assert (final / "adapter" / "adapter_model.safetensors").is_file() and (final / "model.safetensors").is_file()
    base = AutoModelForImageTextToText.from_pretrained(material.folder, dtype=torch.float32)
    merged = AutoModelForImageTextToText.from_pretrained(final, dtype=torch.float32)
    changed = {n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])}
    assert changed and all("language_model" in n and n.endswith(("proj.weight",)) for n in changed)
