"""``sage-fast tool NAME --video V --arg key=value ...``: run one agent tool by hand.

For debugging a tool, a prompt or a backend without a model in the loop: the call goes through
the same registry as the agent's (schema validation, limits, time-out, cache), so what it prints
is exactly what the model would have read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tool", help="run one agent tool by hand and print its result")
    parser.add_argument("name", nargs="?", help="tool name (omit with --list)")
    parser.add_argument("--video", help="the episode's video (tools may only read this one)")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a tool argument; VALUE is read as JSON when it parses (lists, numbers), else as text")
    parser.add_argument("--list", action="store_true", help="print the tools and their JSON schemas, then exit")
    parser.add_argument("--tool-model", default=None,
                        help="model for identify_timestamps_visually and perform_reasoning (same forms as "
                             "`ask --orchestrator`)")
    parser.add_argument("--model", default=None, help="model name on an openai: server")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--asr", default="none", help="speech backend for verbal_transcript (as in `ask`)")
    parser.add_argument("--search", default="none", choices=("serper", "ddgs", "none"))
    parser.add_argument("--work-dir", default=None, help="where the tool writes frames and clips (default: temp)")
    parser.add_argument("--tool-cache", default=None, help="folder of the shared tool-result cache (default: off)")
    parser.set_defaults(handler=run)


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x y"]`` -> ``{"a": 1, "b": "x y"}``; JSON values when they parse."""
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arg {pair!r}: write KEY=VALUE, e.g. --arg timestamp_start=00:01:00")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        arguments[key.strip()] = value
    return arguments


def run(args: argparse.Namespace) -> int:
    from sage_fast.agent.loop import default_tools
    from sage_fast.agent.parsing import ToolCall
    from sage_fast.cli.ask import make_orchestrator, make_speech
    from sage_fast.tools.cache import ToolResultCache
    from sage_fast.tools.context import ToolContext
    from sage_fast.tools.registry import ToolRegistry
    from sage_fast.tools.web_tools import WebConfig

    web = None if args.search == "none" else WebConfig(search_backend=args.search)
    speech = make_speech(args.asr, args.device)
    vlm = make_orchestrator(args.tool_model, args.model, args.device) if args.tool_model else None
    tools = default_tools(vlm, speech=speech, web=web)  # the VLM tools only with a model
    registry = ToolRegistry(tools, cache=ToolResultCache(args.tool_cache) if args.tool_cache else None)
    if args.list:
        print(json.dumps(registry.schemas, indent=2))
        return 0
    if not args.name:
        raise ValueError("name a tool (sage-fast tool --list shows them)")
    if args.name not in registry.tools:
        needs = {"identify_timestamps_visually": "--tool-model", "perform_reasoning": "--tool-model",
                 "verbal_transcript": "--asr", "unified_web_search": "--search", "parse_web_data": "--search"}
        hint = f"; it needs {needs[args.name]}" if args.name in needs else ""
        raise ValueError(f"tool {args.name!r} is not available{hint} (available: {', '.join(registry.tools)})")
    if not args.video or not Path(args.video).is_file():
        raise ValueError(f"--video {args.video!r}: give the video the tool may read (an existing file)")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sage_tool_"))
    context = ToolContext(video_path=Path(args.video), work_dir=work)
    arguments = parse_arguments(args.arg)
    record = registry.call(context, ToolCall(name=args.name, arguments=arguments, rationale="by hand"), [])
    if record.dropped_arguments:
        print(f"dropped unknown arguments: {', '.join(record.dropped_arguments)}", file=sys.stderr)
    print(f"{args.name} [{record.seconds:.2f} s{', cached' if record.cached else ''}]", file=sys.stderr)
    print(record.result)
    return 1 if record.error else 0
