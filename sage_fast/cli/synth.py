"""``sage-fast synth questions|trajectories``: make SAGE's training data (Gemini-written questions, then SFT records).

``synth questions VIDEO_OR_DIR... --out questions.jsonl`` asks Gemini for each video's questions
(GEMINI_API_KEY; GOOGLE_GEMINI_BASE_URL for a proxy). ``synth trajectories questions.jsonl
--orchestrator ... --judge URL --out records.jsonl`` runs the agent on them, keeps the episodes the
judge accepts and writes one SFT record per turn; its agent options are ``sage-fast ask``'s. Both
resume when rerun with the same output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from sage_fast.cli.eval import add_agent_options

    parser = subparsers.add_parser("synth", help="synthesize training data: questions with Gemini, then SFT "
                                                 "records from correct agent trajectories (resumable)")
    commands = parser.add_subparsers(dest="synth_command", metavar="STEP")
    parser.set_defaults(handler=lambda args: _missing_step(parser))  # `sage-fast synth` alone: its help

    questions = commands.add_parser("questions", help="Gemini watches each video and writes its questions")
    questions.add_argument("videos", nargs="+", metavar="VIDEO_OR_DIR",
                           help="video files, or folders searched recursively for videos")
    questions.add_argument("--out", required=True, help="questions JSONL (rerunning the command resumes it)")
    questions.add_argument("--model", default="gemini-2.5-flash", help="Gemini model (default gemini-2.5-flash)")
    questions.add_argument("--min-questions", type=int, default=10, help="fewest valid questions per video (10)")
    questions.add_argument("--max-questions", type=int, default=20, help="most questions per video (20)")
    questions.add_argument("--max-retries", type=int, default=2,
                           help="times a set that breaks the rules is sent back with its problems (2)")
    questions.add_argument("--inline-limit-mb", type=float, default=14.0,
                           help="larger videos go through the Files API instead of inline (14)")
    questions.add_argument("--concurrency", type=int, default=4, help="videos in flight at once (4)")
    questions.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")
    questions.add_argument("--media-resolution", default="auto", choices=("auto", "low", "medium", "high"),
                           help="Gemini's video resolution; auto: low for videos over 40 minutes")
    questions.set_defaults(handler=run_questions)

    trajectories = commands.add_parser("trajectories", help="run the agent on the questions, keep the correct "
                                                            "episodes, write one SFT record per turn")
    trajectories.add_argument("questions", help="questions JSONL from `sage-fast synth questions` (or any data "
                                                "`sage-fast eval` reads with its default field names)")
    trajectories.add_argument("--out", required=True, help="SFT records JSONL (rerunning resumes it)")
    trajectories.add_argument("--trajectories", default=None, metavar="PATH",
                              help="every trajectory with its verdict (default: <out stem>.trajectories.jsonl)")
    trajectories.add_argument("--video-root", default=None, help="folder holding the videos, if paths are relative")
    trajectories.add_argument("--limit", type=int, default=None, help="only the first N questions")
    trajectories.add_argument("--concurrency", type=int, default=4, help="episodes in flight at once (4)")
    trajectories.add_argument("--judge", default=None, metavar="URL",
                              help="OpenAI-compatible judge endpoint, e.g. https://api.openai.com/v1")
    trajectories.add_argument("--judge-model", default="gpt-4o-mini", help="judge model name (default gpt-4o-mini)")
    trajectories.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable with the key")
    trajectories.add_argument("--judge-cache", default=None, metavar="DIR", help="on-disk verdict cache folder")
    add_agent_options(trajectories)
    trajectories.set_defaults(handler=run_trajectories)


def _missing_step(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_questions(args: argparse.Namespace) -> int:
    from sage_fast.data.synth import SynthConfig, make_client, synthesize_questions

    config = SynthConfig(output=args.out, model=args.model, min_questions=args.min_questions,
                         max_questions=args.max_questions, max_retries=args.max_retries,
                         inline_limit_mb=args.inline_limit_mb, concurrency=args.concurrency,
                         temperature=args.temperature, media_resolution=args.media_resolution)
    client = make_client(config)  # a missing key is reported before any video is read
    questions = synthesize_questions(args.videos, config, client=client)
    videos = len({q.video_path for q in questions})
    print(f"{len(questions)} questions for {videos} video(s) in {args.out}; per-video status: {config.status_path}",
          file=sys.stderr)
    return 0


def _trajectories_path(out: str) -> Path:
    path = Path(out)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.trajectories.jsonl")


def run_trajectories(args: argparse.Namespace) -> int:
    if not args.judge:
        raise ValueError("name the judge with --judge URL (an OpenAI-compatible endpoint, e.g. "
                         "https://api.openai.com/v1 or a local vLLM server's http://localhost:8000/v1)")
    from sage_fast.cli.ask import build_agent, resolve_settings
    from sage_fast.data.trajectories import make_sft_records
    from sage_fast.eval.datasets import load_items
    from sage_fast.eval.judge import Judge, JudgeConfig

    # everything that can be wrong with the input is found before a model is loaded
    items = load_items(args.questions, video_root=args.video_root, limit=args.limit)
    if not items:
        raise ValueError(f"{args.questions}: holds no questions; make them with `sage-fast synth questions`")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    judge = Judge(JudgeConfig(base_url=args.judge, model=args.judge_model, api_key_env=args.judge_key_env,
                              cache_dir=args.judge_cache))
    settings, agent_config = resolve_settings(args)
    agent = build_agent(settings, agent_config)
    trajectories = args.trajectories or str(_trajectories_path(args.out))
    print(f"{len(items)} questions from {args.questions}; records: {args.out}; trajectories: {trajectories}",
          file=sys.stderr)
    counts = make_sft_records(agent, items, judge, args.out, trajectories, concurrency=args.concurrency)
    print(f"{counts.run} episode(s) run, {counts.correct}/{counts.judged} judged correct, {counts.records} "
          f"record(s) written, {counts.skipped} question(s) already done" +
          (f"; {counts.errors} episode(s) failed (rerun to retry them)" if counts.errors else ""), file=sys.stderr)
    return 0
