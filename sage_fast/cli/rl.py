"""``sage-fast rl DATA``: multi-turn GRPO on SAGE questions, resumable, with the paper's defaults."""

from __future__ import annotations

import argparse
import sys
import warnings

# command-line option -> (section of RL.yaml, field)
_OPTIONS = {
    "steps": ("grpo", "max_steps"), "group_size": ("grpo", "group_size"),
    "prompts_per_step": ("grpo", "prompts_per_step"), "lr": ("grpo", "learning_rate"),
    "max_new_tokens": ("grpo", "max_new_tokens"), "save_every": ("grpo", "save_every"), "engine": ("grpo", "engine"),
    "lora_rank": ("grpo", "lora_rank"),
    "num_frames": ("agent", "num_frames"), "judge_model": ("judge", "model"), "judge_cache": ("judge", "cache_dir"),
}
_SETTINGS = {"data": None, "video_root": None, "preset": None, "model": None, "device": "cpu", "judge": None,
             "out": "sage_rl"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rl", help="train an orchestrator with multi-turn GRPO (the paper's RL stage)")
    parser.add_argument("data", nargs="?", default=None,
                        help="questions with ground truth: JSONL / JSON / parquet / HF datasets folder (e.g. SAGE-MM-RL-7k)")
    parser.add_argument("--config", default=None, metavar="RL.yaml",
                        help="settings file: data, video_root, preset, model, device, out, judge (a URL or a mapping of "
                             "JudgeConfig fields), and `grpo:` / `agent:` mappings of GRPOConfig / AgentConfig fields")
    parser.add_argument("--print-config", action="store_true", help="print the effective settings as YAML and exit")
    parser.add_argument("--video-root", default=None, help="folder the records' videos are found in")
    parser.add_argument("--preset", default=None, choices=("sage-bench", "minerva"), help="field names of a known dataset")
    parser.add_argument("--model", default=None,
                        help="the policy: a local Qwen2.5-VL / Qwen3-VL folder or hub id (e.g. the SFT checkpoint), "
                             "or tiny / tiny-qwen3 (random weights, offline: the whole loop runs, nothing is learnt)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1")
    parser.add_argument("--judge", default=None, help="OpenAI-compatible judge server URL, e.g. http://localhost:8001/v1")
    parser.add_argument("--judge-model", default=None, help="model name on the judge server")
    parser.add_argument("--judge-cache", default=None, help="folder caching the judge's verdicts across runs")
    parser.add_argument("--out", default=None, help="run folder: checkpoints, rollouts, metrics (resumed when present)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--group-size", type=int, default=None, help="episodes per question (default 8)")
    parser.add_argument("--prompts-per-step", type=int, default=None, help="questions per step (default 16)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-6)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens per model call in rollouts")
    parser.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--num-frames", type=int, default=None, help="Stage-1 frames (default 128)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="train LoRA adapters of this rank instead of every weight; the frozen base is the KL "
                             "reference (no second copy): GRPO of an 8B model on one GPU (default 0: full, the paper)")
    parser.add_argument("--engine", default=None, choices=("static", "continuous"),
                        help="rollout engine on the policy: padded batches (default) or transformers' continuous batching")
    parser.set_defaults(handler=run)


def resolve(args: argparse.Namespace) -> tuple[dict, object, object, object]:
    """Defaults < RL.yaml < command line: the plain settings, GRPOConfig, AgentConfig, JudgeConfig."""
    from sage_fast.agent.loop import AgentConfig
    from sage_fast.config import from_dict, load_yaml
    from sage_fast.eval.judge import JudgeConfig
    from sage_fast.rl.trainer import GRPOConfig

    data = load_yaml(args.config) if args.config else {}
    sections = {name: dict(data.pop(name, None) or {}) for name in ("grpo", "agent")}
    judge = data.pop("judge", None)
    sections["judge"] = dict(judge) if isinstance(judge, dict) else ({"base_url": judge} if judge else {})
    unknown = sorted(set(data) - set(_SETTINGS))
    if unknown:
        raise ValueError(f"{args.config}: unknown setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join([*_SETTINGS, 'grpo', 'agent'])}")
    settings = {name: getattr(args, name) if getattr(args, name, None) is not None else data.get(name, default)
                for name, default in _SETTINGS.items() if name != "judge"}
    if args.judge is not None:
        sections["judge"]["base_url"] = args.judge
    for option, (section, name) in _OPTIONS.items():
        if getattr(args, option) is not None:
            sections[section][name] = getattr(args, option)
    sections["grpo"].setdefault("output_dir", settings.pop("out"))
    if args.out is not None:
        sections["grpo"]["output_dir"] = args.out
    where = args.config or "rl"
    grpo = from_dict(GRPOConfig, sections["grpo"], where=f"{where}: grpo")
    agent = from_dict(AgentConfig, sections["agent"], where=f"{where}: agent")
    if not args.print_config:
        for name, hint in (("data", "the questions file (DATA or `data:`)"),
                           ("model", "the policy (--model, e.g. the SFT checkpoint, or tiny)")):
            if not settings[name]:
                raise ValueError(f"give {hint}")
        if not sections["judge"].get("base_url"):
            raise ValueError("give the judge: --judge URL of an OpenAI-compatible server (or `judge:` in --config); "
                             "RL's accuracy reward needs it")
    judge_config = from_dict(JudgeConfig, sections["judge"], where=f"{where}: judge") if sections["judge"] else None
    return settings, grpo, agent, judge_config


def run(args: argparse.Namespace) -> int:
    from sage_fast.config import to_dict
    from sage_fast.eval.datasets import load_items
    from sage_fast.eval.judge import Judge
    from sage_fast.models.transformers_backend import TransformersVLM
    from sage_fast.rl.trainer import GRPOTrainer

    from .ask import local_model

    settings, grpo, agent, judge_config = resolve(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump({**settings, "judge": to_dict(judge_config) if judge_config else None,
                              "grpo": to_dict(grpo), "agent": to_dict(agent)}, sort_keys=False), end="")
        return 0
    items = load_items(settings["data"], video_root=settings["video_root"], preset=settings["preset"])
    model = local_model(settings["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model's note was said once above
        vlm = TransformersVLM(model, device=settings["device"])
    print(f"[rl] {len(items)} questions, {grpo.group_size} episodes each, {grpo.prompts_per_step} questions per step; "
          f"run folder {grpo.output_dir}", file=sys.stderr)
    trainer = GRPOTrainer(vlm, Judge(judge_config), grpo, agent_config=agent)
    metrics = trainer.train(items)
    last = metrics[-1] if metrics else {}
    print(f"done: {len(metrics)} steps; last reward {last.get('reward_mean', float('nan')):+.3f}, "
          f"checkpoint {trainer.checkpoints()[-1] if trainer.checkpoints() else 'none'}")
    return 0
