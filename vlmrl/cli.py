"""`vlmrl <subcommand>`: the command-line entry point.

Each subcommand lives in the module that implements it; that module exposes
``add_args(parser)`` (declares the flags) and ``run(args) -> int`` (does the work, returns an exit code).
Modules are imported only when their subcommand runs, so `vlmrl --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
COMMANDS = {
    "make-tiny": ("vlmrl.models.tiny", "build a tiny random-initialised Qwen-VL model offline"),
    "make-data": ("vlmrl.data.synthetic", "write a synthetic VQA dataset (JSONL + PNG)"),
    "rollout": ("vlmrl.rollout.cli", "run one image + question through the rollout engine and print the trace"),
    "train": ("vlmrl.train.run", "RL training from a YAML recipe"),
    "sft": ("vlmrl.train.sft", "supervised warm start on demonstrations"),
    "eval": ("vlmrl.evaluation.cli", "evaluate a model on a benchmark task"),
    "score": ("vlmrl.evaluation.score", "score existing predictions against a benchmark file"),
    "view": ("vlmrl.viewer", "render rollout traces into one self-contained HTML file"),
    "plot": ("vlmrl.plots", "plot a run's metrics into PNG files"),
    "quickstart": ("vlmrl.quickstart", "the main job end to end: tiny model, data, SFT, DTPO, eval, summary"),
}


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = (module, help_)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except UsageError as e:
        print(f"vlmrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        # Our loaders raise these with messages that name the file, row and field.
        print(f"vlmrl {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
