"""The files of a model folder other than its weights, carried over when a trainer writes a new folder.

``save_pretrained`` writes the config and the weights; a Qwen-VL folder also needs its processor and
video-processor configs, chat template and tokenizer files (and a tiny model its note) for
``TransformersVLM`` to load it. SFT's final model and RL's checkpoints both copy them from the
folder the run started from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")


def copy_side_files(source: Path, target: Path) -> list[str]:
    """Copies the source model folder's non-weight files that ``target`` lacks (processor and
    video-processor configs, chat template, tokenizer files, the tiny model's note)."""
    copied = []
    for path in sorted(source.iterdir()):
        if (not path.is_file() or path.name.startswith(".") or path.name == "README.md"
                or path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(".index.json")
                or (target / path.name).exists()):
            continue
        shutil.copy2(path, target / path.name)
        copied.append(path.name)
    return copied
