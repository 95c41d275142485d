"""Peak memory of one 128-frame sample, measured in a fresh process (case C of bench_decode).

A fresh process because peak RSS only ever grows: inside the pytest process it would report
whatever the biggest earlier benchmark touched. The process prints one JSON line with the peak
after importing (``baseline_mb``), the peak after the call (``peak_mb``), the call's seconds and
a hash of the frames so the parent can check that the providers returned the same pixels.

The peak is the kernel's high-water mark of this process's own memory (VmHWM in
/proc/self/status). ``getrusage(RUSAGE_SELF).ru_maxrss`` is recorded too but is not used: Linux
carries the pre-exec address space's peak into it, and Python's subprocess spawns by vfork from
the pytest process, so ru_maxrss starts at the parent's size (hundreds of MB) before any work.

    python -m bench.rss_probe sage_fast|torchcodec VIDEO [MID_TIMES_JSON]
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MB; ru_maxrss where /proc is missing.
    The other benches' fresh-process probes use it too."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _ru_maxrss_mb()


def main(argv: list[str]) -> int:
    provider, path = argv[0], argv[1]
    import torch  # noqa: F401  (the baseline includes what any caller has loaded)

    import sage_fast  # noqa: F401

    if provider == "sage_fast":
        from sage_fast.video import VideoReader

        baseline = peak_mb()
        start = time.perf_counter()
        batch = VideoReader(path, backend="native", num_threads=0).sample_uniform(128, 2.0)
        frames = batch.data.permute(0, 2, 3, 1)  # NHWC memory, as the hash below expects
    elif provider == "torchcodec":
        from torchcodec.decoders import VideoDecoder

        times = json.loads(argv[2])
        baseline = peak_mb()
        start = time.perf_counter()
        decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=0, dimension_order="NHWC")
        frames = decoder.get_frames_played_at(times).data
    else:
        raise SystemExit(f"unknown provider {provider!r}: use sage_fast or torchcodec")
    seconds = time.perf_counter() - start
    peak = peak_mb()
    digest = hashlib.blake2b(frames.contiguous().numpy().data, digest_size=16).hexdigest()
    print(json.dumps({"provider": provider, "baseline_mb": round(baseline, 1), "peak_mb": round(peak, 1),
                      "ru_maxrss_mb": round(_ru_maxrss_mb(), 1),
                      "seconds": round(seconds, 3), "frames": int(frames.shape[0]),
                      "shape": list(frames.shape), "frames_hash": digest}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
