"""`kframes run` (the whole curriculum on one machine) and `kframes demo` (the same, on generated videos)."""

from __future__ import annotations

import argparse
import sys

from pipeline.core.config import add_config_args
from pipeline.core.logs import setup_logging
from pipeline.orchestration.demo import run_demo
from pipeline.orchestration.orchestrate import STAGES, format_status, load_pipeline, run_pipeline


def _cmd_run(args: argparse.Namespace) -> int:
    setup_logging()
    plan = load_pipeline(args.config, args.overrides)
    if args.status:
        print(format_status(plan))
        return 0

    def show(outcome) -> None:
        print(f"[kframes run] {outcome.describe()}", file=sys.stderr, flush=True)

    run_pipeline(plan, from_stage=args.from_stage, only=args.only, force=args.force, on_outcome=show)
    print(format_status(plan))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    setup_logging()
    report = run_demo(args.out, config=args.config, force=args.force)
    print(report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the curriculum data -> sft1 -> sft2 -> grpo -> select -> eval, skipping finished stages",
        description="Run the pipeline described by a pipeline config (configs/pipeline/*.yaml). A stage whose "
        "record matches its config and inputs is skipped; an interrupted one resumes; a changed one starts over, "
        "and so does everything after it. --set KEY=VALUE changes the pipeline file (output_dir=runs/x); "
        "--set STAGE:KEY=VALUE changes one stage's recipe (sft1:train.max_steps=10).",
    )
    add_config_args(p)
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="begin at this stage (earlier ones must be done)")
    p.add_argument("--only", action="append", choices=STAGES, help="run only this stage (repeatable)")
    p.add_argument(
        "--force",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="start the selected stages over even if they are done",
    )
    p.add_argument("--status", action="store_true", help="show each stage's state and exit")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on generated sample videos with a tiny local model; writes OUT/report.md",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--config", default="configs/pipeline/demo.yaml", help="pipeline config of the demo")
    p.add_argument("--force", action="store_true", help="start every stage over")
    p.set_defaults(func=_cmd_demo)
