"""The project's one LLM judge: does an answer mean the ground truth, is a tool call a sensible next step.

SAGE scores answers with an OpenAI-compatible chat model at temperature 0 that replies
``Reasoning: ...`` then ``Verdict: True|False`` (DESIGN.md §2); evaluation, the RL accuracy reward
and the RL tool-step reward all ask it, so they all go through :class:`Judge`. Verdicts are cached
on disk (a long evaluation or an RL run asks the same question many times, and a resumed run must
not pay twice), transient server failures are retried with :mod:`sage_fast.tools.retry`, and a
failure that retrying cannot fix (a wrong key, a wrong model name) stops with a message that names
the endpoint and the fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_fast.tools.retry import (
    RetryPolicy,
    acall_with_retries,
    call_with_retries,
    http_status,
    is_transient,
)

ANSWER_SYSTEM = ("You grade answers to questions about videos. You compare a model's prediction with the "
                 "ground truth and decide whether both say the same thing.")
TOOL_SYSTEM = ("You review the tool calls of an agent that answers questions about a video with tools "
               "(finding when an event happens, extracting frames or clips, analysing them, transcribing "
               "speech, searching the web).")
FORMAT = "Reply in exactly this form:\nReasoning: <why>\nVerdict: <True or False>"
NO_PREDICTION = "No prediction was given, so it cannot match the ground truth."
UNPARSEABLE = "Unparseable judge reply (no 'Verdict: True' or 'Verdict: False' line): counted as incorrect."

# "Verdict: True", "**Verdict:** false.", "VERDICT = **TRUE**", "Verdict: <True>"; not the template's "True/False".
_VERDICT = re.compile(r"verdict[\s*_`]*[:=][\s*_`\"'<\[(]*(true|false)\b(?!\s*/)", re.IGNORECASE)
_REASONING = re.compile(r"reasoning[\s*_`]*:[\s*_`]*", re.IGNORECASE)


@dataclass
class JudgeConfig:
    """Where the judge runs and how it is asked; the defaults are the paper's (temperature 0)."""

    base_url: str = field(metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 or "
                                            "https://api.openai.com/v1"})
    model: str = field(default="gpt-4o-mini", metadata={"help": "judge model name on that endpoint"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the key; unset: a dummy key (local vLLM servers ignore it)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature of the judge"})
    max_tokens: int = field(default=512, metadata={"help": "longest judge reply, reasoning included"})
    timeout_s: float = field(default=60.0, metadata={"help": "seconds one request may take"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "folder of the on-disk verdict cache, shared across runs (None: off)"})
    concurrency: int = field(default=16, metadata={"help": "judge requests in flight at once (async path)"})
    retry: RetryPolicy = field(default_factory=RetryPolicy, metadata={
        "help": "retries of transient failures (5xx, 429, dropped connections)"})

    def __post_init__(self) -> None:
        if isinstance(self.retry, dict):  # from a YAML / JSON overlay
            self.retry = RetryPolicy(**self.retry)
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url {self.base_url!r}: give the server's URL, e.g. http://localhost:8000/v1")
        if not self.model:
            raise ValueError("judge model: name the model the endpoint serves, e.g. gpt-4o-mini")
        if self.temperature < 0 or self.max_tokens < 1 or self.timeout_s <= 0 or self.concurrency < 1:
            raise ValueError(f"judge settings: need temperature >= 0, max_tokens >= 1, timeout_s > 0 and "
                             f"concurrency >= 1, got {self.temperature}, {self.max_tokens}, {self.timeout_s}, "
                             f"{self.concurrency}")


@dataclass(frozen=True)
class Verdict:
    """The judge's decision, its stated reasoning, its whole reply, and whether it came from the cache."""

    correct: bool
    reasoning: str
    raw: str
    cached: bool = False


def parse_verdict(reply: str) -> Verdict | None:
    """The verdict in ``reply`` (the last ``Verdict:`` line wins), or None when there is none.

    Judges decorate the format (markdown bold, capitals, a trailing full stop) and sometimes reason
    about a verdict before giving theirs, hence the last match and the loose pattern."""
    matches = list(_VERDICT.finditer(reply))
    if not matches:
        return None
    last = matches[-1]
    before = reply[:last.start()]
    reasoning_at = list(_REASONING.finditer(before))
    reasoning = before[reasoning_at[-1].end():] if reasoning_at else before
    return Verdict(correct=last.group(1).lower() == "true", reasoning=reasoning.strip(" \n*_#`"), raw=reply)


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def ground_truth_text(ground_truth: str, options: list[str] | None) -> str:
    """The ground truth as the judge should read it: for a multiple-choice question both the
    letter and the option's text, whichever of the two the dataset gave."""
    truth = str(ground_truth).strip()
    if not options:
        return truth
    letter = truth.strip("() .").upper()
    if len(letter) == 1 and 0 <= ord(letter) - ord("A") < len(options):
        index = ord(letter) - ord("A")
        return f"({letter}) {options[index]}"
    for index, option in enumerate(options):
        if option.strip().lower() == truth.lower():
            return f"({_letter(index)}) {option}"
    return truth


def answer_prompt(question: str, ground_truth: str, prediction: str, options: list[str] | None = None) -> str:
    """The user message asking whether ``prediction`` means ``ground_truth``."""
    lines = [f"Question: {question}"]
    if options:
        lines.append("Options:\n" + "\n".join(f"({_letter(i)}) {o}" for i, o in enumerate(options)))
        rule = ("This is a multiple-choice question: the prediction is correct when it picks the same option as "
                "the ground truth, whether it names the letter, the option's text, or both.")
    else:
        rule = ("The prediction is correct when it conveys the same meaning as the ground truth; different "
                "wording or extra detail that does not contradict it is fine, a different or vaguer claim is not.")
    lines += [f"Ground truth: {ground_truth_text(ground_truth, options)}", f"Prediction: {prediction}", "", rule,
              FORMAT]
    return "\n".join(lines)


def _call_text(call: dict[str, Any], with_result: bool) -> str:
    arguments = json.dumps(call.get("arguments") or {}, ensure_ascii=False, sort_keys=True, default=str)
    text = f"{call.get('name', '?')}({arguments})"
    if with_result and call.get("result") is not None:
        text += f"\n   result: {call['result']}"
    return text


def tool_step_prompt(question: str, history: list[dict[str, Any]], call: dict[str, Any]) -> str:
    """The user message asking whether ``call`` is a reasonable next step after ``history``."""
    steps = "\n".join(f"{k}. {_call_text(c, True)}" for k, c in enumerate(history, start=1)) or "(no tool calls yet)"
    return "\n".join([
        f"Question about the video: {question}", "", "Tool calls so far, with their results:", steps, "",
        f"Current call: {_call_text(call, False)}", "",
        "Is the current call a reasonable next step towards answering the question, given what the earlier "
        "calls returned? Repeating a call with the same arguments, or a call that cannot help with this "
        "question, is not reasonable.", FORMAT])


class _Cache:
    """Verdicts on disk, one JSON file per key, written atomically; unreadable entries are misses."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Verdict | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
            return Verdict(correct=bool(entry["correct"]), reasoning=str(entry["reasoning"]), raw=str(entry["raw"]),
                           cached=True)
        except (OSError, ValueError, KeyError, TypeError):  # missing or corrupted: ask again
            return None

    def put(self, key: str, verdict: Verdict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"correct": verdict.correct, "reasoning": verdict.reasoning, "raw": verdict.raw,
                           "created": time.time()}, handle, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Judge:
    """``Judge(JudgeConfig("http://localhost:8000/v1", model="Qwen/Qwen3-8B")).judge_answer(q, gt, pred)``."""

    def __init__(self, config: JudgeConfig) -> None:
        from openai import OpenAI

        self.config = config
        self._api_key = os.environ.get(config.api_key_env) or "EMPTY"  # local servers ignore it
        # max_retries=0: our RetryPolicy decides what is retried, and how often, on both paths
        self._client = OpenAI(base_url=config.base_url, api_key=self._api_key, timeout=config.timeout_s, max_retries=0)
        self._cache = _Cache(config.cache_dir) if config.cache_dir else None
        # async clients and semaphores belong to one event loop; run_blocking may start several
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary())
        self._loops_lock = threading.Lock()

    # ---- prompts -> verdicts -------------------------------------------------------------------
    def judge_answer(self, question: str, ground_truth: str, prediction: str | None, *,
                     options: list[str] | None = None) -> Verdict:
        """Whether ``prediction`` means ``ground_truth`` (for a multiple-choice question: the same option)."""
        if prediction is None or not str(prediction).strip():
            return Verdict(correct=False, reasoning=NO_PREDICTION, raw="")
        return self._decide("answer", ANSWER_SYSTEM, answer_prompt(question, ground_truth, str(prediction), options))

    async def ajudge_answer(self, question: str, ground_truth: str, prediction: str | None, *,
                            options: list[str] | None = None) -> Verdict:
        """:meth:`judge_answer` as a coroutine, at most ``concurrency`` requests in flight per event loop."""
        if prediction is None or not str(prediction).strip():
            return Verdict(correct=False, reasoning=NO_PREDICTION, raw="")
        return await self._adecide("answer", ANSWER_SYSTEM,
                                   answer_prompt(question, ground_truth, str(prediction), options))

    def judge_tool_step(self, question: str, history: list[dict[str, Any]], call: dict[str, Any]) -> Verdict:
        """Whether ``call`` ({"name", "arguments"}) is a reasonable next step after ``history``
        ({"name", "arguments", "result"} each) for ``question`` (RL's tool-step reward)."""
        return self._decide("tool_step", TOOL_SYSTEM, tool_step_prompt(question, history, call))

    async def ajudge_tool_step(self, question: str, history: list[dict[str, Any]], call: dict[str, Any]) -> Verdict:
        """:meth:`judge_tool_step` as a coroutine."""
        return await self._adecide("tool_step", TOOL_SYSTEM, tool_step_prompt(question, history, call))

    # ---- cache and parsing -----------------------------------------------------------------------
    def _cache_key(self, kind: str, system: str, prompt: str) -> str:
        text = json.dumps([kind, self.config.model, system, prompt], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def _verdict(self, key: str, reply: str) -> Verdict:
        verdict = parse_verdict(reply)
        if verdict is None:  # not cached: a later run (more max_tokens, another model) may do better
            return Verdict(correct=False, reasoning=UNPARSEABLE, raw=reply)
        if self._cache is not None:
            self._cache.put(key, verdict)
        return verdict

    def _decide(self, kind: str, system: str, prompt: str) -> Verdict:
        key = self._cache_key(kind, system, prompt)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return hit
        try:
            reply = call_with_retries(lambda: self._complete(system, prompt), self.config.retry)
        except Exception as exc:
            raise self._failure(exc) from exc
        return self._verdict(key, reply)

    async def _adecide(self, kind: str, system: str, prompt: str) -> Verdict:
        key = self._cache_key(kind, system, prompt)
        if self._cache is not None and (hit := await asyncio.to_thread(self._cache.get, key)) is not None:
            return hit
        client, gate = self._loop_state()
        async with gate:
            try:
                reply = await acall_with_retries(lambda: self._acomplete(client, system, prompt), self.config.retry)
            except Exception as exc:
                raise self._failure(exc) from exc
        return await asyncio.to_thread(self._verdict, key, reply)

    # ---- the wire ------------------------------------------------------------------------------
    def _request(self, system: str, prompt: str) -> dict[str, Any]:
        return dict(model=self.config.model, temperature=self.config.temperature, max_tokens=self.config.max_tokens,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}])

    def _complete(self, system: str, prompt: str) -> str:
        response = self._client.chat.completions.create(**self._request(system, prompt))
        return response.choices[0].message.content or ""

    async def _acomplete(self, client: Any, system: str, prompt: str) -> str:
        response = await client.chat.completions.create(**self._request(system, prompt))
        return response.choices[0].message.content or ""

    def _loop_state(self) -> tuple[Any, asyncio.Semaphore]:
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        with self._loops_lock:
            if loop not in self._loops:
                client = AsyncOpenAI(base_url=self.config.base_url, api_key=self._api_key, timeout=self.config.timeout_s,
                                     max_retries=0)
                self._loops[loop] = (client, asyncio.Semaphore(self.config.concurrency))
            return self._loops[loop]

    def _failure(self, exc: BaseException) -> RuntimeError:
        """A RuntimeError that says which endpoint failed, how, and what to do about it."""
        where = f"judge {self.config.model!r} at {self.config.base_url}"
        status = http_status(exc)
        if is_transient(exc):
            fix = (f"still failing after {self.config.retry.attempts} tries; check that the server is up and "
                   "reachable, or raise the retry attempts / timeout")
        elif status == 401 or status == 403:
            fix = f"the key was refused: put a valid key in ${self.config.api_key_env}"
        elif status == 404:
            fix = ("not found: check the URL (OpenAI-compatible servers end in /v1) and that the server serves "
                   f"a model named {self.config.model!r} (--judge-model)")
        elif status is not None:
            fix = "the request was refused: check the judge model name and max_tokens against the server's limits"
        else:
            fix = "check the judge URL and model"
        return RuntimeError(f"{where}: {type(exc).__name__}"
                            + (f" (HTTP {status})" if status is not None else "") + f": {exc}; {fix}")
