"""``sage-fast sft RECORDS.jsonl``: supervised fine-tuning of the orchestrator, resumable, with the paper's defaults."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

# command-line option -> SFTConfig field
_OPTIONS = {"epochs": "num_train_epochs", "lr": "learning_rate", "batch_size": "batch_size",
            "per_device_batch_size": "per_device_batch_size", "grad_accum": "gradient_accumulation_steps",
            "max_length": "max_length", "max_steps": "max_steps", "save_steps": "save_steps", "device": "device",
            "num_workers": "num_workers", "video_root": "video_root", "lora_rank": "lora_rank",
            "precision": "precision"}
_SETTINGS = {"records": None, "model": None, "out": "sage_sft"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sft", help="fine-tune an orchestrator on SFT records (the paper's SFT stage)")
    parser.add_argument("records", nargs="?", default=None,
                        help="SFT records, one JSON per line (sage-fast synth writes them; SAGE-MM-SFT's shape)")
    parser.add_argument("--config", default=None, metavar="SFT.yaml",
                        help="settings file: records, model, out, and an `sft:` mapping of SFTConfig fields "
                             "(learning_rate, batch_size, truncation, precision, ...); the command line wins")
    parser.add_argument("--print-config", action="store_true", help="print the effective settings as YAML and exit")
    parser.add_argument("--model", default=None,
                        help="the model to fine-tune: a local Qwen2.5-VL / Qwen3-VL folder or hub id, or tiny / "
                             "tiny-qwen3 (random weights, offline: the whole path runs, a smoke test)")
    parser.add_argument("--out", default=None,
                        help="run folder: checkpoints, then the model in OUT/final; a run with checkpoints is resumed")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the records (default 1)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-5, cosine)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="effective batch in samples (default 64); gradient accumulation is derived from it")
    parser.add_argument("--per-device-batch-size", type=int, default=None,
                        help="samples packed into one row per forward (default 1)")
    parser.add_argument("--grad-accum", type=int, default=None,
                        help="rows per optimizer step per device; given alone, the effective batch follows from it")
    parser.add_argument("--max-length", type=int, default=None, help="longest sample in tokens (default 32768)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--save-steps", type=int, default=None, help="optimizer steps between checkpoints (default 500)")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default: a GPU when there is one")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader processes decoding frames and tokenizing (default 4)")
    parser.add_argument("--video-root", default=None, help="folder the records' relative video paths are under")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="train LoRA adapters of this rank instead of every weight (merged into OUT/final)")
    parser.add_argument("--precision", default=None, choices=("auto", "bf16", "bf16-weights", "fp32"),
                        help="bf16-weights: bf16 weights, gradients and AdamW states (half the memory of bf16 autocast)")
    parser.set_defaults(handler=run)


def resolve(args: argparse.Namespace) -> tuple[dict, object]:
    """Defaults < SFT.yaml < command line: the plain settings and the SFTConfig."""
    from sage_fast.config import from_dict, load_yaml
    from sage_fast.sft.trainer import SFTConfig

    data = load_yaml(args.config) if args.config else {}
    section = data.pop("sft", None) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{args.config}: `sft:` must be a mapping of SFTConfig fields")
    section = dict(section)
    unknown = sorted(set(data) - set(_SETTINGS))
    if unknown:
        raise ValueError(f"{args.config}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join([*_SETTINGS, 'sft'])}")
    settings = {name: getattr(args, name) if getattr(args, name, None) is not None else data.get(name, default)
                for name, default in _SETTINGS.items()}
    for option, name in _OPTIONS.items():
        if getattr(args, option) is not None:
            section[name] = getattr(args, option)
    if args.grad_accum is not None and args.batch_size is None:
        section["batch_size"] = None  # --grad-accum alone sets the effective batch
    section.setdefault("output_dir", settings["out"])
    if args.out is not None:
        section["output_dir"] = args.out
    settings["out"] = section["output_dir"]
    config = from_dict(SFTConfig, section, where=f"{args.config or 'sft'}: sft")
    if not args.print_config:
        if not settings["records"]:
            raise ValueError("give the SFT records file (RECORDS.jsonl, or `records:` in --config)")
        if not settings["model"]:
            raise ValueError("give the model to fine-tune (--model: a Qwen-VL folder or hub id, or tiny)")
    return settings, config


def run(args: argparse.Namespace) -> int:
    from sage_fast.config import to_dict
    from sage_fast.sft.trainer import train_sft

    from .ask import local_model

    settings, config = resolve(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump({**settings, "sft": to_dict(config)}, sort_keys=False), end="")
        return 0
    records = Path(settings["records"])
    if not records.is_file():
        raise ValueError(f"{records}: no such SFT records file (make one with `sage-fast synth`)")
    model = local_model(settings["model"])
    print(f"[sft] {records} -> {config.output_dir} (lr {config.learning_rate:g}, effective batch "
          f"{config.batch_size or 'from --grad-accum'}, {config.num_train_epochs:g} epoch(s))", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model's note was said once above
        final = train_sft(model, records, config)
    print(f"done: model in {final}")
    return 0
