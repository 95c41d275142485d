"""One trajectory as a self-contained HTML page: frames on a timeline, every turn and tool call.

Reading raw JSON is how agent bugs hide; the page shows what the model saw (the Stage-1 frames,
placed at their times), what it said, which windows its tools looked at (marked on the same
timeline) and what came back. Everything is inline (thumbnails as data URLs, no scripts loaded
from anywhere), and every model-written string is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from sage_fast.agent.trajectory import Trajectory
from sage_fast.video.timecode import format_timestamp, parse_timestamp

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f;max-width:1200px}
h1{font-size:20px}.meta{color:#555}.timeline{position:relative;height:92px;background:#f2f2f4;
border-radius:6px;margin:18px 0 28px}.thumb{position:absolute;top:6px;height:54px;border:1px solid #fff;
transform:translateX(-50%)}.window{position:absolute;top:64px;height:10px;background:#e0662b;opacity:.75;
border-radius:3px}.tick{position:absolute;top:78px;font-size:11px;color:#666;transform:translateX(-50%)}
.turn{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}.stage1{border-left:5px solid #2b6de0}
.stage2{border-left:5px solid #2bb673}pre{white-space:pre-wrap;background:#fafafa;padding:8px;border-radius:4px;
font-size:12px}.tool{background:#fff6ef;padding:6px 10px;border-radius:4px}.bad{color:#b00020}
summary{cursor:pointer;color:#2b6de0}
"""


def _thumbnails(trajectory: Trajectory, times: list[float], height: int) -> list[str]:
    """JPEG data URLs of the frames shown at ``times`` (decoded again, small)."""
    from PIL import Image

    from sage_fast.video import open_video

    reader = open_video(trajectory.video_path)
    meta = reader.metadata
    width = max(2, round(meta.width * height / max(meta.height, 1)))
    batch = reader.frames_at(times, size=(height, width))
    urls = []
    for pixels in batch.data.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls


def _frame_times(trajectory: Trajectory) -> list[float]:
    if not trajectory.turns:
        return []
    content = trajectory.turns[0].messages[-1].get("content") if trajectory.turns[0].messages else None
    if not isinstance(content, list):
        return []
    return [float(p["pts"]) for p in content if isinstance(p, dict) and p.get("type") == "frame"]


def _window(arguments: dict[str, Any]) -> tuple[float, float] | None:
    try:
        return parse_timestamp(arguments["timestamp_start"]), parse_timestamp(arguments["timestamp_end"])
    except (KeyError, ValueError):
        return None


def render_html(trajectory: Trajectory, *, thumbnails: bool = True, max_thumbnails: int = 64) -> str:
    """The page as a string. ``thumbnails=False`` skips decoding (when the video is gone)."""
    esc = html.escape
    duration = max(trajectory.duration_seconds, 1e-6)
    times = _frame_times(trajectory)
    step = max(1, len(times) // max_thumbnails)
    shown = times[::step]
    urls: list[str] = []
    if thumbnails and shown and Path(trajectory.video_path).is_file():
        urls = _thumbnails(trajectory, shown, 54)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>SAGE trajectory</title><style>{_STYLE}</style>"
             "</head><body>", f"<h1>{esc(trajectory.question)}</h1>"]
    answer = trajectory.answer if trajectory.answer is not None else "(no answer)"
    cost = trajectory.cost
    parts.append(f"<p><b>Answer:</b> {esc(answer)} <span class='meta'>(from {esc(str(trajectory.answer_stage))})</span>"
                 f"</p><p class='meta'>{esc(trajectory.video_path)} · {format_timestamp(trajectory.duration_seconds)} · "
                 f"{cost.model_calls} model calls · {cost.tool_calls} tool calls ({cost.tool_seconds:.1f} s) · "
                 f"{cost.frames_decoded} frames · {cost.seconds:.1f} s</p>")
    parts.append("<div class='timeline'>")
    for t, url in zip(shown, urls, strict=False):
        parts.append(f"<img class='thumb' src='{url}' style='left:{100 * t / duration:.3f}%' title='{format_timestamp(t, millis=True)}'>")
    for record in trajectory.tool_calls:
        window = _window(record.validated_arguments or record.arguments)
        if window is not None:
            left, right = (100 * min(max(w, 0), duration) / duration for w in window)
            parts.append(f"<div class='window' style='left:{left:.3f}%;width:{max(right - left, 0.3):.3f}%' "
                         f"title='{esc(record.name)} {format_timestamp(window[0])}-{format_timestamp(window[1])}'></div>")
    for k in range(5):
        t = duration * k / 4
        parts.append(f"<span class='tick' style='left:{25 * k}%'>{format_timestamp(t)}</span>")
    parts.append("</div>")
    for turn in trajectory.turns:
        title = "Stage-1" if turn.stage == "stage1" else f"Stage-2 step {turn.step}"
        flags = [] if turn.keys_exact else ["keys not exact"]
        if turn.repaired:
            flags.append("JSON repaired")
        if turn.parse_error:
            flags.append(turn.parse_error)
        flag_text = f" <span class='bad'>{esc('; '.join(flags))}</span>" if flags else ""
        parts.append(f"<div class='turn {turn.stage}'><b>{title}</b> <span class='meta'>{turn.generate_seconds:.1f} s · "
                     f"{turn.tokens_in} in / {turn.tokens_out} out</span>{flag_text}")
        if turn.parsed is not None:
            parts.append(f"<pre>{esc(json.dumps(turn.parsed, indent=2, ensure_ascii=False))}</pre>")
        parts.append(f"<details><summary>raw output</summary><pre>{esc(turn.raw_output)}</pre></details>")
        if turn.tool_call is not None:
            call = turn.tool_call
            state = "" if call.valid and not call.error else " <span class='bad'>error</span>"
            repeat = f" <span class='bad'>repeat #{call.repeat}</span>" if call.repeat else ""
            parts.append(f"<div class='tool'><b>{esc(call.name)}</b>{state}{repeat} <span class='meta'>{call.seconds:.1f} s</span>"
                         f"<pre>{esc(json.dumps(call.arguments, ensure_ascii=False))}</pre><pre>{esc(call.result)}</pre></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_html(trajectory: Trajectory, path: str | Path, **options: Any) -> Path:
    """Writes the page atomically and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(render_html(trajectory, **options), encoding="utf-8")
    os.replace(partial, path)
    return path
