"""`kframes train sft1|sft2|grpo --config FILE`: one stage of the curriculum on this machine.

It parses the same arguments as `python -m stages.STAGE` (stages.launch) and ends in the same `run_training`, so a
recipe behaves the same whether it is started here or by `accelerate launch -m stages.sft1` on a GPU node.
"""

from __future__ import annotations

import argparse

from pipeline.core.config import TRAIN_STAGES
from stages.launch import add_train_args, run_training


def _cmd_train(args: argparse.Namespace) -> int:
    from stages.registry import TRAINERS  # torch, transformers and TRL: loaded only when training

    return run_training(args.stage, TRAINERS[args.stage], args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage of the curriculum (sft1, sft2, grpo); resumes from the newest complete checkpoint",
    )
    p.add_argument("stage", choices=TRAIN_STAGES)
    add_train_args(p)
    p.set_defaults(func=_cmd_train)
