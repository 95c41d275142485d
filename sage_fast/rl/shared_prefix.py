"""Shared-prefix packing for the GRPO update: a group's identical prompt computed once per row.

Why: every GRPO group is 8 episodes of one question on one video, so their Stage-1 turn-samples
share one prompt (system prompt, question and the same 128 frames: ~11 000 tokens, most of them
vision tokens) before 8 different ~250-token responses. Packed whole, each sample recomputes that
prompt, and its vision tower, forward and backward: 8x the work for the same activations. Here
such samples form a *family* packed as ``[prefix][response 1]...[response n]``: the prefix's
tokens and pixels go into the row once, each response keeps exactly the positions (text and
M-RoPE) it had in its own sample, and the ``sage_varlen`` attention lets each response see the
prefix and itself only (:func:`sage_fast.models.packed_attention.shared_prefix_kwargs`). The
result is the unshared row's log-probabilities and gradients, on a row shorter by
``(n - 1) x prefix`` tokens.

Exactness: a family's members have the same tokens up to their first trained token (the prompt)
and the same vision inputs (pixel values, grids, ``second_per_grid_ts``), all compared with
``torch.equal`` after a hash of the prompt's token ids has put candidates together; none of their
vision tokens lie in the response. Anything else (one token or one pixel apart) is packed whole.

Budget planning counts a family as prefix + responses (:func:`plan_micro_batches`); a family too
large for one row is split into smaller families.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sage_fast.agent.samples import IGNORE_INDEX
from sage_fast.models import packed_attention
from sage_fast.rl.grpo import PREDICTOR_POSITIONS

__all__ = ["Family", "SharedRow", "find_families", "lone_families", "pack_families", "plan_micro_batches",
           "prompt_length", "split_family"]

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass(frozen=True)
class Family:
    """Samples packed as one block: ``indices`` into the sample list, their full ``lengths``, and
    ``prefix``, the shared prompt's token count (0 for a lone sample, which is packed whole)."""

    indices: tuple[int, ...]
    lengths: tuple[int, ...]
    prefix: int = 0

    def __post_init__(self) -> None:
        if not self.indices or len(self.indices) != len(self.lengths):
            raise ValueError(f"a Family needs one length per index, got indices {self.indices}, lengths {self.lengths}")
        if self.shared and not all(0 < self.prefix < n for n in self.lengths):
            raise ValueError(f"a shared prefix of {self.prefix} tokens must be shorter than every member "
                             f"{self.lengths} and >= 1")
        if not self.shared and self.prefix:
            raise ValueError(f"a lone sample has no shared prefix, got prefix={self.prefix}")

    @property
    def shared(self) -> bool:
        return len(self.indices) > 1

    @property
    def tokens(self) -> int:
        """Its tokens in a packed row: the prefix once plus every response."""
        return sum(self.lengths) - (len(self.indices) - 1) * self.prefix

    @property
    def saved(self) -> int:
        """Row tokens saved against packing every member whole."""
        return (len(self.indices) - 1) * self.prefix


def prompt_length(sample: dict[str, torch.Tensor]) -> int:
    """Tokens before the first trained token (``labels != IGNORE_INDEX``); the whole length when
    nothing is trained. Raises when the sample has no labels (nothing says where its prompt ends)."""
    if "labels" not in sample:
        raise ValueError("a sample has no 'labels': shared-prefix packing finds each prompt's end from the labels "
                         "(tokenize_sample gives them)")
    trained = (sample["labels"] != IGNORE_INDEX).nonzero()
    return int(trained[0, 0]) if trained.numel() else int(sample["labels"].numel())


def _signature(sample: dict[str, torch.Tensor], prefix: int) -> tuple:
    """Cheap key of a sample's prompt (its length, a hash of its token ids, the vision inputs'
    shapes, dtypes and grids): equal prompts have equal keys; equal keys are then confirmed."""
    ids = sample["input_ids"][:prefix].detach().cpu().contiguous()
    digest = hashlib.blake2b(ids.numpy().tobytes(), digest_size=16).hexdigest()
    vision = []
    for key in VISION_KEYS:
        if key in sample:
            value = sample[key]
            small = () if "pixel" in key else tuple(value.reshape(-1).tolist())  # grids: a few numbers
            vision.append((key, tuple(value.shape), str(value.dtype), small))
    return prefix, str(ids.dtype), digest, tuple(vision)


def _same_prompt(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: int) -> bool:
    """The exact comparison: prompt ids, their token types, and every vision tensor, element by element."""
    for key in ("input_ids", "mm_token_type_ids"):
        if (key in a) != (key in b):
            return False
        if key in a and not torch.equal(a[key][:prefix], b[key][:prefix]):
            return False
    for key in VISION_KEYS:
        if (key in a) != (key in b):
            return False
        if key in a and (a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key])):
            return False
    return True


def _shareable(sample: dict[str, torch.Tensor], prefix: int) -> bool:
    """A prompt can be shared when it has >= 1 token, a response follows it, and every vision
    token is in the prompt (its pixels then belong to the prefix alone)."""
    if not 0 < prefix < sample["input_ids"].numel():
        return False
    has_vision = any(key in sample for key in VISION_KEYS)
    if not has_vision:
        return True
    types = sample.get("mm_token_type_ids")
    return types is not None and not bool(types[prefix:].any())


def lone_families(samples: Sequence[dict[str, torch.Tensor]]) -> list[Family]:
    """Every sample as its own block: the unshared packing."""
    return [Family((i,), (int(s["input_ids"].numel()),)) for i, s in enumerate(samples)]


def find_families(samples: Sequence[dict[str, torch.Tensor]]) -> list[Family]:
    """Partitions ``samples`` into families of identical prompts (lone samples included), in the
    order of each family's first member. Samples: ``tokenize_sample`` dicts (``input_ids``,
    ``labels``, optional ``mm_token_type_ids`` and vision tensors)."""
    buckets: dict[tuple, list[list[int]]] = {}
    groups: list[list[int]] = []
    prefixes: list[int] = []
    for i, sample in enumerate(samples):
        prefix = prompt_length(sample)
        if not _shareable(sample, prefix):
            groups.append([i])
            prefixes.append(0)
            continue
        candidates = buckets.setdefault(_signature(sample, prefix), [])
        for members in candidates:  # the hash only proposes; equality decides
            if _same_prompt(samples[members[0]], sample, prefix):
                members.append(i)
                break
        else:
            members = [i]
            candidates.append(members)
            groups.append(members)
            prefixes.append(prefix)
    families = []
    for members, prefix in zip(groups, prefixes, strict=True):
        lengths = tuple(int(samples[i]["input_ids"].numel()) for i in members)
        families.append(Family(tuple(members), lengths, prefix if len(members) > 1 else 0))
    return families


def split_family(family: Family, budget: int) -> list[Family]:
    """``family`` as blocks of at most ``budget`` tokens each (prefix + responses), members in order;
    a member left alone is a lone sample. Raises when one member alone exceeds the budget."""
    if max(family.lengths) > budget:
        raise ValueError(f"a turn-sample has {max(family.lengths)} tokens, more than the budget of {budget}: "
                         "raise the budget (GRPOConfig.micro_batch_tokens)")
    if family.tokens <= budget:
        return [family]
    parts: list[list[int]] = [[]]
    used = 0
    for k, n in enumerate(family.lengths):
        cost = n if not parts[-1] else n - family.prefix
        if parts[-1] and used + cost > budget:
            parts.append([])
            cost = n
            used = 0
        parts[-1].append(k)
        used += cost
    out = []
    for part in parts:
        indices = tuple(family.indices[k] for k in part)
        lengths = tuple(family.lengths[k] for k in part)
        out.append(Family(indices, lengths, family.prefix if len(part) > 1 else 0))
    return out


def plan_micro_batches(families: Sequence[Family], budget: int) -> list[list[Family]]:
    """Token-budget micro-batches (rows) of whole blocks, a family counted as prefix + responses;
    the same balanced first-fit packing as the unshared update
    (:func:`sage_fast.rollout.packing.pack_samples`)."""
    from sage_fast.rollout.packing import pack_samples as pack_lengths

    blocks = [part for family in families for part in split_family(family, budget)]
    if not blocks:
        return []
    rows = pack_lengths([block.tokens for block in blocks], budget, 1)[0]
    return [[blocks[i] for i in row.indices] for row in rows if row.indices]


@dataclass
class SharedRow:
    """A packed row of families: ``row`` for :func:`~sage_fast.rl.grpo.packed_token_logprobs`
    (model inputs, ``labels``, the attention keywords and ``predictor_positions``); ``order``, the
    samples in row order; ``spans``, each sample's tokens in the row (a family's prefix counted in
    its first member's span), so per-sample tensors (advantages, sample index) spread over the row
    with ``repeat_interleave(spans)``; ``saved``, row tokens saved by sharing."""

    row: dict[str, Any]
    order: list[int]
    spans: list[int]
    saved: int


def pack_families(model: torch.nn.Module,
                  samples: Sequence[dict[str, torch.Tensor]] | Mapping[int, dict[str, torch.Tensor]],
                  blocks: Sequence[Family]) -> SharedRow:
    """One packed row of ``blocks``: a lone sample whole, a family as ``[prefix][r1]...[rn]``.

    Every response keeps its unshared sample's text positions (``prefix .. len - 1``) and M-RoPE
    positions (``packed_attention.mrope_position_ids`` of the whole sample); the prefix's tokens,
    token types and vision tensors come from the family's first member, once. Labels: -100 on each
    block's first token (as ``pack_samples``) and the prompt; ``predictor_positions[t]`` is the row
    position whose logits predict ``labels[t]``: ``t - 1``, except a response's first token, which
    the prefix's last token predicts. Needs a model with the ``sage_varlen`` attention.
    ``samples`` may map only the blocks' indices, and a family's later members need no vision
    tensors (only their grids, for their positions).
    """
    if not blocks:
        raise ValueError("blocks is empty: give at least one Family (find_families or lone_families)")
    ids, labels, types, text, mrope, predictors = [], [], [], [], [], []
    vision: dict[str, list[torch.Tensor]] = {}
    order, spans, shape, saved, start = [], [], [], 0, 0
    any_types = any("mm_token_type_ids" in samples[i] for block in blocks for i in block.indices)
    for block in blocks:
        first = samples[block.indices[0]]
        if "labels" not in first:
            raise ValueError(f"samples[{block.indices[0]}] has no 'labels': the GRPO update packs labelled samples")
        device = first["input_ids"].device
        for key in VISION_KEYS:
            if key in first:
                vision.setdefault(key, []).append(first[key])
        head = block.prefix if block.shared else block.lengths[0]
        label = first["labels"][:head].clone()
        label[0] = IGNORE_INDEX  # not predicted from the previous block
        ids.append(first["input_ids"][:head])
        labels.append(label)
        types.append(first.get("mm_token_type_ids", torch.zeros_like(first["input_ids"]))[:head])
        text.append(torch.arange(head, device=device))
        predictors.append(torch.arange(start - 1, start + head - 1, device=device))
        responses = []
        for k, i in enumerate(block.indices):
            sample = samples[i]
            positions = packed_attention.mrope_position_ids(model, sample, i)
            if k == 0:
                mrope.append(positions[..., :head])
            if not block.shared:
                continue
            n = int(sample["input_ids"].numel()) - block.prefix
            position = start + head + sum(responses)
            ids.append(sample["input_ids"][block.prefix:])
            labels.append(sample["labels"][block.prefix:])
            types.append(sample.get("mm_token_type_ids", torch.zeros_like(sample["input_ids"]))[block.prefix:])
            text.append(torch.arange(block.prefix, block.prefix + n, device=device))
            mrope.append(positions[..., block.prefix:])
            predictor = torch.arange(position - 1, position + n - 1, device=device)
            predictor[0] = start + head - 1  # the prefix's last token predicts every response's first
            predictors.append(predictor)
            responses.append(n)
        order += list(block.indices)
        spans += [head + responses[0], *responses[1:]] if block.shared else [head]
        shape.append((head, responses))
        saved += block.saved
        start += head + sum(responses)
    row: dict[str, Any] = {"input_ids": torch.cat(ids).unsqueeze(0), "labels": torch.cat(labels).unsqueeze(0),
                           "position_ids": torch.cat([torch.cat(text).view(1, 1, -1), torch.cat(mrope, dim=-1)])}
    for key, parts in vision.items():
        row[key] = torch.cat(parts)
    if any_types:
        row["mm_token_type_ids"] = torch.cat(types).unsqueeze(0)
    row[PREDICTOR_POSITIONS] = torch.cat(predictors).unsqueeze(0)
    row.update(packed_attention.shared_prefix_kwargs(shape, row["input_ids"].device))
    return SharedRow(row=row, order=order, spans=spans, saved=saved)
