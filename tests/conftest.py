"""Test-wide switches: GPU tests skip without a GPU, or fail when SAGE_FAST_FAIL_WITHOUT_CUDA=1."""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides interpreter-or-compiled when a kernel is defined, so this must run before any
# test imports sage_fast.kernels: without a GPU the kernels run in Triton's CPU interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sage_fast import envs
from sage_fast.testing import GeminiStub, OpenAIStub


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or torch.cuda.is_available():
        return
    if envs.fail_without_cuda():
        pytest.fail("SAGE_FAST_FAIL_WITHOUT_CUDA=1 but no CUDA GPU is visible to torch", pytrace=False)
    pytest.skip("needs a CUDA GPU (set SAGE_FAST_FAIL_WITHOUT_CUDA=1 to fail instead of skipping)")


@pytest.fixture
def openai_stub():  # noqa: ANN201
    stub = OpenAIStub()
    yield stub
    stub.close()


@pytest.fixture
def gemini_stub():  # noqa: ANN201
    stub = GeminiStub()
    yield stub
    stub.close()
