"""Evaluation: benchmark items in, the agent run and judged, result rows and accuracy tables out.

:mod:`~sage_fast.eval.judge` is the project's one LLM judge (RL rewards use it too);
:mod:`~sage_fast.eval.datasets` maps SAGE-Bench / MINERVA / custom records to ``EvalItem``;
:mod:`~sage_fast.eval.runner` runs and judges them resumably; :mod:`~sage_fast.eval.report`
turns rows into the paper's tables (``sage-fast eval``).
"""

from sage_fast.eval.datasets import EvalItem, items_from_records, load_items
from sage_fast.eval.judge import Judge, JudgeConfig, Verdict, parse_verdict
from sage_fast.eval.report import format_report, summarize
from sage_fast.eval.runner import EvalConfig, arun_eval, make_row, read_rows, run_eval

__all__ = ["EvalConfig", "EvalItem", "Judge", "JudgeConfig", "Verdict", "arun_eval", "format_report",
           "items_from_records", "load_items", "make_row", "parse_verdict", "read_rows", "run_eval", "summarize"]
