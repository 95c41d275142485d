"""Synthetic questions: the record shape, and the checks that turn a model's reply into questions we trust.

SAGE's training questions are written by Gemini-2.5-Flash after watching a whole video (DESIGN.md
§2): 10-20 per video, mcq (at most 6 options) or open-ended, tagged difficulty / modality /
requires_web_search, with the part of the video they need (start / end timestamps) and the percent
of the video an agent must watch to answer (end / duration * 100). At least one question must need
>= 90 % of the video (so the data rewards looking at the whole of it) and at least 4 must need the
pictures, not only the speech.

The reply is untrusted input: every field is type-checked, timestamps are parsed (HH:MM:SS, MM:SS
or seconds) and clamped to the video, the percent is recomputed from the end timestamp (models get
that arithmetic wrong), an mcq answer must be one of its options (by letter or by text) and is
stored as the option's text with its letter, and near-identical questions are dropped. What breaks
the set-level rules is returned as a problem list the caller can send back to the model.
Everything here is a pure function of its inputs.

Records (:meth:`SynthQuestion.to_record`) load back with ``sage_fast.eval.datasets.load_items``
without any field mapping (``id``, ``question``, ``answer``, ``video_path``, ``ques_type``,
``options``, ``difficulty``, ``modality``, ``duration_seconds``; the rest lands in ``extra``).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sage_fast.video.timecode import format_timestamp, parse_timestamp

QUES_TYPES = ("mcq", "open_ended")
DIFFICULTIES = ("easy", "medium", "hard")
MODALITIES = ("visual", "verbal", "both")
_TYPE_SPELLINGS = {"mcq": "mcq", "multiple_choice": "mcq", "multiple-choice": "mcq", "multiple choice": "mcq",
                   "open_ended": "open_ended", "open-ended": "open_ended", "open ended": "open_ended",
                   "open": "open_ended"}
_LABEL = re.compile(r"^\s*\(?([A-Za-z])\s*[).:]\s*(.*)$", re.DOTALL)  # "(B) text", "B. text", "B: text"
_LETTER = re.compile(r"^\s*(?:option\s+)?\(?([A-Za-z])\)?\s*[.:]?\s*$", re.IGNORECASE)  # "B", "(B)", "Option B."
DUPLICATE_RATIO = 0.9


@dataclass(frozen=True)
class QuestionRules:
    """The paper's rules for one video's question set."""

    min_questions: int = field(default=10, metadata={"help": "fewest valid questions per video"})
    max_questions: int = field(default=20, metadata={"help": "most questions kept per video"})
    min_visual: int = field(default=4, metadata={"help": "questions with modality 'visual' needed per video"})
    full_percent: float = field(default=90.0, metadata={
        "help": "at least one question must need this percent of the video or more"})
    max_options: int = field(default=6, metadata={"help": "most options of an mcq question"})

    def __post_init__(self) -> None:
        if not 1 <= self.min_questions <= self.max_questions:
            raise ValueError(f"questions per video: need 1 <= min ({self.min_questions}) <= max "
                             f"({self.max_questions})")
        if not 0 <= self.min_visual <= self.max_questions:
            raise ValueError(f"min_visual must be between 0 and max_questions, got {self.min_visual}")
        if not 0 <= self.full_percent <= 100 or self.max_options < 2:
            raise ValueError(f"need 0 <= full_percent <= 100 and max_options >= 2, got {self.full_percent}, "
                             f"{self.max_options}")


@dataclass(kw_only=True)
class QuestionSpec:
    """One validated question as the model described it (times already clamped, percent recomputed)."""

    question: str
    ques_type: str  # "mcq" | "open_ended"
    answer: str  # for mcq: the correct option's text
    options: list[str] | None = None  # mcq only
    answer_letter: str | None = None  # mcq only: "A".."F"
    difficulty: str
    modality: str
    requires_web_search: bool
    why_web_search: str | None = None
    start_seconds: float
    end_seconds: float
    start_timestamp: str  # HH:MM:SS of start_seconds
    end_timestamp: str
    percent_video_parsed: float  # end_seconds / duration * 100, ours, not the model's


@dataclass(kw_only=True)
class SynthQuestion(QuestionSpec):
    """A question tied to its video and to the model that wrote it: one line of the questions JSONL."""

    id: str
    video_path: str
    duration_seconds: float
    source_model: str

    def to_record(self) -> dict[str, Any]:
        """The JSONL record (``load_items`` reads it with no field mapping)."""
        data = asdict(self)
        order = ["id", "video_path", "question", "ques_type", "options", "answer", "answer_letter", "difficulty",
                 "modality", "requires_web_search", "why_web_search", "start_timestamp", "end_timestamp",
                 "start_seconds", "end_seconds", "percent_video_parsed", "duration_seconds", "source_model"]
        return {key: data[key] for key in order}

    @classmethod
    def from_record(cls, data: dict[str, Any], *, where: str = "record") -> SynthQuestion:
        """Inverse of :meth:`to_record`; a missing field is an error naming the record."""
        names = [f.name for f in fields(cls)]
        optional = {"options", "answer_letter", "why_web_search"}
        missing = [n for n in names if n not in data and n not in optional]
        if missing:
            raise ValueError(f"{where}: not a synthesized question record, missing {', '.join(missing)}")
        return cls(**{n: data[n] for n in names if n in data})

    def to_item(self) -> Any:
        """The question as an :class:`sage_fast.eval.datasets.EvalItem` (what the agent runners take)."""
        from sage_fast.eval.datasets import EvalItem

        record = self.to_record()
        used = {"id", "question", "answer", "video_path", "ques_type", "options", "difficulty", "modality",
                "duration_seconds"}
        return EvalItem(id=self.id, question=self.question, answer=self.answer, video_path=self.video_path,
                        ques_type=self.ques_type, options=self.options, difficulty=self.difficulty,  # type: ignore[arg-type]
                        modality=self.modality, duration_seconds=self.duration_seconds,
                        extra={k: v for k, v in record.items() if k not in used})


# ---- parsing the reply -------------------------------------------------------------------------
def reply_questions(raw: Any) -> tuple[list[Any] | None, str | None]:
    """The list of question objects in a reply (JSON text, ``{"questions": [...]}`` or a list),
    or None and a problem saying what was wrong with the reply as a whole."""
    if isinstance(raw, (bytes, str)):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            raw = json.loads(text)
        except ValueError:
            from sage_fast.agent.parsing import extract_json

            raw, _ = extract_json(text)  # tags, fences, prose around the object, small repairs
            if raw is None:
                return None, "reply: not JSON; answer with one JSON object {\"questions\": [...]}"
    if isinstance(raw, dict):
        raw = raw.get("questions")
        if not isinstance(raw, list):
            return None, "reply: no 'questions' list in the JSON object"
    if not isinstance(raw, list):
        return None, f"reply: expected a JSON object with a 'questions' list, got {type(raw).__name__}"
    return raw, None


def _text(value: Any) -> str | None:
    """A non-empty stripped string (numbers are taken as their text), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    return " ".join(value.split())


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _choice(value: Any, allowed: tuple[str, ...]) -> str | None:
    text = _text(value)
    return text.lower() if text is not None and text.lower() in allowed else None


def _fold(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def _unlabel(options: list[str]) -> list[str]:
    """Drops "A) " / "(B) " / "C. " prefixes when every option carries its own letter in order
    (models often write them; the letter is the index, not part of the answer)."""
    stripped = []
    for index, option in enumerate(options):
        match = _LABEL.match(option)
        if match is None or match.group(1).upper() != chr(ord("A") + index) or not match.group(2).strip():
            return options
        stripped.append(match.group(2).strip())
    return stripped


def _mcq_answer(answer: str, options: list[str]) -> int | None:
    """Index of the option ``answer`` names: its text, its letter, or "B) its text"."""
    folded = [_fold(o) for o in options]
    if _fold(answer) in folded:
        return folded.index(_fold(answer))
    letter = _LETTER.match(answer)
    if letter is not None:
        index = ord(letter.group(1).upper()) - ord("A")
        return index if 0 <= index < len(options) else None
    labeled = _LABEL.match(answer)
    if labeled is not None:
        index = ord(labeled.group(1).upper()) - ord("A")
        if 0 <= index < len(options) and _fold(labeled.group(2)) == folded[index]:
            return index
    return None


def _seconds(value: Any, name: str) -> tuple[float | None, str | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"'{name}' is missing (write HH:MM:SS)"
    try:
        return parse_timestamp(value, name=name), None
    except ValueError as exc:
        return None, str(exc)


def check_question(item: Any, duration: float, rules: QuestionRules | None = None) -> tuple[QuestionSpec | None, list[str]]:
    """One question object -> a :class:`QuestionSpec`, or None with what is wrong (each problem
    names the field). ``duration`` is the video's length in seconds."""
    rules = rules or QuestionRules()
    if not isinstance(item, dict):
        return None, [f"not a JSON object (got {type(item).__name__})"]
    problems = []
    question = _text(item.get("question"))
    if question is None:
        problems.append("'question' must be a non-empty string")
    raw_type = _text(item.get("type", item.get("ques_type")))
    ques_type = _TYPE_SPELLINGS.get(raw_type.lower()) if raw_type else None
    if ques_type is None:
        problems.append(f"'type' must be one of {', '.join(QUES_TYPES)}, got {item.get('type')!r}")
    difficulty = _choice(item.get("difficulty"), DIFFICULTIES)
    if difficulty is None:
        problems.append(f"'difficulty' must be one of {', '.join(DIFFICULTIES)}, got {item.get('difficulty')!r}")
    modality = _choice(item.get("modality"), MODALITIES)
    if modality is None:
        problems.append(f"'modality' must be one of {', '.join(MODALITIES)}, got {item.get('modality')!r}")
    answer = _text(item.get("answer"))
    if answer is None:
        problems.append("'answer' must be a non-empty string")
    web = _flag(item.get("requires_web_search"))
    if web is None:
        problems.append(f"'requires_web_search' must be true or false, got {item.get('requires_web_search')!r}")
    why_web = _text(item.get("why_web_search")) if web else None
    options, letter = _options(item.get("options"), ques_type, answer, rules, problems)
    start, problem = _seconds(item.get("start_timestamp"), "start_timestamp")
    if problem:
        problems.append(problem)
    end, problem = _seconds(item.get("end_timestamp"), "end_timestamp")
    if problem:
        problems.append(problem)
    if start is not None and end is not None:
        if start > end:
            problems.append(f"start_timestamp {item.get('start_timestamp')!r} is after end_timestamp "
                            f"{item.get('end_timestamp')!r}")
        elif start > duration:
            problems.append(f"start_timestamp {item.get('start_timestamp')!r} is past the end of the video "
                            f"({format_timestamp(duration)})")
    if problems:
        return None, problems
    start, end = min(float(start), duration), min(float(end), duration)  # type: ignore[arg-type]
    if options is not None and letter is not None:
        answer = options[ord(letter) - ord("A")]
    return QuestionSpec(question=question, ques_type=ques_type, answer=answer,  # type: ignore[arg-type]
                        options=options, answer_letter=letter, difficulty=difficulty,  # type: ignore[arg-type]
                        modality=modality, requires_web_search=bool(web), why_web_search=why_web,  # type: ignore[arg-type]
                        start_seconds=start, end_seconds=end, start_timestamp=format_timestamp(start),
                        end_timestamp=format_timestamp(end),
                        percent_video_parsed=round(100.0 * end / duration, 2)), []


def _options(raw: Any, ques_type: str | None, answer: str | None, rules: QuestionRules,
             problems: list[str]) -> tuple[list[str] | None, str | None]:
    """(options, answer letter) of an mcq question; for open-ended questions options must be absent."""
    if ques_type != "mcq":
        if ques_type == "open_ended" and raw not in (None, [], ""):
            problems.append("an open_ended question must have no options (null); make it mcq or drop them")
        return None, None
    if not isinstance(raw, list) or not all(_text(o) is not None for o in raw):
        problems.append("'options' of an mcq question must be a list of non-empty strings")
        return None, None
    options = _unlabel([_text(o) or "" for o in raw])
    if not 2 <= len(options) <= rules.max_options:
        problems.append(f"an mcq question needs 2 to {rules.max_options} options, got {len(options)}")
        return None, None
    if len({_fold(o) for o in options}) < len(options):
        problems.append("'options' repeat each other; every option must be different")
        return None, None
    if answer is None:
        return None, None
    index = _mcq_answer(answer, options)
    if index is None:
        problems.append(f"answer {answer!r} is not one of the options (give the option's text or its letter "
                        f"A-{chr(ord('A') + len(options) - 1)})")
        return None, None
    return options, chr(ord("A") + index)


# ---- the set ---------------------------------------------------------------------------------
def _signature(text: str) -> tuple[str, tuple[str, ...]]:
    folded = re.sub(r"[^0-9a-z]+", " ", text.casefold()).strip()
    return folded, tuple(sorted(re.findall(r"[0-9]+", folded)))


def is_duplicate(a: str, b: str) -> bool:
    """Near-identical questions: the same words up to case and punctuation, or a similarity ratio
    of at least 0.9, with the same numbers (so "at 00:01:00" and "at 00:05:00" stay two questions)."""
    (text_a, numbers_a), (text_b, numbers_b) = _signature(a), _signature(b)
    if numbers_a != numbers_b:
        return False
    return text_a == text_b or difflib.SequenceMatcher(None, text_a, text_b).ratio() >= DUPLICATE_RATIO


def set_problems(questions: list[QuestionSpec], rules: QuestionRules | None = None) -> list[str]:
    """What keeps a video's (valid) questions from satisfying the paper's set rules."""
    rules = rules or QuestionRules()
    problems = []
    count = len(questions)
    if count < rules.min_questions:
        problems.append(f"set: only {count} valid question(s); write {rules.min_questions} to "
                        f"{rules.max_questions} valid questions")
    if count > rules.max_questions:
        problems.append(f"set: {count} valid questions; write at most {rules.max_questions}")
    visual = sum(q.modality == "visual" for q in questions)
    if visual < rules.min_visual:
        problems.append(f"set: {visual} visual question(s); at least {rules.min_visual} questions must need the "
                        "pictures (modality 'visual'), not the speech")
    if not any(q.percent_video_parsed >= rules.full_percent for q in questions):
        latest = max((q.percent_video_parsed for q in questions), default=0.0)
        problems.append(f"set: no question needs {rules.full_percent:g}% of the video or more (the latest ends at "
                        f"{latest:g}%); ask at least one question about the end of the video")
    return problems


def validate_questions(raw: Any, duration: float,
                       rules: QuestionRules | None = None) -> tuple[list[QuestionSpec], list[str]]:
    """The valid, de-duplicated questions of a reply, and every problem found (per question:
    ``question 3: ...``; per reply; per set: ``set: ...``), in reply order."""
    rules = rules or QuestionRules()
    if not duration > 0:
        raise ValueError(f"video duration must be positive to place timestamps, got {duration!r}")
    items, problem = reply_questions(raw)
    if items is None:
        return [], [problem or "reply: no questions", *set_problems([], rules)]
    kept: list[QuestionSpec] = []
    numbers: list[int] = []
    problems: list[str] = []
    for number, item in enumerate(items, start=1):
        spec, issues = check_question(item, duration, rules)
        if spec is None:
            problems += [f"question {number}: {issue}" for issue in issues]
            continue
        first = next((n for n, q in zip(numbers, kept, strict=True) if is_duplicate(q.question, spec.question)), None)
        if first is not None:
            problems.append(f"question {number}: repeats question {first}; every question must be different")
            continue
        kept.append(spec)
        numbers.append(number)
    return kept, problems + set_problems(kept, rules)


def select_questions(questions: list[QuestionSpec], rules: QuestionRules | None = None) -> list[QuestionSpec]:
    """At most ``max_questions`` of ``questions``, in their order, keeping what the set rules need
    (the first question at >= ``full_percent``, the first ``min_visual`` visual ones) before the rest."""
    rules = rules or QuestionRules()
    if len(questions) <= rules.max_questions:
        return list(questions)
    chosen: set[int] = set()
    full = next((i for i, q in enumerate(questions) if q.percent_video_parsed >= rules.full_percent), None)
    if full is not None:
        chosen.add(full)
    chosen |= set([i for i, q in enumerate(questions) if q.modality == "visual"][: rules.min_visual])
    for index in range(len(questions)):
        if len(chosen) >= rules.max_questions:
            break
        chosen.add(index)
    return [questions[i] for i in sorted(chosen)][: rules.max_questions]
