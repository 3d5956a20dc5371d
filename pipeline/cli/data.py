"""`kframes data build` and `kframes data tasks`: the PeakClips builder and the stages' task files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_builder.build import build_peakclips, format_table
from data_builder.tasks import STAGES, task_file, write_tasks
from pipeline.core.config import add_config_args, load_recipe, set_dotted
from pipeline.core.contracts import PeakClipsRecord
from pipeline.core.io import read_jsonl_models


def _load_cfg(args: argparse.Namespace):
    """The data recipe with `--set` overrides, then `--queries`/`--captions` taken as plain paths (never read as
    YAML: `my queries #1.jsonl` is a file name, not a comment)."""
    paths = {"queries.file": getattr(args, "queries", None), "captions.import_file": getattr(args, "captions", None)}

    def set_paths(raw: dict) -> None:
        for dotted, value in paths.items():
            if value:
                set_dotted(raw, dotted, value)

    return load_recipe("data", args.config, args.overrides, finish=set_paths)


def _cmd_build(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    videos = args.videos or cfg.videos_dir
    if not videos:
        from pipeline.core.errors import ConfigError

        raise ConfigError("no videos folder: pass --videos DIR or set videos_dir in the config")
    out = Path(args.out or cfg.output_dir)
    summary = build_peakclips(
        cfg, videos_dir=videos, out_dir=out, shard=args.shard, write_task_files=not args.no_tasks,
        progress=not args.quiet,
    )
    print(f"PeakClips: {out / 'peakclips.jsonl'}  (built {len(summary.built)}, resumed {len(summary.skipped)}, "
          f"failed {len(summary.failed)})")
    print(format_table(summary.totals))
    for vid, err in summary.failed.items():
        print(f"  failed: {vid}: {err}", file=sys.stderr)
    if summary.task_counts:
        for stage, counts in summary.task_counts.items():
            print(f"  tasks/{stage}: train {counts['train']:,}, val {counts['val']:,}")
    elif not summary.complete:
        print(f"  {summary.totals.get('videos', 0)} videos done so far; task files are written when all are "
              "(rerun without --shard, or `kframes data tasks`)")
    return 1 if summary.failed else 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    out = Path(args.out or cfg.output_dir)
    source = Path(args.peakclips) if args.peakclips else out / "peakclips.jsonl"
    records = read_jsonl_models(source, PeakClipsRecord)
    stages = STAGES if args.stage == "all" else (args.stage,)
    counts = write_tasks(records, out, stages, num_candidates=cfg.frames.num_candidates, tasks_cfg=cfg.tasks)
    for stage in stages:
        c = counts[stage]
        per_task = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("train:"))
        print(f"{task_file(out, stage, 'train')}: {c['train']:,} ({per_task or 'none'}); "
              f"{task_file(out, stage, 'val').name}: {c['val']:,}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build PeakClips and the training task files")
    dsub = p.add_subparsers(dest="data_command", required=True)

    b = dsub.add_parser("build", help="scenes, captions, queries, relevance, clips -> peakclips.jsonl and task files")
    add_config_args(b)
    b.add_argument("--videos", help="folder of videos (default: videos_dir in the config)")
    b.add_argument("--out", help="output folder (default: output_dir in the config)")
    b.add_argument("--shard", metavar="i/N", help="build every N-th video from the i-th (Slurm job arrays)")
    b.add_argument("--queries", help="user queries JSONL (sets queries.file)")
    b.add_argument("--captions", help="captions JSON to import (sets captions.import_file)")
    b.add_argument("--no-tasks", action="store_true", help="do not write the task files at the end")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_build)

    t = dsub.add_parser("tasks", help="write <out>/tasks/{stage}.{train,val}.jsonl from peakclips.jsonl")
    add_config_args(t)
    t.add_argument("--stage", choices=["sft1", "sft2", "grpo", "all"], default="all")
    t.add_argument("--out", help="output folder (default: output_dir in the config)")
    t.add_argument("--peakclips", help="records to read (default: <out>/peakclips.jsonl)")
    t.set_defaults(func=_cmd_tasks)
