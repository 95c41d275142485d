"""LoRA for GRPO on one GPU (peft): the adapters train, and the frozen base is the KL reference.

Full-parameter GRPO of an 8B orchestrator holds the policy's weights, gradients and AdamW states
plus a second copy of the weights as the KL reference: about 80 GB in bf16 before activations. With
LoRA on the language model's projections only the adapters train (a fraction of a percent of the
weights: their gradients and optimizer states are small), and the reference is the same model with
its adapters switched off (``disable_adapter``), so no second copy exists. This is how TRL and verl
run GRPO on a single GPU too. The vision tower stays frozen, as the adapters target only the
language model.

Checkpoints keep both: the adapters (``adapter/``, to resume exactly) and the merged weights as a
plain model folder that ``TransformersVLM`` / ``--orchestrator`` loads like any other.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

LANGUAGE_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def apply_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               target: str = LANGUAGE_PROJECTIONS) -> Any:
    """Injects LoRA layers into ``model`` in place (its own forward and ``generate`` then use them) and
    returns the peft wrapper, which switches them off and saves them. The adapters start at zero
    (``lora_B = 0``), so the policy starts exactly at the base model."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError("lora_rank > 0 needs peft: pip install 'sage_fast[rl]' (or pip install peft)") from exc
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"need lora_rank >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1, got {rank}, {alpha}, {dropout}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, bias="none")
    wrapped = get_peft_model(model, config)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"LoRA target {target!r} matched no module of {type(model).__name__}")
    return wrapped


@contextlib.contextmanager
def adapters_off(wrapped: Any) -> Iterator[None]:
    """The base model (the KL reference) for the duration of the block."""
    with wrapped.disable_adapter():
        yield


def save_lora(wrapped: Any, folder: Path) -> None:
    """``folder/adapter`` (the adapters, to resume) and the merged weights as a model folder in ``folder``."""
    wrapped.save_pretrained(folder / "adapter")
    merged = copy.deepcopy(wrapped).to("cpu").merge_and_unload()  # a CPU copy: the training model stays as it is
    merged.save_pretrained(folder)
    del merged


def load_lora(wrapped: Any, folder: Path) -> None:
    """The adapters saved by :func:`save_lora` back into ``wrapped``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / "adapter" / "adapter_model.safetensors"
    if not path.is_file():
        raise RuntimeError(f"{folder}: no LoRA adapter (adapter/adapter_model.safetensors); this run was started "
                           "without LoRA: resume it with lora_rank=0, or start a new output_dir")
    result = set_peft_model_state_dict(wrapped, load_file(path, device=str(next(wrapped.parameters()).device)))
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{folder}: adapter keys do not fit this model ({result.unexpected_keys[:3]}); resume "
                           "with the same model and lora settings")
