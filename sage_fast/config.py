"""Dataclass configs from YAML / dicts and back, with errors that name the bad key (TRL's overlay).

Every config in sage_fast is a dataclass with ``help`` metadata and ``__post_init__`` checks; this
module is the one place that builds them from plain data: nested dataclasses (``sampling:``,
``token_pruning:``) recurse, an unknown key is an error listing the valid ones (a typo must not be
silently ignored), and :func:`to_dict` writes the effective config back, so a run can record
exactly what it ran with.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass type inside ``X``, ``X | None`` or ``Optional[X]``, if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """``cls(**data)`` with nested dataclasses built recursively and unknown keys refused."""
    label = where or cls.__name__
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{label}: expected a mapping of settings, got {type(data).__name__}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{label}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    for name, value in data.items():
        nested = _dataclass_in(hints[name])
        if nested is not None and isinstance(value, dict):
            data[name] = from_dict(nested, value, where=f"{label}.{name}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (nested dataclasses as mappings), ready for YAML or JSON."""
    return dataclasses.asdict(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, or a clear error naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def help_text(cls: type) -> str:
    """One line per setting with its default and help, for ``--help-config`` style listings."""
    lines = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"{field.name}: {default!r}  # {field.metadata.get('help', '')}".rstrip(" #"))
    return "\n".join(lines)
