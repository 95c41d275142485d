"""Packs a batch of tokenized SFT samples into one padding-free row for the ``sage_varlen`` attention.

SFT samples range from a few hundred tokens (a Stage-2 step) to ~25K (a Stage-1 turn with 128
frames); padding them to one length would spend most of the compute on padding. The collator
concatenates a batch's samples into one row (:func:`sage_fast.models.packed_attention.pack_samples`:
per-sample M-RoPE positions, each sample's first label masked) and adds the ``cu_seq_lens``
keyword arguments, so every layer attends within each sample without an (L, L) mask. The loss on
such a row is the token mean over all the row's response tokens (TRL's loss further divides by the
tokens of the whole accumulated batch), i.e. every response token weighs the same, as in SFT on
padded batches.

Qwen-VL's M-RoPE positions come from the model's ``get_rope_index``, which reads only the config;
the collator runs it on a weightless copy of the model on the meta device, built from the config,
so DataLoader workers never receive (or pickle) the trained model's weights.
"""

from __future__ import annotations

from typing import Any

import torch

from sage_fast.models.packed_attention import pack_samples, packed_kwargs

SKIPPED_KEY = "sft_skipped"  # batch key with the number of samples skipped as too long (count_skipped=True)


class SFTCollator:
    """``collator(features) -> dict`` for ``model(**row)``: one packed row of the batch's samples.

    ``config``: the model's ``PretrainedConfig`` (or the model itself). A feature is a tokenized
    sample (``tokenize_sample``'s dict), ``{"index": i}`` to be fetched from ``dataset`` (how the
    trainer passes them: TRL takes only Hugging Face datasets, so it is given the indices), or None
    (a sample the dataset skipped as too long). With ``count_skipped`` the row also carries
    ``"sft_skipped"``: how many were skipped, for the trainer to log (pop it before ``model(**row)``).
    A batch whose samples were all skipped becomes a one-token row with no trained token, so every
    data-parallel rank still runs the same number of forwards.
    """

    def __init__(self, config: Any, dataset: Any = None, *, count_skipped: bool = False) -> None:
        self.config = getattr(config, "config", config)  # a model: its config
        if not hasattr(self.config, "model_type"):
            raise TypeError(f"config must be a transformers PretrainedConfig or model, got {type(config).__name__}")
        self.dataset = dataset
        self.count_skipped = count_skipped
        self._rope_model: torch.nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rope_model": None}  # rebuilt on demand in the worker

    @property
    def rope_model(self) -> torch.nn.Module:
        """The model class on the meta device (no weights): what ``pack_samples`` reads the M-RoPE from."""
        if self._rope_model is None:
            from transformers import AutoModelForImageTextToText

            with torch.device("meta"):
                self._rope_model = AutoModelForImageTextToText.from_config(self.config)
        return self._rope_model

    def _resolve(self, feature: Any) -> dict[str, torch.Tensor] | None:
        if feature is None or "input_ids" in feature:
            return feature
        if "index" in feature:
            if self.dataset is None:
                raise ValueError("features are dataset indices but the collator was given no dataset")
            return self.dataset[int(feature["index"])]
        raise ValueError(f"a feature must be a tokenized sample (input_ids, labels, ...) or {{'index': i}}, "
                         f"got keys {sorted(feature)}")

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        samples = [self._resolve(feature) for feature in features]
        kept = [s for s in samples if s is not None]
        for i, sample in enumerate(kept):
            if "labels" not in sample:
                raise ValueError(f"sample {i} has no labels: SFT trains on each sample's response tokens "
                                 "(tokenize_sample gives them)")
        if not kept:  # nothing trainable here, but the step must still run on every rank
            kept = [{"input_ids": torch.zeros(1, dtype=torch.long), "labels": torch.full((1,), -100)}]
        lengths = [int(s["input_ids"].numel()) for s in kept]
        row = pack_samples(self.rope_model, kept)
        row.update(packed_kwargs(lengths))
        # All ones (so no layer builds a mask); it lets TRL count the row's tokens for its logs.
        row["attention_mask"] = torch.ones_like(row["input_ids"])
        if self.count_skipped:
            row[SKIPPED_KEY] = len(samples) - sum(s is not None for s in samples)
        return row
