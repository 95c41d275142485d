"""Decode benchmark (issue 3, item 7): sage_fast's exact sampling against every public alternative.

Case A  128 uniform frames (at most 2 per second) from the 10-min and the 60-min 720p videos, cold:
        each round opens the file, so index building and scanning count, as for a new video in
        the agent's Stage-1. Providers: sage_fast exact / skim / PyAV fallback, torchcodec (exact
        and approximate seek modes, batch API), decord, PyAV seek-per-frame and sequential, plus
        sage_fast on an already-open reader (decode only) and the floor (bench/floor.py) to hold
        it against.
Case B  100 tool calls of 10 frames from random 5-min windows of the 60-min video: a reader kept
        open (``open_video``) against reopening per call, and torchcodec both ways.
Case C  peak RSS of 128 frames from the 60-min 1080p video, each provider in a fresh process.

Every provider's output is checked against sage_fast exact's BEFORE it is timed (same pixels,
same pts), so no number below belongs to a decoder that returned different frames. The untimed
check run also warms the OS page cache: "cold" means a new decoder and index, not a cold disk.

    python -m bench.videos                                   # optional: generate videos first
    python -m pytest bench/bench_decode.py --benchmark-only --benchmark-json out.json
    python bench/report.py out.json                          # Markdown tables for RESULTS.md
    SAGE_BENCH_SMALL=1 python -m pytest bench/bench_decode.py --benchmark-only   # quick check
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bench import providers as P
from bench.floor import FloorDecoder
from bench.videos import small_mode
from sage_fast.video import VideoReader, clear_video_cache, open_video

N_FRAMES, MAX_FPS = 128, 2.0
CALLS, FRAMES_PER_CALL, WINDOW_SECONDS, SEED = 100, 10, 300.0, 7
REPO = Path(__file__).resolve().parent.parent


def rounds(default: int) -> int:
    """``SAGE_BENCH_ROUNDS`` overrides every provider's round count; the small check does 1."""
    raw = os.environ.get("SAGE_BENCH_ROUNDS", "").strip()
    return int(raw) if raw else 1 if small_mode() else default


def slug(name: str) -> str:
    return name.replace(" ", "-").replace("(", "").replace(")", "")


def record(benchmark, case: str, provider: str, reference: str, frames: int, extra: dict) -> None:  # noqa: ANN001
    """Everything report.py needs, in the JSON next to pytest-benchmark's statistics."""
    info = benchmark.extra_info
    info.update(case=case, provider=provider, reference=reference, frames=frames, **extra)
    stats = getattr(benchmark, "stats", None)
    mean = getattr(getattr(stats, "stats", None), "mean", None)
    if mean:
        info["frames_per_s"] = round(frames / mean, 2)


def frame_diff(got: np.ndarray, want: np.ndarray) -> dict:
    """How far two (n, H, W, 3) uint8 stacks are apart."""
    if got.shape != want.shape:
        raise AssertionError(f"frames have shape {got.shape}, sage_fast's have {want.shape}")
    delta = np.abs(got.astype(np.int16) - want.astype(np.int16))
    per_frame = delta.reshape(len(delta), -1).max(axis=1)
    return {"max_abs_diff": int(delta.max(initial=0)), "mean_abs_diff": round(float(delta.mean()), 4),
            "frames_differing": int((per_frame > 0).sum())}


def digest(frames: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(frames).data, digest_size=16).hexdigest()


# -- case A: 128 uniform frames, cold ------------------------------------------------------------
A_PROVIDERS = [*P.CASE_A, "sage_fast exact (warm reader)", "floor (frame threads)", "floor (GOP-parallel)"]
A_ROUNDS = {"sage_fast exact": 3, "sage_fast skim": 5, "sage_fast exact (warm reader)": 5,
            "sage_fast pyav backend": 1, "torchcodec exact": 3, "torchcodec approximate": 3, "decord": 1,
            "pyav seek per frame": 1, "pyav sequential": 1, "floor (frame threads)": 3,
            "floor (GOP-parallel)": 3}
DECORD_MEAN_DIFF_LIMIT = 1.0  # larger means other frames, not another colour conversion


@dataclass(frozen=True)
class CaseA:
    path: Path
    targets: P.Targets
    reference: P.Decoded  # sage_fast exact
    skim_targets: P.Targets
    skim_reference: np.ndarray  # the keyframes, decoded by an independent decoder


@pytest.fixture(scope="session")
def case_a(bench_video: Callable[[str], Path]) -> Callable[[str], CaseA]:
    @cache
    def get(video: str) -> CaseA:
        path = bench_video(video)
        reader = VideoReader(path, backend="native", num_threads=0)
        targets = P.Targets.uniform_sample(reader.index, N_FRAMES, MAX_FPS)
        reference = P.sage_fast_exact(targets)
        np.testing.assert_array_equal(reference.indices, targets.frames)
        keys = targets.keyframes(reader.index)
        try:
            skim_reference = P.torchcodec_exact(keys).frames
        except ImportError:
            skim_reference = P.sage_fast_pyav(keys).frames  # another decoder and FFmpeg build
        return CaseA(path, targets, reference, keys, skim_reference)

    return get


def case_a_call(provider: str, case: CaseA) -> Callable[[], P.Decoded]:
    """A zero-argument call doing the provider's whole job (set-up that is not timed done here)."""
    if provider.startswith("torchcodec"):
        pytest.importorskip("torchcodec.decoders")
    if provider == "decord":
        pytest.importorskip("decord")
    if provider == "sage_fast exact (warm reader)":
        warm = P.sage_fast_warm(VideoReader(case.path, backend="native", num_threads=0))
        return lambda: warm(case.targets)
    if provider.startswith("floor"):
        floor = FloorDecoder(case.targets, workers=1 if "frame threads" in provider else os.cpu_count() or 1)
        return floor.decode
    fn = P.CASE_A[provider]
    return lambda: fn(case.targets)


def check_case_a(provider: str, got: P.Decoded, case: CaseA) -> dict:
    """Asserts the provider returned sage_fast's frames; returns how it was checked."""
    want = case.reference
    if provider.startswith("floor"):
        np.testing.assert_allclose(np.unique(got.pts_seconds), np.unique(case.targets.pts_seconds), rtol=0, atol=1e-9)
        return {"check": "decoded exactly the target pts (the floor converts no pixels)"}
    if provider == "sage_fast skim":
        np.testing.assert_array_equal(got.indices, case.skim_targets.frames)
        diff = frame_diff(got.frames, case.skim_reference)
        assert diff["max_abs_diff"] == 0, f"skim keyframes differ from an independent decode: {diff}"
        return {"check": "nearest keyframes, pixels equal to an independent decode", **diff}
    if provider == "decord":
        np.testing.assert_allclose(got.pts_seconds, want.pts_seconds, atol=1e-3)
        diff = frame_diff(got.frames, want.frames)
        assert diff["mean_abs_diff"] <= DECORD_MEAN_DIFF_LIMIT, f"decord returned other frames: {diff}"
        kind = "equal" if diff["max_abs_diff"] == 0 else "within tolerance (its own RGB conversion)"
        return {"check": f"same pts, pixels {kind}", **diff}
    np.testing.assert_allclose(got.pts_seconds, want.pts_seconds, rtol=0, atol=1e-6)
    if got.indices is not None:
        np.testing.assert_array_equal(got.indices, want.indices)
    diff = frame_diff(got.frames, want.frames)
    assert diff["max_abs_diff"] == 0, f"{provider} returned other pixels than sage_fast exact: {diff}"
    return {"check": "same pts, pixels equal", **diff}


@pytest.mark.parametrize("video", ["720p_10min", "720p_60min"], ids=["10min", "60min"])
@pytest.mark.parametrize("provider", A_PROVIDERS, ids=[slug(p) for p in A_PROVIDERS])
def test_uniform_128(benchmark, case_a, video: str, provider: str) -> None:  # noqa: ANN001
    benchmark.group = f"A: {N_FRAMES} uniform frames, {video} (cold)"
    if provider == "pyav sequential" and video != "720p_10min":
        pytest.skip("decoding every frame of the hour takes minutes; measured on the 10-min video only")
    case = case_a(video)
    call = case_a_call(provider, case)
    checked = check_case_a(provider, call(), case)
    result = benchmark.pedantic(call, rounds=rounds(A_ROUNDS[provider]), iterations=1, warmup_rounds=0)
    record(benchmark, "A", provider, "sage_fast exact", len(case.targets),
           {"video": video, "decode_stats": result.stats, **checked})


# -- case A on the GPU: NVDEC through DALI (sage_fast) vs torchcodec's CUDA decoder ---------------
GPU_MEAN_DIFF_LIMIT = 3.0  # NVDEC's YUV->RGB rounds differently from swscale; larger means other frames


@pytest.mark.gpu
@pytest.mark.parametrize("video", ["720p_10min", "720p_60min"], ids=["10min", "60min"])
@pytest.mark.parametrize("provider", list(P.GPU_CASE_A), ids=[slug(p) for p in P.GPU_CASE_A])
def test_uniform_128_gpu(benchmark, case_a, video: str, provider: str) -> None:  # noqa: ANN001
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if provider.startswith("torchcodec"):
        pytest.importorskip("torchcodec.decoders")
    else:
        pytest.importorskip("nvidia.dali")
    benchmark.group = f"A-GPU: {N_FRAMES} uniform frames, {video} (cold, frames left on the GPU)"
    case = case_a(video)
    fn = P.GPU_CASE_A[provider]
    got = fn(case.targets)  # checked once, then timed
    np.testing.assert_allclose(got.pts_seconds, case.reference.pts_seconds, rtol=0, atol=1e-6)
    diff = frame_diff(got.frames.cpu().numpy(), case.reference.frames)
    assert diff["mean_abs_diff"] <= GPU_MEAN_DIFF_LIMIT, f"{provider} returned other frames: {diff}"
    benchmark.pedantic(lambda: fn(case.targets), rounds=rounds(3), iterations=1, warmup_rounds=1)
    record(benchmark, "A-GPU", provider, "sage_fast exact (CPU)", len(case.targets),
           {"video": video, "check": "same pts, pixels within NVDEC's colour rounding", **diff,
            "gpu": torch.cuda.get_device_name()})


# -- case B: 100 window calls on one video -------------------------------------------------------
B_PROVIDERS = ["sage_fast open_video (cached)", "sage_fast reopen per call", "torchcodec reopen per call",
               "torchcodec approximate reopen per call", "torchcodec one decoder reused"]
B_ROUNDS: dict[str, int] = {}  # 1 each: a round is already 100 calls, and one takes minutes at 720p


@dataclass(frozen=True)
class CaseB:
    path: Path
    calls: list[P.Targets]
    hashes: list[str]  # sage_fast's frames per call (1000 frames of 720p do not fit twice in memory)


@pytest.fixture(scope="session")
def case_b(bench_video: Callable[[str], Path]) -> CaseB:
    path = bench_video("720p_60min")
    reader = VideoReader(path, backend="native", num_threads=0)
    index = reader.index
    window = min(WINDOW_SECONDS, (index.end_seconds - index.begin_seconds) / 4)
    starts = np.random.default_rng(SEED).uniform(index.begin_seconds, index.end_seconds - window, CALLS)
    offsets = (np.arange(FRAMES_PER_CALL) + 0.5) * window / FRAMES_PER_CALL
    calls = [P.Targets.at_times(index, start + offsets) for start in starts]
    hashes = [digest(reader.frames_at(t.seconds).data.permute(0, 2, 3, 1).numpy()) for t in calls]
    return CaseB(path, calls, hashes)


def case_b_run(provider: str, case: CaseB) -> Callable[[Callable[[np.ndarray], None]], None]:
    """``run(sink)``: all 100 calls, each call's (n, H, W, 3) frames handed to ``sink``."""
    path = case.path

    def decoder(mode: str = "exact"):  # noqa: ANN202 (torchcodec VideoDecoder)
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(str(path), seek_mode=mode, num_ffmpeg_threads=0, dimension_order="NHWC")

    def run(sink: Callable[[np.ndarray], None]) -> None:
        if provider == "sage_fast open_video (cached)":
            for t in case.calls:
                sink(open_video(path, backend="native", num_threads=0).frames_at(t.seconds).data.permute(0, 2, 3, 1))
        elif provider == "sage_fast reopen per call":
            for t in case.calls:
                sink(VideoReader(path, backend="native", num_threads=0).frames_at(t.seconds).data.permute(0, 2, 3, 1))
        elif provider == "torchcodec one decoder reused":
            shared = decoder()
            for t in case.calls:
                sink(shared.get_frames_played_at(t.seconds.tolist()).data)
        else:
            mode = "approximate" if "approximate" in provider else "exact"
            for t in case.calls:
                sink(decoder(mode).get_frames_played_at(t.seconds.tolist()).data)

    return run


@pytest.mark.parametrize("provider", B_PROVIDERS, ids=[slug(p) for p in B_PROVIDERS])
def test_window_calls(benchmark, case_b: CaseB, provider: str) -> None:  # noqa: ANN001
    benchmark.group = f"B: {CALLS} calls x {FRAMES_PER_CALL} frames from a 5-min window, 720p_60min"
    if provider.startswith("torchcodec"):
        pytest.importorskip("torchcodec.decoders")
    run = case_b_run(provider, case_b)
    got: list[str] = []
    clear_video_cache()
    run(lambda frames: got.append(digest(np.asarray(frames))))
    bad = [i for i, (a, b) in enumerate(zip(got, case_b.hashes, strict=True)) if a != b]
    assert not bad, f"{provider}: {len(bad)} of {CALLS} calls returned other frames than sage_fast (first: call {bad[0]})"
    benchmark.pedantic(run, args=(lambda frames: None,), setup=clear_video_cache,
                       rounds=rounds(B_ROUNDS.get(provider, 1)), iterations=1, warmup_rounds=0)
    record(benchmark, "B", provider, "sage_fast open_video (cached)", CALLS * FRAMES_PER_CALL,
           {"video": "720p_60min", "calls": CALLS, "check": "same pixels in every call (hash)"})


# -- case C: peak RSS ----------------------------------------------------------------------------
def probe(provider: str, path: Path, times: list[float]) -> dict:
    """Runs bench/rss_probe.py in a fresh interpreter and returns its JSON line."""
    cmd = [sys.executable, "-m", "bench.rss_probe", provider, str(path), json.dumps(times)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:5])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class CaseC:
    path: Path
    times: list[float]
    reference_hash: str


@pytest.fixture(scope="session")
def case_c(bench_video: Callable[[str], Path]) -> CaseC:
    path = bench_video("1080p_60min")
    targets = P.Targets.uniform_sample(VideoReader(path, backend="native").index, N_FRAMES, MAX_FPS)
    times = targets.mid_seconds.tolist()
    return CaseC(path, times, probe("sage_fast", path, times)["frames_hash"])


@pytest.mark.parametrize("provider", ["sage_fast", "torchcodec"])
def test_peak_rss(benchmark, case_c: CaseC, provider: str, say: Callable[[str], None]) -> None:  # noqa: ANN001
    benchmark.group = f"C: peak RSS, {N_FRAMES} frames of 1080p_60min (fresh process)"
    if provider == "torchcodec":
        pytest.importorskip("torchcodec.decoders")
    result = benchmark.pedantic(probe, args=(provider, case_c.path, case_c.times), rounds=1, iterations=1)
    assert result["frames_hash"] == case_c.reference_hash, f"{provider} returned other frames than sage_fast"
    extra = {k: result[k] for k in ("baseline_mb", "peak_mb", "ru_maxrss_mb", "seconds", "shape")}
    extra["peak_above_baseline_mb"] = round(result["peak_mb"] - result["baseline_mb"], 1)
    record(benchmark, "C", provider, "sage_fast", result["frames"], {"video": "1080p_60min", **extra})
    say(f"\n[case C] {provider}: peak RSS {result['peak_mb']:.0f} MB (baseline after imports "
        f"{result['baseline_mb']:.0f} MB), call {result['seconds']:.2f} s, frames {result['shape']}")
