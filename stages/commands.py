"""`kframes train sft1|sft2|grpo --config FILE` and the `python -m stages.STAGE` entry points.

Both parse the same arguments and end in `stages.common.train_stage`, so a recipe behaves the same whether it is
started by the `kframes` command on one machine or by `accelerate launch -m stages.sft1` on a GPU node.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

TRAIN_STAGES = ("sft1", "sft2", "grpo")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from pipeline.cli import add_config_args

    add_config_args(p)
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over: delete this stage's checkpoints and final model instead of resuming from the newest "
        "complete checkpoint",
    )


def setup_logging() -> None:
    """INFO for kframes' own messages, warnings for the libraries (the trainer's progress bar shows the steps)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("stages", "pipeline", "data_builder", "rewards"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_train(stage: str, args: argparse.Namespace) -> int:
    from pipeline.config import load_stage_config
    from stages.common import train_stage

    setup_logging()
    cfg = load_stage_config(stage, args.config, args.overrides)
    final = train_stage(stage, cfg, resume=args.resume)
    print(final)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return run_train(args.stage, args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage of the curriculum (sft1, sft2, grpo); resumes from the newest complete checkpoint",
    )
    p.add_argument("stage", choices=TRAIN_STAGES)
    add_train_args(p)
    p.set_defaults(func=_cmd_train)


def stage_main(stage: str, argv: Sequence[str] | None = None) -> int:
    """`python -m stages.<stage> --config FILE [--set k=v] [--no-resume]` (what `accelerate launch -m` runs)."""
    from pipeline.errors import KframesError

    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"train the {stage} stage")
    add_train_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(stage, args)
    except KframesError as exc:
        print(f"stages.{stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
