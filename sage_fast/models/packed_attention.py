"""The ``sage_varlen`` attention implementation for transformers: packed rows attend per segment.

Why: RL and SFT train on turn-samples of very different lengths. Packed into one row (position ids
restarting at each sample, no attention mask), every sample must attend only to itself; transformers
does that for ``flash_attention_2`` (flash-attn's CUDA varlen kernel) and, with an (L, L) mask, for
``sdpa``. ``sage_varlen`` does it with our Triton kernel (kernels/packed_attention.py) and no mask,
and falls back to per-segment SDPA where Triton cannot run (CPU without the interpreter).

Use::

    import sage_fast.models.packed_attention  # registers "sage_varlen" (import is enough)
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sage_varlen")
    row = pack_samples(model, samples)  # position_ids restart per sample, no attention_mask
    loss = model(**row).loss            # (Qwen-VL: position_ids (4, 1, total), row 0 the text positions)

Segment boundaries are found as flash_attention_2 finds them, in this order:
1. ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (and ``max_length_q`` / ``max_length_k``) keyword arguments
   (TRL's padding-free collators pass them; see ``packed_kwargs``): used for causal calls only, so
   that a vision tower (non-causal) never applies the text's segments to its own chunks (Qwen-VL's
   forwards ``**kwargs`` to it; transformers 5.24 happens not to pass these ones down);
2. a 2-D padding mask (batch, kv_len): each row's kept tokens are one segment (unpad, attend, pad);
3. position ids of a query as long as the keys: a segment starts where a position does not
   increase over the previous one (restart), and at each row's start. Gaps do not split a segment,
   so tokens dropped by frame-token pruning (which keep their positions) stay in their sample;
4. otherwise each row is one segment; with a KV cache the causal mask is bottom-right aligned, so a
   decoding query sees the whole cache.

Shared prefixes (``shared_prefix_kwargs``): a GRPO group's turn-samples repeat one long prompt (a
Stage-1 prompt is ~11 000 tokens, mostly video) before different responses. Packed as
``[prefix][response 1]...[response n]``, the prefix is computed once; its tokens attend causally
among themselves, and response i attends to the whole prefix and its own earlier tokens, never to
another response. That is varlen attention with the keys *gathered*: queries stay in row order,
segmented ``[P, r1, ..., rn]``, while keys and values are ``k[shared_prefix_kv_index]`` =
``[P, (P, r1), ..., (P, rn)]``, segmented by ``cu_seq_lens_k``; the bottom-right causal alignment
lets response token j of segment (P, ri) see P and ri up to j. No (L, L) mask is built, and the
gather's backward (an index_add) sums each response's gradient into the one copy of the prefix.
On the kernel path the gather happens inside the attention's autograd function
(``kv_index``), so the n-fold copy of the prefix's keys is never kept for backward.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from sage_fast.kernels import packed_attention
from sage_fast.kernels.reference import varlen_attention_sdpa as per_segment_sdpa

__all__ = ["ATTN_NAME", "SHARED_KV_INDEX", "attend", "cu_seqlens_from_lengths", "cu_seqlens_from_position_ids",
           "mrope_position_ids", "pack_samples", "packed_kwargs", "per_segment_sdpa", "position_ids_for_lengths",
           "register", "sage_varlen_attention_forward", "shared_prefix_kwargs"]
ATTN_NAME = "sage_varlen"
SHARED_KV_INDEX = "shared_prefix_kv_index"  # the forward keyword that carries the key gather (module docstring)


# ---- segment boundaries --------------------------------------------------------------------------

def cu_seqlens_from_lengths(lengths: list[int] | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """int32 (batch + 1,) cumulative lengths [0, l0, l0 + l1, ...] (flash-attn's cu_seqlens)."""
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1 or bool((lengths < 0).any()):
        raise ValueError(f"lengths must be a 1-D list of non-negative segment lengths, got {lengths.tolist()}")
    return F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def position_ids_for_lengths(lengths: list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(1, sum(lengths)) position ids of a packed row: 0..l-1 for each segment in turn."""
    return torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32 (segments + 1,), max_seqlen) of the flattened rows of ``position_ids``.

    position_ids: (batch, seqlen) or (seqlen,). A segment starts at each row's first token and
    wherever a position is not greater than the one before it (the positions restarted). Gaps do
    not split: a sample whose pruned tokens kept their original positions stays one segment.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (batch, seqlen) text positions, got shape {tuple(position_ids.shape)}; "
                         "for Qwen-VL's (4, batch, seqlen) positions pass row 0")
    batch, seqlen = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] <= position_ids[:, :-1]
    idx = starts.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([idx, idx.new_tensor([batch * seqlen])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


_POSITION_CACHE: dict[str, Any] = {}


def _cached_cu_seqlens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``cu_seqlens_from_position_ids``, computed once per position-ids tensor per forward.

    Every decoder layer receives the same position-ids object; on a GPU each computation reads a
    value back (one device sync), so the last result is kept, keyed by the tensor's identity (a
    weak reference, so a freed tensor never matches) and its in-place version counter.
    """
    ref, version = _POSITION_CACHE.get("ref"), _POSITION_CACHE.get("version")
    if ref is not None and ref() is position_ids and version == position_ids._version:
        return _POSITION_CACHE["result"]
    result = cu_seqlens_from_position_ids(position_ids)
    _POSITION_CACHE.update(ref=weakref.ref(position_ids), version=position_ids._version, result=result)
    return result


_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def mrope_position_ids(model: torch.nn.Module, sample: dict[str, torch.Tensor], index: int = 0) -> torch.Tensor:
    """(3, 1, seqlen) M-RoPE positions of one unpacked sample (``model.model.get_rope_index``; the
    text positions for a text-only sample). ``index`` only names the sample in errors."""
    ids = sample["input_ids"]
    if ids.dim() != 1:
        raise ValueError(f"samples[{index}]['input_ids'] must be (seqlen,), got shape {tuple(ids.shape)}")
    vision = {k: sample[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in sample}
    if not vision:  # text only: M-RoPE positions are the text positions
        return torch.arange(ids.numel(), device=ids.device).view(1, 1, -1).expand(3, 1, -1)
    types = sample.get("mm_token_type_ids")
    if types is None:
        raise ValueError(f"samples[{index}] has vision inputs but no mm_token_type_ids (seqlen,)")
    positions, _ = model.model.get_rope_index(ids.unsqueeze(0), mm_token_type_ids=types.unsqueeze(0), **vision)
    return positions.to(ids.device)


def pack_samples(model: torch.nn.Module, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One packed Qwen-VL training row from per-sample inputs, ready for ``model(**row)``.

    Each sample: ``input_ids`` (seqlen,), optional ``labels`` (seqlen,) (all samples or none), and
    for images / videos the processor's ``pixel_values`` + ``image_grid_thw``, ``pixel_values_videos``
    + ``video_grid_thw`` (+ ``second_per_grid_ts``), ``mm_token_type_ids`` (seqlen,).
    Returns ``input_ids`` (1, total); ``position_ids`` (4, 1, total): row 0 the text positions,
    restarting at each sample (how ``sage_varlen`` and transformers find the segments), rows 1-3
    each sample's own M-RoPE positions from ``model.model.get_rope_index``; ``labels`` (1, total)
    with each sample's first token at -100 (it must not be predicted from the previous sample);
    the vision inputs concatenated in sample order. Pass ``**packed_kwargs(lengths)`` as well to
    spare each layer re-deriving the segments.
    """
    if not samples:
        raise ValueError("samples is empty: give at least one {'input_ids': (seqlen,) tensor} sample")
    with_labels = ["labels" in s for s in samples]
    if any(with_labels) and not all(with_labels):
        raise ValueError("give labels for every sample or for none (a packed row has one labels tensor)")
    lengths, mrope, row = [], [], {}
    for i, sample in enumerate(samples):
        mrope.append(mrope_position_ids(model, sample, i))
        lengths.append(sample["input_ids"].numel())
    ids = torch.cat([s["input_ids"] for s in samples])
    text = position_ids_for_lengths(lengths, ids.device).unsqueeze(0)
    row["input_ids"] = ids.unsqueeze(0)
    row["position_ids"] = torch.cat([text, torch.cat(mrope, dim=-1)])
    if all(with_labels):
        labels = torch.cat([s["labels"] for s in samples]).clone()
        labels[cu_seqlens_from_lengths(lengths, ids.device)[:-1].long()] = -100
        row["labels"] = labels.unsqueeze(0)
    for key in _VISION_KEYS:
        parts = [s[key] for s in samples if key in s]
        if parts:
            row[key] = torch.cat(parts)
    if any("mm_token_type_ids" in s for s in samples):
        row["mm_token_type_ids"] = torch.cat([s.get("mm_token_type_ids", torch.zeros_like(s["input_ids"]))
                                              for s in samples]).unsqueeze(0)
    return row


def packed_kwargs(lengths: list[int], device: torch.device | str | None = None) -> dict[str, Any]:
    """Keyword arguments for a model forward on one packed row of ``lengths`` (flash-attn's names):
    ``cu_seq_lens_q/k`` and ``max_length_q/k``. With them no layer re-derives the segments."""
    cu = cu_seqlens_from_lengths(lengths, device)
    longest = max(lengths) if lengths else 0
    return dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


def shared_prefix_kwargs(blocks: list[tuple[int, list[int]]], device: torch.device | str | None = None
                         ) -> dict[str, Any]:
    """Forward keywords for a row whose blocks may share a prefix (module docstring).

    blocks: the row's blocks in order, each ``(prefix_length, response_lengths)``: a block is laid
    out as ``[prefix][response 1]...[response n]``; a plain sample is ``(length, [])``. Returns
    ``cu_seq_lens_q`` (segments P, r1, ..., rn of every block, in row order), ``cu_seq_lens_k``
    (P, P + r1, ..., P + rn), ``max_length_q/k`` and ``shared_prefix_kv_index`` (long (total_k,):
    the row position of every gathered key). A row without responses gets ``packed_kwargs``.
    """
    if not any(responses for _, responses in blocks):
        return packed_kwargs([prefix for prefix, _ in blocks], device)
    lengths_q, lengths_k, gather, start = [], [], [], 0
    for b, (prefix, responses) in enumerate(blocks):
        if prefix < 1 or any(n < 1 for n in responses):
            raise ValueError(f"blocks[{b}] = ({prefix}, {responses}): a prefix and every response need >= 1 token")
        own = torch.arange(start, start + prefix)
        lengths_q.append(prefix)
        lengths_k.append(prefix)
        gather.append(own)
        position = start + prefix
        for n in responses:
            lengths_q.append(n)
            lengths_k.append(prefix + n)
            gather += [own, torch.arange(position, position + n)]
            position += n
        start = position
    return dict(cu_seq_lens_q=cu_seqlens_from_lengths(lengths_q, device),
                cu_seq_lens_k=cu_seqlens_from_lengths(lengths_k, device),
                max_length_q=max(lengths_q), max_length_k=max(lengths_k),
                **{SHARED_KV_INDEX: torch.cat(gather).to(device)})


# ---- attention over flattened segments -----------------------------------------------------------

def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
           softmax_scale: float | None, kv_index: torch.Tensor | None = None) -> torch.Tensor:
    """``varlen_attention``: the Triton kernel where it can run (``use_kernel``), per-segment SDPA
    (``per_segment_sdpa``) elsewhere and for heads wider than the kernel's tiles (> 128).
    Shapes: (total, heads, head_dim) in and out; ``kv_index``: keys and values are those rows of k, v."""
    if q.shape[-1] > packed_attention.MAX_HEAD_DIM:
        if kv_index is not None:
            k, v = k.index_select(0, kv_index), v.index_select(0, kv_index)
        return per_segment_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal, softmax_scale=softmax_scale)
    return packed_attention.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                             causal=causal, softmax_scale=softmax_scale, kv_index=kv_index)


# ---- the transformers attention function ---------------------------------------------------------

def sage_varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    shared_prefix_kv_index: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query (batch, nheads, q_len, head_dim), key and
    value (batch, nheads_k, kv_len, head_dim) -> ((batch, q_len, nheads, head_dim), None).

    Finds the segments (module docstring), flattens to flash-attn's (total, heads, head_dim) and runs
    ``attend``. ``shared_prefix_kv_index`` (``shared_prefix_kwargs``) gathers the keys and values of
    causal calls; non-causal ones (a vision tower, which receives the same forward keywords) ignore
    it. A 4-D mask (a custom one: our mask interface never builds one) goes to transformers' SDPA
    function unchanged.
    """
    if dropout and module.training:
        raise ValueError(f"{ATTN_NAME} has no attention dropout (got {dropout}); set the model config's "
                         "attention_dropout to 0.0")
    if softcap is not None:
        raise ValueError(f"{ATTN_NAME} does not support softcap (got {softcap}); use 'eager' for this model")
    if sliding_window is not None:
        raise ValueError(f"{ATTN_NAME} has no sliding window (layer asked for {sliding_window}); use "
                         "'flash_attention_2' or 'sdpa' for sliding-window models")
    if attention_mask is not None and attention_mask.dim() == 4:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    batch, nheads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    q = query.transpose(1, 2)  # (batch, q_len, nheads, head_dim)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, t.shape[2], t.shape[3])

    if causal and shared_prefix_kv_index is not None and (cu_seq_lens_q is None or cu_seq_lens_k is None):
        raise ValueError(f"{SHARED_KV_INDEX} needs cu_seq_lens_q and cu_seq_lens_k beside it: pass all of "
                         "shared_prefix_kwargs(blocks)")
    if causal and cu_seq_lens_q is not None and cu_seq_lens_k is not None:
        max_q = int(max_length_q) if max_length_q is not None else int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
        max_k = int(max_length_k) if max_length_k is not None else int((cu_seq_lens_k[1:] - cu_seq_lens_k[:-1]).max())
        # With shared_prefix_kv_index the keys are [P, (P, r1), ...]: gathered inside the kernel's
        # autograd function, whose backward sums the prefix's gradient back onto its rows.
        out = attend(flat(q), flat(k), flat(v), cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32),
                     max_q, max_k, causal, scaling, kv_index=shared_prefix_kv_index)
        return out.view(batch, q_len, nheads, head_dim), None

    if attention_mask is not None:  # 2-D padding mask (batch, kv_len): unpad, attend, pad
        keep_k = attention_mask[:, -kv_len:].bool()
        keep_q = keep_k[:, -q_len:]
        idx_q = keep_q.reshape(-1).nonzero().squeeze(1)
        idx_k = keep_k.reshape(-1).nonzero().squeeze(1)
        lens_q, lens_k = keep_q.sum(1), keep_k.sum(1)
        out = attend(flat(q)[idx_q], flat(k)[idx_k], flat(v)[idx_k], cu_seqlens_from_lengths(lens_q),
                     cu_seqlens_from_lengths(lens_k), int(lens_q.max()), int(lens_k.max()), causal, scaling)
        padded = out.new_zeros((batch * q_len, nheads, head_dim)).index_copy(0, idx_q, out)
        return padded.view(batch, q_len, nheads, head_dim), None

    if position_ids is not None and q_len == kv_len and q_len > 1:
        cu, longest = _cached_cu_seqlens(position_ids.expand(batch, -1) if position_ids.shape[0] != batch
                                         else position_ids)
        out = attend(flat(q), flat(k), flat(v), cu, cu, longest, longest, causal, scaling)
        return out.view(batch, q_len, nheads, head_dim), None

    cu_q = torch.arange(batch + 1, device=query.device, dtype=torch.int32) * q_len
    cu_k = torch.arange(batch + 1, device=query.device, dtype=torch.int32) * kv_len
    out = attend(flat(q), flat(k), flat(v), cu_q, cu_k, q_len, kv_len, causal, scaling)
    return out.view(batch, q_len, nheads, head_dim), None


def register() -> None:
    """Registers ``sage_varlen`` with transformers' attention and mask interfaces (idempotent).

    The mask function is flash_attention_2's: it builds no (L, L) mask, only keeps a 2-D padding
    mask when there is padding; packed rows get None and are split by their position ids here.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTN_NAME, sage_varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, flash_attention_mask)


register()
