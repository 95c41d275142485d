"""``sage-fast sft``: end to end on the tiny model, resumed runs, config overlay, one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from sage_fast.cli.main import main
from sage_fast.data.sft_records import write_records


@pytest.fixture(autouse=True)
def per_segment_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")  # the trainer is under test, not the kernel


def test_sft_end_to_end_then_resumed(material, make_stage2, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("SAGE_FAST_CACHE", str(tmp_path / "cache"))  # `--model tiny` builds its model here
    records = tmp_path / "records.jsonl"
    write_records(records, [*material.episode, make_stage2()])
    out = tmp_path / "run"
    # one DataLoader worker: the Stage-1 frames are decoded and tokenized in another process
    args = ["sft", str(records), "--model", "tiny", "--out", str(out), "--device", "cpu", "--batch-size", "2",
            "--lr", "1e-4", "--save-steps", "1", "--num-workers", "1"]
    assert main([*args, "--max-steps", "2"]) == 0
    captured = capsys.readouterr()
    assert f"done: model in {out / 'final'}" in captured.out
    assert "random-weight" in captured.err  # the tiny model says what it is
    assert (out / "checkpoint-2").is_dir() and (out / "final" / "model.safetensors").is_file()
    recorded = json.loads((out / "sage_sft_config.json").read_text())
    assert recorded["gradient_accumulation_steps"] == 2 and recorded["sft"]["learning_rate"] == 1e-4

    assert main([*args, "--max-steps", "3"]) == 0  # the same command with more steps resumes
    result = json.loads((out / "sage_sft_result.json").read_text())
    assert result["global_step"] == 3 and result["resumed_from"] == str(out / "checkpoint-2")
    assert result["skipped_records"] == 0


def test_config_file_and_options_overlay(tmp_path, capsys) -> None:  # noqa: ANN001
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"records": "data.jsonl", "model": "tiny", "out": "from_yaml",
                                      "sft": {"learning_rate": 2e-5, "truncation": "response", "save_steps": 7}}))
    assert main(["sft", "--config", str(config), "--lr", "3e-5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["records"] == "data.jsonl" and printed["out"] == "from_yaml"
    assert printed["sft"]["learning_rate"] == 3e-5 and printed["sft"]["truncation"] == "response"
    assert printed["sft"]["save_steps"] == 7 and printed["sft"]["output_dir"] == "from_yaml"
    assert printed["sft"]["batch_size"] == 64  # the paper's defaults fill the rest

    assert main(["sft", "--print-config", "--grad-accum", "4", "--out", str(tmp_path / "x")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sft"]["batch_size"] is None and printed["sft"]["gradient_accumulation_steps"] == 4
    assert printed["sft"]["output_dir"] == str(tmp_path / "x")


def error_line(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("sage-fast sft: error: ")
    return err[-1]


def test_errors_are_one_clear_line(material, make_stage2, tmp_path, capsys) -> None:  # noqa: ANN001
    records = tmp_path / "records.jsonl"
    write_records(records, [make_stage2()])
    base = ["--model", str(material.folder), "--out", str(tmp_path / "run"), "--device", "cpu"]

    assert main(["sft", str(tmp_path / "missing.jsonl"), *base]) == 1
    assert "missing.jsonl: no such SFT records file" in error_line(capsys)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**make_stage2().to_dict(), "stage": "stage3"}) + "\n")
    assert main(["sft", str(bad), *base]) == 1
    assert "bad.jsonl:1: stage must be 'stage1' or 'stage2'" in error_line(capsys)

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["sft", str(records), "--model", str(other), "--out", str(tmp_path / "run")]) == 1
    assert "cannot be fine-tuned as an orchestrator" in error_line(capsys)

    assert main(["sft", str(records), "--model", "not a model", "--out", str(tmp_path / "run")]) == 1
    assert "give a local Qwen-VL folder" in error_line(capsys)

    assert main(["sft", str(records), "--out", str(tmp_path / "run")]) == 1
    assert "give the model to fine-tune" in error_line(capsys)

    assert main(["sft", str(records), *base, "--batch-size", "3", "--grad-accum", "2"]) == 1
    assert "effective batch of 2, not batch_size=3" in error_line(capsys)

    config = tmp_path / "typo.yaml"
    config.write_text("sft:\n  learnin_rate: 1e-5\n")
    assert main(["sft", str(records), *base, "--config", str(config)]) == 1
    assert "unknown setting(s) learnin_rate" in error_line(capsys)
    assert not (tmp_path / "run").exists()
