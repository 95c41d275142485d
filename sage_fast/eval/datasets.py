"""Benchmark records (SAGE-Bench, MINERVA, your own) into one ``EvalItem`` shape, checked before a run starts.

Benchmarks spell the same things differently (``question`` / ``query``, ``gt_answer`` /
``ground_truth``, a video path or only a YouTube id), and a long evaluation that dies on record
900 because one video is missing wastes hours, so everything is mapped and checked here, up front,
with errors that name the record, the field and the fix.

Formats: JSONL, a JSON list, a parquet file (pyarrow or pandas, when installed) or a folder saved
with Hugging Face ``datasets`` (``save_to_disk``; ``datasets`` imported only then).

Field names: each item field is taken from the first of its spellings (:data:`SPELLINGS`) that the
record has; ``fields={"question": "my_query"}`` (CLI ``--field question=my_query``) names a field
outright. Presets:

* ``sage-bench``: allenai/SAGE-Bench (``video_id``, ``question`` with the options already written
  into it for mcq, ``gt_answer``, ``ques_type`` ``mcq`` / ``open-ended``, ``difficulty``,
  ``modality``); without an ``id`` column the id is the MD5 of ``question|video`` as in the
  reference code. Field names as the reference evaluation code reads them.
* ``minerva``: google-deepmind MINERVA's ``minerva.json`` (``key``, ``video_id``, ``question``,
  ``answer_choice_0`` … ``answer_choice_4``, ``answer_id``, ``answer``, ``question_type`` (a
  reasoning-skill tag, kept in ``extra``), ``category``); every question is mcq with five options.
  Field names as public loaders of ``minerva.json`` read them.

Videos: a record's path is tried under ``video_root``, next to the data file, then as given; a bare
id is tried as ``<root>/<id>.mp4|.mkv|.webm`` and ``<root>/<id>/<id>.<ext>`` (the reference
MINERVA layout).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

QuesType = Literal["mcq", "open_ended"]
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
PRESETS = ("sage-bench", "minerva")

# item field -> record keys tried in order (the first present, non-empty one wins)
SPELLINGS: dict[str, tuple[str, ...]] = {
    "id": ("id", "key", "question_id", "qid", "uid"),
    "question": ("question", "query", "prompt"),
    "answer": ("answer", "gt_answer", "ground_truth", "gt", "label"),
    "video": ("video_path", "video", "path", "video_file", "video_id", "video_name", "vid"),
    "options": ("options", "answer_choices", "choices", "candidates"),
    "answer_index": ("answer_id", "answer_idx", "answer_index", "correct_choice"),
    "ques_type": ("ques_type", "type", "question_type", "qtype"),
    "difficulty": ("difficulty", "level"),
    "modality": ("modality",),
    "duration": ("duration_seconds", "duration", "video_duration"),
}
PRESET_SPELLINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "sage-bench": {"answer": ("gt_answer", "answer"), "video": ("video_path", "video_id")},
    "minerva": {"id": ("key",), "answer": ("answer",), "video": ("video_id",), "ques_type": (),
                "options": (), "answer_index": ("answer_id",), "difficulty": (), "modality": ()},
}
_OPEN = {"open_ended", "open-ended", "open ended", "open", "openended", "free_form", "free-form", "oe"}
_MCQ = {"mcq", "multiple_choice", "multiple-choice", "multiple choice", "mc", "choice", "multichoice"}


@dataclass
class EvalItem:
    """One benchmark question, whatever file it came from."""

    id: str
    question: str  # as the dataset wrote it (see :attr:`prompt` for what the agent reads)
    answer: str  # ground truth: text, or for mcq the option letter or text
    video_path: str
    ques_type: QuesType = "open_ended"
    options: list[str] | None = None  # mcq options when the dataset lists them apart from the question
    difficulty: str | None = None
    modality: str | None = None
    duration_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # every other field of the record

    @property
    def prompt(self) -> str:
        """The question the agent is asked: for mcq with separate options, the lettered options follow."""
        if not self.options:
            return self.question
        lines = [f"({chr(ord('A') + k)}) {option}" for k, option in enumerate(self.options)]
        return f"{self.question}\nAnswer with one of these options:\n" + "\n".join(lines)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _pick(record: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        if name in record and _present(record[name]):
            return name, record[name]
    return None, None


def _options(record: dict[str, Any], names: tuple[str, ...], where: str) -> tuple[list[str] | None, set[str]]:
    """The options as a list, from a list / {"A": ...} mapping field or from ``answer_choice_0..n``."""
    used: set[str] = set()
    name, value = _pick(record, names)
    if name is None:
        numbered = sorted((k for k in record if k.startswith("answer_choice_") and k[14:].isdigit()),
                          key=lambda k: int(k[14:]))
        if not numbered:
            return None, used
        return [str(record[k]) for k in numbered], set(numbered)
    used.add(name)
    if isinstance(value, str):  # a JSON-encoded list, as some CSV / parquet exports store them
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{where}: field {name!r} is a string, not a list of options; give a JSON list") from None
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value)]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: field {name!r} must be a non-empty list of options, got {value!r}")
    return [str(v) for v in value], used


def _ques_type(raw: Any, has_options: bool, forced: str | None) -> QuesType:
    if forced is not None:
        return forced  # type: ignore[return-value]
    text = str(raw).strip().lower() if raw is not None else ""
    if text in _MCQ:
        return "mcq"
    if text in _OPEN:
        return "open_ended"
    return "mcq" if has_options else "open_ended"  # e.g. MINERVA's skill tags: decided by the options


def _duration(value: Any, where: str, name: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} must be a number of seconds, got {value!r}") from None
    return seconds if seconds > 0 else None


def resolve_video(value: str, video_root: Path | None, data_dir: Path | None) -> Path | None:
    """The video file a record's path or id refers to, or None."""
    candidate = Path(str(value)).expanduser()
    roots = [r for r in (video_root, data_dir) if r is not None]
    if candidate.suffix.lower() in {*VIDEO_EXTENSIONS, ".mov", ".avi", ".m4v"} or len(candidate.parts) > 1:
        tries = [candidate] if candidate.is_absolute() else [*(r / candidate for r in roots), candidate]
    else:  # a bare id: <root>/<id>.<ext>, then <root>/<id>/<id>.<ext>
        tries = [folder / f"{value}{ext}" for folder in roots for ext in VIDEO_EXTENSIONS]
        tries += [folder / str(value) / f"{value}{ext}" for folder in roots for ext in VIDEO_EXTENSIONS]
    return next((path for path in tries if path.is_file()), None)


def items_from_records(records: Iterable[dict[str, Any]], *, video_root: str | Path | None = None,
                       data_dir: str | Path | None = None, preset: str | None = None,
                       fields: dict[str, str] | None = None, limit: int | None = None) -> list[EvalItem]:
    """Maps plain records to items, checking every required field and video file."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: use one of {', '.join(PRESETS)} (or none, with --field NAME=KEY)")
    spellings = {**SPELLINGS, **PRESET_SPELLINGS.get(preset or "", {})}
    for target, key in (fields or {}).items():
        if target not in SPELLINGS:
            raise ValueError(f"field mapping {target}={key}: {target!r} is not an item field; "
                             f"use one of {', '.join(SPELLINGS)}")
        spellings[target] = (key,)
    root = Path(video_root).expanduser() if video_root is not None else None
    folder = Path(data_dir) if data_dir is not None else None
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if limit is not None and len(items) >= limit:
            break
        if not isinstance(record, dict):
            raise ValueError(f"record {index}: expected a mapping of fields, got {type(record).__name__}")
        items.append(_item(record, index, spellings, root, folder, preset))
        if (first := seen.setdefault(items[-1].id, index)) != index:
            raise ValueError(f"record {index}: id {items[-1].id!r} repeats record {first}'s; ids must be unique "
                             "(results are resumed by id): fix the data or map another field with --field id=KEY")
    return items


def _item(record: dict[str, Any], index: int, spellings: dict[str, tuple[str, ...]], video_root: Path | None,
          data_dir: Path | None, preset: str | None) -> EvalItem:
    id_name, raw_id = _pick(record, spellings["id"])
    where = f"record {index}" + (f" (id {raw_id!r})" if id_name else "")
    values: dict[str, Any] = {}
    used: set[str] = set()
    options, option_keys = _options(record, spellings["options"], where)
    used |= option_keys
    index_key, answer_index = _pick(record, spellings["answer_index"])
    if index_key is not None:
        used.add(index_key)
        if options is not None and not (isinstance(answer_index, int) and 0 <= answer_index < len(options)):
            raise ValueError(f"{where}: {index_key}={answer_index!r} is not an index into its {len(options)} options")
    for name in ("question", "answer", "video"):
        key, value = _pick(record, spellings[name])
        if key is None and name == "answer" and options is not None and index_key is not None:
            key, value = index_key, options[answer_index]  # only the correct option's index was given
        if key is None:
            raise ValueError(f"{where}: no {name} field (looked for {', '.join(spellings[name])}); "
                             f"name it with --field {name}=KEY")
        values[name], used = value, used | {key}
    answer = str(values["answer"]).strip()
    type_key, raw_type = _pick(record, spellings["ques_type"])
    ques_type = _ques_type(raw_type, options is not None, "mcq" if preset == "minerva" else None)
    video = resolve_video(str(values["video"]), video_root, data_dir)
    if video is None:
        hint = f"under --video-root {video_root}" if video_root else "(no --video-root given)"
        raise ValueError(f"{where}: video {values['video']!r} not found {hint}; put the file there as "
                         f"<id>.mp4/.mkv/.webm or pass the folder holding it with --video-root")
    difficulty_key, difficulty = _pick(record, spellings["difficulty"])
    modality_key, modality = _pick(record, spellings["modality"])
    duration_key, duration = _pick(record, spellings["duration"])
    used |= {k for k in (id_name, type_key, difficulty_key, modality_key, duration_key) if k is not None}
    if id_name is not None:
        item_id = str(raw_id)
    else:  # stable across runs, so resuming works: the reference code's MD5 of question|video
        item_id = hashlib.md5(f"{values['question']}|{values['video']}".encode()).hexdigest()
    extra = {k: v for k, v in record.items() if k not in used}
    if type_key is not None and raw_type is not None and str(raw_type).strip().lower() not in _MCQ | _OPEN:
        extra[type_key] = raw_type  # a category, not mcq/open: keep it
    if answer_index is not None:
        extra["answer_index"] = answer_index
    return EvalItem(id=item_id, question=str(values["question"]), answer=answer, video_path=str(video),
                    ques_type=ques_type, options=options,
                    difficulty=str(difficulty) if difficulty is not None else None,
                    modality=str(modality) if modality is not None else None,
                    duration_seconds=_duration(duration, where, duration_key), extra=extra)


def read_records(path: str | Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """Plain records from JSONL, a JSON list, parquet, or a ``datasets.save_to_disk`` folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_hf_folder(path, split)
    if not path.is_file():
        raise ValueError(f"{path}: no such data file or folder")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    text = path.read_text(encoding="utf-8")
    head = text.lstrip()[:1]
    if head == "[" or suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if head == "[":
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            data = None  # JSONL under a .json name
        if isinstance(data, dict):  # {"data": [...]}: the one list inside
            lists = [v for v in data.values() if isinstance(v, list) and all(isinstance(r, dict) for r in v)]
            data = lists[0] if len(lists) == 1 else [data]
        if data is not None:
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of records (or JSONL, one record per line)")
            return data
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON record ({exc}); one JSON object per line") from exc
    return records


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except ImportError:
        pass
    try:
        import pandas as pd
    except ImportError:
        raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    return pd.read_parquet(path).to_dict("records")


def _read_hf_folder(path: Path, split: str | None) -> list[dict[str, Any]]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise ValueError(f"{path}: a folder is read as a Hugging Face dataset saved with save_to_disk, which "
                         "needs `pip install datasets`; or give a JSONL / JSON / parquet file") from None
    try:
        data = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: not a dataset saved with datasets' save_to_disk ({exc})") from exc
    if isinstance(data, DatasetDict):
        names = list(data)
        chosen = split or ("test" if "test" in data else names[0] if len(names) == 1 else None)
        if chosen not in data:
            raise ValueError(f"{path}: choose a split ({', '.join(names)})" + (f"; {split!r} is not one" if split else ""))
        data = data[chosen]
    return [dict(row) for row in data]


def load_items(path: str | Path, *, video_root: str | Path | None = None, preset: str | None = None,
               fields: dict[str, str] | None = None, limit: int | None = None,
               split: str | None = None) -> list[EvalItem]:
    """``load_items("sage_bench.jsonl", video_root="videos/", preset="sage-bench")``."""
    path = Path(path).expanduser()
    return items_from_records(read_records(path, split=split), video_root=video_root,
                              data_dir=path.parent if path.is_file() else path, preset=preset, fields=fields,
                              limit=limit)
