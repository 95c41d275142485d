"""Plain-PyTorch references of every sage_fast Triton kernel: the tests' oracle, the benchmarks'
baseline and the fallback when Triton cannot run.

Each function here is the simple, obviously-right version of its kernel, written for clarity, not
speed. Kernel files import nothing from each other; they import their reference from here.
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the sections below)

# ---- frame-token pruning (kernels/token_prune.py) ------------------------------------------------

# ---- packed varlen attention (kernels/packed_attention.py) ---------------------------------------
