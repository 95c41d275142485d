"""``sage-fast ask VIDEO QUESTION``: run the SAGE agent on one video and print the turns as they go."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ask", help="answer a question about a video with the SAGE agent")
    parser.add_argument("video")
    parser.add_argument("question")
    parser.add_argument("--orchestrator", required=True,
                        help="openai:URL (an OpenAI-compatible server such as vLLM serving SAGE-MM)")
    parser.add_argument("--model", default=None, help="model name on the server (default: the server's only model)")
    parser.add_argument("--num-frames", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=10, help="Stage-2 steps before giving up")
    parser.add_argument("--work-dir", default=None, help="where tools write frames and clips")
    parser.add_argument("--out", default=None, help="append the trajectory to this JSONL file")
    parser.set_defaults(handler=run)


def make_orchestrator(spec: str, model: str | None):  # noqa: ANN201 (an Orchestrator)
    if spec.startswith("openai:"):
        from sage_fast.models.openai_compatible import OpenAICompatible

        url = spec.removeprefix("openai:")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--orchestrator {spec!r}: give the server's URL, e.g. openai:http://localhost:8000/v1")
        if model is None:
            from openai import OpenAI

            served = [m.id for m in OpenAI(base_url=url, api_key="EMPTY").models.list()]
            if len(served) != 1:
                raise ValueError(f"the server at {url} serves {served}; choose one with --model")
            model = served[0]
        return OpenAICompatible(url, model)
    raise ValueError(f"--orchestrator {spec!r}: only openai:URL is available in this version (local "
                     "transformers models and Gemini are being added); serve SAGE-MM with vLLM and pass its URL")


def run(args: argparse.Namespace) -> int:
    from sage_fast.agent.loop import Agent, AgentConfig
    from sage_fast.agent.trajectory import append_jsonl

    orchestrator = make_orchestrator(args.orchestrator, args.model)
    config = AgentConfig(num_frames=args.num_frames, max_stage2_steps=args.max_steps, work_dir=args.work_dir)
    trajectory = Agent(orchestrator, config=config).run(Path(args.video), args.question)
    for turn in trajectory.turns:
        label = "Stage-1" if turn.stage == "stage1" else f"Stage-2 step {turn.step}"
        print(f"[{label}] {turn.generate_seconds:.1f} s, {turn.tokens_in} tokens in, {turn.tokens_out} out"
              + (f", parse error: {turn.parse_error}" if turn.parse_error else ""), file=sys.stderr)
        if turn.tool_call is not None:
            call = turn.tool_call
            print(f"  -> {call.name}({call.validated_arguments or call.arguments}) "
                  f"[{call.seconds:.1f} s]\n     {call.result.splitlines()[0] if call.result else ''}", file=sys.stderr)
    if args.out:
        append_jsonl(args.out, [trajectory])
    print(trajectory.answer)
    return 0
