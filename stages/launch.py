"""`python -m stages.STAGE --config FILE [--set KEY=VALUE] [--no-resume]`: one training stage, as
`accelerate launch -m stages.sft1 ...` runs it on a GPU node.

The stage module hands its own `train` function in, so this module needs no table of stages; `kframes train STAGE`
parses the same arguments and ends in the same `run_training`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import TrainStage, add_config_args, load_stage_config
from pipeline.core.errors import KframesError
from pipeline.core.logs import setup_logging

TrainFunction = Callable[..., Path]  # train(cfg, *, resume=True, callbacks=()) -> final/ folder


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over: delete this stage's checkpoints and final model instead of resuming from the newest "
        "complete checkpoint",
    )


def run_training(stage: TrainStage, train: TrainFunction, args: argparse.Namespace, callbacks: Sequence[Any] = ()) -> int:
    """Load the recipe (checked to be this stage's), train, print the `final/` folder."""
    setup_logging()
    cfg = load_stage_config(stage, args.config, args.overrides)
    print(train(cfg, resume=args.resume, callbacks=callbacks))
    return 0


def main(stage: TrainStage, train: TrainFunction, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"train the {stage} stage")
    add_train_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_training(stage, train, args)
    except KframesError as exc:
        print(f"stages.{stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
