"""The tools that ask a vision-language model: ground-event (``identify_timestamps_visually``)
and analyze (``perform_reasoning``).

The tool model is any orchestrator backend (a vLLM server with Qwen3-VL-30B-A3B as in the paper,
Gemini, or the local model the agent already loaded). Grounding shows the model the window's
frames labelled in clip time (0 at the window start, as video VLMs are trained) and maps its
answer back to video time; analysis reads only media the episode extracted itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sage_fast.agent.parsing import extract_json
from sage_fast.models.base import Orchestrator, SamplingConfig
from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.video.qwen_resize import QwenResizeConfig
from sage_fast.video.timecode import format_timestamp
from sage_fast.video.types import FrameBatch

GROUND_MAX_WINDOW_S = 600.0  # ground-event: windows under 10 minutes

GROUND_SYSTEM = (
    "You locate events in videos. You see frames from a clip, each labelled with its time from the clip's "
    "start. Reply with one JSON object {\"start\": seconds, \"end\": seconds} giving when the event happens "
    "in clip time, or {\"start\": null, \"end\": null} when it does not appear.")
ANALYZE_SYSTEM = ("You answer questions about images and video clips precisely and briefly, saying what "
                  "you see that supports the answer.")


@dataclass
class VLMToolConfig:
    """How much the tool model sees per call."""

    ground_frames: int = field(default=32, metadata={"help": "frames shown for grounding"})
    ground_max_fps: float = field(default=2.0, metadata={"help": "at most this many grounding frames per second"})
    clip_frames: int = field(default=16, metadata={"help": "frames taken from an extracted clip for analysis"})
    max_frame_tokens: int = field(default=192, metadata={"help": "visual tokens per frame, upper end"})
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_tokens=512))


class VLMTools:
    """Binds the two VLM tools to one tool model; register ``tools.identify_timestamps_visually``
    and ``tools.perform_reasoning`` with the agent."""

    def __init__(self, vlm: Orchestrator, config: VLMToolConfig | None = None) -> None:
        self.vlm = vlm
        self.config = config or VLMToolConfig()
        # what the tool-result cache keys on besides the arguments: the model and how it is asked
        self.cache_identity = f"{vlm.name}|{self.config!r}"
        spec = getattr(vlm, "spec", None)
        self.resize = QwenResizeConfig.from_token_budget(min(64, self.config.max_frame_tokens),
                                                         self.config.max_frame_tokens,
                                                         patch_size=getattr(spec, "patch_size", 14))

    def _ask(self, system: str, frames: FrameBatch | None, text: str) -> str:
        content: list[dict] = [{"type": "frame", "index": i, "pts": float(t)}
                               for i, t in enumerate(frames.pts_seconds.tolist())] if frames is not None else []
        content.append({"type": "text", "text": text})
        messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        return self.vlm.generate(messages, frames, self.config.sampling).text

    def identify_timestamps_visually(self, context: ToolContext, video_path: str, event: str,
                                     timestamp_start: str, timestamp_end: str) -> str:
        """Finds when a visual event happens inside a window of the video.

        Args:
            video_path: Path of the video, exactly as given in the prompt.
            event: The event to find, described visually (who, what, where).
            timestamp_start: Start of the window to search, HH:MM:SS.
            timestamp_end: End of the window to search, HH:MM:SS; the window must be at most 10 minutes long.
        """
        context.check_video_path(video_path)
        if not event.strip():
            raise ToolInputError("event is empty; describe what to look for")
        start, end = context.window(timestamp_start, timestamp_end, max_seconds=GROUND_MAX_WINDOW_S,
                                    tool="identify_timestamps_visually")
        if end <= start:
            raise ToolInputError("the window is empty; give timestamp_end later than timestamp_start")
        reader = context.reader
        count = max(1, min(self.config.ground_frames, int((end - start) * self.config.ground_max_fps)))
        times = start + (np.arange(count) + 0.5) * ((end - start) / count)
        size = self.resize.output_size(reader.metadata.height, reader.metadata.width)
        batch = reader.frames_at(times, size=size)
        # Clip time: the model reads 0 at the window start; its answer is mapped back below.
        clip = FrameBatch(data=batch.data, pts_seconds=batch.pts_seconds - start,
                          duration_seconds=batch.duration_seconds, indices=batch.indices)
        answer = self._ask(GROUND_SYSTEM, clip, f"Event: {event.strip()}")
        data, _ = extract_json(answer)
        span = f"{format_timestamp(start)} and {format_timestamp(end)}"
        try:
            found_start, found_end = float(data["start"]), float(data["end"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return f"The event '{event.strip()}' was not found between {span}."
        found_start, found_end = sorted((found_start, found_end))
        found_start = min(max(start + found_start, start), end)
        found_end = min(max(start + found_end, found_start), end)
        return (f"The event '{event.strip()}' happens from {format_timestamp(found_start)} to "
                f"{format_timestamp(found_end)} (searched between {span}).")

    def perform_reasoning(self, context: ToolContext, query: str, media_paths: list[str] | None = None) -> str:
        """Answers a question about frames or clips extracted earlier, or about text alone when no media is given.

        Args:
            query: The question, with any context the answer needs.
            media_paths: Paths returned by extract_parts_from_timestamp (JPEG frames or MP4 clips); may be empty.
        """
        if not query.strip():
            raise ToolInputError("query is empty; ask a question")
        pixels: list[torch.Tensor] = []
        times: list[float] = []
        for value in media_paths or []:
            path = context.check_media_path(value)
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                from PIL import Image

                image = np.array(Image.open(path).convert("RGB"))
                pixels.append(torch.from_numpy(image).permute(2, 0, 1)[None])
                times.append(float(len(times)))
            elif path.suffix.lower() in (".mp4", ".mkv", ".webm", ".mov"):
                from sage_fast.video import open_video

                clip = open_video(path).sample_uniform(self.config.clip_frames, max_fps=2.0)
                pixels.append(clip.data)
                times.extend(float(t) for t in clip.pts_seconds.tolist())
            else:
                raise ToolInputError(f"media path {value!r} is neither an image nor a video clip")
        frames = None
        if pixels:
            height, width = pixels[0].shape[-2:]
            size = self.resize.output_size(int(height), int(width))
            data = torch.cat([torch.nn.functional.interpolate(p.float(), size=size, mode="bilinear",
                                                              antialias=True).round().clamp(0, 255).to(torch.uint8)
                              for p in pixels])
            frames = FrameBatch(data=data, pts_seconds=torch.tensor(times, dtype=torch.float64),
                                duration_seconds=torch.zeros(len(times), dtype=torch.float64),
                                indices=torch.arange(len(times)))
        return self._ask(ANALYZE_SYSTEM, frames, query.strip())
