"""Frame-token pruning: the Triton kernel (in the interpreter without a GPU) against the loop reference."""

from __future__ import annotations

import pytest
import torch
from sage_fast.kernels import _dispatch, token_prune
from sage_fast.kernels.reference import (
    token_prune_reference,
    token_prune_scores_reference,
    token_prune_vectorized,
    tokens_kept_per_frame,
)

# (frames, tokens per frame, hidden): non-powers of two, one frame, one token, hidden > one block.
SHAPES = [(1, 5, 8), (2, 1, 3), (3, 7, 33), (5, 12, 100), (4, 33, 257), (9, 20, 64), (3, 70, 19)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# With a GPU the compiled kernel runs on CUDA tensors; without one, Triton's interpreter on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = [{"threshold": 0.5}, {"threshold": 0.0}, {"keep_ratio": 0.5}, {"keep_ratio": 0.3}]


def video(frames: int, tokens: int, hidden: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Embeddings whose tokens drift from frame to frame by a random amount (cosines spread over
    (-1, 1), far apart from each other compared with fp32 rounding), with some exact repeats."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(frames, tokens, hidden)
    x[0] = torch.randn(tokens, hidden, generator=gen)
    for f in range(1, frames):
        mix = torch.rand(tokens, 1, generator=gen) * 2 - 1
        x[f] = mix * x[f - 1] + (1 - mix.abs()) * torch.randn(tokens, hidden, generator=gen)
    x = x.to(dtype)
    if frames > 1:
        repeat = torch.rand(frames - 1, tokens, generator=gen) < 0.25
        for f in range(1, frames):  # exact repeats in x's own dtype: their score is exactly 1.0
            x[f, repeat[f - 1]] = x[f - 1, repeat[f - 1]]
    return x.to(DEVICE)


def assert_same(out: token_prune.TokenPruneOutput, ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    indices, counts, embeddings = ref
    assert out.indices.dtype == torch.int32 and out.counts.dtype == torch.int32
    assert out.indices.tolist() == indices.tolist()
    assert out.counts.tolist() == counts.tolist()
    assert out.embeddings.dtype == embeddings.dtype and torch.equal(out.embeddings.cpu(), embeddings.cpu())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_kernel_matches_reference(shape: tuple[int, int, int], dtype: torch.dtype, mode: dict) -> None:
    x = video(*shape, dtype)
    assert _dispatch.use_kernel(x), "these tests must exercise the kernel (a GPU, or TRITON_INTERPRET=1)"
    ref = token_prune_reference(x.cpu(), **mode)
    assert_same(token_prune.token_prune(x, **mode), ref)
    # The vectorised baseline that the benchmark times must select the very same tokens.
    assert_same(token_prune.TokenPruneOutput(*token_prune_vectorized(x, **mode)), ref)


def test_reference_semantics_by_hand() -> None:
    """The rule itself, on numbers small enough to check by eye."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],  # CPU: the reference's own semantics
                      [[1.0, 0.0], [1.0, 0.0], [1.0, 0.9]],    # cos: 1, 0, ~0.9986
                      [[0.0, 1.0], [1.0, 0.1], [-1.0, -0.9]]])  # cos: 0, ~0.995, -1
    scores = token_prune_scores_reference(x)
    assert scores[0].isinf().all() and scores[1, 0] == 1.0 and scores[2, 2] == -1.0
    indices, counts, _ = token_prune_reference(x, threshold=0.99)
    assert indices.tolist() == [0, 1, 2, 4, 6, 8] and counts.tolist() == [3, 1, 2]
    indices, counts, _ = token_prune_reference(x, keep_ratio=0.34)  # round(1.02) = 1 token per frame
    assert indices.tolist() == [0, 1, 2, 4, 8] and counts.tolist() == [3, 1, 1]


def test_one_frame_is_kept_whole() -> None:
    x = video(1, 13, 24, torch.float32)
    for mode in ({"threshold": -2.0}, {"keep_ratio": 0.0}):
        out = token_prune.token_prune(x, **mode)
        assert out.indices.tolist() == list(range(13)) and out.counts.tolist() == [13]
        assert torch.equal(out.embeddings, x[0])  # same device


def test_repeated_frame_is_pruned_entirely() -> None:
    x = video(4, 11, 40, torch.bfloat16, seed=3)
    x[2] = x[1]  # a static frame: every token repeats exactly
    for mode in ({"threshold": 1.0}, {"threshold": 0.999}):  # exact repeats score exactly 1.0
        out = token_prune.token_prune(x, **mode)
        assert out.counts[2] == 0 and out.counts[0] == 11
        assert_same(out, token_prune_reference(x, **mode))


def test_all_tokens_kept() -> None:
    x = video(5, 9, 30, torch.float16, seed=4)
    everything = list(range(45))
    for mode in ({"keep_ratio": 1.0}, {"threshold": 1.5}):
        out = token_prune.token_prune(x, **mode)
        assert out.indices.tolist() == everything and out.counts.tolist() == [9] * 5
        assert torch.equal(out.embeddings, x.reshape(45, 30))


def test_keep_ratio_zero_keeps_only_the_first_frame() -> None:
    x = video(3, 6, 16, torch.float32)
    out = token_prune.token_prune(x, keep_ratio=0.0)
    assert out.indices.tolist() == list(range(6)) and out.counts.tolist() == [6, 0, 0]


def test_ties_prefer_the_lower_index() -> None:
    x = video(2, 10, 16, torch.float32)
    x[1] = x[0]  # ten scores of exactly 1.0: keep_ratio 0.3 must keep tokens 0, 1, 2 of frame 1
    out = token_prune.token_prune(x, keep_ratio=0.3)
    assert out.indices.tolist()[10:] == [10, 11, 12]


def test_non_contiguous_input() -> None:
    base = video(4, 9, 50, torch.float32, seed=5)
    x = base[:, :, 5:45]  # rows 50 apart, 40 wide
    assert not x.is_contiguous()
    for mode in ({"threshold": 0.3}, {"keep_ratio": 0.6}):
        assert_same(token_prune.token_prune(x, **mode), token_prune_reference(x.contiguous(), **mode))


def test_position_ids_keep_their_columns() -> None:
    x = video(3, 8, 20, torch.float32, seed=6)
    positions = torch.arange(3 * 24, device=DEVICE).view(3, 24) * 7 + 100
    out = token_prune.token_prune(x, keep_ratio=0.5, position_ids=positions)
    assert torch.equal(out.position_ids, positions[:, out.indices.long()])
    assert out.position_ids.shape == (3, 8 + 4 + 4)


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [3584, 4096])
def test_stage1_size_on_gpu(hidden: int) -> None:
    """The benchmark's size, 128 groups x 192 tokens, bf16, compiled kernel against the reference."""
    x = video(128, 192, hidden, torch.bfloat16, seed=hidden)
    for mode in ({"keep_ratio": 0.5}, {"threshold": 0.95}):
        assert_same(token_prune.token_prune(x, **mode), token_prune_reference(x, **mode))


def test_keep_count_rounding() -> None:
    assert tokens_kept_per_frame(0.5, 7) == 4  # 3.5 rounds up
    assert tokens_kept_per_frame(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004
    assert tokens_kept_per_frame(1.0, 192) == 192 and tokens_kept_per_frame(0.0, 192) == 0


def test_forced_reference_skips_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the kernel ran although the reference was forced")

    monkeypatch.setattr(token_prune, "_token_prune_triton", boom)
    x = video(3, 5, 8, torch.float32)
    assert_same(token_prune.token_prune(x, keep_ratio=0.4), token_prune_reference(x, keep_ratio=0.4))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"x": torch.zeros(4, 8)}, r"\(frames, tokens_per_frame, hidden\)"),
    ({"x": torch.zeros(0, 8, 4), "keep_ratio": 0.5}, r"non-empty \(frames"),
    ({"x": torch.zeros(2, 3, 4, dtype=torch.int64), "threshold": 0.5}, "float32/float16/bfloat16"),
    ({"x": torch.zeros(2, 3, 4)}, "exactly one of threshold"),
    ({"x": torch.zeros(2, 3, 4), "threshold": 0.5, "keep_ratio": 0.5}, "exactly one of threshold"),
    ({"x": torch.zeros(2, 3, 4), "keep_ratio": 1.5}, r"keep_ratio must be in \[0, 1\]"),
    ({"x": torch.zeros(2, 3, 4), "keep_ratio": 0.5, "position_ids": torch.zeros(3, 5)}, r"\(3, F\*T\) = \(3, 6\)"),
])
def test_argument_errors_name_the_problem(kwargs: dict, match: str) -> None:
    x = kwargs.pop("x")
    with pytest.raises(ValueError, match=match):
        token_prune.token_prune(x, **kwargs)


COMPILE_FOR_SM90 = r'''
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sage_fast.kernels import token_prune as tp

def build(fn, types, consts):
    names = fn.arg_names
    sig = {n: types.get(n, "constexpr") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in types.items() if t.startswith("*")}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32)).asm["ptx"]

ptx = {}
for dtype in ("bf16", "fp16", "fp32"):
    ptx["scores_" + dtype] = build(tp._scores_kernel, {"x_ptr": "*" + dtype, "scores_ptr": "*fp32", "T": "i32",
        "D": "i32", "stride_f": "i32", "stride_t": "i32"}, {"BLOCK_T": 16, "BLOCK_D": 128})
    ptx["gather_" + dtype] = build(tp._gather_kernel, {"x_ptr": "*" + dtype, "keep_ptr": "*i32", "slot_ptr": "*i32",
        "out_ptr": "*" + dtype, "idx_ptr": "*i32", "N": "i32", "D": "i32", "stride_n": "i32", "stride_out": "i32"},
        {"BLOCK_N": 16, "BLOCK_D": 256})
for by_ratio in (True, False):
    ptx[f"select_{by_ratio}"] = build(tp._select_kernel, {"scores_ptr": "*fp32", "keep_ptr": "*i32", "T": "i32",
        "threshold": "fp32", "k": "i32"}, {"BY_RATIO": by_ratio, "BLOCK_T": 64, "BLOCK_U": 32})
print(json.dumps({name: sorted(set(re.findall(r"(?:sqrt|div)\.[a-z0-9.]+", text))) for name, text in ptx.items()}))
'''


def test_kernels_compile_for_a_gpu_with_correctly_rounded_sqrt_and_div() -> None:
    """The interpreter accepts code that the GPU compiler rejects; compile for sm_90 (no GPU needed).
    Exact repeats score exactly 1.0 only with round-to-nearest sqrt and division, so pin those."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], capture_output=True, text=True, env=env,
                          timeout=300)
    if done.returncode and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("Triton's CUDA backend has no ptxas here")
    assert done.returncode == 0, done.stderr[-3000:]
    ops = json.loads(done.stdout.strip().splitlines()[-1])
    for dtype in ("bf16", "fp16", "fp32"):
        assert ops[f"scores_{dtype}"] == ["div.rn.f32", "sqrt.rn.f32"]
    assert len(ops) == 8
