"""Turns an orchestrator's raw text into its JSON decision, never crashing, and says how clean it was.

SAGE-MM answers with one JSON object between ``<json>`` and ``</json>`` (DESIGN.md §2). Real
outputs are messier: fenced blocks, prose around the object, a missing brace, trailing commas.
We take the best candidate, repair it when needed, and record two facts the RL rewards use:
``repaired`` (JSON needed repair: -0.05) and ``keys_exact`` (the stage's keys exactly: +0.05,
else -0.1). Tool calls are read from ``recommended_tools.tool_calls`` in the same pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["stage1", "stage2"]

STAGE1_KEYS = frozenset({"video_context", "query_intent", "final_answer", "recommended_tools"})
STAGE2_KEYS = frozenset({"answerable", "final_answer", "recommended_tools"})
RECOMMENDED_TOOLS_KEYS = frozenset({"needed", "why_no_tool", "tool_calls"})
TOOL_CALL_KEYS = frozenset({"rationale", "name", "arguments"})
ANSWERABLE_KEYS = frozenset({"verdict", "reasoning"})

_TAGGED = re.compile(r"<json>\s*(.*?)\s*(?:</json>|$)", re.DOTALL | re.IGNORECASE)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*(?:```|$)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ToolCall:
    """One requested call, as the model wrote it (arguments are validated later, by the tool)."""

    name: str
    arguments: dict[str, Any]
    rationale: str = ""


@dataclass(frozen=True)
class ParsedOutput:
    """What one model turn decided, plus how well-formed it was.

    ``data`` is None when nothing JSON-like could be recovered (``error`` says why); the loop
    then treats the turn as malformed instead of raising.
    """

    stage: Stage
    data: dict[str, Any] | None
    json_text: str | None
    repaired: bool
    keys_exact: bool
    error: str | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=())

    @property
    def final_answer(self) -> str | None:
        """The answer as text, or None when the model gave none (null, empty, or not a value)."""
        if self.data is None:
            return None
        answer = self.data.get("final_answer")
        if answer is None or isinstance(answer, (dict, list)):
            return None
        text = str(answer).strip()
        return text or None

    @property
    def tool_needed(self) -> bool:
        tools = self.data.get("recommended_tools") if self.data else None
        return bool(isinstance(tools, dict) and _truthy(tools.get("needed"))) or bool(self.tool_calls)

    @property
    def verdict(self) -> bool:
        """Stage-2's ``answerable.verdict`` (False when absent or malformed)."""
        answerable = self.data.get("answerable") if self.data else None
        return isinstance(answerable, dict) and _truthy(answerable.get("verdict"))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1"}
    return bool(value)


def _candidates(text: str) -> list[str]:
    """Where the JSON may be, best first: <json> tags, fenced blocks, the outermost braces."""
    found = [m.group(1) for m in _TAGGED.finditer(text)]
    found += [m.group(1) for m in _FENCED.finditer(text)]
    start = text.find("{")
    if start >= 0:
        end = text.rfind("}")
        found.append(text[start:end + 1] if end > start else text[start:])
    return [c for c in found if c.strip()]


def _load(candidate: str) -> tuple[dict[str, Any] | None, bool]:
    """(object, repaired): strict JSON first, json-repair second."""
    try:
        value = json.loads(candidate)
        if isinstance(value, dict):
            return value, False
    except (json.JSONDecodeError, RecursionError):
        pass
    from json_repair import repair_json

    try:
        value = repair_json(candidate, return_objects=True)
    except Exception:  # the repairer is best-effort; a failure means "no JSON here"
        return None, True
    if isinstance(value, list):  # "[{...}]": take the object the model meant
        value = next((v for v in value if isinstance(v, dict)), None)
    return (value if isinstance(value, dict) and value else None), True


def _first_object(text: str) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(object, the text it came from, whether repair was needed) for the best candidate."""
    repaired_any = False
    for candidate in _candidates(text or ""):
        data, repaired = _load(candidate)
        repaired_any = repaired_any or repaired
        if data is not None:
            return data, candidate, repaired
    return None, None, repaired_any


def extract_json(text: str) -> tuple[dict[str, Any] | None, bool]:
    """(the first JSON object in ``text``, whether it needed repair); (None, ...) when none."""
    data, _, repaired = _first_object(text)
    return data, repaired


def keys_exact(data: dict[str, Any], stage: Stage) -> bool:
    """True when every level has exactly the keys the stage's format defines."""
    expected = STAGE1_KEYS if stage == "stage1" else STAGE2_KEYS
    if set(data) != expected:
        return False
    tools = data.get("recommended_tools")
    if not isinstance(tools, dict) or set(tools) != RECOMMENDED_TOOLS_KEYS:
        return False
    calls = tools.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(
            isinstance(c, dict) and set(c) == TOOL_CALL_KEYS for c in calls)):
        return False
    if stage == "stage2":
        answerable = data.get("answerable")
        return isinstance(answerable, dict) and set(answerable) == ANSWERABLE_KEYS
    return True


def _tool_calls(data: dict[str, Any]) -> tuple[ToolCall, ...]:
    tools = data.get("recommended_tools")
    calls = tools.get("tool_calls") if isinstance(tools, dict) else None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        return ()
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
            continue
        arguments = call.get("arguments")
        if isinstance(arguments, str):  # some models JSON-encode the arguments object
            arguments, _ = _load(arguments)
        parsed.append(ToolCall(name=call["name"].strip(), arguments=arguments if isinstance(arguments, dict) else {},
                               rationale=str(call.get("rationale") or "")))
    return tuple(parsed)


def parse_output(text: str, stage: Stage) -> ParsedOutput:
    """Parses one turn's raw text; never raises on bad model output."""
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")
    if not isinstance(text, str) or not text.strip():
        return ParsedOutput(stage, None, None, repaired=False, keys_exact=False, error="empty output")
    data, candidate, repaired = _first_object(text)
    if data is not None:
        return ParsedOutput(stage, data, candidate, repaired=repaired, keys_exact=keys_exact(data, stage),
                            tool_calls=_tool_calls(data))
    return ParsedOutput(stage, None, None, repaired=repaired, keys_exact=False,
                        error="no JSON object found in the output")
