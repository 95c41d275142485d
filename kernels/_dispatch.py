"""Chooses, per call, between a Triton kernel and its plain-PyTorch reference.

Why one place: every kernel family asks the same question ("can Triton run on these tensors, and
did the user force a side?"), and tests and benchmarks need the answer to be the same everywhere.
Rules, in order:
1. ``SAGE_FAST_FORCE_IMPL=reference`` → the reference; ``=kernel`` → the kernel, and an error
   naming the reason when Triton cannot run (rather than a silent fallback that hides a bug).
2. Otherwise the kernel when Triton is importable and the tensors are on a CUDA device, or when
   ``TRITON_INTERPRET=1`` (the CPU interpreter, used by the tests) is set; else the reference.
"""

from __future__ import annotations

import functools
import os

import torch

from sage_fast import envs


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` works (it needs no GPU to import)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything else
        return False
    return True


def interpreter_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads this variable when a kernel is *defined*, so it must be set before the first
    import of a kernel module; tests/conftest.py does that on machines without a GPU.
    """
    return os.environ.get("TRITON_INTERPRET", "").strip() == "1"


def why_kernel_cannot_run(*tensors: torch.Tensor) -> str | None:
    """The reason the Triton kernel cannot run on these tensors, or None when it can."""
    if not triton_available():
        return "Triton is not installed (pip install 'sage_fast[triton]')"
    if interpreter_mode():
        return None
    for tensor in tensors:
        if tensor.device.type != "cuda":
            return (f"a tensor is on {tensor.device}, and Triton kernels need CUDA tensors "
                    "(or TRITON_INTERPRET=1 set before import, to run them on the CPU)")
    return None


def use_kernel(*tensors: torch.Tensor) -> bool:
    """Whether to run the Triton kernel (True) or the PyTorch reference (False) on ``tensors``."""
    forced = envs.force_impl()
    if forced == "reference":
        return False
    reason = why_kernel_cannot_run(*tensors)
    if forced == "kernel" and reason is not None:
        raise RuntimeError(f"SAGE_FAST_FORCE_IMPL=kernel, but the kernel cannot run: {reason}; "
                           "unset SAGE_FAST_FORCE_IMPL to fall back to the PyTorch reference")
    return reason is None
