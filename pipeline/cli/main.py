"""The `kframes` command: the parser and the one place errors become exit codes.

Each command group is a module of this package with `register(subparsers)`; `COMMAND_MODULES` lists them in help
order. User-facing errors (`KframesError`) become one line on stderr and their exit code (2 for bad input). Command
modules import torch and transformers only inside their handlers, so `kframes --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli import basic, check, data, evaluate, run, scenes, select, submit, train
from pipeline.core.errors import KframesError
from pipeline.core.secrets import redact

COMMAND_MODULES = (basic, scenes, data, select, evaluate, check, train, run, submit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kframes",
        description="Scene-driven any-k keyframe selection: build PeakClips, train the selector, select frames.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (argparse printed it) or --help: the same exit code, returned
        return int(exc.code or 0)
    try:
        rc = args.func(args)
    except KframesError as exc:
        print(redact(f"kframes {args.command}: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"kframes {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
