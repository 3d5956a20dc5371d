"""`kframes check --config RECIPE [--set KEY=VALUE] [--processor DIR] [--video WxH:SECONDS ...]`.

Renders a sample of a training stage's examples (and hypothetical ones for the videos given) with the recipe's
processor, T and max_pixels, and reports per example the text tokens, the visual tokens per frame, the total, and
whether `train.max_length` would cut image tokens; then what the recipe implies at full scale. Exit 1 when an example
would be cut. Every training stage runs the same check on its real examples when it starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.core.config import TRAIN_STAGES, add_config_args, load_recipe, load_yaml, positive_int
from pipeline.core.errors import ConfigError


def _cmd_check(args: argparse.Namespace) -> int:
    from stages.modeling import load_processor, resolve_model_path  # transformers: only when checking
    from stages.preflight import check_recipe

    stage = load_yaml(args.config).get("stage")
    if stage not in TRAIN_STAGES:
        raise ConfigError(f"{args.config}: stage {stage!r}: `kframes check` checks training recipes ({', '.join(TRAIN_STAGES)})")
    cfg = load_recipe(stage, args.config, args.overrides)
    if args.processor:
        processor_path = args.processor
    else:
        try:
            processor_path = resolve_model_path(cfg.model.name_or_path, cfg.init_from)
        except ConfigError:  # the previous stage has not run yet: its processor is the base model's
            processor_path = resolve_model_path(cfg.model.name_or_path, None)
    try:
        processor = load_processor(processor_path, cfg.frames)
    except OSError as exc:
        raise ConfigError(
            f"{processor_path}: cannot load its processor here ({str(exc).splitlines()[0]}); pass --processor DIR "
            "(a folder with the model's tokenizer, chat template and preprocessor_config.json)"
        ) from None
    report = check_recipe(cfg, processor, processor_name=str(processor_path), videos=args.video, sample=args.sample,
                          gpus=args.gpus)
    if not report.examples:
        raise ConfigError(f"{cfg.data.train_file}: no task file yet; give hypothetical videos with --video WxH:SECONDS")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    problems = report.problems()
    for line in problems:
        print(f"kframes check: {line}", file=sys.stderr)
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="preflight a training recipe: tokens per example, and whether max_length would cut image tokens",
    )
    add_config_args(p)
    p.add_argument("--processor", help="processor folder to render with (default: the recipe's model)")
    p.add_argument("--video", action="append", default=[], metavar="WxH:SECONDS",
                   help="also check a hypothetical video of this size and length, e.g. 1920x1080:3600 (repeatable)")
    p.add_argument("--sample", type=positive_int, default=8, help="real examples sampled from the task file")
    p.add_argument("--gpus", type=positive_int, default=8, help="GPUs the recipe will run on (for the full-scale line)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_check)
