"""The SAGE episode: Stage-1 over sampled frames, then up to N text-only Stage-2 steps with tools.

Stage-1 sees the whole video (uniform frames at SAGE's per-frame pixel budget) and either
answers (an answer with no tool needed ends the episode) or names tool calls. Each Stage-2 step
is a fresh prompt with the video context, the previous call and the recent tool results; only
the first requested call runs; the episode stops on a true verdict with an answer, or after
``max_stage2_steps`` with the fixed could-not-produce answer (DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sage_fast.agent.frame_cache import FrameBatchCache
from sage_fast.agent.parsing import ParsedOutput, parse_output
from sage_fast.agent.prompts import PromptSet, stage1_messages, stage2_messages
from sage_fast.agent.trajectory import COULD_NOT_PRODUCE, ToolCallRecord, Trajectory, Turn
from sage_fast.models.base import Orchestrator, SamplingConfig
from sage_fast.models.token_pruning import TokenPruningConfig
from sage_fast.tools.cache import ToolResultCache, content_fingerprint
from sage_fast.tools.context import ToolContext
from sage_fast.tools.registry import Tool, ToolRegistry
from sage_fast.tools.speech import SpeechBackend, SpeechTools
from sage_fast.tools.video_tools import extract_parts_from_timestamp
from sage_fast.tools.vlm_tools import VLMTools
from sage_fast.tools.web_tools import WebConfig, WebTools
from sage_fast.video.qwen_resize import QwenResizeConfig, visual_tokens_per_frame

T = TypeVar("T")

NO_TOOL_NOTE = ("No tool was requested although the question was judged not answerable yet. "
                "Request a tool call or give the final answer.")


@dataclass
class AgentConfig:
    """How an episode runs; the defaults are the paper's."""

    num_frames: int = field(default=128, metadata={"help": "Stage-1 frames, sampled uniformly"})
    max_fps: float = field(default=2.0, metadata={"help": "at most this many Stage-1 frames per second"})
    frame_mode: str = field(default="exact", metadata={
        "help": "exact: the frame at each uniform time (the paper); skim: the nearest keyframe to each, "
                "labelled with its true time (many times faster on CPUs, less uniform)"})
    min_frame_tokens: int = field(default=128, metadata={"help": "visual tokens per Stage-1 frame, lower end"})
    max_frame_tokens: int = field(default=192, metadata={"help": "visual tokens per Stage-1 frame, upper end"})
    max_stage2_steps: int = field(default=10, metadata={"help": "Stage-2 calls before giving up"})
    prompts_dir: str | None = field(default=None, metadata={"help": "folder with the four prompt files"})
    work_dir: str | None = field(default=None, metadata={"help": "where tools write files (default: a temp dir)"})
    video_backend: str = field(default="auto", metadata={"help": "decode backend for sage_fast.video"})
    tool_cache_dir: str | None = field(default=None, metadata={
        "help": "folder of the on-disk tool-result cache shared across episodes (None: off)"})
    tool_cache_max_age_s: float | None = field(default=None, metadata={
        "help": "cached results older than this are recomputed (web pages change); None: never"})
    tool_workers: int = field(default=32, metadata={
        "help": "threads running tool calls, shared by all episodes of this agent (run_many, rollouts)"})
    frame_cache_mb: int = field(default=1024, metadata={
        "help": "memory for Stage-1 frame batches shared by episodes on the same video (RL groups, "
                "several questions per video); 0 turns it off"})
    token_pruning: TokenPruningConfig | None = field(default=None, metadata={
        "help": "local transformers orchestrators: drop Stage-1 video tokens that repeat the previous "
                "temporal group, e.g. TokenPruningConfig(keep_ratio=0.5); positions are kept"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if isinstance(self.token_pruning, dict):  # from a YAML / JSON overlay
            self.token_pruning = TokenPruningConfig(**self.token_pruning)
        if self.frame_mode not in ("exact", "skim"):
            raise ValueError(f"frame_mode={self.frame_mode!r}: use 'exact' or 'skim'")
        if self.tool_workers < 1 or self.frame_cache_mb < 0:
            raise ValueError(f"tool_workers must be >= 1 and frame_cache_mb >= 0, got {self.tool_workers}, "
                             f"{self.frame_cache_mb}")
        if self.num_frames < 1 or self.max_stage2_steps < 0:
            raise ValueError("num_frames must be >= 1 and max_stage2_steps >= 0")
        if not 0 < self.min_frame_tokens <= self.max_frame_tokens:
            raise ValueError("need 0 < min_frame_tokens <= max_frame_tokens, got "
                             f"{self.min_frame_tokens}, {self.max_frame_tokens}")


def default_tools(orchestrator: Orchestrator | None, tool_vlm: Orchestrator | None = None, *,
                  speech: SpeechBackend | None = None, web: WebConfig | None = None) -> list[Tool]:
    """extract-video-parts, plus ground-event and analyze on ``tool_vlm`` (default: the
    orchestrator itself, shared, as a first run on one GPU needs; neither: no VLM tools);
    transcribe-speech when a speech backend is given, web search and the page reader when a web
    configuration is."""
    tools = [Tool(extract_parts_from_timestamp)]
    if (model := tool_vlm or orchestrator) is not None:
        vlm = VLMTools(model)
        tools += [Tool(vlm.identify_timestamps_visually), Tool(vlm.perform_reasoning)]
    if speech is not None:
        tools.append(Tool(SpeechTools(speech).verbal_transcript))
    if web is not None:
        web_tools = WebTools(web)
        tools += [Tool(web_tools.unified_web_search), Tool(web_tools.parse_web_data)]
    return tools


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs ``coroutine`` to completion from synchronous code, also when the caller is itself
    inside a running event loop (Jupyter, an async server): then on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _notify(on_turn: Callable[[Turn], None] | None, turn: Turn) -> None:
    if on_turn is not None:
        on_turn(turn)


class Agent:
    """``Agent(orchestrator).run("video.mp4", "What happens after the goal?") -> Trajectory``."""

    def __init__(self, orchestrator: Orchestrator, tools: list[Tool] | None = None,
                 config: AgentConfig | None = None) -> None:
        self.orchestrator = orchestrator
        self.config = config or AgentConfig()
        cache = (ToolResultCache(self.config.tool_cache_dir, max_age_s=self.config.tool_cache_max_age_s)
                 if self.config.tool_cache_dir else None)
        self.registry = ToolRegistry(tools if tools is not None else default_tools(orchestrator), cache=cache,
                                     max_workers=self.config.tool_workers)
        self.prompts = PromptSet.load(self.config.prompts_dir)
        self.frame_cache = FrameBatchCache(self.config.frame_cache_mb << 20)
        # 128-192 tokens per frame (128*28*28 to 192*28*28 pixels for Qwen2.5-VL's 14-px patches);
        # frame sides follow the orchestrator's patch size (16 px for Qwen3-VL).
        spec = getattr(orchestrator, "spec", None)
        self.resize = QwenResizeConfig.from_token_budget(self.config.min_frame_tokens, self.config.max_frame_tokens,
                                                         patch_size=getattr(spec, "patch_size", 14))

    @classmethod
    def from_pretrained(cls, model: str | Path, *, device: str = "cpu", tools: list[Tool] | None = None,
                        config: AgentConfig | None = None) -> Agent:
        """``Agent.from_pretrained("allenai/SAGE-MM-Qwen3-VL-8B-SFT_RL", device="cuda")`` or a local
        folder: the model is the orchestrator and, shared, the tool VLM for grounding and analysis."""
        from sage_fast.models.transformers_backend import TransformersVLM

        config = config or AgentConfig()
        return cls(TransformersVLM(model, device=device, token_pruning=config.token_pruning), tools=tools,
                   config=config)

    async def _generate(self, messages: list[dict[str, Any]], frames: Any) -> Any:
        """The orchestrator call, off the event loop (``agenerate`` when the backend has one)."""
        agenerate = getattr(self.orchestrator, "agenerate", None)
        if agenerate is not None:
            return await agenerate(messages, frames, self.config.sampling)
        return await asyncio.to_thread(self.orchestrator.generate, messages, frames, self.config.sampling)

    async def _turn(self, stage: str, step: int, messages: list[dict[str, Any]], frames: Any,
                    visual_tokens_estimate: int = 0) -> tuple[Turn, ParsedOutput]:
        generation = await self._generate(messages, frames)
        parsed = parse_output(generation.text, stage)  # type: ignore[arg-type]
        turn = Turn(stage=stage, step=step, messages=messages, raw_output=generation.text, parsed=parsed.data,  # type: ignore[arg-type]
                    repaired=parsed.repaired, keys_exact=parsed.keys_exact, parse_error=parsed.error,
                    generate_seconds=generation.seconds, tokens_in=generation.tokens_in,
                    tokens_out=generation.tokens_out,
                    visual_tokens=(generation.visual_tokens if generation.visual_tokens is not None
                                   else visual_tokens_estimate))
        return turn, parsed

    async def _run_tool(self, context: ToolContext, parsed: ParsedOutput, turn: Turn, trajectory: Trajectory) -> None:
        call = parsed.tool_calls[0]  # only the first requested call runs
        record = await self.registry.acall(context, call, trajectory.tool_calls)
        turn.tool_call = record
        trajectory.cost.tool_calls += 1
        trajectory.cost.tool_seconds += record.seconds
        trajectory.cost.tool_cache_hits += int(record.cached)

    def run(self, video_path: str | Path, question: str, *, metadata: dict[str, Any] | None = None,
            on_turn: Callable[[Turn], None] | None = None) -> Trajectory:
        """One episode, blocking. Works inside a running event loop too (Jupyter): the episode
        then runs on its own loop in a helper thread. ``on_turn`` sees each turn as soon as it
        (and its tool call) is done, for live display."""
        return run_blocking(self.arun(video_path, question, metadata=metadata, on_turn=on_turn))

    def _stage1_frames(self, context: ToolContext, size: tuple[int, int]) -> tuple[Any, bool]:
        """Stage-1 frames and whether another episode already decoded them (in a worker thread:
        fingerprinting and decoding read the file)."""
        config = self.config

        def decode() -> Any:
            return context.reader.sample_uniform(config.num_frames, config.max_fps, mode=config.frame_mode, size=size)

        if self.frame_cache.max_bytes == 0:
            return decode(), False
        key = (content_fingerprint(context.video_path), config.num_frames, config.max_fps, config.frame_mode,
               size, config.video_backend)
        return self.frame_cache.get_or_decode(key, decode)

    async def arun(self, video_path: str | Path, question: str, *, metadata: dict[str, Any] | None = None,
                   on_turn: Callable[[Turn], None] | None = None) -> Trajectory:
        """One episode as a coroutine: decoding, model calls and tools run in worker threads, so
        an asyncio driver keeps other episodes generating while this one waits on a tool."""
        started = time.perf_counter()
        work = Path(self.config.work_dir) if self.config.work_dir else Path(tempfile.mkdtemp(prefix="sage_episode_"))
        context = ToolContext(video_path=Path(video_path), work_dir=work, backend=self.config.video_backend)
        meta = (await asyncio.to_thread(lambda: context.reader)).metadata
        trajectory = Trajectory(video_path=str(context.video_path), question=question,
                                duration_seconds=meta.end_seconds, turn_cap=self.config.max_stage2_steps,
                                metadata=dict(metadata or {}))
        cost = trajectory.cost
        size = self.resize.output_size(meta.height, meta.width)
        decode_started = time.perf_counter()
        frames, reused = await asyncio.to_thread(self._stage1_frames, context, size)
        cost.decode_seconds = time.perf_counter() - decode_started
        schemas = self.registry.schemas
        messages = stage1_messages(self.prompts, question=question, video_path=str(context.video_path),
                                   duration=meta.end_seconds, frame_times=frames.pts_seconds.tolist(),
                                   schemas=schemas)
        # the backend's own count when it has one (it knows about pruning), else the budget's:
        # frames sharing a temporal patch (Qwen-VL video input) cost one grid per group
        group = int(getattr(self.orchestrator, "frames_per_visual_group", 1))
        estimate = -(-len(frames) // group) * visual_tokens_per_frame(size[0], size[1], self.resize)
        turn, parsed = await self._turn("stage1", 0, messages, frames, estimate)
        turn.frames = len(frames)
        cost.frames_decoded += 0 if reused else len(frames)
        cost.visual_tokens += turn.visual_tokens
        trajectory.turns.append(turn)
        if parsed.data is not None and parsed.final_answer is not None and not parsed.tool_needed:
            trajectory.answer, trajectory.answer_stage = parsed.final_answer, "stage1"
            _notify(on_turn, turn)
            return self._finish(trajectory, started)
        if parsed.tool_calls:
            await self._run_tool(context, parsed, turn, trajectory)
        _notify(on_turn, turn)
        video_context = str(parsed.data.get("video_context") or "") if parsed.data else ""
        results: list[tuple[str, str]] = [(r.name, r.result) for r in trajectory.tool_calls]
        previous = self._call_dict(turn.tool_call)
        for step in range(1, self.config.max_stage2_steps + 1):
            messages = stage2_messages(self.prompts, question=question, video_path=str(context.video_path),
                                       duration=meta.end_seconds, video_context=video_context,
                                       previous_call=previous, tool_results=results, schemas=schemas)
            turn, parsed = await self._turn("stage2", step, messages, None)
            trajectory.turns.append(turn)
            if parsed.verdict and parsed.final_answer is not None:
                trajectory.answer, trajectory.answer_stage = parsed.final_answer, "stage2"
                _notify(on_turn, turn)
                return self._finish(trajectory, started)
            if parsed.tool_calls:
                await self._run_tool(context, parsed, turn, trajectory)
                results.append((turn.tool_call.name, turn.tool_call.result))
                previous = self._call_dict(turn.tool_call)
            else:
                results.append(("note", NO_TOOL_NOTE))
            _notify(on_turn, turn)
        trajectory.answer, trajectory.could_not_produce = COULD_NOT_PRODUCE, True
        return self._finish(trajectory, started)

    def run_many(self, items: list[tuple[str | Path, str]] | list[dict[str, Any]], *, concurrency: int = 4,
                 progress: bool = True) -> list[Trajectory]:
        """Runs episodes concurrently; results keep the input order. Items are (video, question)
        pairs or dicts with ``video``, ``question`` and optional ``metadata``. An episode that
        raises is returned with ``error`` set, and the others go on."""
        return run_blocking(self.arun_many(items, concurrency=concurrency, progress=progress))

    async def arun_many(self, items: list[tuple[str | Path, str]] | list[dict[str, Any]], *, concurrency: int = 4,
                        progress: bool = True) -> list[Trajectory]:
        """:meth:`run_many` as a coroutine: at most ``concurrency`` episodes in flight on one loop."""
        from tqdm.auto import tqdm

        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        normalized = [item if isinstance(item, dict) else {"video": item[0], "question": item[1]} for item in items]
        gate = asyncio.Semaphore(concurrency)

        with tqdm(total=len(normalized), unit="episode", disable=not progress or None) as bar:
            async def one(item: dict[str, Any]) -> Trajectory:
                async with gate:
                    try:
                        return await self.arun(item["video"], item["question"], metadata=item.get("metadata"))
                    except Exception as exc:  # one bad video must not sink the batch
                        return Trajectory(video_path=str(item["video"]), question=item["question"],
                                          error=f"{type(exc).__name__}: {exc}",
                                          metadata=dict(item.get("metadata") or {}))
                    finally:
                        bar.update(1)

            return list(await asyncio.gather(*(one(item) for item in normalized)))

    @staticmethod
    def _call_dict(record: ToolCallRecord | None) -> dict[str, Any] | None:
        return None if record is None else {"name": record.name, "arguments": record.arguments}

    @staticmethod
    def _finish(trajectory: Trajectory, started: float) -> Trajectory:
        cost = trajectory.cost
        cost.model_calls = len(trajectory.turns)
        cost.tokens_in = sum(t.tokens_in for t in trajectory.turns)
        cost.tokens_out = sum(t.tokens_out for t in trajectory.turns)
        cost.seconds = time.perf_counter() - started
        return trajectory
