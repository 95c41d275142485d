"""``sage-fast eval DATA --judge URL --out results.jsonl``: run the agent on a benchmark, judge it, print the tables.

The orchestrator and tool options are ``sage-fast ask``'s (same names, same RUN.yaml, built by the
same helpers); the data, judge and output options are this command's. ``--report results.jsonl``
only prints the tables of an existing results file (ours, or a reference-code results ``.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """The options that ``ask.resolve_settings`` reads (see ``sage-fast ask -h`` for the long help)."""
    group = parser.add_argument_group("agent (as in sage-fast ask)")
    group.add_argument("--config", default=None, metavar="RUN.yaml",
                       help="settings file: orchestrator, tool_model, asr, ... and an `agent:` mapping of "
                            "AgentConfig fields; command-line options win")
    group.add_argument("--orchestrator", default=None,
                       help="tiny | tiny-qwen3 | Hugging Face id or local folder | openai:URL | gemini:MODEL")
    group.add_argument("--device", default=None, help="device for a local model (cpu, cuda, cuda:1)")
    group.add_argument("--max-tokens", type=int, default=None, help="tokens per model call (default 2048; 64 for tiny)")
    group.add_argument("--model", default=None, help="openai: model name on the server (default: its only model)")
    group.add_argument("--frames-as", default=None, choices=("images", "video"), help="openai: how frames are sent")
    group.add_argument("--tool-model", default=None, help="model for grounding and analysis (default: the orchestrator)")
    group.add_argument("--asr", default=None, help="speech backend: faster-whisper:MODEL, transformers:MODEL, "
                                                   "openai:URL or none")
    group.add_argument("--search", default=None, choices=("serper", "ddgs", "none"), help="web search backend")
    group.add_argument("--num-frames", type=int, default=None, help="Stage-1 frames (default 128)")
    group.add_argument("--prune", default=None, metavar="keep_ratio=R|threshold=T", help="Stage-1 token pruning")
    group.add_argument("--frame-mode", default=None, choices=("exact", "skim"), help="Stage-1 frame sampling")
    group.add_argument("--max-steps", type=int, default=None, help="Stage-2 steps before giving up (default 10)")
    group.add_argument("--work-dir", default=None, help="where tools write frames and clips")
    group.add_argument("--tool-cache", default=None, help="folder of the on-disk tool-result cache")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate the agent on a benchmark with an LLM judge (resumable)")
    parser.add_argument("data", nargs="?", help="benchmark records: JSONL, JSON list, parquet, or a datasets folder")
    parser.add_argument("--report", default=None, metavar="RESULTS",
                        help="only print the tables of an existing results file and exit")
    data = parser.add_argument_group("data")
    data.add_argument("--video-root", default=None, help="folder holding the videos (<id>.mp4/.mkv/.webm)")
    data.add_argument("--preset", default=None, choices=("sage-bench", "minerva"), help="field names of a benchmark")
    data.add_argument("--field", action="append", default=[], metavar="NAME=KEY",
                      help="take item field NAME (id, question, answer, video, options, ques_type, difficulty, "
                           "modality, duration, ...) from record key KEY; repeatable")
    data.add_argument("--split", default=None, help="split of a datasets folder (default: test, or its only one)")
    data.add_argument("--limit", type=int, default=None, help="only the first N items")
    run_group = parser.add_argument_group("run and judge")
    run_group.add_argument("--out", default=None, help="results JSONL (rerunning the command resumes it)")
    run_group.add_argument("--concurrency", type=int, default=4, help="episodes in flight at once")
    run_group.add_argument("--retry-errors", action="store_true",
                           help="when resuming, run again the items whose episode failed (their rows are replaced)")
    run_group.add_argument("--judge", default=None, metavar="URL", help="OpenAI-compatible judge endpoint, e.g. "
                                                                        "https://api.openai.com/v1")
    run_group.add_argument("--judge-model", default="gpt-4o-mini", help="judge model name (default gpt-4o-mini)")
    run_group.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable with the key")
    run_group.add_argument("--judge-cache", default=None, metavar="DIR", help="on-disk verdict cache folder")
    add_agent_options(parser)
    parser.set_defaults(handler=run)


def _fields(specs: list[str]) -> dict[str, str]:
    fields = {}
    for spec in specs:
        name, sep, key = spec.partition("=")
        if not sep or not name or not key:
            raise ValueError(f"--field {spec!r}: write NAME=KEY, e.g. --field question=query")
        fields[name] = key
    return fields


def run(args: argparse.Namespace) -> int:
    from sage_fast.eval.report import format_report, summarize
    from sage_fast.eval.runner import read_rows

    if args.report:
        print(format_report(summarize(read_rows(args.report))))
        return 0
    if not args.data:
        raise ValueError("give the benchmark data (DATA), or --report RESULTS to print an existing report")
    if not args.out:
        raise ValueError("name the results file with --out results.jsonl (rerunning resumes it)")
    if not args.judge:
        raise ValueError("name the judge with --judge URL (an OpenAI-compatible endpoint, e.g. "
                         "https://api.openai.com/v1 or a local vLLM server's http://localhost:8000/v1)")
    from sage_fast.cli.ask import build_agent, resolve_settings
    from sage_fast.eval.datasets import load_items
    from sage_fast.eval.judge import Judge, JudgeConfig
    from sage_fast.eval.runner import EvalConfig, run_eval

    # everything that can be wrong with the input is found before a model is loaded
    items = load_items(args.data, video_root=args.video_root, preset=args.preset, fields=_fields(args.field),
                       limit=args.limit, split=args.split)
    if not items:
        raise ValueError(f"{args.data}: holds no records")
    judge_config = JudgeConfig(base_url=args.judge, model=args.judge_model, api_key_env=args.judge_key_env,
                               cache_dir=args.judge_cache)
    config = EvalConfig(output=args.out, concurrency=args.concurrency, judge=judge_config,
                        retry_errors=args.retry_errors)
    settings, agent_config = resolve_settings(args)
    agent = build_agent(settings, agent_config)
    print(f"{len(items)} items from {args.data}; results: {args.out}", file=sys.stderr)
    rows = run_eval(agent, items, Judge(judge_config), config)
    summary = summarize(rows)
    print(format_report(summary))
    print(f"rows: {Path(args.out)}; trajectories: {config.trajectories_path}", file=sys.stderr)
    if summary["errors"]:
        print(f"{summary['errors']} episode(s) failed (see the rows' error field); rerun with --retry-errors to "
              "run them again", file=sys.stderr)
    return 0
