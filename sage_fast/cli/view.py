"""``sage-fast view TRAJ.jsonl``: write a trajectory as a self-contained HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("view", help="write one trajectory of a JSONL file as an HTML page")
    parser.add_argument("trajectories", help="a JSONL file of trajectories (sage-fast ask --out)")
    parser.add_argument("--index", type=int, default=-1, help="which trajectory (default: the last)")
    parser.add_argument("--html", default=None, help="output page (default: next to the JSONL file)")
    parser.add_argument("--no-thumbnails", action="store_true", help="do not decode frames from the video")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sage_fast.agent.trajectory import read_jsonl
    from sage_fast.agent.viewer import write_html

    source = Path(args.trajectories)
    if not source.is_file():
        raise ValueError(f"{source}: no such file; give a JSONL file written by `sage-fast ask --out`")
    trajectories = list(read_jsonl(source))
    if not trajectories:
        raise ValueError(f"{source}: holds no trajectories")
    if not -len(trajectories) <= args.index < len(trajectories):
        raise ValueError(f"--index {args.index}: {source} holds {len(trajectories)} trajectories")
    out = Path(args.html) if args.html else source.with_suffix(".html")
    print(write_html(trajectories[args.index], out, thumbnails=not args.no_thumbnails))
    return 0
