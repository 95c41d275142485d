"""SAGE's two prompt shapes, in our own words, loaded from text files that can be swapped.

Stage-1 sees the question, ``Video Path: <path> of duration HH:MM:SS.`` and the sampled frames;
Stage-2 is a fresh system + user pair each step, text only, with the previous call, the video
context, the question and the 10 most recent tool results keyed ``toolname_#k`` (DESIGN.md §2).
The wording lives in ``prompts/*.txt``; ``AgentConfig.prompts_dir`` points at other files (for
example the prompts a released checkpoint was trained with) without code changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_fast.video.timecode import format_timestamp

PROMPT_FILES = ("stage1_system.txt", "stage1_user.txt", "stage2_system.txt", "stage2_user.txt")
DEFAULT_PROMPTS_DIR = Path(__file__).with_name("prompts")
MAX_TOOL_RESULTS = 10  # Stage-2 sees the most recent 10 results


@dataclass(frozen=True)
class PromptSet:
    """The four templates (``str.format`` fields in braces; literal braces doubled)."""

    stage1_system: str
    stage1_user: str
    stage2_system: str
    stage2_user: str

    @classmethod
    def load(cls, folder: str | Path | None = None) -> PromptSet:
        folder = Path(folder) if folder is not None else DEFAULT_PROMPTS_DIR
        missing = [name for name in PROMPT_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"prompts folder {folder} lacks {', '.join(missing)}; it needs all of "
                                    f"{', '.join(PROMPT_FILES)} (copy {DEFAULT_PROMPTS_DIR} and edit)")
        texts = {name[:-4]: (folder / name).read_text(encoding="utf-8").strip() for name in PROMPT_FILES}
        return cls(**texts)


def tools_block(schemas: list[dict[str, Any]]) -> str:
    """One OpenAI-style function JSON per line, as SAGE-MM was trained to read them."""
    return "\n".join(json.dumps(schema, ensure_ascii=False) for schema in schemas)


def stage1_messages(prompts: PromptSet, *, question: str, video_path: str, duration: float,
                    frame_times: list[float], schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System + user messages; the user content lists one ``frame`` part per sampled frame (by
    time: backends attach the pixels) before the text."""
    note = f"{len(frame_times)} frames sampled uniformly from the whole video, in order."
    text = prompts.stage1_user.format(frames_note=note, video_path=video_path,
                                      duration=format_timestamp(duration), question=question)
    content: list[dict[str, Any]] = [{"type": "frame", "index": i, "pts": round(float(t), 3)}
                                     for i, t in enumerate(frame_times)]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": prompts.stage1_system.format(tools=tools_block(schemas))},
            {"role": "user", "content": content}]


def stage2_messages(prompts: PromptSet, *, question: str, video_path: str, duration: float,
                    video_context: str, previous_call: dict[str, Any] | None,
                    tool_results: list[tuple[str, str]], schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fresh two-message prompt; ``tool_results`` are (tool name, result) in call order."""
    numbered: list[str] = []
    counts: dict[str, int] = {}
    keyed = []
    for name, result in tool_results:
        counts[name] = counts.get(name, 0) + 1
        keyed.append((f"{name}_#{counts[name]}", result))
    for key, result in keyed[-MAX_TOOL_RESULTS:]:
        numbered.append(f"{key}: {result}")
    text = prompts.stage2_user.format(
        video_path=video_path, duration=format_timestamp(duration), question=question,
        video_context=video_context or "(none)",
        previous_call=json.dumps(previous_call, ensure_ascii=False) if previous_call else "(none)",
        tool_results="\n".join(numbered) if numbered else "(none yet)",
    )
    return [{"role": "system", "content": prompts.stage2_system.format(tools=tools_block(schemas))},
            {"role": "user", "content": text}]
