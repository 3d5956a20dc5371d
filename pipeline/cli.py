"""The `kframes` command.

Each subcommand lives beside the code it drives and registers itself through a `register(subparsers)`
function; this module only builds the parser and turns user-facing errors (`KframesError`) into one line
on stderr and exit code 2. Command modules import heavy libraries (torch, transformers) inside their
handlers, so `kframes --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline.errors import KframesError

# Modules that add subcommands, in help order. Each has `register(subparsers) -> None`, and each parser
# it adds sets `func=handler(args) -> int | None`.
COMMAND_MODULES: list[str] = [
    "pipeline.commands_basic",
    "data_builder.commands",
    "data_builder.commands_data",
    "pipeline.commands_select",
    "pipeline.commands_eval",
    "stages.commands",
    "pipeline.commands_pipeline",
    "pipeline.commands_submit",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kframes",
        description="Scene-driven any-k keyframe selection: build PeakClips, train the selector, select frames.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE`, shared by every command that reads a recipe."""
    p.add_argument("--config", required=required, help="YAML recipe (configs/<size>/<stage>.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.learning_rate=2e-5 (repeatable)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KframesError as exc:
        print(f"kframes {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"kframes {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
