"""`kframes validate`, `kframes config show` and `kframes tiny-model`: checking files and recipes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.core.config import add_config_args, dump_config, load_stage_config
from pipeline.core.contracts import CONTRACTS, Record
from pipeline.core.errors import DataError
from pipeline.core.io import validation_problems
from pipeline.core.models import build_tiny_model, build_tiny_model_from_processor


def guess_contract(obj: dict[str, Any]) -> type[Record] | None:
    """Pick the contract a record is meant to be, from its distinctive fields."""
    keys = set(obj)
    if "messages" in keys and "task" in keys:
        return CONTRACTS["TrainingExample"]
    if "video" in keys and "scenes" in keys:
        return CONTRACTS["PeakClipsRecord"] if keys - {"video", "scenes"} else CONTRACTS["VideoScenes"]
    if "question_id" in keys:
        return CONTRACTS["EvalQuestion"]
    if "query_id" in keys:
        return CONTRACTS["Query"]
    if "priority" in keys:
        return CONTRACTS["KeyClip"]
    if "llm_score" in keys:
        return CONTRACTS["SceneScore"]
    if "video_id" in keys and "fps" in keys:
        return CONTRACTS["VideoInfo"]
    if "start_frame" in keys:
        return CONTRACTS["Scene"]
    return None


def validate_file(path: str, contract: str | None = None) -> list[str]:
    """Check every line of a JSONL file; return one `FILE:LINE: field: problem` per bad line."""
    problems: list[str] = []
    forced = CONTRACTS[contract] if contract else None
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        return [f"{path}: (file): not UTF-8 text (byte {exc.start})"]
    if not any(line.strip() for line in lines):
        return [f"{path}: (file): no records (the file is empty)"]
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{lineno}: (line): not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path}:{lineno}: (line): expected a JSON object, got {type(obj).__name__}")
            continue
        model: type[BaseModel] | None = forced or guess_contract(obj)
        if model is None:
            problems.append(f"{path}:{lineno}: (record): matches no known record type (use --type)")
            continue
        try:
            model.model_validate(obj)
        except ValidationError as exc:
            for part in validation_problems(exc):
                problems.append(f"{path}:{lineno}: {part}")
    return problems


def _cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        problems = validate_file(path, args.type)
        for line in problems:
            print(line)
        bad += len(problems)
        if not problems:
            print(f"{path}: ok", file=sys.stderr)
    return 1 if bad else 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_stage_config(args.stage, args.config, args.overrides)
    sys.stdout.write(dump_config(cfg))
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    if args.local_tokenizer:
        print(build_tiny_model(args.cache_dir))
    else:
        print(build_tiny_model_from_processor(args.processor, args.cache_dir))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check every line of JSONL files against the data contracts")
    p.add_argument("files", nargs="+", help="JSONL files")
    p.add_argument("--type", choices=sorted(CONTRACTS), help="force the record type instead of guessing it")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("config", help="inspect recipes")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print a stage's resolved config (after --set overrides)")
    show.add_argument("stage", help="data, sft1, sft2, grpo, ...")
    add_config_args(show)
    show.set_defaults(func=_cmd_config_show)

    p = sub.add_parser(
        "tiny-model",
        help="build (once) a tiny random-weight Qwen2.5-VL around a real processor folder and print its folder",
        description="Layers and widths shrunk, weights random; the tokenizer, chat template, image processor, "
        "special-token ids and generation config are the processor folder's (default: $KFRAMES_PROCESSOR_DIR, "
        "else ../shared/data/qwen2_5_vl_7b_instruct_processor). Recipes name it 'tiny-real'.",
    )
    p.add_argument("--processor", default=None, help="processor folder (config.json, tokenizer and image processor files)")
    p.add_argument("--local-tokenizer", action="store_true",
                   help="instead: the smaller 'tiny' model, with a tokenizer trained on the spot (what the fast tests use)")
    p.add_argument("--cache-dir", default=None, help="where to build it (default: $KFRAMES_CACHE or ~/.cache/kframes)")
    p.set_defaults(func=_cmd_tiny_model)
