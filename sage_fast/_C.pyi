"""Type stubs for sage_fast's compiled core (csrc/bindings.cpp). Import it through sage_fast._ext."""

from typing import Any

import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, Any]:
    """{'ffmpeg': bool, 'cuda': bool, 'ffmpeg_versions': str, 'compiler': str}."""

def cuda_device_count() -> int:
    """CUDA devices visible to the core (0 without CUDA support, a driver or a device)."""

def set_ffmpeg_log_level(level: int) -> None:
    """Log level of the linked FFmpeg libraries (-8 quiet, 8 fatal, 16 error, 24 warning, 32 info)."""

class NativeDecoder:
    """Native FFmpeg decoder of one video file; present only when built with FFmpeg."""

    def __init__(self, path: str) -> None: ...
    @property
    def metadata(self) -> dict[str, Any]:
        """path, codec, pixel_format, container, width, height, rotation, has_audio, average_fps,
        container_duration, bit_rate, time_base (num, den), num_packets, index_source ('tables' when
        the MP4 sample tables gave the index without reading payloads, else 'packets')."""
    def index_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Per presented frame (pts order): pts, duration, decode_position (int64), is_key (bool)."""
    def decode(
        self, frames: npt.NDArray[np.int64], out: npt.NDArray[np.uint8], num_threads: int = 0
    ) -> dict[str, int]:
        """Decodes frames into out (n, H, W, 3) uint8 RGB, resized to H x W; releases the GIL."""

DecisionTuple = tuple[int, int, int, int, float]  # (kind, episode, group, aux, time)

class RolloutScheduler:
    """Deterministic rollout scheduler core (csrc/scheduler): events in, decisions out. Use it
    through sage_fast.rollout.Scheduler, which falls back to the identical Python machine."""

    def __init__(self, max_seqs: int, max_tokens: int, max_turns: int, tool_timeout: float,
                 episode_timeout: float, max_active_groups: int, group_priority: bool) -> None: ...
    def add_group(self, size: int, cost: int, now: float, prepare: bool = False) -> tuple[int, list[DecisionTuple]]: ...
    def finish(self, episode: int, reason: int, now: float) -> list[DecisionTuple]: ...
    def turn_finished(self, episode: int, action: int, next_cost: int, now: float) -> list[DecisionTuple]: ...
    def tool_finished(self, episode: int, next_cost: int, now: float) -> list[DecisionTuple]: ...
    def advance(self, now: float) -> list[DecisionTuple]: ...
    def fail(self, episode: int, now: float) -> list[DecisionTuple]: ...
    def cancel(self, episode: int, now: float) -> list[DecisionTuple]: ...
    def cancel_group(self, group: int, now: float) -> list[DecisionTuple]: ...
    def replay(self, events: list[tuple[int, int, int, int, float]]) -> list[DecisionTuple]:
        """Feeds recorded (code, a, b, c, time) events in one call (GIL released)."""
    def replay_arrays(self, code: npt.NDArray[np.int32], a: npt.NDArray[np.int64], b: npt.NDArray[np.int64],
                      c: npt.NDArray[np.int64], time: npt.NDArray[np.float64]) -> dict[str, npt.NDArray[Any]]:
        """replay over column arrays -> kind, episode, group, aux, time arrays (GIL released)."""
    def next_deadline(self) -> float: ...
    def state(self, episode: int) -> int: ...
    def turns(self, episode: int) -> int: ...
    def group_of(self, episode: int) -> int: ...
    def stats(self) -> dict[str, int]: ...

def pack_samples(lengths: npt.NDArray[np.int64], budget: int, world_size: int) -> dict[str, npt.NDArray[Any]]:
    """Token-budget micro-batches balanced across ranks (GIL released): order, offsets, ranks, loads."""
