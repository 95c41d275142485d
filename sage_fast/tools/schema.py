"""Tool schemas from type hints + docstrings, and validation of the arguments a model sends.

The orchestrator sees each tool as an OpenAI-style function (name, description, JSON-schema
parameters) inside ``<tools>``; writing the schema by hand beside the function drifts, so it is
derived from the signature and the docstring's ``Args:`` section. The model's arguments are
untrusted: unknown ones are dropped (as the reference code does), the rest are checked and
coerced only where the meaning is unambiguous ("5" -> 5), and every problem becomes a message the
model can act on, never an exception in the loop.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARG_LINE = re.compile(r"^\s{2,}(\w+)\s*(?:\([^)]*\))?:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {argument: description}) from a Google-style docstring."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:\n")
    descriptions: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break  # the next section (Returns:, ...)
        match = _ARG_LINE.match(line)
        if match and len(line) - len(line.lstrip()) <= 4:
            current = match.group(1)
            descriptions[current] = match.group(2).strip()
        elif current and line.strip():
            descriptions[current] += " " + line.strip()
    description = " ".join(head.strip().split("\n\n")[0].split())
    return description, descriptions


def _json_type(annotation: Any) -> tuple[dict[str, Any], bool]:
    """(JSON schema, optional) for a type hint."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        schema, _ = _json_type(args[0]) if len(args) == 1 else ({}, False)
        return schema, len(args) < len(typing.get_args(annotation))
    if origin is Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}, False
    if origin in (list, tuple) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        item = _json_type(args[0])[0] if args else {}
        return {"type": "array", "items": item}, False
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}, False
    if annotation is dict or origin is dict:
        return {"type": "object"}, False
    raise TypeError(f"tool argument type {annotation!r} has no JSON-schema equivalent here")


def function_schema(fn: Callable[..., Any], *, name: str | None = None) -> dict[str, Any]:
    """The OpenAI function schema of ``fn``: every parameter needs a type hint; parameters
    without a default are required; ``Args:`` lines become the descriptions. A parameter named
    ``context`` (the episode a tool runs in) is supplied by the loop, not the model, and is left
    out."""
    description, arg_docs = _parse_docstring(fn.__doc__ or "")
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.name in ("self", "cls", "context") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in hints:
            raise TypeError(f"{fn.__name__}: parameter {param.name!r} needs a type hint to be a tool argument")
        schema, optional = _json_type(hints[param.name])
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        if param.default is not inspect.Parameter.empty:
            if param.default is not None:
                schema["default"] = param.default
        elif not optional:
            required.append(param.name)
        properties[param.name] = schema
    return {"type": "function", "function": {
        "name": name or fn.__name__, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }}


@dataclass(frozen=True)
class ValidatedArguments:
    """The arguments to call with, what was dropped, and what is wrong (empty when valid)."""

    arguments: dict[str, Any]
    dropped: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())

    @property
    def valid(self) -> bool:
        return not self.errors

    def error_message(self, tool: str) -> str:
        """One message for the model: what was wrong and what the tool accepts."""
        return f"Invalid arguments for {tool}: " + "; ".join(self.errors)


def _coerce(value: Any, schema: dict[str, Any], name: str) -> tuple[Any, str | None]:
    kind = schema.get("type")
    if kind == "string":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return value, f"{name} must be a string, got {type(value).__name__}"
    elif kind == "integer":
        whole_text = isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value)
        if whole_text or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return value, f"{name} must be an integer, got {value!r}"
    elif kind == "number":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value, f"{name} must be a number, got {value!r}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return value, f"{name} must be a number, got {value!r}"
    elif kind == "boolean":
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            return value, f"{name} must be true or false, got {value!r}"
    elif kind == "array":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single path where a list was asked for
        if not isinstance(value, list):
            return value, f"{name} must be a list, got {type(value).__name__}"
        items, problems = [], []
        for i, item in enumerate(value):
            item, problem = _coerce(item, schema.get("items", {}), f"{name}[{i}]")
            items.append(item)
            if problem:
                problems.append(problem)
        if problems:
            return value, problems[0]
        value = items
    elif kind == "object" and not isinstance(value, dict):
        return value, f"{name} must be an object, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return value, f"{name} must be one of {schema['enum']}, got {value!r}"
    return value, None


def validate_arguments(schema: dict[str, Any], arguments: Any) -> ValidatedArguments:
    """Checks ``arguments`` against a schema from :func:`function_schema`."""
    parameters = schema["function"]["parameters"]
    properties: dict[str, Any] = parameters["properties"]
    if not isinstance(arguments, dict):
        return ValidatedArguments({}, (), (f"arguments must be a JSON object, got {type(arguments).__name__}",))
    dropped = tuple(sorted(k for k in arguments if k not in properties))
    clean: dict[str, Any] = {}
    errors: list[str] = []
    for name, spec in properties.items():
        if name not in arguments or arguments[name] is None:
            if name in parameters["required"]:
                errors.append(f"{name} is required ({spec.get('description', spec.get('type'))})")
            continue
        value, problem = _coerce(arguments[name], spec, name)
        if problem:
            errors.append(problem)
        else:
            clean[name] = value
    return ValidatedArguments(clean, dropped, tuple(errors))
