"""``sage-fast ask VIDEO QUESTION``: run the SAGE agent on one video and print the turns as they go."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ask", help="answer a question about a video with the SAGE agent")
    parser.add_argument("video")
    parser.add_argument("question")
    parser.add_argument("--config", default=None, metavar="RUN.yaml",
                        help="settings file: the options below by name (orchestrator, tool_model, asr, ...) and an "
                             "`agent:` mapping of AgentConfig fields; options given on the command line win")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings as YAML (a starting RUN.yaml) and exit")
    parser.add_argument("--orchestrator", default=None,
                        help="openai:URL (a vLLM/SGLang server), gemini:MODEL (GEMINI_API_KEY; "
                             "GOOGLE_GEMINI_BASE_URL for a proxy), a Hugging Face id or local folder of a Qwen-VL "
                             "model (e.g. allenai/SAGE-MM-Qwen3-VL-8B-SFT_RL), or tiny / tiny-qwen3 (random "
                             "weights built offline: meaningless answers, the whole pipeline runs)")
    parser.add_argument("--device", default=None, help="device for a local model (cpu, cuda, cuda:1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per model call (default 2048; 64 for tiny)")
    parser.add_argument("--model", default=None, help="model name on the server (default: the server's only model)")
    parser.add_argument("--frames-as", default=None, choices=("images", "video"),
                        help="openai: servers get the frames as images, or as one video of JPEG frames (vLLM)")
    parser.add_argument("--tool-model", default=None,
                        help="model for grounding and analysis, same forms as --orchestrator (default: the orchestrator)")
    parser.add_argument("--asr", default=None,
                        help="speech backend: faster-whisper:MODEL (size name, CTranslate2 folder, or offline-tiny.en: "
                             "bundled, no download), transformers:MODEL (Whisper), openai:URL, or none")
    parser.add_argument("--search", default=None, choices=("serper", "ddgs", "none"),
                        help="web search and page reading (serper needs SERPER_API_KEY)")
    parser.add_argument("--num-frames", type=int, default=None, help="Stage-1 frames (default 128)")
    parser.add_argument("--prune", default=None, metavar="keep_ratio=R|threshold=T",
                        help="local models: drop Stage-1 video tokens that repeat the previous frame group "
                             "(e.g. keep_ratio=0.5 or threshold=0.95); positions are kept")
    parser.add_argument("--frame-mode", default=None, choices=("exact", "skim"),
                        help="Stage-1 frames: exact uniform frames (the paper), or the nearest keyframes (fast)")
    parser.add_argument("--max-steps", type=int, default=None, help="Stage-2 steps before giving up (default 10)")
    parser.add_argument("--work-dir", default=None, help="where tools write frames and clips")
    parser.add_argument("--tool-cache", default=None,
                        help="folder of the on-disk tool-result cache, shared across runs (default: off)")
    parser.add_argument("--out", default=None, help="append the trajectory to this JSONL file")
    parser.add_argument("--html", default=None, help="write the trajectory as a self-contained HTML page")
    parser.set_defaults(handler=run)


TINY = {"tiny": "qwen2_5_vl", "tiny-qwen3": "qwen3_vl"}


def tiny_model_folder(family: str) -> Path:
    """Where the tiny model is built once (SAGE_FAST_CACHE, default ~/.cache/sage_fast)."""
    from sage_fast import envs
    from sage_fast.models.tiny import build_tiny_model

    folder = envs.cache_dir() / f"tiny-{family}"
    if not (folder / "config.json").is_file():
        build_tiny_model(folder, family)  # type: ignore[arg-type]
    return folder


def local_model(spec: str) -> str | Path:
    """A model to load with transformers (rl, sft): a folder, a hub id, or tiny / tiny-qwen3 built here."""
    if spec in TINY:
        from sage_fast.models.tiny import MEANINGLESS

        print(f"warning: {MEANINGLESS}", file=sys.stderr)
        return tiny_model_folder(TINY[spec])
    if not (Path(spec).is_dir() or str(spec).count("/") == 1):
        raise ValueError(f"--model {spec!r}: give a local Qwen-VL folder, a Hugging Face id (owner/name) or tiny")
    return spec


def parse_pruning(spec: str | None):  # noqa: ANN201 (a TokenPruningConfig or None)
    """``"keep_ratio=0.5"`` / ``"threshold=0.95"`` -> TokenPruningConfig."""
    if spec is None:
        return None
    from sage_fast.models.token_pruning import TokenPruningConfig

    key, sep, value = spec.partition("=")
    if not sep or key not in ("keep_ratio", "threshold"):
        raise ValueError(f"--prune {spec!r}: write keep_ratio=R (0..1) or threshold=T (-1..1)")
    try:
        return TokenPruningConfig(**{key: float(value)})
    except ValueError as exc:
        raise ValueError(f"--prune {spec!r}: {exc}") from exc


def make_orchestrator(spec: str, model: str | None, device: str = "cpu",  # noqa: ANN201 (an Orchestrator)
                      frames_as: str = "images", token_pruning=None):  # noqa: ANN001
    if spec in TINY:
        from sage_fast.models.tiny import MEANINGLESS
        from sage_fast.models.transformers_backend import TransformersVLM

        print(f"warning: {MEANINGLESS}", file=sys.stderr)
        with warnings.catch_warnings():  # said once, above
            warnings.simplefilter("ignore")
            return TransformersVLM(tiny_model_folder(TINY[spec]), device=device, token_pruning=token_pruning)
    if spec.startswith("gemini:"):
        from sage_fast.models.gemini import GeminiVLM

        return GeminiVLM(spec.removeprefix("gemini:") or "gemini-2.5-flash")
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
        return OpenAICompatible(url, model, frames_as=frames_as)
    if Path(spec).is_dir() or spec.count("/") == 1:
        from sage_fast.models.transformers_backend import TransformersVLM

        return TransformersVLM(spec, device=device, token_pruning=token_pruning)
    raise ValueError(f"--orchestrator {spec!r}: give openai:URL, gemini:MODEL, a Hugging Face id (owner/name), "
                     "a local model folder, or tiny")


def make_speech(spec: str, device: str):  # noqa: ANN201 (a SpeechBackend or None)
    if spec == "none":
        return None
    if spec.startswith("faster-whisper:"):
        from sage_fast.tools.speech import FasterWhisperTranscriber

        return FasterWhisperTranscriber(spec.removeprefix("faster-whisper:"), device="cuda" if "cuda" in device else "cpu")
    if spec.startswith("transformers:"):
        from sage_fast.tools.speech import TransformersWhisperTranscriber

        return TransformersWhisperTranscriber(spec.removeprefix("transformers:"), device=device)
    if spec.startswith("openai:"):
        from sage_fast.tools.speech import OpenAITranscriber

        return OpenAITranscriber(spec.removeprefix("openai:"))
    raise ValueError(f"--asr {spec!r}: give faster-whisper:MODEL (e.g. faster-whisper:offline-tiny.en), "
                     "transformers:MODEL, openai:URL or none")


def build_agent(settings: dict, config):  # noqa: ANN001, ANN201 (an AgentConfig; an Agent)
    """The agent the settings describe: orchestrator, tool VLM, speech and web tools (ask, eval, synth)."""
    from sage_fast.agent.loop import Agent, default_tools
    from sage_fast.tools.web_tools import WebConfig

    device = settings["device"]
    orchestrator = make_orchestrator(settings["orchestrator"], settings["model"], device, settings["frames_as"],
                                     config.token_pruning)
    tool_vlm = make_orchestrator(settings["tool_model"], None, device) if settings["tool_model"] else None
    tools = default_tools(orchestrator, tool_vlm, speech=make_speech(settings["asr"], device),
                          web=None if settings["search"] == "none" else WebConfig(search_backend=settings["search"]))
    return Agent(orchestrator, tools=tools, config=config)


def print_turn(turn) -> None:  # noqa: ANN001 (a Turn)
    """One turn as it happens, on stderr (stdout carries only the answer, for scripts)."""
    label = "Stage-1" if turn.stage == "stage1" else f"Stage-2 step {turn.step}"
    print(f"[{label}] {turn.generate_seconds:.1f} s, {turn.tokens_in} tokens in, {turn.tokens_out} out"
          + (f", parse error: {turn.parse_error}" if turn.parse_error else ""), file=sys.stderr, flush=True)
    if turn.tool_call is not None:
        call = turn.tool_call
        first_line = call.result.splitlines()[0] if call.result else ""
        print(f"  -> {call.name}({call.validated_arguments or call.arguments}) [{call.seconds:.1f} s"
              + (", cached" if call.cached else "") + f"]\n     {first_line}", file=sys.stderr, flush=True)


# Options that a RUN.yaml may set by name, with their defaults (the command line wins over both).
SETTINGS = {"orchestrator": None, "model": None, "device": "cpu", "frames_as": "images", "tool_model": None,
            "asr": "none", "search": "none"}
# Command-line options that are AgentConfig fields (option -> field).
AGENT_OPTIONS = {"num_frames": "num_frames", "frame_mode": "frame_mode", "max_steps": "max_stage2_steps",
                 "work_dir": "work_dir", "tool_cache": "tool_cache_dir"}


def resolve_settings(args: argparse.Namespace) -> tuple[dict, object]:
    """Defaults < RUN.yaml < command line, for the CLI settings and the AgentConfig."""
    from sage_fast.agent.loop import AgentConfig
    from sage_fast.config import from_dict, load_yaml

    data = load_yaml(args.config) if args.config else {}
    agent_data = dict(data.pop("agent", None) or {})
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{args.config}: unknown setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join([*SETTINGS, 'agent'])}")
    settings = {name: getattr(args, name) if getattr(args, name) is not None else data.get(name, default)
                for name, default in SETTINGS.items()}
    if not settings["orchestrator"]:
        raise ValueError("name the orchestrator: --orchestrator (or `orchestrator:` in --config); "
                         "e.g. --orchestrator tiny to run offline")
    for option, field in AGENT_OPTIONS.items():
        if getattr(args, option) is not None:
            agent_data[field] = getattr(args, option)
    sampling = dict(agent_data.get("sampling") or {})
    if args.max_tokens is not None:
        sampling["max_tokens"] = args.max_tokens
    elif "max_tokens" not in sampling:
        sampling["max_tokens"] = 64 if settings["orchestrator"] in TINY else 2048
    agent_data["sampling"] = sampling
    if args.prune is not None:
        agent_data["token_pruning"] = parse_pruning(args.prune)
    return settings, from_dict(AgentConfig, agent_data, where=f"{args.config or 'ask'}: agent")


def run(args: argparse.Namespace) -> int:
    from sage_fast.agent.trajectory import append_jsonl
    from sage_fast.config import to_dict

    settings, config = resolve_settings(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump({**settings, "agent": to_dict(config)}, sort_keys=False), end="")
        return 0
    if not Path(args.video).is_file():
        raise ValueError(f"{args.video}: no such video file")
    agent = build_agent(settings, config)
    trajectory = agent.run(Path(args.video), args.question,
                                                                      on_turn=print_turn)
    trajectory.metadata["run"] = {**settings, "agent": to_dict(config)}  # what produced it, keys never included
    if args.out:
        append_jsonl(args.out, [trajectory])
    if args.html:
        from sage_fast.agent.viewer import write_html

        print(f"trajectory page: {write_html(trajectory, args.html)}", file=sys.stderr)
    print(trajectory.answer)
    return 0
