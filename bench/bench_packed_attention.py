"""Packed varlen attention benchmark (issue 5 part 2): sage_fast's Triton kernel on RL-like length mixes.

Each case is one packed row as RL makes it: one long Stage-1 sample (8k-24k tokens) beside many
Stage-2 samples (300-2k tokens), 32k-64k tokens in all; causal, GQA. Providers:
- ``sage_fast triton``: kernels/packed_attention.py (CUDA only: Triton's CPU interpreter is a
  correctness tool, its timings say nothing about the kernel, so the case is skipped there);
- ``flash_attn varlen``: flash-attn's ``flash_attn_varlen_func`` (CUDA, when installed);
- ``padded sdpa``: the samples padded into a (batch, heads, longest, head_dim) batch, one
  ``scaled_dot_product_attention(is_causal=True)`` (right padding needs no mask for causal rows,
  which keeps SDPA on its fastest kernels: the strongest padded baseline);
- ``per-segment sdpa``: one SDPA call per sample (sage_fast's fallback when Triton cannot run).
Modes: ``fwd`` and ``fwd+bwd``. Every provider's output (and gradients) are checked against fp32
attention (``expected``) BEFORE it is timed. TFLOP/s count useful work only (causal: half of each
sample's L x L), the same for every provider, so padding's waste shows as a lower figure.

Scale: GPU-sized cases run on CUDA; without CUDA the lengths are divided by 16 (fallbacks only).
``SAGE_BENCH_SCALE=gpu|cpu`` overrides the choice.

    python -m pytest bench/bench_packed_attention.py --benchmark-only --benchmark-json out.json
    python -m bench.bench_packed_attention report out.json        # Markdown tables for RESULTS.md
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sage_fast.kernels.reference import varlen_attention_reference
from sage_fast.kernels.reference import varlen_attention_sdpa as per_segment_sdpa

from sage_fast.models.packed_attention import cu_seqlens_from_lengths

REPO = Path(__file__).resolve().parent.parent
PROVIDERS = ["sage_fast triton", "flash_attn varlen", "padded sdpa", "per-segment sdpa"]
MODES = ["fwd", "fwd+bwd"]


@dataclass(frozen=True)
class Case:
    name: str
    seed: int
    long: tuple[int, int]     # the one Stage-1 sample's length range
    short: tuple[int, int]    # the Stage-2 samples' length range
    total: tuple[int, int]    # the packed row's token range
    nheads: int
    nheads_k: int
    head_dim: int
    dtype: torch.dtype

    def lengths(self) -> list[int]:
        rng = random.Random(self.seed)
        lengths = [rng.randint(*self.long)]
        target = rng.randint(*self.total)
        while sum(lengths) + self.short[1] <= target:
            lengths.append(rng.randint(*self.short))
        rest = target - sum(lengths)  # < short[1]: one more sample, or folded into the last one
        if rest >= self.short[0]:
            lengths.append(rest)
        else:
            lengths[-1] += rest
        rng.shuffle(lengths)
        return lengths


# Qwen3-VL-8B's attention: 32 query heads, 8 KV heads, head_dim 128, bf16.
GPU_CASES = [Case("rl-32k", 0, (8192, 12288), (300, 2048), (32768, 32768), 32, 8, 128, torch.bfloat16),
             Case("rl-64k", 1, (16384, 24576), (300, 2048), (65536, 65536), 32, 8, 128, torch.bfloat16)]
# The same mixes divided by 16 (long 512-1536, short 19-128, 2k-4k tokens), fp32, 8/2 heads.
CPU_CASES = [Case("rl-32k/16", 0, (512, 768), (19, 128), (2048, 2048), 8, 2, 128, torch.float32),
             Case("rl-64k/16", 1, (1024, 1536), (19, 128), (4096, 4096), 8, 2, 128, torch.float32)]


def scale() -> str:
    forced = os.environ.get("SAGE_BENCH_SCALE", "").strip().lower()
    if forced not in {"", "gpu", "cpu"}:
        raise ValueError(f"SAGE_BENCH_SCALE={forced!r}: use 'gpu' or 'cpu'")
    return forced or ("gpu" if torch.cuda.is_available() else "cpu")


def cases() -> list[Case]:
    return GPU_CASES if scale() == "gpu" else CPU_CASES


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def flops(lengths: list[int], nheads: int, head_dim: int, mode: str, causal: bool = True) -> float:
    """Useful FLOPs: 2 matmuls of 2*L*L*d per head forward (half under a causal mask); the backward
    is 2.5x the forward (flash-attention's convention: 5 matmuls to the forward's 2)."""
    fwd = sum(4 * n * n * head_dim * nheads for n in lengths) * (0.5 if causal else 1.0)
    return fwd * (1.0 if mode == "fwd" else 3.5)


@dataclass
class Inputs:
    lengths: list[int]
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor
    cu: torch.Tensor


@cache
def inputs(case: Case) -> Inputs:
    lengths = case.lengths()
    gen = torch.Generator().manual_seed(case.seed)
    total = sum(lengths)
    make = lambda h: torch.randn(total, h, case.head_dim, generator=gen).to(device(), case.dtype)  # noqa: E731
    q, k, v, do = make(case.nheads), make(case.nheads_k), make(case.nheads_k), make(case.nheads)
    return Inputs(lengths, q, k, v, do, cu_seqlens_from_lengths(lengths, device()))


# ---- providers: (q, k, v) -> out, flash-attn shapes ----------------------------------------------

def provider_fn(provider: str, case: Case, x: Inputs) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                                   torch.Tensor]:
    longest = max(x.lengths)
    if provider == "sage_fast triton":
        from sage_fast.kernels._dispatch import interpreter_mode

        if not torch.cuda.is_available() or interpreter_mode():
            pytest.skip("Triton kernel timings need a GPU (the CPU interpreter's timings are not kernel speed)")
        from sage_fast.kernels.packed_attention import VarlenAttentionFunction

        scale_ = case.head_dim ** -0.5
        return lambda q, k, v: VarlenAttentionFunction.apply(q, k, v, x.cu, x.cu, longest, longest, True, scale_)
    if provider == "flash_attn varlen":
        if not torch.cuda.is_available():
            pytest.skip("flash-attn needs a GPU")
        flash_attn = pytest.importorskip("flash_attn")
        return lambda q, k, v: flash_attn.flash_attn_varlen_func(q, k, v, x.cu, x.cu, longest, longest, causal=True)
    if provider == "padded sdpa":
        return lambda q, k, v: padded_sdpa(q, k, v, x.lengths)
    if provider == "per-segment sdpa":
        return lambda q, k, v: per_segment_sdpa(q, k, v, x.cu, x.cu, causal=True)
    raise ValueError(provider)


def padded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Pad to (batch, heads, longest, head_dim), one causal SDPA call, unpad (all three timed)."""
    longest, batch = max(lengths), len(lengths)
    index = torch.cat([torch.arange(n, device=q.device) + row * longest for row, n in enumerate(lengths)])

    def pad(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros((batch * longest, *t.shape[1:])).index_copy(0, index, t)
        return out.view(batch, longest, *t.shape[1:]).transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), is_causal=True,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2).reshape(batch * longest, *q.shape[1:])[index]


def run_once(fn: Callable, x: Inputs, mode: str) -> tuple[torch.Tensor, ...]:
    q, k, v = (t.detach().requires_grad_(mode != "fwd") for t in (x.q, x.k, x.v))
    if mode == "fwd":
        with torch.no_grad():
            out = (fn(q, k, v),)
    else:
        o = fn(q, k, v)
        out = (o.detach(), *torch.autograd.grad(o, (q, k, v), x.do))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


@cache
def expected(case: Case, mode: str) -> tuple[torch.Tensor, ...]:
    """What every provider is checked against, in fp32 (output, and gradients for fwd+bwd): the
    tests' written-out reference where its (L, L) scores fit (the scaled-down cases), else
    per-segment SDPA in fp32 (an 18k-token sample's fp32 scores would take 40 GB)."""
    x = inputs(case)
    up = Inputs(x.lengths, *(t.float() for t in (x.q, x.k, x.v, x.do)), x.cu)
    if max(x.lengths) <= 4096:
        return run_once(lambda q, k, v: varlen_attention_reference(q, k, v, x.cu, x.cu, causal=True), up, mode)
    return run_once(lambda q, k, v: per_segment_sdpa(q, k, v, x.cu, x.cu, causal=True), up, mode)


def check(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], dtype: torch.dtype) -> float:
    """Largest error relative to the expected tensor's largest value, over out (and dq, dk, dv)."""
    # Loose enough for bf16 rounding over 18k-key rows (8 bits of mantissa), tight enough for any
    # masking or segment-boundary error, which moves whole rows by O(1).
    limit = {torch.float32: 1e-4, torch.float16: 1e-2}.get(dtype, 5e-2)
    worst = 0.0
    for name, g, w in zip(("out", "dq", "dk", "dv")[:len(want)], got, want, strict=True):
        rel = ((g.float() - w).abs().max() / w.abs().max().clamp_min(1e-12)).item()
        assert rel <= limit, f"{name} differs from fp32 per-segment attention: relative error {rel:.3g} > {limit}"
        worst = max(worst, rel)
    return worst


def peak_memory_mb(provider: str, case: Case, mode: str) -> float:
    """Extra memory one call needs beyond its inputs: CUDA's allocator peak, or on the CPU the rise
    of peak RSS in a fresh process (``python -m bench.bench_packed_attention peak ...``)."""
    if torch.cuda.is_available():
        x = inputs(case)
        fn = provider_fn(provider, case, x)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(fn, x, mode)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    out = subprocess.run([sys.executable, "-m", "bench.bench_packed_attention", "peak", provider, case.name, mode],
                         cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_main(provider: str, case_name: str, mode: str) -> None:
    case = next(c for c in cases() if c.name == case_name)
    x = inputs(case)
    fn = provider_fn(provider, case, x)
    baseline = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (peak RSS) to the current RSS (Linux)
        f.write("5")
    run_once(fn, x, mode)
    print(json.dumps({"peak_mb": round(max(_status_mb("VmHWM") - baseline, 0.0), 1)}))


# ---- the benchmark ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_packed_attention(benchmark, case: Case, provider: str, mode: str) -> None:  # noqa: ANN001
    x = inputs(case)
    fn = provider_fn(provider, case, x)
    error = check(run_once(fn, x, mode), expected(case, mode), case.dtype)  # checked before timed
    rounds = int(os.environ.get("SAGE_BENCH_ROUNDS", "0")) or (10 if torch.cuda.is_available() else 3)
    benchmark.pedantic(run_once, args=(fn, x, mode), rounds=rounds, warmup_rounds=1, iterations=1)
    work = flops(x.lengths, case.nheads, case.head_dim, mode)
    info = benchmark.extra_info
    info.update(case=case.name, provider=provider, mode=mode, tokens=sum(x.lengths), samples=len(x.lengths),
                longest=max(x.lengths), heads=f"{case.nheads}/{case.nheads_k}x{case.head_dim}",
                dtype=str(case.dtype).removeprefix("torch."), device=device(), threads=torch.get_num_threads(),
                max_rel_error=error,
                useful_gflop=round(work / 1e9, 2), peak_mb=round(peak_memory_mb(provider, case, mode), 1))
    mean = benchmark.stats.stats.mean
    info["tflops"] = round(work / mean / 1e12, 4)


# ---- report ----------------------------------------------------------------------------------------

def report(path: str) -> str:
    """Markdown: per case and mode, providers fastest first (by median: the CPU machines are shared),
    with the first row's speed-up over each."""
    data = json.loads(Path(path).read_text())
    rows: dict[tuple[str, str], list[dict]] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault((info["case"], info["mode"]), []).append({**info, "mean": b["stats"]["mean"],
                                                                  "median": b["stats"]["median"],
                                                                  "rounds": b["stats"]["rounds"]})
    lines = []
    for (case_name, mode), group in rows.items():
        group.sort(key=lambda r: r["median"])
        first = group[0]
        lines += [f"#### {case_name}, {mode}: {first['tokens']} tokens in {first['samples']} samples "
                  f"(longest {first['longest']}), heads {first['heads']}, {first['dtype']}, {first['device']}"
                  + (f", {first['threads']} torch threads" if first["device"] == "cpu" else ""), "",
                  f"| provider | median (ms) | mean (ms) | rounds | TFLOP/s (useful, at the median) | peak extra memory (MB) | {first['provider']} "
                  "speed-up over it | max rel. error vs fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            tflops = r["useful_gflop"] / 1e3 / r["median"]
            lines.append(f"| {r['provider']} | {r['median'] * 1e3:.1f} | {r['mean'] * 1e3:.1f} | {r['rounds']} | "
                         f"{tflops:.4f} | {r['peak_mb']:.1f} | {r['median'] / first['median']:.2f}x | "
                         f"{r['max_rel_error']:.2e} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["peak"]:
        _peak_main(*sys.argv[2:5])
    elif sys.argv[1:2] == ["report"]:
        print(report(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m bench.bench_packed_attention report out.json | peak PROVIDER CASE MODE")
