"""Supervised fine-tuning of the SAGE-MM orchestrator on SFT records, with TRL's ``SFTTrainer``.

The paper's recipe (DESIGN.md §2): ~417K per-turn samples, lr 1e-5, 1 epoch, effective batch 64,
bf16. :func:`train_sft` runs it with TRL's ``SFTTrainer`` (transformers' ``Trainer`` underneath, so
checkpoints, ``resume_from_checkpoint``, gradient accumulation and accelerate / DeepSpeed / FSDP
launches come as they are) and our own pieces for what TRL does not know: SAGE's video prompts.

How TRL is used, and why this way:
- TRL accepts only Hugging Face ``datasets`` as training data, and its preparation (tokenizing
  text or chat messages, its vision collator) knows nothing of frames kept as times in a video.
  So TRL is given a ``datasets.Dataset`` of record indices with ``skip_prepare_dataset``; our
  :class:`~sage_fast.sft.collator.SFTCollator` fetches each index from our lazy
  :class:`~sage_fast.sft.dataset.SFTDataset` (decode + tokenize in the DataLoader workers) and packs
  the batch into one padding-free row.
- TRL's loss is kept: its fused LM head scores only the response tokens, without building the
  (tokens, vocab) logits, and divides by the trained tokens of the whole accumulated batch.
- The model is loaded by us with ``attn_implementation="sage_varlen"`` (our packed attention) and
  handed over as a model object. On resume it is loaded from the checkpoint with ``from_pretrained``:
  transformers saves Qwen-VL weights in the original key layout and ``Trainer`` reloads them without
  converting the keys back (transformers#43701), which would silently restart from the initial weights.

The final model is written beside the checkpoints (``<output_dir>/final``: a staging folder, then a
rename) with the source folder's processor / tokenizer / tiny-model files, so it loads back with
``TransformersVLM`` and ``sage-fast ask``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sage_fast.models.model_files import copy_side_files
from sage_fast.models.packed_attention import ATTN_NAME
from sage_fast.sft.collator import SKIPPED_KEY, SFTCollator
from sage_fast.sft.dataset import TRUNCATION, PromptBuilder, SFTDataset

FINAL = "final"
_ATTENTION = (ATTN_NAME, "flash_attention_2")  # both split a packed row by its cu_seq_lens / positions


@dataclass
class SFTConfig:
    """How SFT runs; the defaults are the paper's (lr 1e-5, 1 epoch, effective batch 64, bf16)."""

    output_dir: str = field(default="sage_sft", metadata={
        "help": "run folder: checkpoint-N folders, then the final model in <output_dir>/final"})
    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the records"})
    max_steps: int = field(default=-1, metadata={
        "help": "stop after this many optimizer steps (-1: num_train_epochs decides)"})
    batch_size: int | None = field(default=64, metadata={
        "help": "effective batch in samples: per_device_batch_size x gradient_accumulation_steps x GPUs; "
                "gradient accumulation is derived from it (None: gradient_accumulation_steps decides)"})
    per_device_batch_size: int = field(default=1, metadata={
        "help": "samples packed into one row per forward on each device (a Stage-1 sample is ~25K tokens)"})
    gradient_accumulation_steps: int | None = field(default=None, metadata={
        "help": "rows per optimizer step on each device (None: derived from batch_size)"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of the steps spent warming up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    max_length: int = field(default=32768, metadata={
        "help": "longest sample in tokens (128 frames at 192 tokens are ~24.6K, plus the text)"})
    truncation: str = field(default="skip", metadata={
        "help": "a longer sample is skipped and counted (skip), or keeps its whole prompt and loses the end of "
                "its response (response); the prompt is never cut"})
    min_frame_tokens: int = field(default=128, metadata={"help": "visual tokens per frame, lower end"})
    max_frame_tokens: int = field(default=192, metadata={"help": "visual tokens per frame, upper end"})
    video_root: str | None = field(default=None, metadata={"help": "folder that relative video paths are under"})
    video_backend: str = field(default="auto", metadata={"help": "sage_fast.video decode backend"})
    device: str = field(default="auto", metadata={"help": "auto (a GPU when there is one), cpu or cuda"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 autocast on a GPU that has it, else fp32; bf16 (autocast, fp32 weights and optimizer "
                "states); bf16-weights (weights, gradients and AdamW states in bf16: an 8B model's 128 GB of fp32 "
                "training state becomes 64 GB, which one 80 GB GPU holds with activation checkpointing and no "
                "ZeRO, at some cost in precision); fp32"})
    attn_implementation: str = field(default=ATTN_NAME, metadata={
        "help": f"attention over packed rows: {' or '.join(_ATTENTION)}"})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "recompute activations in the backward (long Stage-1 rows need it on a GPU)"})
    lora_rank: int = field(default=0, metadata={
        "help": "0: train every weight (the paper); > 0: LoRA adapters of this rank on the language model's "
                "projections (peft, through TRL), merged into the final model"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scale numerator (scale = alpha / rank)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    save_steps: int = field(default=500, metadata={"help": "optimizer steps between checkpoints"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (None: all)"})
    logging_steps: int = field(default=10, metadata={"help": "optimizer steps between log lines"})
    resume: str = field(default="auto", metadata={
        "help": "auto: continue from the last checkpoint in output_dir if there is one; never; or a checkpoint path"})
    seed: int = field(default=42, metadata={"help": "seed for initialisation, shuffling and dropout"})
    num_workers: int = field(default=4, metadata={
        "help": "DataLoader processes decoding frames and tokenizing (0: in the training process)"})
    report_to: str = field(default="none", metadata={"help": "experiment tracker: none, tensorboard, wandb, ..."})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed config JSON (or launch with accelerate)"})

    def __post_init__(self) -> None:
        if self.lora_rank < 0 or (self.lora_rank and not (self.lora_alpha > 0 and 0 <= self.lora_dropout < 1)):
            raise ValueError(f"need lora_rank >= 0, and with LoRA lora_alpha > 0 and 0 <= lora_dropout < 1; got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        positive = {"learning_rate": self.learning_rate, "num_train_epochs": self.num_train_epochs,
                    "per_device_batch_size": self.per_device_batch_size, "max_length": self.max_length,
                    "save_steps": self.save_steps, "logging_steps": self.logging_steps}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("batch_size", "gradient_accumulation_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {value}")
        if self.batch_size is None and self.gradient_accumulation_steps is None:
            raise ValueError("give batch_size (the effective batch) or gradient_accumulation_steps")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1, or -1 for num_train_epochs, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.truncation not in TRUNCATION:
            raise ValueError(f"truncation must be one of {TRUNCATION}, got {self.truncation!r}")
        if not 0 < self.min_frame_tokens <= self.max_frame_tokens:
            raise ValueError(f"need 0 < min_frame_tokens <= max_frame_tokens, got {self.min_frame_tokens}, "
                             f"{self.max_frame_tokens}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r} (pick GPUs with "
                             "CUDA_VISIBLE_DEVICES, or launch several with accelerate / torchrun)")
        if self.precision not in ("auto", "bf16", "bf16-weights", "fp32"):
            raise ValueError(f"precision must be auto, bf16, bf16-weights or fp32, got {self.precision!r}")
        if self.attn_implementation not in _ATTENTION:
            raise ValueError(f"attn_implementation must be {' or '.join(_ATTENTION)} (a packed row has no padding "
                             f"mask for sdpa / eager), got {self.attn_implementation!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    def accumulation_steps(self, world_size: int) -> int:
        """Rows per optimizer step per device, so that the effective batch is ``batch_size``."""
        per_step = self.per_device_batch_size * world_size
        if self.batch_size is None:
            return self.gradient_accumulation_steps  # type: ignore[return-value]
        if self.batch_size % per_step:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of per_device_batch_size "
                             f"({self.per_device_batch_size}) x {world_size} process(es)")
        steps = self.batch_size // per_step
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps != steps:
            raise ValueError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} gives an effective "
                             f"batch of {self.gradient_accumulation_steps * per_step}, not batch_size="
                             f"{self.batch_size}; set one of them (the other to None)")
        return steps


def model_folder(model: str | Path) -> Path:
    """A local model folder, or a hub id downloaded with transformers' own hub client."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model)))
    except Exception as exc:  # offline, unknown id, gated
        raise ValueError(f"{model}: not a local model folder, and the Hugging Face hub could not provide it "
                         f"({type(exc).__name__}); give a local Qwen2.5-VL / Qwen3-VL folder") from exc


def _training_args(config: SFTConfig, output_dir: Path) -> Any:
    """TRL's ``SFTConfig`` for our run: TRL's own dataset preparation and packing off, our collator's
    ``index`` column kept, the device and precision resolved."""
    from trl import SFTConfig as TRLConfig

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise RuntimeError(f"device={config.device!r} but torch sees no CUDA GPU; use device=cpu")
    on_gpu = config.device != "cpu" and cuda
    bf16 = on_gpu and (config.precision in ("bf16", "bf16-weights")
                       or (config.precision == "auto" and torch.cuda.is_bf16_supported()))
    if config.precision in ("bf16", "bf16-weights") and not on_gpu:
        raise RuntimeError(f"precision={config.precision} needs a GPU here; use precision=fp32 (or auto) on the CPU")
    # transformers 5.x renamed gradient_checkpointing (still TRL's name) to activation_checkpointing
    checkpointing = ("activation_checkpointing" if "activation_checkpointing" in TRLConfig.__dataclass_fields__
                     else "gradient_checkpointing")
    args = TRLConfig(
        **{checkpointing: config.gradient_checkpointing},
        output_dir=str(output_dir), learning_rate=config.learning_rate, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=1, lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, bf16=bf16, fp16=False,
        use_cpu=not on_gpu, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=config.save_total_limit, logging_steps=config.logging_steps,
        seed=config.seed, dataloader_num_workers=config.num_workers,
        dataloader_persistent_workers=config.num_workers > 0, report_to=config.report_to,
        deepspeed=config.deepspeed, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None, packing=False, padding_free=False,
        # A Stage-2 (text-only) row leaves the vision tower without gradients.
        ddp_find_unused_parameters=True)
    args.gradient_accumulation_steps = config.accumulation_steps(args.world_size)
    return args


def _sft_trainer_class() -> type:
    from trl import SFTTrainer

    class SageSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer that logs how many records were skipped as longer than max_length."""

        skipped_records = 0
        preloaded_checkpoint: str | None = None  # the checkpoint the model was already loaded from

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            # transformers saves Qwen-VL checkpoints in the original key layout (visual.*, model.layers.*)
            # but Trainer reloads them with load_state_dict, without converting the keys back, so resuming
            # would keep the initial weights (transformers#43701). train_sft loads the model from the
            # checkpoint with from_pretrained, which converts them; FSDP checkpoints have their own format.
            if resume_from_checkpoint == self.preloaded_checkpoint and not self.is_fsdp_enabled:
                return
            super()._load_from_checkpoint(resume_from_checkpoint, model)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            skipped = int(inputs.pop(SKIPPED_KEY, 0))
            if model.training:
                self.skipped_records += skipped
                self._metrics["train"]["skipped_records"] = [self.skipped_records]
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return SageSFTTrainer


def resume_checkpoint(config: SFTConfig) -> str | None:
    """The checkpoint this run continues from (``config.resume``), or None for a fresh start."""
    from transformers.trainer_utils import get_last_checkpoint

    if config.resume == "never":
        return None
    if config.resume == "auto":
        out = Path(config.output_dir)
        return get_last_checkpoint(str(out)) if out.is_dir() else None
    if not (Path(config.resume) / "trainer_state.json").is_file():
        raise ValueError(f"resume={config.resume!r}: not a checkpoint folder (no trainer_state.json); "
                         "use auto, never or a checkpoint-N folder")
    return config.resume


def _has_weights(folder: Path) -> bool:
    """Whether a checkpoint holds the whole model (a DeepSpeed ZeRO-3 one may hold only shards)."""
    return any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                      "pytorch_model.bin", "pytorch_model.bin.index.json"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2))
    os.replace(partial, path)


def train_sft(model_path: str | Path, records_path: str | Path | SFTDataset, config: SFTConfig | None = None,
              *, callbacks: list[Any] | None = None) -> Path:
    """Fine-tunes the Qwen-VL model at ``model_path`` on the SFT records; returns the final model folder.

    ``records_path``: a JSONL file of SFT records (or an :class:`SFTDataset` already built). Resumes
    from the last checkpoint in ``config.output_dir`` unless ``config.resume`` says otherwise.
    ``callbacks``: extra transformers ``TrainerCallback`` objects.
    """
    import datasets
    from transformers import AutoModelForImageTextToText

    import sage_fast.models.packed_attention  # noqa: F401  (registers sage_varlen)

    config = config or SFTConfig()
    source = model_folder(model_path)
    builder = PromptBuilder(source)
    if isinstance(records_path, SFTDataset):
        dataset = records_path
    else:
        dataset = SFTDataset(records_path, builder, max_length=config.max_length, truncation=config.truncation,
                             min_frame_tokens=config.min_frame_tokens, max_frame_tokens=config.max_frame_tokens,
                             video_root=config.video_root, video_backend=config.video_backend)
    output_dir = Path(config.output_dir)
    args = _training_args(config, output_dir)
    resume = resume_checkpoint(config)
    start = resume if resume is not None and _has_weights(Path(resume)) else source
    weights = torch.bfloat16 if config.precision == "bf16-weights" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(start, attn_implementation=config.attn_implementation,
                                                        dtype=weights)
    indices = datasets.Dataset.from_dict({"index": list(range(len(dataset)))})
    peft_config = None
    if config.lora_rank:
        from peft import LoraConfig

        from sage_fast.rl.lora import LANGUAGE_PROJECTIONS

        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=LANGUAGE_PROJECTIONS, bias="none")
    trainer = _sft_trainer_class()(
        model=model, args=args, train_dataset=indices, processing_class=builder.tokenizer,
        data_collator=SFTCollator(model.config, dataset, count_skipped=True), callbacks=callbacks,
        peft_config=peft_config)
    trainer.preloaded_checkpoint = resume if start == resume else None
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        from sage_fast.config import to_dict

        _write_json(output_dir / "sage_sft_config.json", {"model": str(model_path), "records": str(
            dataset.path or "in memory"), "records_count": len(dataset), "world_size": args.world_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "sft": to_dict(config)})
    result = trainer.train(resume_from_checkpoint=resume)
    final = _save_final(trainer, source, output_dir)
    if trainer.is_world_process_zero():
        _write_json(output_dir / "sage_sft_result.json", {
            "final_model": str(final), "global_step": result.global_step, "train_loss": result.training_loss,
            "resumed_from": resume, "skipped_records": trainer.skipped_records,
            "skipped_records_note": "skipped in this run (longer than max_length), counted by the collator"})
    return final


def _save_final(trainer: Any, source: Path, output_dir: Path) -> Path:
    """Writes the trained model to ``<output_dir>/final`` atomically (every rank takes part in the
    save, as FSDP / DeepSpeed gather the weights; rank 0 renames)."""
    final, staging, old = output_dir / FINAL, output_dir / f".{FINAL}.partial", output_dir / f".{FINAL}.old"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer.model, "merge_and_unload"):  # LoRA: the adapters, and the merged model beside them
        trainer.save_model(str(staging / "adapter"))
        if main:
            import copy

            merged = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).to("cpu").merge_and_unload()
            merged.save_pretrained(staging)
            del merged
    else:
        trainer.save_model(str(staging))
    if main:
        copy_side_files(source, staging)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final
