"""Crash-safe JSONL: sealing a file before appending, reading past a torn last line, atomic rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_fast.jsonl import append_lines, read_lines, seal, write_lines


@pytest.mark.parametrize(("text", "sealed"), [
    ('{"a": 1}\n{"b": ', '{"a": 1}\n'),            # torn by a crash: cut, its unit runs again
    ('{"a": 1}\n{"b": 2}', '{"a": 1}\n{"b": 2}\n'),  # whole but unterminated: terminated
    ('{"a": 1}\n', '{"a": 1}\n'),                    # already whole
    ('{"x"', ''),                                    # the only line, torn
    ('', ''),
    ('{"a": 1}\n{"b": "' + "x" * 200_000, '{"a": 1}\n'),  # a torn line longer than one tail block
])
def test_seal_leaves_whole_lines(tmp_path: Path, text: str, sealed: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    seal(path)
    assert path.read_text() == sealed
    append_lines(path, [{"c": 3}])
    assert [row for _, row in read_lines(path)][-1] == {"c": 3}


def test_read_skips_only_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_lines(path, [{"a": 1}, {"b": 2}])
    with open(path, "a") as handle:
        handle.write('{"c": ')
    assert [row for _, row in read_lines(path)] == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not a result row"):
        list(read_lines(path, what="result row"))
    assert not list(tmp_path.glob(".*partial"))
