"""Every script in examples/ runs to completion (smoke test: they are documentation that must work)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED = {
    "agent_in_three_lines.py": "visual tokens",
    "pack_turn_samples.py": "max error vs per-sample SDPA",
    "grpo_group_rollout.py": "episodes/s",
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SAGE_FAST_CACHE for all examples: the tiny model is built once."""
    return os.environ.get("SAGE_FAST_CACHE") or str(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path, cache: str) -> None:
    # as a user runs them: no Triton interpreter (tests/conftest.py sets it for the kernel tests)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"SAGE_FAST_CACHE": cache}
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert EXPECTED[name] in result.stdout
