"""Shared, bounded cache of Stage-1 frame batches, so episodes on the same video decode once.

Why: GRPO rolls out a group of n episodes per (video, question), evaluation reruns questions, and
SAGE-Bench asks several questions per video; each episode's Stage-1 samples the same 128 frames
at the same size. Decoding them is the largest cost the agent itself has (seconds for an hour of
720p on a CPU, see bench/RESULTS.md), so the agent keeps recent batches in memory, keyed by the
video's content fingerprint and the sampling request, and concurrent episodes asking for the
same batch wait for one decode instead of starting their own ("single flight").

Frames are read-only to the agent and its backends (they are copied or converted before any
change), so episodes share the same tensors.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from sage_fast.video.types import FrameBatch


class FrameBatchCache:
    """LRU of frame batches bounded by bytes; ``get_or_decode(key, decode)`` is thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0 turns the cache off), got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, FrameBatch] = OrderedDict()
        self._pending: dict[Hashable, Future[FrameBatch]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(batch: FrameBatch) -> int:
        return batch.data.numel() * batch.data.element_size()

    def get_or_decode(self, key: Hashable, decode: Callable[[], FrameBatch]) -> tuple[FrameBatch, bool]:
        """The batch for ``key`` and whether it came from the cache (or from another episode's
        decode in flight); ``decode`` runs at most once per key at a time."""
        if self.max_bytes == 0:
            return decode(), False
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key], True
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
                self.misses += 1
            else:
                self.hits += 1
        if not owner:
            return pending.result(), True
        try:
            batch = decode()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            size = self._size(batch)
            if size <= self.max_bytes:
                self._entries[key] = batch
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self._bytes -= self._size(evicted)
        pending.set_result(batch)
        return batch, False

    @property
    def bytes(self) -> int:
        return self._bytes
