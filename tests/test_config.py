"""Configs from YAML: nested dataclasses, unknown keys refused, the command line wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sage_fast.agent.loop import AgentConfig
from sage_fast.cli.main import main
from sage_fast.config import from_dict, help_text, load_yaml, to_dict
from sage_fast.models.base import SamplingConfig
from sage_fast.models.token_pruning import TokenPruningConfig


def test_nested_round_trip() -> None:
    config = from_dict(AgentConfig, {"num_frames": 64, "sampling": {"temperature": 0.7, "seed": 3},
                                     "token_pruning": {"keep_ratio": 0.5}})
    assert config.sampling == SamplingConfig(temperature=0.7, seed=3)
    assert config.token_pruning == TokenPruningConfig(keep_ratio=0.5)
    assert from_dict(AgentConfig, to_dict(config)) == config


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"AgentConfig: unknown setting\(s\) num_frame; valid: num_frames"):
        from_dict(AgentConfig, {"num_frame": 3})
    with pytest.raises(ValueError, match="AgentConfig.sampling: temperature must be >= 0"):
        from_dict(AgentConfig, {"sampling": {"temperature": -1}})
    with pytest.raises(ValueError, match="AgentConfig.sampling: unknown setting"):
        from_dict(AgentConfig, {"sampling": {"temp": 1}})
    with pytest.raises(ValueError, match="AgentConfig: expected a mapping of settings, got list"):
        from_dict(AgentConfig, [("num_frames", 3)])  # type: ignore[arg-type]
    assert "num_frames: 128  # Stage-1 frames, sampled uniformly" in help_text(AgentConfig)


def test_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="no such config file"):
        load_yaml(tmp_path / "missing.yaml")


def test_ask_reads_run_yaml_and_the_command_line_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"orchestrator": "openai:http://127.0.0.1:9/v1", "asr": "none",
                                   "agent": {"num_frames": 32, "max_stage2_steps": 4,
                                             "sampling": {"temperature": 0.7}}}))
    assert main(["ask", "v.mp4", "q", "--config", str(run), "--num-frames", "16", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["orchestrator"] == "openai:http://127.0.0.1:9/v1" and printed["device"] == "cpu"
    assert printed["agent"]["num_frames"] == 16 and printed["agent"]["max_stage2_steps"] == 4
    assert printed["agent"]["sampling"]["temperature"] == 0.7 and printed["agent"]["sampling"]["max_tokens"] == 2048
    run.write_text(yaml.safe_dump({"orchestrater": "tiny"}))
    assert main(["ask", "v.mp4", "q", "--config", str(run)]) == 1
    assert "unknown setting(s) orchestrater" in capsys.readouterr().err
    assert main(["ask", "v.mp4", "q"]) == 1
    assert "name the orchestrator" in capsys.readouterr().err
