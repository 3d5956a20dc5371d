"""`kframes submit STAGE|all --profile configs/cluster/slurm.yaml [--dry-run]` (pipeline.orchestration.submission)."""

from __future__ import annotations

import argparse
import sys

from pipeline.orchestration.orchestrate import STAGES
from pipeline.orchestration.submission import submit


def _cmd_submit(args: argparse.Namespace) -> int:
    subs = submit(
        args.stage,
        args.profile,
        pipeline_path=args.config,
        dry_run=args.dry_run,
        force=args.force,
        after=args.after,
    )
    for s in subs:
        if s.skipped:
            print(f"{s.stage:<7} skipped ({s.skipped})", file=sys.stderr)
            continue
        if args.dry_run:
            export = "".join(f"; --export={k}={v}" for k, v in s.export.items())
            print(f"# ---- {s.script} (dependency: {s.dependency or 'none'}{export})")
            print(s.script.read_text())
        else:
            dep = f" after {s.dependency}" if s.dependency else ""
            print(f"{s.name:<18} job {s.job_id}{dep}  script {s.script}", file=sys.stderr)
            print(s.job_id)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="write and submit the sbatch script of a stage (or all stages, chained) to Slurm",
        description="One Slurm job per stage, or for data, select and eval with `stages.<stage>.array` in the profile a "
        "job array of shards and a merge job (and for data the annotating model's vLLM server); `all` chains the "
        "stages with --dependency=afterok and leaves out stages that are already done. Scripts and logs go to the "
        "profile's run_dir (default <pipeline output>/slurm).",
    )
    p.add_argument("stage", choices=[*STAGES, "all"])
    p.add_argument("--profile", required=True, help="cluster profile (configs/cluster/slurm.yaml)")
    p.add_argument("--config", default=None, help="pipeline config (default: the profile's `pipeline`)")
    p.add_argument("--dry-run", action="store_true", help="write and print the scripts without submitting them")
    p.add_argument("--force", action="store_true", help="start the stages over even if they are done")
    p.add_argument("--after", default=None, metavar="JOBID", help="make the first job depend on this one (afterok)")
    p.set_defaults(func=_cmd_submit)
