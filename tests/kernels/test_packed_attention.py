"""Packed varlen attention (kernels/packed_attention.py) against its plain-PyTorch reference.

Accuracy follows flash-attention's rule: the kernel's error against a reference one precision up
(fp32 for fp16/bf16, fp64 for fp32) must be at most twice the error of the same torch code run in
the test dtype. Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), so the
shapes are small; blocks are 16x16 there, so lengths 15/16/17/33 straddle block edges.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from sage_fast.kernels import packed_attention as pa
from sage_fast.kernels._dispatch import why_kernel_cannot_run
from sage_fast.kernels.reference import varlen_attention_reference, varlen_attention_sdpa

needs_kernel = pytest.mark.skipif(why_kernel_cannot_run(torch.empty(0, device="cuda" if torch.cuda.is_available()
                                                                     else "cpu")) is not None,
                                  reason="Triton cannot run here (no GPU and no TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
UPPER = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float64}
# Lengths of 1, block-straddling lengths (blocks are 16 in the interpreter, 64/128 on a GPU) and a
# random few; kept short because the interpreter runs each program in Python.
LENGTHS = [1, 17, 5, 33, 16, 15]


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], device=DEVICE).cumsum(0).to(torch.int32)


def make_inputs(lengths_q: list[int], lengths_k: list[int], nheads: int, nheads_k: int, head_dim: int,
                dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lengths_q), nheads, head_dim, generator=gen)
    k = torch.randn(sum(lengths_k), nheads_k, head_dim, generator=gen)
    v = torch.randn(sum(lengths_k), nheads_k, head_dim, generator=gen)
    do = torch.randn(sum(lengths_q), nheads, head_dim, generator=gen)
    return tuple(t.to(DEVICE, dtype) for t in (q, k, v, do))


def run(fn, q, k, v, do, **kwargs) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    """Output and (dq, dk, dv) of ``fn`` on fresh leaf copies of q, k, v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return (out.detach(), *grads)


def check_against_reference(lengths_q: list[int], lengths_k: list[int], nheads: int, nheads_k: int,
                            head_dim: int, dtype: torch.dtype, causal: bool, blocks=None) -> None:  # noqa: ANN001
    q, k, v, do = make_inputs(lengths_q, lengths_k, nheads, nheads_k, head_dim, dtype)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    scale = 1.0 / math.sqrt(head_dim)
    args = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal, softmax_scale=scale)

    def kernel(q, k, v, **kw):  # noqa: ANN001, ANN202
        return pa.VarlenAttentionFunction.apply(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal,
                                                scale, blocks)

    got = run(kernel, q, k, v, do)
    exact = run(varlen_attention_reference, *(t.to(UPPER[dtype]) for t in (q, k, v, do)), **args)
    same_dtype = run(varlen_attention_reference, q, k, v, do, **args)
    for name, g, e, t in zip(("out", "dq", "dk", "dv"), got, exact, same_dtype, strict=True):
        assert g.dtype == dtype and g.shape == t.shape, name
        err = (g.to(e.dtype) - e).abs().max().item()
        torch_err = (t.to(e.dtype) - e).abs().max().item()
        # fp32 torch is exact to ~1e-7 and the online softmax sums in another order: a floor of a few
        # fp32 ulps of O(1) values stops that from failing a correct kernel.
        floor = 1e-5 if dtype == torch.float32 else 0.0
        assert err <= 2 * torch_err + floor, f"{name}: kernel error {err:.3g} > 2 x torch {dtype} error {torch_err:.3g}"


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(("head_dim", "nheads", "nheads_k"), [(64, 4, 2), (80, 2, 2), (128, 6, 2)],
                         ids=["d64-gqa2", "d80-mha", "d128-gqa3"])
def test_matches_reference(head_dim: int, nheads: int, nheads_k: int, dtype: torch.dtype, causal: bool) -> None:
    check_against_reference(LENGTHS, LENGTHS, nheads, nheads_k, head_dim, dtype, causal)


@needs_kernel
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_segment_lengths(seed: int) -> None:
    """Seeded random packings (2-9 segments of 1-50 tokens, empty ones included), random head layout."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 51, (int(torch.randint(2, 10, (1,), generator=gen)),), generator=gen).tolist()
    lengths[0] = max(lengths[0], 1)
    nheads_k = int(torch.randint(1, 3, (1,), generator=gen))
    group = int(torch.randint(1, 4, (1,), generator=gen))
    head_dim = [64, 80, 128][seed % 3]
    for dtype in (torch.float16, torch.bfloat16):
        check_against_reference(lengths, lengths, nheads_k * group, nheads_k, head_dim, dtype, causal=seed != 2)


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_query_and_key_lengths_differ(causal: bool) -> None:
    """Bottom-right causal alignment: decoding (1 query), more keys than queries, more queries than
    keys (the first rows see no key and must be 0 with 0 gradient), an empty key segment and an
    empty query segment."""
    lengths_q = [1, 17, 40, 3, 0, 5, 20]
    lengths_k = [30, 33, 16, 3, 7, 0, 20]
    check_against_reference(lengths_q, lengths_k, 4, 1, 64, torch.float32, causal)
    check_against_reference(lengths_q, lengths_k, 4, 1, 64, torch.bfloat16, causal)


@needs_kernel
@pytest.mark.parametrize("blocks", [(32, 16), (16, 32)], ids=["bm32-bn16", "bm16-bn32"])
def test_unequal_block_shapes(blocks: tuple[int, int]) -> None:
    """The causal start of the dk/dv loop rounds down to BLOCK_M: exercise BLOCK_M != BLOCK_N."""
    check_against_reference([1, 47, 17, 33], [1, 47, 20, 30], 2, 1, 64, torch.float32, True, blocks)


@needs_kernel
def test_rows_that_see_no_key_are_zero() -> None:
    q, k, v, _ = make_inputs([5], [2], 2, 2, 64, torch.float32)
    out = pa.varlen_attention(q, k, v, cu_seqlens([5]), cu_seqlens([2]), 5, 2, causal=True)
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))  # rows 0-2 see keys j <= i - 3: none
    assert out[3:].abs().sum() > 0


@needs_kernel
def test_segments_do_not_leak_into_each_other() -> None:
    """Changing segment 1's keys and values leaves segment 0's output bit-identical."""
    q, k, v, _ = make_inputs([17, 9], [17, 9], 2, 2, 64, torch.float32)
    cu = cu_seqlens([17, 9])
    before = pa.varlen_attention(q, k, v, cu, cu, 17, 17)
    k2, v2 = k.clone(), v.clone()
    k2[17:] += 5.0
    v2[17:] -= 3.0
    after = pa.varlen_attention(q, k2, v2, cu, cu, 17, 17)
    assert torch.equal(before[:17], after[:17])
    assert not torch.equal(before[17:], after[17:])


@needs_kernel
def test_strided_inputs_from_a_fused_qkv_projection() -> None:
    """q, k, v as views of one (total, 3 * heads, head_dim) tensor: the kernel reads strides."""
    total, heads, head_dim = 33, 2, 64
    qkv = torch.randn(total, 3 * heads, head_dim, device=DEVICE)
    q, k, v = qkv.split(heads, dim=1)
    assert not q.is_contiguous()
    cu = cu_seqlens([16, 17])
    got = pa.varlen_attention(q, k, v, cu, cu, 17, 17)
    want = varlen_attention_reference(q, k, v, cu, cu)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


def test_forced_reference_is_per_segment_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAGE_FAST_FORCE_IMPL=reference (and any machine where Triton cannot run) takes the
    per-segment SDPA fallback, which agrees with the written-out reference, rows without keys too."""
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")
    lengths_q, lengths_k = [1, 17, 40, 3, 0, 5], [30, 33, 16, 3, 7, 0]
    q, k, v, _ = make_inputs(lengths_q, lengths_k, 4, 2, 64, torch.float32)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    for causal in (True, False):
        got = pa.varlen_attention(q, k, v, cu_q, cu_k, 40, 33, causal=causal)
        assert torch.equal(got, varlen_attention_sdpa(q, k, v, cu_q, cu_k, causal=causal))
        torch.testing.assert_close(got, varlen_attention_reference(q, k, v, cu_q, cu_k, causal=causal))


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: {**a, "q": a["q"][0]}, "q must be (total_tokens, nheads, head_dim)"),
    (lambda a: {**a, "k": a["k"][:, :, :32], "v": a["v"][:, :, :32]}, "q's head_dim 64 differs from k's 32"),
    (lambda a: {**a, "q": a["q"][:, :3]}, "must be a multiple of k's nheads_k"),
    (lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"].long()}, "cu_seqlens_q must be int32"),
    (lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"][:1]}, "cu_seqlens_k must be (batch + 1,)"),
    (lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"] + 1}, "cu_seqlens_k must be non-decreasing within"),
    (lambda a: {**a, "max_seqlen_q": 16}, "max_seqlen_q=16 is below the longest segment (17)"),
    (lambda a: {**a, "v": a["v"].half()}, "q, k, v must share a dtype"),
    (lambda a: {**a, "q": a["q"].long()}, "q must be float16, bfloat16 or float32"),
    (lambda a: {**a, **{n: a[n].repeat(1, 1, 3) for n in "qkv"}}, "head_dim must be at most 128"),
])
def test_argument_checks_name_the_tensor(change, message: str) -> None:  # noqa: ANN001
    q, k, v, _ = make_inputs([16, 17], [16, 17], 4, 2, 64, torch.float32)
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens([16, 17]), cu_seqlens_k=cu_seqlens([16, 17]),
                max_seqlen_q=17, max_seqlen_k=17)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        pa.varlen_attention(**change(args))


# Compiles the four kernels exactly as the launcher would for an H100 (sm_90a), without a GPU and
# outside the interpreter, then asks ptxas for register spills. It catches what the interpreter
# cannot: code that does not compile for the GPU, and tile shapes that spill (slow).
COMPILE_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
os.environ.pop("TRITON_INTERPRET", None)
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sage_fast.kernels import packed_attention as pa

ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
results = []
for head_dim in (64, 80, 128):
    fwd = pa._blocks(head_dim, torch.bfloat16, True)
    kv, dq, warps, stages = pa._bwd_blocks(head_dim, torch.bfloat16, True)
    for name, (bm, bn), w, s in (("_fwd_kernel", fwd[:2], fwd[2], fwd[3]), ("_bwd_dkdv_kernel", kv, warps, stages),
                                 ("_bwd_dq_kernel", dq, warps, stages), ("_bwd_delta_kernel", (0, 0), 4, 1)):
        fn = getattr(pa, name)
        consts = dict(GROUP=4, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=bm,
                      BLOCK_N=bn, CAUSAL=True, PRECISION="tf32", UPCAST=False)
        if name == "_bwd_delta_kernel":
            consts = dict(HEAD_DIM=head_dim, BLOCK_D=consts["BLOCK_D"], BLOCK_T=64)
        types = {n: "*bf16" for n in ("Q", "K", "V", "Out", "DO", "DK", "DV", "DQ")}
        types.update(LSE="*fp32", DELTA="*fp32", CU_Q="*i32", CU_K="*i32", scale_log2="fp32", scale="fp32")
        signature = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
        src = ASTSource(fn=fn, signature=signature,
                        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": w, "num_stages": s})
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
        os.unlink(f.name)
        spill = re.search(r"(\d+) bytes spill stores", log)
        results.append(dict(kernel=name, head_dim=head_dim, spill=int(spill.group(1)) if spill else None))
print(json.dumps(results))
"""


def test_gpu_path_compiles_for_sm90_without_spills() -> None:
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
    if not os.path.exists(ptxas):
        pytest.skip("this Triton build ships no ptxas-blackwell to compile sm_90a code with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 12
    spilling = [r for r in results if r["spill"] != 0]
    assert not spilling, f"register spills (or no ptxas report) on sm_90a: {spilling}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_gpu_sized_segments(head_dim: int, dtype: torch.dtype) -> None:
    """GPU blocks (64/128): one long sample beside short ones, as in RL packing."""
    lengths = [1, 127, 129, 300, 2050, 64, 1000]
    check_against_reference(lengths, lengths, 8, 2, head_dim, dtype, True)


@pytest.mark.gpu
def test_gpu_matches_flash_attn_varlen() -> None:
    """Same conventions as flash-attn (bottom-right causal, GQA, zeros for rows without keys)."""
    flash_attn = pytest.importorskip("flash_attn")
    lengths_q, lengths_k = [1, 300, 2050, 64, 17], [40, 300, 2050, 60, 17]
    q, k, v, _ = make_inputs(lengths_q, lengths_k, 8, 2, 128, torch.bfloat16)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    got = pa.varlen_attention(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True)
    want = flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def _shared_prefix_layout(prefix: int, responses: list[int]) -> tuple[list[int], list[int], torch.Tensor]:
    """A row [P r1 ... rn]: query segments P, r1..rn; key segments P, P+r1, ..., P+rn; the gather."""
    own = list(range(prefix))
    gather, position = list(own), prefix
    for n in responses:
        gather += own + list(range(position, position + n))
        position += n
    return [prefix, *responses], [prefix, *(prefix + n for n in responses)], torch.tensor(gather, device=DEVICE)


@needs_kernel
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
def test_gathered_keys_match_gathering_first(index_dtype: torch.dtype) -> None:
    """kv_index gives the output and gradients of gathering k and v first (the prefix's key
    gradient summed over its responses), with GQA and block-straddling lengths."""
    lengths_q, lengths_k, index = _shared_prefix_layout(21, [5, 1, 17])
    q, k, v, do = make_inputs(lengths_q, lengths_q, 4, 2, 64, torch.float32, seed=3)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    common = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lengths_q), max_seqlen_k=max(lengths_k))

    def gathered_first(q, k, v):  # noqa: ANN001, ANN202
        return pa.varlen_attention(q, k.index_select(0, index), v.index_select(0, index), **common)

    got = run(lambda q, k, v: pa.varlen_attention(q, k, v, kv_index=index.to(index_dtype), **common), q, k, v, do)
    want = run(gathered_first, q, k, v, do)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=name)


@needs_kernel
def test_gathered_keys_are_not_kept_for_backward() -> None:
    """Autograd keeps k and v (row size), never the gathered copy (n x prefix rows): the memory
    a shared prefix would otherwise cost in every layer."""
    lengths_q, lengths_k, index = _shared_prefix_layout(40, [3, 4, 5, 6])
    q, k, v, _ = make_inputs(lengths_q, lengths_q, 4, 2, 32, torch.float32)
    cu_q, cu_k = cu_seqlens(lengths_q), cu_seqlens(lengths_k)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    saved: list[tuple[int, ...]] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        pa.varlen_attention(*leaves, cu_q, cu_k, max(lengths_q), max(lengths_k), kv_index=index)
    assert (sum(lengths_q), 2, 32) in saved  # k and v themselves
    assert not [shape for shape in saved if len(shape) == 3 and shape[0] == index.numel()], saved


@pytest.mark.parametrize(("index", "message"), [
    (lambda n: torch.arange(n).float(), r"kv_index must be a 1-D int64 \(or int32\) tensor"),
    (lambda n: torch.arange(n).view(1, -1), r"kv_index must be a 1-D int64 \(or int32\) tensor"),
    (lambda n: torch.arange(n) + 1, r"kv_index must hold row numbers in \[0, 33\)"),
    (lambda n: torch.arange(n)[:-1], r"cu_seqlens_k must be non-decreasing within \[0, 32\]"),
])
def test_kv_index_checks(index, message: str) -> None:  # noqa: ANN001
    q, k, v, _ = make_inputs([16, 17], [16, 17], 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match=message):
        pa.varlen_attention(q, k, v, cu_seqlens([16, 17]), cu_seqlens([16, 17]), 17, 17,
                            kv_index=index(33).to(DEVICE))
