"""The floor: libavcodec decoding only the packets the targets depend on, nothing else.

No exact sampler can do less decode work than this, so it bounds sage_fast from below. Packets
are demuxed into memory before timing (no I/O, no demuxing, no index), each needed GOP is decoded
from its keyframe to its last target, frames no target needs are skipped when nothing references
them (``skip_frame=NONREF``, as sage_fast does), and nothing is colour-converted. The GOP plan is
sage_fast's own (``plan_decode`` on a PyAV-built index), which is what "the frames the targets
depend on" means for a closed-GOP H.264 stream.

Two ways to spend the cores are measured, since either may win on a given machine: one decoder
with libavcodec's frame threads (``workers=1``), and one single-threaded decoder per core over
contiguous runs of GOPs (what sage_fast's native core does). PyAV releases the GIL while
libavcodec decodes, so the Python threads run in parallel.
"""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np

from bench.providers import Decoded, Targets
from sage_fast.video.backends.pyav_backend import DecodeTask, plan_decode
from sage_fast.video.index import build_index_pyav


def _split(tasks: list[DecodeTask], workers: int) -> list[list[DecodeTask]]:
    """Contiguous runs of tasks with about equal packet counts, one per worker."""
    cost = np.array([t.last_packet - t.first_packet + 1 for t in tasks], dtype=np.float64)
    edges = np.searchsorted(np.cumsum(cost), cost.sum() * np.arange(1, workers) / workers, side="left") + 1
    runs = np.split(np.arange(len(tasks)), np.clip(edges, 0, len(tasks)))
    return [[tasks[i] for i in run] for run in runs if len(run)]


class FloorDecoder:
    """Pre-demuxed packets of the needed GOPs, decoded on demand by ``decode()``."""

    def __init__(self, targets: Targets, workers: int = 1) -> None:
        index = build_index_pyav(targets.path)
        packets = index.packets
        assert packets is not None
        if not np.array_equal(index.pts[targets.frames], targets.pts):
            raise AssertionError("PyAV's index numbers frames differently from sage_fast's native index")
        self.target_pts = set(targets.pts.tolist())
        self.time_base = targets.time_base
        self.tasks = plan_decode(index, targets.frames)
        self.runs = _split(self.tasks, workers)
        self.thread_count = 0 if workers == 1 else 1  # 0: libavcodec picks (all cores)
        self._demux(Path(targets.path), packets.pos, packets.pts)

    def _demux(self, path: Path, positions: np.ndarray, pts: np.ndarray) -> None:
        """Keeps the packets (first..last of every task) in memory, with their "needed" flag."""
        owners: dict[int, list[DecodeTask]] = {}
        for task in self.tasks:
            for i in range(task.first_packet, task.last_packet + 1):
                owners.setdefault(i, []).append(task)
        by_pos = {int(p): i for i, p in enumerate(positions.tolist()) if p >= 0}
        self.packets: dict[int, list[tuple[av.Packet, bool]]] = {id(t): [] for t in self.tasks}
        last = max(t.last_packet for t in self.tasks)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            self.codec_name = stream.codec_context.name
            self.extradata = stream.codec_context.extradata
            for packet in container.demux(stream):
                i = by_pos.get(packet.pos)
                if i is None or packet.pts != pts[i]:
                    continue
                for task in owners.get(i, ()):
                    self.packets[id(task)].append((packet, i in task.needed_packets))
                if i >= last:
                    break
        missing = sum(t.last_packet - t.first_packet + 1 for t in self.tasks) - sum(map(len, self.packets.values()))
        if missing:
            raise AssertionError(f"{path}: {missing} needed packets were not found when demuxing")

    def _codec(self) -> av.CodecContext:
        codec = av.CodecContext.create(self.codec_name, "r")
        codec.extradata = self.extradata
        codec.thread_type = "AUTO"
        codec.thread_count = self.thread_count
        return codec

    def _run(self, tasks: list[DecodeTask], result: dict) -> None:
        try:
            codec = self._codec()
            shown: list[int] = []
            decoded = 0
            for task in tasks:
                for packet, needed in self.packets[id(task)]:
                    codec.skip_frame = "DEFAULT" if needed else "NONREF"
                    for frame in codec.decode(packet):
                        decoded += 1
                        shown.append(frame.pts)
                codec.skip_frame = "DEFAULT"
                for frame in codec.decode(None):  # drain the frames held back for reordering
                    decoded += 1
                    shown.append(frame.pts)
                codec.flush_buffers()
            result.update(pts=[p for p in shown if p in self.target_pts], decoded=decoded)
        except BaseException as exc:  # re-raised by decode() in the calling thread
            result["error"] = exc

    def decode(self) -> Decoded:
        """Decodes every needed packet; returns the target pts that came out (no pixels)."""
        results: list[dict] = [{} for _ in self.runs]
        threads = [threading.Thread(target=self._run, args=(run, results[w]))
                   for w, run in enumerate(self.runs) if w > 0]
        for thread in threads:
            thread.start()
        self._run(self.runs[0], results[0])
        for thread in threads:
            thread.join()
        for result in results:
            if "error" in result:
                raise result["error"]
        ticks = np.array(sorted(p for r in results for p in r["pts"]), dtype=np.int64)
        stats = {"packets_sent": sum(map(len, self.packets.values())),
                 "frames_decoded": sum(r["decoded"] for r in results), "tasks": len(self.tasks),
                 "workers": len(self.runs)}
        seconds = ticks.astype(np.float64) * self.time_base.numerator / self.time_base.denominator
        return Decoded(None, seconds, stats=stats)
