"""`kframes run` (the whole curriculum on one machine) and `kframes demo` (the same, on generated videos)."""

from __future__ import annotations

import argparse
import sys

from pipeline.core.config import add_config_args
from pipeline.core.errors import ConfigError
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

    if args.shard is not None or args.merge_shards is not None:
        return _run_array_part(args, plan, show)
    if args.force_token:
        raise ConfigError("--force-token belongs to --shard (a job array's tasks); use --force")
    run_pipeline(plan, from_stage=args.from_stage, only=args.only, force=args.force, on_outcome=show)
    print(format_status(plan))
    return 0


def _run_array_part(args: argparse.Namespace, plan, show) -> int:
    """`--shard i/N` (one task of a job array) or `--merge-shards N` (the merge after it), of one `--only` stage."""
    from pipeline.orchestration.arrays import merge_stage, run_shard

    if args.shard is not None and args.merge_shards is not None:
        raise ConfigError("--shard and --merge-shards: a job array's task or its merge, not both")
    if not args.only or len(args.only) != 1 or args.from_stage or args.force:
        raise ConfigError("--shard/--merge-shards: name one stage with --only (data, select or eval), without --from "
                          "or --force (a job array starts over with --force-token)")
    (stage,) = args.only
    if args.shard is not None:
        show(run_shard(plan, stage, args.shard, force_token=args.force_token))
    else:
        if args.force_token:
            raise ConfigError("--force-token belongs to --shard (the merge never starts a stage over)")
        show(merge_stage(plan, stage, args.merge_shards))
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
    p.add_argument("--shard", metavar="i/N",
                   help="job arrays (data, select, eval): run the i-th of N shards of the --only stage; resumable")
    p.add_argument("--merge-shards", type=int, metavar="N",
                   help="job arrays: join the N shards of the --only stage into its outputs and mark it done")
    p.add_argument("--force-token", metavar="TOKEN",
                   help="with --shard: start the stage over once for this token (what `kframes submit --force` passes "
                   "to every task of an array), resume when it was already started over for it")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on generated sample videos with a tiny local model; writes OUT/report.md",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--config", default="configs/pipeline/demo.yaml", help="pipeline config of the demo")
    p.add_argument("--force", action="store_true", help="start every stage over")
    p.set_defaults(func=_cmd_demo)
