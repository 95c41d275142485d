"""Question synthesis: Gemini watches each whole video and writes its 10-20 questions, checked and resumable.

The paper's training questions come from Gemini-2.5-Flash watching a whole video (DESIGN.md §2).
Here each video goes to the real google-genai client, inline when it is small (one request) or
through the Files API when it is not (upload, wait until the file is ACTIVE, refer to it by URI;
inline requests are capped near 20 MB). The reply is structured JSON (``response_mime_type`` +
``response_schema``), yet still untrusted: :mod:`sage_fast.data.questions` checks every field, and
when the set breaks the paper's rules (too few questions, fewer than 4 visual ones, none reaching
90 % of the video) the model is shown its own reply and the list of problems and asked again, up
to ``max_retries`` times. A video that never satisfies the rules keeps the valid questions of its
best reply and is marked ``rules_unmet`` in the status file, so the shortfall is visible, not lost.

Output: the questions JSONL (one :class:`SynthQuestion` record per line, loadable with
``sage_fast.eval.datasets.load_items``) and a status JSONL beside it (one line per finished video).
A video's questions are appended in one fsynced write and only then is its status line written;
a rerun skips videos with a final status and first removes the questions of a video whose status
never made it to disk (a crash in between), so every video appears exactly once. Failures that
retrying cannot fix (a refused key, an unknown model, an exhausted quota) stop the run with a
message naming the fix; other per-video failures are recorded and retried by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_fast.data.questions import (
    DIFFICULTIES,
    MODALITIES,
    QuestionRules,
    QuestionSpec,
    SynthQuestion,
    select_questions,
    set_problems,
    validate_questions,
)
from sage_fast.jsonl import append_lines, ends_with_newline, read_lines, write_lines
from sage_fast.video.timecode import format_timestamp

# Video types the Gemini API takes, by file extension.
VIDEO_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mov", ".avi": "video/avi",
              ".flv": "video/x-flv", ".mpeg": "video/mpeg", ".mpg": "video/mpg", ".webm": "video/webm",
              ".wmv": "video/wmv", ".3gp": "video/3gpp"}
RESOLUTIONS = {"low": "MEDIA_RESOLUTION_LOW", "medium": "MEDIA_RESOLUTION_MEDIUM", "high": "MEDIA_RESOLUTION_HIGH"}
FINAL = ("ok", "rules_unmet")  # statuses that mean "done, skip on resume"
FATAL_STATUS = {401: "the API key was refused: set a valid GEMINI_API_KEY",
                403: "the API key may not use this model or file: check GEMINI_API_KEY and the project's access",
                404: "not found: check the model name (--model) and GOOGLE_GEMINI_BASE_URL",
                429: "quota exhausted: wait, or lower --concurrency; rerunning resumes"}


@dataclass
class SynthConfig:
    """How questions are asked for and where they go; the defaults are the paper's."""

    output: str = field(metadata={"help": "questions JSONL; rerunning with the same file resumes it"})
    model: str = field(default="gemini-2.5-flash", metadata={"help": "Gemini model that watches the videos"})
    min_questions: int = field(default=10, metadata={"help": "fewest valid questions per video"})
    max_questions: int = field(default=20, metadata={"help": "most questions kept per video"})
    min_visual: int = field(default=4, metadata={"help": "visual questions needed per video"})
    full_percent: float = field(default=90.0, metadata={
        "help": "one question per video must need at least this percent of the video"})
    max_retries: int = field(default=2, metadata={
        "help": "times a reply that breaks the set rules is sent back with its problems"})
    inline_limit_mb: float = field(default=14.0, metadata={
        "help": "videos up to this size go inline in the request, larger ones through the Files API (base64 "
                "makes a request 4/3 of the file, and Gemini caps inline requests at 20 MB)"})
    concurrency: int = field(default=4, metadata={"help": "videos in flight at once"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the question writer"})
    max_output_tokens: int | None = field(default=None, metadata={"help": "reply length cap (None: the model's)"})
    media_resolution: str = field(default="auto", metadata={
        "help": "auto | low | medium | high; auto: the server's default, low above long_video_s (a 2-hour video "
                "at the default resolution does not fit the context)"})
    long_video_s: float = field(default=2400.0, metadata={"help": "auto resolution: low above this many seconds"})
    status_output: str | None = field(default=None, metadata={
        "help": "status JSONL, one line per finished video (default: <output stem>.videos.jsonl)"})
    base_url: str | None = field(default=None, metadata={
        "help": "Gemini endpoint (a proxy or a test stub); None: GOOGLE_GEMINI_BASE_URL, else Google's"})
    timeout_s: float = field(default=900.0, metadata={"help": "seconds one request may take"})
    attempts: int = field(default=4, metadata={"help": "tries per request on 408/429/5xx (the client's retries)"})
    retry_delay_s: float = field(default=2.0, metadata={"help": "first back-off of those retries"})
    file_poll_s: float = field(default=2.0, metadata={"help": "seconds between checks of an uploaded file"})
    file_timeout_s: float = field(default=900.0, metadata={"help": "longest wait for an upload to become ACTIVE"})
    delete_uploads: bool = field(default=True, metadata={"help": "delete uploaded videos when done with them"})

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("name the questions file (output / --out)")
        self.rules  # noqa: B018 (checks min/max questions, min_visual, full_percent)
        if self.max_retries < 0 or self.concurrency < 1 or self.attempts < 1:
            raise ValueError(f"need max_retries >= 0, concurrency >= 1 and attempts >= 1, got {self.max_retries}, "
                             f"{self.concurrency}, {self.attempts}")
        if self.inline_limit_mb < 0 or self.temperature < 0 or self.timeout_s <= 0 or self.file_poll_s < 0:
            raise ValueError("inline_limit_mb, temperature and file_poll_s must be >= 0 and timeout_s > 0")
        if self.media_resolution not in ("auto", *RESOLUTIONS):
            raise ValueError(f"media_resolution={self.media_resolution!r}: use auto, {', '.join(RESOLUTIONS)}")

    @property
    def rules(self) -> QuestionRules:
        return QuestionRules(min_questions=self.min_questions, max_questions=self.max_questions,
                             min_visual=self.min_visual, full_percent=self.full_percent)

    @property
    def status_path(self) -> Path:
        if self.status_output:
            return Path(self.status_output)
        path = Path(self.output)
        stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
        return path.with_name(f"{stem}.videos.jsonl")


# ---- inputs ----------------------------------------------------------------------------------------
def find_videos(paths: Iterable[str | Path]) -> list[Path]:
    """Video files from files and folders (searched recursively for Gemini's video types), in order,
    each once. A named file that is missing is an error; its type is checked by :func:`probe_video`."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_MIME)
            if not inside:
                raise ValueError(f"{path}: holds no videos ({', '.join(sorted(VIDEO_MIME))})")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path}: no such video file or folder; check the path")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(str(path.resolve()), path.resolve())
    return list(unique.values())


def probe_video(path: Path) -> float:
    """The video's duration in seconds, or a ValueError that names the file and the fix."""
    from sage_fast.video import open_video

    if path.suffix.lower() not in VIDEO_MIME:
        raise ValueError(f"{path}: Gemini does not take {path.suffix or 'extension-less'} files; give a video "
                         f"({', '.join(sorted(VIDEO_MIME))}), e.g. remux with `ffmpeg -i {path.name} -c copy out.mp4`")
    try:
        meta = open_video(path).metadata
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable video ({exc}); pass video files or folders holding them") from exc
    if not meta.end_seconds > 0:
        raise ValueError(f"{path}: the video has no duration; check that the file is complete")
    return float(meta.end_seconds)


def question_id(video: Path, index: int) -> str:
    """Stable across runs and unique across folders: file stem, a hash of the full path, the index."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", video.stem)[:40] or "video"
    digest = hashlib.sha1(str(video).encode()).hexdigest()[:8]
    return f"{stem}-{digest}-q{index:02d}"


# ---- the request ---------------------------------------------------------------------------------
def response_schema(rules: QuestionRules) -> dict[str, Any]:
    """The reply's JSON schema (field names as in the reference question-generation prompt)."""
    text = {"type": "STRING"}
    question = {
        "type": "OBJECT",
        "properties": {
            "question": text,
            "type": {"type": "STRING", "enum": ["mcq", "open_ended"]},
            "options": {"type": "ARRAY", "items": text, "nullable": True, "maxItems": rules.max_options},
            "answer": text,
            "difficulty": {"type": "STRING", "enum": list(DIFFICULTIES)},
            "modality": {"type": "STRING", "enum": list(MODALITIES)},
            "requires_web_search": {"type": "BOOLEAN"},
            "why_web_search": {"type": "STRING", "nullable": True},
            "start_timestamp": {"type": "STRING", "description": "HH:MM:SS"},
            "end_timestamp": {"type": "STRING", "description": "HH:MM:SS"},
            "percent_video_parsed": {"type": "NUMBER"},
        },
        "required": ["question", "type", "answer", "difficulty", "modality", "requires_web_search",
                     "start_timestamp", "end_timestamp", "percent_video_parsed"],
    }
    question["propertyOrdering"] = list(question["properties"])
    return {"type": "OBJECT", "properties": {"questions": {"type": "ARRAY", "items": question}},
            "required": ["questions"]}


def question_prompt(duration: float, rules: QuestionRules) -> str:
    """What Gemini is asked, after the video."""
    stamp = format_timestamp(duration)
    return "\n".join([
        f"You write questions that train and test a video assistant. Watch the whole video above: it lasts "
        f"{duration:.0f} seconds ({stamp}).",
        f"Write {rules.min_questions} to {rules.max_questions} questions a curious viewer might ask about it, each "
        "with its answer:",
        f"- type: \"mcq\" (2 to {rules.max_options} options; the answer is the exact text of the correct option) or "
        "\"open_ended\" (options null; a short, precise answer). Use both.",
        "- difficulty: easy, medium or hard; use all three, and when unsure choose the harder one.",
        "- modality: \"visual\" when only the pictures answer it, \"verbal\" when only the speech does, \"both\" when "
        f"it takes both. At least {rules.min_visual} questions must be visual.",
        "- requires_web_search: true when the answer needs facts from outside the video that a web search finds "
        "(say why in why_web_search); such questions are welcome.",
        f"- start_timestamp and end_timestamp (HH:MM:SS, within 00:00:00-{stamp}): the part of the video needed to "
        "answer. Most questions should need a stretch of several minutes; a few may be about one moment.",
        f"- percent_video_parsed: end_timestamp in seconds / {duration:.0f} * 100. At least one question must need "
        f"{rules.full_percent:g}% of the video or more, i.e. be about its end.",
        "Every question must have one clear answer, differ from the others, and not give its answer away.",
        "Recall the facts of the video first, then write the questions. Reply with the JSON object only.",
    ])


def reask_prompt(problems: list[str]) -> str:
    return ("Your questions break these rules:\n" + "\n".join(f"- {p}" for p in problems) +
            "\nWrite the whole set again (every question, not only the corrected ones), as one JSON object in the "
            "same format.")


def make_client(config: SynthConfig) -> Any:
    """A google-genai client with the key from GEMINI_API_KEY / GOOGLE_API_KEY and the client's own
    retries on 408/429/5xx."""
    from google import genai
    from google.genai import types

    key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
    if not key:
        raise ValueError("question synthesis needs a Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY); "
                         "GOOGLE_GEMINI_BASE_URL points the client at a proxy")
    options = types.HttpOptions(
        base_url=config.base_url, timeout=int(config.timeout_s * 1000),
        retry_options=types.HttpRetryOptions(attempts=config.attempts, initial_delay=config.retry_delay_s,
                                             max_delay=60.0, http_status_codes=[408, 429, 500, 502, 503, 504]))
    return genai.Client(api_key=key, http_options=options)


class _FatalError(RuntimeError):
    """A failure that will repeat for every video: the run stops."""


def _fatal(exc: BaseException, config: SynthConfig) -> _FatalError | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code in FATAL_STATUS:
        return _FatalError(f"Gemini {config.model!r}: HTTP {code}: {exc}; {FATAL_STATUS[code]}")
    return None


def _video_part(client: Any, video: Path, config: SynthConfig) -> tuple[Any, Any]:
    """(the request part holding the video, the uploaded file to delete afterwards or None)."""
    from google.genai import types

    mime = VIDEO_MIME[video.suffix.lower()]
    if video.stat().st_size <= config.inline_limit_mb * 1024 * 1024:
        return types.Part.from_bytes(data=video.read_bytes(), mime_type=mime), None
    uploaded = client.files.upload(file=str(video), config={"mime_type": mime, "display_name": video.name})
    try:
        waited = 0.0
        while _state(uploaded) == "PROCESSING":
            if waited >= config.file_timeout_s:
                raise TimeoutError(f"{video}: the uploaded file {uploaded.name} was still PROCESSING after "
                                   f"{config.file_timeout_s:.0f} s; raise file_timeout_s or retry later")
            time.sleep(config.file_poll_s)
            waited += max(config.file_poll_s, 1e-3)
            uploaded = client.files.get(name=uploaded.name)
        if _state(uploaded) != "ACTIVE":
            raise RuntimeError(f"{video}: Gemini could not process the uploaded file ({_state(uploaded)}: "
                               f"{getattr(uploaded, 'error', None)}); check that the video plays")
    except BaseException:
        _delete(client, uploaded, config)
        raise
    return types.Part.from_uri(file_uri=uploaded.uri, mime_type=uploaded.mime_type or mime), uploaded


def _delete(client: Any, uploaded: Any, config: SynthConfig) -> None:
    if uploaded is not None and config.delete_uploads:
        with contextlib.suppress(Exception):  # it expires on its own after 48 h: losing it is harmless
            client.files.delete(name=uploaded.name)


def _state(file: Any) -> str:
    state = getattr(file, "state", None)
    return str(getattr(state, "value", state) or "PROCESSING")


@dataclass
class _Outcome:
    questions: list[SynthQuestion]
    status: dict[str, Any]


def _ask(client: Any, video: Path, duration: float, config: SynthConfig) -> _Outcome:
    """Asks for one video's questions, re-asking with the problems while the set breaks the rules."""
    from google.genai import types

    rules = config.rules
    started = time.perf_counter()
    part, uploaded = _video_part(client, video, config)
    resolution = config.media_resolution
    if resolution == "auto":
        resolution = "low" if duration > config.long_video_s else ""
    generation = types.GenerateContentConfig(
        temperature=config.temperature, max_output_tokens=config.max_output_tokens,
        response_mime_type="application/json", response_schema=response_schema(rules),
        media_resolution=RESOLUTIONS[resolution] if resolution else None)
    contents = [types.Content(role="user", parts=[part, types.Part.from_text(text=question_prompt(duration, rules))])]
    best: tuple[list[QuestionSpec], list[str]] | None = None
    tokens = [0, 0]
    attempt = 0
    try:
        for attempt in range(1, config.max_retries + 2):
            response = client.models.generate_content(model=config.model, contents=contents, config=generation)
            usage = response.usage_metadata
            tokens[0] += int(getattr(usage, "prompt_token_count", 0) or 0)
            tokens[1] += int(getattr(usage, "candidates_token_count", 0) or 0)
            text = response.text or ""
            kept, problems = validate_questions(text, duration, rules) if text.strip() else (
                [], ["reply: empty; answer with the JSON object", *set_problems([], rules)])
            kept = select_questions(kept, rules)
            blocking = set_problems(kept, rules)
            if best is None or (len(blocking), -len(kept)) < (len(best[1]), -len(best[0])):
                best = (kept, blocking)
            if not blocking:
                break
            if attempt <= config.max_retries:
                contents += [types.Content(role="model", parts=[types.Part.from_text(text=text or "(empty)")]),
                             types.Content(role="user", parts=[types.Part.from_text(text=reask_prompt(problems))])]
    finally:
        _delete(client, uploaded, config)
    kept, blocking = best if best is not None else ([], [])
    questions = [SynthQuestion(**vars(spec), id=question_id(video, k), video_path=str(video), duration_seconds=duration,
                               source_model=config.model) for k, spec in enumerate(kept)]
    status = {"video_path": str(video), "status": "rules_unmet" if blocking else "ok", "questions": len(questions),
              "attempts": attempt, "problems": blocking, "model": config.model, "uploaded": uploaded is not None,
              "tokens_in": tokens[0], "tokens_out": tokens[1], "seconds": round(time.perf_counter() - started, 2)}
    return _Outcome(questions, status)


# ---- files -------------------------------------------------------------------------------------------
def _read_lines(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """JSON records of a JSONL file and whether its end needs repair (a torn or unterminated last line)."""
    if not path.is_file():
        return [], False
    records = [record for _, record in read_lines(path, what="JSON record; fix or remove the line")]
    return records, not ends_with_newline(path)


def finished_videos(config: SynthConfig) -> set[str]:
    """Videos already done (resolved paths), after repairing what a crash may have left: questions
    of a video without a final status line are removed (it runs again), torn last lines are cut.
    Questions whose status file is gone entirely count as done (their status is recreated)."""
    output, status_path = Path(config.output), config.status_path
    output.parent.mkdir(parents=True, exist_ok=True)
    status_path.parent.mkdir(parents=True, exist_ok=True)
    statuses, torn_status = _read_lines(status_path)
    questions, torn_questions = _read_lines(output)
    if not status_path.exists() and questions:
        statuses = [{"video_path": v, "status": "ok", "questions": sum(q.get("video_path") == v for q in questions),
                     "recovered": True} for v in dict.fromkeys(q.get("video_path") for q in questions)]
        torn_status = True
    last = {str(s.get("video_path")): s.get("status") for s in statuses}
    done = {video for video, status in last.items() if status in FINAL}
    kept = [q for q in questions if q.get("video_path") in done]
    if torn_status:
        write_lines(status_path, statuses)
    if torn_questions or len(kept) < len(questions):
        write_lines(output, kept)
    return done


def read_questions(path: str | Path) -> list[SynthQuestion]:
    """Every question of a questions JSONL (a torn last line is skipped)."""
    records, _ = _read_lines(Path(path))
    return [SynthQuestion.from_record(r, where=f"{path}: record {k + 1}") for k, r in enumerate(records)]


# ---- the run -----------------------------------------------------------------------------------------
def synthesize_questions(videos: Iterable[str | Path], config: SynthConfig, client: Any = None,
                         progress: bool = True) -> list[SynthQuestion]:
    """Questions for every video (files or folders), asking Gemini only for those not done yet;
    returns the questions of all given videos (earlier runs' included) in video order. ``client``:
    a ``google.genai.Client`` (default: one from the environment, see :func:`make_client`)."""
    paths = find_videos(videos)
    done = finished_videos(config)
    todo = [p for p in paths if str(p) not in done]
    durations = {p: probe_video(p) for p in todo}  # every bad input is reported before a request is made
    if progress:
        print(f"synth questions: {len(paths)} video(s), {len(paths) - len(todo)} already done; "
              f"{config.model} -> {config.output}", file=sys.stderr, flush=True)
    if todo:
        client = client if client is not None else make_client(config)
        _run(client, todo, durations, config, progress)
    wanted = {str(p): k for k, p in enumerate(paths)}
    mine = [q for q in read_questions(config.output) if q.video_path in wanted] if Path(config.output).is_file() else []
    return sorted(mine, key=lambda q: wanted[q.video_path])


def _run(client: Any, todo: list[Path], durations: dict[Path, float], config: SynthConfig, progress: bool) -> None:
    lock = threading.Lock()
    stop = threading.Event()
    fatal: list[BaseException] = []
    counts = {"done": 0, "errors": 0, "unmet": 0}

    def one(video: Path) -> None:
        if stop.is_set():
            return
        try:
            outcome = _ask(client, video, durations[video], config)
        except Exception as exc:
            if (error := _fatal(exc, config)) is not None:
                stop.set()
                fatal.append(error)
                return
            outcome = _Outcome([], {"video_path": str(video), "status": "error", "model": config.model,
                                    "error": f"{type(exc).__name__}: {exc}"})
        with lock:
            if outcome.questions:
                append_lines(Path(config.output), [q.to_record() for q in outcome.questions])
            append_lines(config.status_path, [outcome.status])
            counts["done"] += 1
            counts["errors"] += outcome.status["status"] == "error"
            counts["unmet"] += outcome.status["status"] == "rules_unmet"
            if progress:
                status = outcome.status
                detail = {"ok": f"{status.get('questions')} questions",
                          "rules_unmet": f"{status.get('questions')} questions, rules unmet: "
                                         + "; ".join(status.get("problems", [])),
                          "error": f"failed: {status.get('error')}"}[status["status"]]
                tries = f", {status['attempts']} tries" if status.get("attempts", 1) > 1 else ""
                print(f"synth questions: [{counts['done']}/{len(todo)}] {video.name}: {detail}{tries}",
                      file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="synth") as pool:
        for future in as_completed([pool.submit(one, video) for video in todo]):
            future.result()
    if fatal:
        raise RuntimeError(f"{fatal[0]} (finished videos are kept in {config.output}; rerun to resume)")
    if counts["errors"] and progress:
        print(f"synth questions: {counts['errors']} video(s) failed (see {config.status_path}); rerun the same "
              "command to retry them", file=sys.stderr, flush=True)
