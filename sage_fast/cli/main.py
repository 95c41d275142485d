"""Entry point of ``sage-fast``: builds the argument parser and turns errors into clear messages."""

from __future__ import annotations

import argparse
import sys

from sage_fast.cli import ask, doctor, eval, rl, sft, synth, tool, video_commands, view

# Each module adds its subcommands; later issues add theirs here (synth, sft, bench).
COMMAND_MODULES = (doctor, video_commands, ask, eval, synth, sft, rl, tool, view)


def build_parser() -> argparse.ArgumentParser:
    from sage_fast import __version__

    parser = argparse.ArgumentParser(
        prog="sage-fast",
        description="sage_fast: the SAGE any-horizon long-video agent, fast. Run a subcommand with -h for its options.",
    )
    parser.add_argument("--version", action="version", version=f"sage-fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        # Bad input and missing tools get one line that names the problem, not a traceback.
        print(f"sage-fast {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
