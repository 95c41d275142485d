"""The PyAV backend: the same GOP plan as the native core, in Python; always available.

It exists so that sage_fast decodes correctly wherever PyAV installs, and as the readable
statement of the algorithm in csrc/decode/native_decoder.cpp: tests require both to return the
same bytes. One decoder and one demuxer are reused across calls.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sage_fast.video.backends.base import check_frame_indices
from sage_fast.video.errors import VideoDecodeError
from sage_fast.video.index import GENPTS, PacketTable, VideoIndex, build_index_pyav

_READ_AHEAD_INSTEAD_OF_SEEK = 48  # packets; the same constant as the native decoder


@dataclass
class DecodeTask:
    """One decode run: from keyframe packet ``first_packet`` to the last target's packet."""

    first_packet: int
    last_packet: int = 0
    slots_by_pts: dict[int, list[int]] = field(default_factory=dict)
    needed_packets: set[int] = field(default_factory=set)


def plan_decode(index: VideoIndex, frames: np.ndarray) -> list[DecodeTask]:
    """Groups targets by the GOP whose keyframe their decoding starts from, in file order.

    A target shown before its GOP's keyframe (an open-GOP leading picture) references the
    previous GOP, so its run starts one keyframe earlier.
    """
    packets = index.packets
    assert packets is not None, "plan_decode needs the packet table of a PyAV index"
    tasks: dict[int, DecodeTask] = {}
    for slot, frame in enumerate(frames.tolist()):
        packet = int(index.decode_position[frame])
        gop = int(packets.gop[packet])
        key_pts = packets.pts[packets.gop_first_packet[gop]]
        if gop > 0 and packets.pts[packet] < key_pts:
            gop -= 1
        task = tasks.setdefault(gop, DecodeTask(first_packet=int(packets.gop_first_packet[gop])))
        task.last_packet = max(task.last_packet, packet)
        task.slots_by_pts.setdefault(int(packets.pts[packet]), []).append(slot)
        task.needed_packets.add(packet)
    return [tasks[g] for g in sorted(tasks)]


def _same_packet(packets: PacketTable, i: int, packet) -> bool:  # noqa: ANN001 (av.Packet)
    if packets.pos[i] >= 0 and packet.pos is not None and packet.pos >= 0:
        return int(packets.pos[i]) == packet.pos
    dts = packet.dts if packet.dts is not None else np.iinfo(np.int64).min
    pts = packet.pts if packet.pts is not None else packet.dts
    return int(packets.pts[i]) == pts and int(packets.dts[i]) == dts


class _MissingFrames(VideoDecodeError):
    """Targets of a run never came out of the decoder."""


class _Lane:
    """One demuxer + decoder that runs decode tasks; lanes work in parallel threads (PyAV
    releases the GIL inside libavcodec), like the native core's workers."""

    def __init__(self, path: Path, index: VideoIndex, threads: int) -> None:
        self.path = path
        self.index = index
        self.wanted_threads = threads
        self._container = None
        self._stream = None
        self._packets = None  # the demux iterator, valid until the next seek
        self._current = -1  # index of the last packet read, -1 when unknown
        self._threads = threads

    def _open(self, threads: int | None = None) -> None:
        import av

        if self._container is not None:
            self._container.close()
        self._container = av.open(str(self.path), options=GENPTS)
        self._stream = self._container.streams.best("video")
        codec = self._stream.codec_context
        codec.thread_type = "AUTO"
        codec.thread_count = self.num_threads if threads is None else threads
        self._threads = codec.thread_count
        self._current = -1

    def _read(self):  # noqa: ANN202 (av.Packet | None)
        for packet in self._packets:
            if packet.size == 0 or (packet.pts is None and packet.dts is None):
                continue
            return packet
        return None

    def _position_at(self, key: int):  # noqa: ANN202 (av.Packet)
        packets = self.index.packets
        if 0 <= self._current < key and key - self._current <= _READ_AHEAD_INSTEAD_OF_SEEK:
            while self._current < key:
                packet = self._read()
                if packet is None or not _same_packet(packets, self._current + 1, packet):
                    break
                self._current += 1
            if self._current == key:
                self._stream.codec_context.flush_buffers()
                return packet
        second = max(1, round(1 / float(self.index.time_base)))
        for backoff in (0, second, 10 * second, None):
            self._current = -1
            try:
                if backoff is None:
                    self._container.seek(0, backward=True, any_frame=False, stream=self._stream)
                else:
                    target = int(packets.pts[key]) - backoff
                    self._container.seek(target, backward=True, any_frame=False, stream=self._stream)
            except Exception:
                continue
            self._stream.codec_context.flush_buffers()
            self._packets = self._container.demux(self._stream)
            while (packet := self._read()) is not None:
                if _same_packet(packets, key, packet):
                    self._current = key
                    return packet
                if packets.pos[key] >= 0 and packet.pos is not None and packet.pos > packets.pos[key]:
                    break
        raise VideoDecodeError(f"{self.path}: cannot seek to the keyframe at packet {key}")

    def _run(self, task: DecodeTask, out: np.ndarray, size: tuple[int, int]) -> None:
        codec = self._stream.codec_context
        pending = dict(task.slots_by_pts)
        packet = self._position_at(task.first_packet)

        def take(decoded) -> None:  # noqa: ANN001 (list[av.VideoFrame])
            for frame in decoded:
                pts = frame.pts if frame.pts is not None else frame.dts
                slots = pending.pop(pts, None)
                if slots is None:
                    continue
                rgb = frame.reformat(width=size[1], height=size[0], format="rgb24",
                                     interpolation="BICUBIC").to_ndarray()
                for slot in slots:
                    out[slot] = rgb

        while True:
            # Frames no target shows: let the decoder drop them unless later frames reference them.
            codec.skip_frame = "DEFAULT" if self._current in task.needed_packets else "NONREF"
            try:
                take(codec.decode(packet))
            except Exception as exc:  # damaged packet: ffmpeg goes on, and so do we
                if "Invalid data" not in str(exc):
                    raise VideoDecodeError(f"{self.path}: decoder failed ({exc})") from exc
            if self._current == task.last_packet:
                break
            packet = self._read()
            if packet is None:
                break  # truncated file: keep what was decoded
            self._current += 1
            if not _same_packet(self.index.packets, self._current, packet):
                raise VideoDecodeError(
                    f"{self.path}: packet order differs from the index at packet {self._current} "
                    "(file changed while open?)")
        codec.skip_frame = "DEFAULT"
        try:
            take(codec.decode(None))  # drain the frames held for reordering
        except Exception as exc:  # the damaged packet surfaces here with frame threads
            if "Invalid data" not in str(exc):
                raise VideoDecodeError(f"{self.path}: decoder failed ({exc})") from exc
        codec.flush_buffers()
        if pending:
            seconds = min(pending) * float(self.index.time_base)
            raise _MissingFrames(
                f"{self.path}: could not decode the frame at {seconds:.6f} s (damaged or truncated data)")

    def run_tasks(self, tasks: list[DecodeTask], out: np.ndarray, size: tuple[int, int]) -> None:
        if self._container is None or self._threads != self.wanted_threads:
            self._open(self.wanted_threads)
        try:
            for task in tasks:
                try:
                    self._run(task, out, size)
                except _MissingFrames:
                    if self._threads == 1:
                        raise
                    # Frame threads can drop the good frame decoded just before a damaged
                    # packet; a single-threaded decoder keeps it. Retry this run with one.
                    self._open(threads=1)
                    self._run(task, out, size)
        except Exception:
            self._current = -1  # the demuxer state is unknown after a failure
            raise

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class PyAVBackend:
    """Decodes on the CPU with PyAV (FFmpeg through Cython), GOP runs spread over lanes."""

    name = "pyav"

    def __init__(self, path: Path, *, num_threads: int = 0, index: VideoIndex | None = None) -> None:
        self.path = Path(path)
        self.index = index if index is not None and index.packets is not None else build_index_pyav(path)
        self.device = torch.device("cpu")
        self.num_threads = num_threads if num_threads > 0 else (os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._lanes: list[_Lane] = []

    def decode(self, frame_indices: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        frames = check_frame_indices(self.index, frame_indices)
        out = np.empty((len(frames), size[0], size[1], 3), dtype=np.uint8)
        tasks = plan_decode(self.index, frames)
        if not tasks:
            return torch.from_numpy(out)
        lanes = min(self.num_threads, len(tasks))
        # Few runs: one lane with libavcodec's frame threads; many: one thread per lane.
        threads = 1 if lanes > 1 else self.num_threads
        with self._lock:
            while len(self._lanes) < lanes:
                self._lanes.append(_Lane(self.path, self.index, threads))
            for lane in self._lanes:
                lane.wanted_threads = threads
            queue = iter(tasks)
            queue_lock = threading.Lock()
            errors: list[BaseException] = []

            def work(lane: _Lane) -> None:
                while not errors:
                    with queue_lock:
                        task = next(queue, None)
                    if task is None:
                        return
                    try:
                        lane.run_tasks([task], out, size)
                    except BaseException as exc:
                        errors.append(exc)

            workers = [threading.Thread(target=work, args=(lane,)) for lane in self._lanes[1:lanes]]
            for worker in workers:
                worker.start()
            work(self._lanes[0])
            for worker in workers:
                worker.join()
            if errors:
                raise errors[0]
        return torch.from_numpy(out)

    def close(self) -> None:
        with self._lock:
            for lane in self._lanes:
                lane.close()
            self._lanes.clear()
