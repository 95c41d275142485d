"""Benchmarks of sage_fast's hot paths against the best public alternatives (not shipped in the wheel).

A package so that the suites, the video generator and ``report.py`` import each other by one
name (``bench.videos``) however pytest or ``python -m`` is started from the repository root.
"""
