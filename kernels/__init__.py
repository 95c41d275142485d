"""Triton kernels of sage_fast, shipped in the wheel as ``sage_fast.kernels``.

The kernels themselves (frame-token pruning, packed varlen attention) are added by their own
issue; this package exists now so that the wheel mapping and imports are settled.
"""
