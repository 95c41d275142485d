"""Test-wide switches: GPU tests skip without a GPU, or fail when SAGE_FAST_FAIL_WITHOUT_CUDA=1."""

from __future__ import annotations

import pytest
import torch

from sage_fast import envs


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or torch.cuda.is_available():
        return
    if envs.fail_without_cuda():
        pytest.fail("SAGE_FAST_FAIL_WITHOUT_CUDA=1 but no CUDA GPU is visible to torch", pytrace=False)
    pytest.skip("needs a CUDA GPU (set SAGE_FAST_FAIL_WITHOUT_CUDA=1 to fail instead of skipping)")
