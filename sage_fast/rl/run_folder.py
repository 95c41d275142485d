"""An RL run's folder: checkpoints that load as models, per-step rollouts and metrics, all crash-safe.

Layout::

    checkpoint-<step>/     a model folder (TransformersVLM / --orchestrator load it as it is)
                           + trainer.pt (optimizer, schedule, RNG) + trainer_state.json (step, config)
    rollouts/step-<n>.jsonl  the step's trajectories, each with its reward terms and advantage
    metrics.jsonl          one line per finished step

A checkpoint is written beside its final name and renamed into place, so a folder named
``checkpoint-N`` with a ``trainer_state.json`` is always whole; a run cut off mid-step redoes that
step and overwrites its rollouts and metrics line, so nothing is counted twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sage_fast.agent.trajectory import Trajectory, write_jsonl
from sage_fast.jsonl import read_lines, write_lines
from sage_fast.models.model_files import copy_side_files


class RunFolder:
    """``RunFolder(output_dir, keep=2)``: where one GRPO run keeps everything it must not lose."""

    def __init__(self, output: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 checkpoint, got {keep}")
        self.output = Path(output)
        self.keep = keep

    # ---- rollouts and metrics --------------------------------------------------------------------

    def rollouts_path(self, step: int) -> Path:
        return self.output / "rollouts" / f"step-{step:06d}.jsonl"

    def write_rollouts(self, step: int, trajectories: list[Trajectory]) -> Path:
        """The step's episodes, replaced atomically (a redone step overwrites its file)."""
        path = self.rollouts_path(step)
        write_jsonl(path, trajectories)
        return path

    @property
    def metrics_path(self) -> Path:
        return self.output / "metrics.jsonl"

    def read_metrics(self, up_to_step: int) -> list[dict[str, Any]]:
        """Metrics of the steps a resume keeps (those after ``up_to_step`` are redone)."""
        if not self.metrics_path.is_file():
            return []
        rows = [row for _, row in read_lines(self.metrics_path, what="metrics line")]
        return [row for row in rows if row["step"] <= up_to_step]

    def write_metrics(self, metrics: list[dict[str, Any]]) -> None:
        write_lines(self.metrics_path, metrics)

    # ---- checkpoints -------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.output.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save(self, step: int, model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
             scheduler: Any, source_folder: Path, config: Any,
             save_model: Callable[[Path], None] | None = None) -> Path:
        """``checkpoint-<step>/``; the oldest beyond ``keep`` are removed once it is in place.
        ``save_model(folder)`` writes the weights when ``model.save_pretrained`` cannot (LoRA)."""
        final = self.output / f"checkpoint-{step}"
        partial = self.output / f".checkpoint-{step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (save_model or model.save_pretrained)(partial)
        tokenizer.save_pretrained(partial)
        if source_folder.is_dir():
            copy_side_files(source_folder, partial)  # processor, chat template, tiny-model note
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "torch_rng": torch.get_rng_state()}, partial / "trainer.pt")
        state = {"step": step, "source_model": str(source_folder),
                 "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))}
        (partial / "trainer_state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_latest(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    load_model: Callable[[Path], None] | None = None) -> Path | None:
        """Restores the newest checkpoint's weights (``load_model(folder)`` when given), optimizer,
        schedule and RNG; returns it (None: none)."""
        found = self.checkpoints()
        if not found:
            return None
        latest = found[-1]
        if load_model is not None:
            load_model(latest)
        else:  # from_pretrained, not a raw state dict: transformers renames some keys when it saves
            saved_model = type(model).from_pretrained(latest, dtype=model.dtype)
            model.load_state_dict(saved_model.state_dict())
            del saved_model
        saved = torch.load(latest / "trainer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        return latest

    @staticmethod
    def step_of(checkpoint: Path) -> int:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["step"])
