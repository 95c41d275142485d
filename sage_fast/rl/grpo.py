"""Multi-turn GRPO math: group advantages, per-token log-probs of packed rows, the clipped loss.

The paper's recipe (DESIGN.md §2): GRPO with groups of 8 episodes per question, the episode's
return normalised within its group and put on every turn of the episode, each turn a training
sample whose prompt and tool observations are masked out of the loss, a low-variance KL to the
reference policy with coefficient 0.005. The conventions are verl's (``core_algos``):
``compute_grpo_outcome_advantage`` (unbiased group std, ``eps`` added to it),
``compute_policy_loss`` (PPO clip on the token ratio, log-ratio clamped to ±20 before ``exp``),
``kl_penalty`` ("low_var_kl" is Schulman's k3, clamped to [-10, 10]) and ``agg_loss``.

Shapes: a packed row of turn-samples (``pack_samples``) is flattened to ``total`` tokens; every
per-token tensor here is (total,) (or any shape, as long as all agree), ``mask`` marks the
response tokens that are trained on. ``token-mean`` averages over the tokens given: a trainer that
splits a step into micro-batches must weight each micro-batch's loss by its share of the step's
tokens (verl does the same) so the step's gradient is the mean over all its tokens; with
``seq-mean-token-mean``, by its share of the step's samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from sage_fast.agent.samples import IGNORE_INDEX

__all__ = ["KL_ESTIMATORS", "LOSS_AGGREGATIONS", "PREDICTOR_POSITIONS", "GRPOLossConfig", "grpo_loss", "group_advantages",
           "kl_penalty", "packed_token_logprobs", "sample_index_for_lengths", "token_advantages",
           "token_logprobs", "turn_advantages"]

KL_ESTIMATORS = ("low_var_kl", "k1", "none")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean")
_LOG_RATIO_CLAMP = 20.0  # verl: exp of a larger log-ratio overflows float32 / bf16
_LOW_VAR_KL_CLAMP = 10.0  # verl clamps the k3 estimate to [-10, 10]
PREDICTOR_POSITIONS = "predictor_positions"  # a shared-prefix row's key (packed_token_logprobs), not a model input
_PREDICTORS = PREDICTOR_POSITIONS


@dataclass(frozen=True)
class GRPOLossConfig:
    """The GRPO loss and advantage settings; the defaults are the paper's (DESIGN.md §2)."""

    clip_low: float = field(default=0.2, metadata={"help": "ratios below 1 - clip_low are clipped"})
    clip_high: float = field(default=0.2, metadata={
        "help": "ratios above 1 + clip_high are clipped; DAPO-style asymmetric clipping (e.g. 0.28) allowed"})
    kl_coef: float = field(default=0.005, metadata={"help": "weight of the KL-to-reference term (0: off)"})
    kl_estimator: str = field(default="low_var_kl", metadata={
        "help": "low_var_kl (k3, clamped to [-10, 10] like verl), k1 (log-ratio) or none"})
    loss_agg: str = field(default="token-mean", metadata={
        "help": "token-mean: mean over all trained tokens; seq-mean-token-mean: mean over turn-samples of "
                "each sample's token mean (needs sample_index)"})
    scale_rewards: bool = field(default=True, metadata={
        "help": "divide the group-centred reward by the group's std (GRPO); False: only centre (Dr. GRPO)"})
    eps: float = field(default=1e-6, metadata={"help": "added to the group std before dividing"})

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low < 1:
            raise ValueError(f"clip_low must be in [0, 1), got {self.clip_low}")
        if not 0 <= self.clip_high < float("inf"):
            raise ValueError(f"clip_high must be a finite value >= 0, got {self.clip_high}")
        if not 0 <= self.kl_coef < float("inf"):
            raise ValueError(f"kl_coef must be a finite value >= 0, got {self.kl_coef}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_agg must be one of {', '.join(LOSS_AGGREGATIONS)}, got {self.loss_agg!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


def _check_shape(name: str, tensor: Any, shape: tuple[int, ...], described: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape {described}, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must be {described} = {tuple(shape)}, got shape {tuple(tensor.shape)}")


# ---- advantages ----------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_ids: Sequence[int] | torch.Tensor,
                     config: GRPOLossConfig = GRPOLossConfig()) -> torch.Tensor:
    """(num_episodes,) GRPO advantages: ``(r - mean_g) / (std_g + eps)`` within each group.

    rewards: (num_episodes,) episode returns; group_ids: (num_episodes,) the question each episode
    answered (any integers, groups need not be contiguous). std is the unbiased one (verl /
    ``torch.std``). A group of one episode has no baseline and gets 0 (verl would return its raw
    reward, which is no advantage estimate at all); a group whose rewards are all equal gets 0.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a (num_episodes,) tensor, got "
                         f"{tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__}")
    ids = torch.as_tensor(group_ids, device=rewards.device)
    _check_shape("group_ids", ids, tuple(rewards.shape), "(num_episodes,)")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be integers, got dtype {ids.dtype}")
    values = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    _, group = torch.unique(ids, return_inverse=True)
    num_groups = int(group.max()) + 1 if group.numel() else 0
    count = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group, torch.ones_like(values))
    mean = torch.zeros_like(count).index_add_(0, group, values) / count
    centred = values - mean[group]
    square = torch.zeros_like(count).index_add_(0, group, centred * centred)
    std = (square / (count - 1).clamp(min=1)).sqrt()
    advantages = centred / (std[group] + config.eps) if config.scale_rewards else centred
    return torch.where(count[group] > 1, advantages, torch.zeros_like(advantages))


def turn_advantages(episode_advantages: torch.Tensor, turns_per_episode: Sequence[int]) -> torch.Tensor:
    """(sum(turns_per_episode),): each episode's advantage repeated on each of its turn-samples, in
    order (DESIGN.md §2: the episode return goes on every turn)."""
    if not isinstance(episode_advantages, torch.Tensor) or episode_advantages.dim() != 1:
        raise ValueError("episode_advantages must be a (num_episodes,) tensor")
    counts = torch.as_tensor(list(turns_per_episode), dtype=torch.long, device=episode_advantages.device)
    _check_shape("turns_per_episode", counts, tuple(episode_advantages.shape), "(num_episodes,)")
    if bool((counts < 0).any()):
        raise ValueError(f"turns_per_episode must be >= 0, got {counts.tolist()}")
    return episode_advantages.repeat_interleave(counts)


def sample_index_for_lengths(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(sum(lengths),) long: which sample each token of a packed row belongs to (for
    ``loss_agg="seq-mean-token-mean"``)."""
    counts = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    if counts.dim() != 1 or bool((counts < 0).any()):
        raise ValueError(f"lengths must be non-negative sample lengths, got {list(lengths)}")
    return torch.arange(counts.numel(), device=device).repeat_interleave(counts)


def token_advantages(sample_advantages: torch.Tensor, lengths: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """(total,): each turn-sample's advantage on its tokens of a packed row, 0 where ``mask`` is False.

    sample_advantages: (num_samples,); lengths: each sample's token count (the packing order);
    mask: (total,) bool, total = sum(lengths).
    """
    if not isinstance(sample_advantages, torch.Tensor) or sample_advantages.dim() != 1:
        raise ValueError("sample_advantages must be a (num_samples,) tensor")
    counts = torch.as_tensor(list(lengths), dtype=torch.long, device=sample_advantages.device)
    _check_shape("lengths", counts, tuple(sample_advantages.shape), "(num_samples,)")
    _check_shape("mask", mask, (int(counts.sum()),), "(total,) with total = sum(lengths)")
    per_token = sample_advantages.repeat_interleave(counts)
    return torch.where(mask.to(per_token.device), per_token, torch.zeros_like(per_token))


# ---- log-probabilities ---------------------------------------------------------------------------

class _LabelLogprob(torch.autograd.Function):
    """log softmax(logits / T)[target] per row, chunk by chunk in float32 (or the input's wider
    dtype); the backward recomputes each chunk's softmax instead of keeping (N, V) float32
    activations. Rows whose target is negative give 0 and no gradient."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                inv_temperature: float) -> torch.Tensor:
        compute = torch.promote_types(logits.dtype, torch.float32)
        valid = targets >= 0
        safe = targets.clamp(min=0).unsqueeze(1)
        out = torch.zeros(logits.shape[0], dtype=compute, device=logits.device)
        for start in range(0, logits.shape[0], chunk_size):
            x = logits[start:start + chunk_size].to(compute) * inv_temperature
            out[start:start + chunk_size] = x.gather(1, safe[start:start + chunk_size]).squeeze(1) - x.logsumexp(-1)
        ctx.save_for_backward(logits, safe, valid)
        ctx.chunk_size, ctx.inv_temperature = chunk_size, inv_temperature
        return torch.where(valid, out, torch.zeros_like(out))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, safe, valid = ctx.saved_tensors
        compute = torch.promote_types(logits.dtype, torch.float32)
        g = torch.where(valid, grad_out.to(compute), torch.zeros_like(grad_out, dtype=compute)).unsqueeze(1)
        grad = torch.empty_like(logits)
        step = ctx.chunk_size
        for start in range(0, logits.shape[0], step):
            x = logits[start:start + step].to(compute) * ctx.inv_temperature
            chunk = (x.softmax(-1) * -g[start:start + step]).scatter_add_(1, safe[start:start + step],
                                                                         g[start:start + step])
            grad[start:start + step] = (chunk * ctx.inv_temperature).to(logits.dtype)
        return grad, None, None, None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, *, chunk_size: int = 1024,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of ``labels`` under ``logits``, aligned with the labels.

    logits: (..., T, V) any float dtype; labels: (..., T) integer, IGNORE_INDEX (-100) where not
    trained. Returns (logprobs (..., T) float32, mask (..., T) bool): ``logprobs[..., t]`` is
    log p(labels[..., t] | tokens < t), read from ``logits[..., t - 1]``; position 0 and ignored
    labels give 0 and are False in ``mask``. Computed as gather minus logsumexp in float32, ``chunk_size``
    rows at a time, forward and backward, so a (T, 150k-vocab) float32 log-softmax never exists
    whole. ``temperature`` divides the logits first (verl does so with the rollout temperature, so
    that the ratio compares the same distribution the rollout sampled from).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or not logits.is_floating_point():
        raise ValueError("logits must be a float tensor (..., T, V)")
    _check_shape("labels", labels, tuple(logits.shape[:-1]), "logits.shape[:-1] = (..., T)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    if bool(((labels < 0) & (labels != IGNORE_INDEX)).any()):
        raise ValueError(f"labels must be token ids >= 0 or IGNORE_INDEX ({IGNORE_INDEX}), got {int(labels.min())}")
    if chunk_size < 1 or not temperature > 0:
        raise ValueError(f"chunk_size must be >= 1 and temperature > 0, got {chunk_size}, {temperature}")
    # target of position t is labels[t + 1]: shift the labels, not the logits (no (T, V) copy)
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[..., :-1] = labels[..., 1:]
    shifted = _LabelLogprob.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), int(chunk_size),
                                  1.0 / float(temperature)).view(labels.shape)
    logprobs = F.pad(shifted[..., :-1], (1, 0))
    mask = labels != IGNORE_INDEX
    mask[..., 0] = False
    return logprobs, mask


def packed_token_logprobs(model: torch.nn.Module, row: dict[str, torch.Tensor], *, chunk_size: int = 1024,
                          temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs (total,), mask (total,)) of a packed row's labels under ``model``.

    row: ``pack_samples`` output (``input_ids`` and ``labels`` (1, total), position ids restarting
    per sample, vision inputs). The labels stay out of the forward, so transformers computes no
    loss of its own (nor its (T, V) float32 upcast); no KV cache is built. Needs a model whose
    attention splits packed rows (``sage_varlen`` or ``flash_attention_2``).

    Only the positions that predict a trained token go through the LM head (transformers'
    ``logits_to_keep`` with a boolean mask). SAGE's samples are nearly all prompt: a Stage-1
    sample is ~24k tokens of frames and text for a few hundred response tokens, so full logits
    (24k x 152k vocab, 7.3 GB in bf16 for Qwen3-VL) shrink to the response's (~0.1 GB).

    A shared-prefix row (:func:`sage_fast.rl.shared_prefix.pack_families`) carries
    ``predictor_positions`` (1, total): the position whose logits predict each label (one prefix
    token predicts the first token of every response after it). The LM head then runs on those
    positions, repeats included, so it still sees exactly one row per trained token.
    """
    for key in ("input_ids", "labels"):
        if key not in row:
            raise ValueError(f"row has no {key!r}: pass pack_samples(model, samples) of labelled samples")
    ids = row["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"row['input_ids'] must be one packed row (1, total), got shape {tuple(ids.shape)}")
    _check_shape("row['labels']", row["labels"], tuple(ids.shape), "(1, total)")
    if chunk_size < 1 or not temperature > 0:
        raise ValueError(f"chunk_size must be >= 1 and temperature > 0, got {chunk_size}, {temperature}")
    predictors = row.get(_PREDICTORS)
    if predictors is not None:
        _check_shared_row(model, row, predictors)
    inputs = {key: value for key, value in row.items() if key not in ("labels", _PREDICTORS)}
    labels = row["labels"][0]
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    if not keeps_logits and predictors is None:  # a model without the option
        logits = model(**inputs, use_cache=False).logits
        return token_logprobs(logits[0], labels, chunk_size=chunk_size, temperature=temperature)
    mask = labels != IGNORE_INDEX
    mask[0] = False
    if predictors is not None:  # the position that predicts each trained token, in position order
        keep: torch.Tensor = predictors[0][mask]
    else:  # position t predicts labels[t + 1]
        keep = torch.zeros_like(mask)
        keep[:-1] = mask[1:]
        keep = keep.unsqueeze(0)
    if keeps_logits:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    else:
        logits = model(**inputs, use_cache=False).logits[:, keep]
    logits = logits.reshape(-1, logits.shape[-1])  # (trained tokens, V), in position order
    chosen = _LabelLogprob.apply(logits, labels[mask], int(chunk_size), 1.0 / float(temperature))
    logprobs = torch.zeros(labels.shape, dtype=chosen.dtype, device=chosen.device)
    return logprobs.masked_scatter(mask, chosen), mask



def _check_shared_row(model: torch.nn.Module, row: dict[str, torch.Tensor], predictors: torch.Tensor) -> None:
    """A shared-prefix row is only right under ``sage_varlen`` (another attention would ignore the
    key gather and let responses see each other) and with its predictor positions in range."""
    from sage_fast.models.packed_attention import ATTN_NAME, SHARED_KV_INDEX

    _check_shape(f"row[{_PREDICTORS!r}]", predictors, tuple(row["input_ids"].shape), "(1, total)")
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if SHARED_KV_INDEX in row and attention != ATTN_NAME:
        raise ValueError(f"a shared-prefix row needs the {ATTN_NAME!r} attention, the model has {attention!r}: "
                         f"call model.set_attn_implementation({ATTN_NAME!r}) first, or pack without sharing")
    trained = row["labels"][0] != IGNORE_INDEX
    trained[0] = False
    chosen = predictors[0][trained]
    position = torch.arange(predictors.shape[1], device=predictors.device)[trained]
    if chosen.numel() and bool(((chosen < 0) | (chosen >= position)).any()):
        raise ValueError(f"row[{_PREDICTORS!r}] must give, for every trained token, an earlier position of the row")


# ---- the loss ------------------------------------------------------------------------------------

def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs (verl's names):
    ``k1`` = log p - log p_ref; ``low_var_kl`` (k3) = exp(log p_ref - log p) - (log p_ref - log p) - 1,
    unbiased, always >= 0, clamped to [-10, 10]; ``none`` = 0."""
    _check_shape("ref_logprobs", ref_logprobs, tuple(logprobs.shape), "logprobs.shape")
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "low_var_kl":
        log_ratio = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return (log_ratio.exp() - log_ratio - 1).clamp(-_LOW_VAR_KL_CLAMP, _LOW_VAR_KL_CLAMP)
    if estimator == "none":
        return torch.zeros_like(logprobs)
    raise ValueError(f"estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def _aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, sample_index: torch.Tensor | None) -> torch.Tensor:
    """verl's ``agg_loss``: token-mean, or the mean over samples of each sample's token mean
    (samples without trained tokens left out)."""
    weights = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * weights).sum() / weights.sum().clamp(min=1)
    index = sample_index.reshape(-1)
    count = int(index.max()) + 1 if index.numel() else 0
    sums = values.new_zeros(count).index_add(0, index, (values * weights).reshape(-1))
    tokens = values.new_zeros(count).index_add(0, index, weights.reshape(-1))
    present = tokens > 0
    if not bool(present.any()):
        return (values * weights).sum()  # 0, still connected to the graph
    return (sums[present] / tokens[present]).mean()


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages_per_token: torch.Tensor, mask: torch.Tensor, config: GRPOLossConfig = GRPOLossConfig(),
              sample_index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective to minimise, and its statistics.

    All tensors have ``logprobs``' shape (e.g. (total,)): ``logprobs`` the current policy's (with
    gradient), ``old_logprobs`` the rollout policy's, ``ref_logprobs`` the reference model's (None
    when the KL term is off), ``advantages_per_token`` (``token_advantages``), ``mask`` bool,
    ``sample_index`` long (seq-mean-token-mean only). Old, reference and advantages are constants.

    Per token: ``max(-A·r, -A·clip(r, 1 - clip_low, 1 + clip_high))`` with ``r = exp(logp - logp_old)``
    (PPO's pessimistic clip), aggregated per ``config.loss_agg``, plus ``kl_coef`` times the
    aggregated ``kl_penalty``. Stats: pg_loss, kl, clip_frac (tokens where the clipped term was
    taken), ratio_mean, adv_mean (over trained tokens), tokens.
    """
    shape = tuple(logprobs.shape)
    _check_shape("old_logprobs", old_logprobs, shape, "logprobs.shape")
    _check_shape("advantages_per_token", advantages_per_token, shape, "logprobs.shape")
    _check_shape("mask", mask, shape, "logprobs.shape")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (the trained tokens), got dtype {mask.dtype}")
    use_kl = config.kl_estimator != "none" and config.kl_coef > 0
    if use_kl and ref_logprobs is None:
        raise ValueError(f"ref_logprobs is None but the KL term is on (kl_estimator={config.kl_estimator!r}, "
                         f"kl_coef={config.kl_coef}); pass the reference model's log-probs or set kl_coef=0")
    if config.loss_agg == "seq-mean-token-mean":
        if sample_index is None:
            raise ValueError("loss_agg='seq-mean-token-mean' needs sample_index (logprobs.shape) long: which "
                             "turn-sample each token belongs to (sample_index_for_lengths)")
        _check_shape("sample_index", sample_index, shape, "logprobs.shape")
        sample_index = sample_index.to(device=logprobs.device, dtype=torch.long)
    zero = torch.zeros_like(logprobs)
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), zero).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    advantages = torch.where(mask, advantages_per_token.detach().to(logprobs.dtype), zero)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - config.clip_low, 1 + config.clip_high)
    pg_loss = _aggregate(torch.maximum(unclipped, clipped), mask, config.loss_agg, sample_index)
    loss, kl_value = pg_loss, 0.0
    if use_kl:
        reference = torch.where(mask, ref_logprobs.detach(), logprobs.detach())
        kl = _aggregate(kl_penalty(logprobs, reference, config.kl_estimator), mask, config.loss_agg, sample_index)
        loss = pg_loss + config.kl_coef * kl
        kl_value = float(kl.detach())
    with torch.no_grad():
        weights = mask.to(logprobs.dtype)
        tokens = weights.sum()
        denominator = tokens.clamp(min=1)
        stats = {"pg_loss": float(pg_loss.detach()), "kl": kl_value,
                 "clip_frac": float(((clipped > unclipped).to(weights.dtype) * weights).sum() / denominator),
                 "ratio_mean": float((ratio * weights).sum() / denominator),
                 "adv_mean": float((advantages * weights).sum() / denominator), "tokens": float(tokens)}
    return loss, stats
