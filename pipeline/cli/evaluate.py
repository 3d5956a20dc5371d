"""`kframes eval`: evaluate frame selectors on a benchmark with a frozen downstream model.

    kframes eval --benchmark mlvu --data MLVU/json --selector uniform,kframes --selector-model runs/grpo \\
                 --k 8,32,64 --downstream transformers:Qwen/Qwen2.5-VL-7B-Instruct --out runs/eval/mlvu
    kframes eval --config configs/eval/qwen2_5_vl_7b.yaml --set data=MLVU/json
    kframes eval --benchmark mlvu --data MLVU/json --dry-run --out runs/eval/mlvu_questions

Flags override the recipe's values; without `--config` the flags alone describe the run. `--dry-run` loads the
benchmark without any model and prints one JSON summary on stdout: questions loaded, records skipped with their
reasons, questions per task type and per duration group, and the videos not found; with `--out DIR` it also
writes the loaded questions to `DIR/questions.jsonl`.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.core.config import SAMPLER_MODES, EvalConfig, apply_overrides, load_yaml, validate_config
from pipeline.core.errors import ConfigError
from pipeline.evaluation.benchmarks import BENCHMARKS

SELECTOR_NAMES = ("uniform", "similarity", "bolt", "kframes")


def parse_downstream(spec: str, model: str | None = None) -> dict[str, Any]:
    """`transformers:MODEL` or `vllm:URL` -> DownstreamSection fields (`tiny` is the local tiny model)."""
    backend, sep, rest = spec.partition(":")
    if not sep or not rest or backend not in ("transformers", "vllm"):
        raise ConfigError(f"--downstream {spec!r}: expected transformers:MODEL or vllm:URL")
    if backend == "transformers":
        return {"backend": "transformers", "model": rest}
    return {"backend": "vllm", "url": rest, "model": model or "Qwen/Qwen2.5-VL-7B-Instruct"}


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--k {text!r}: expected comma-separated integers, e.g. 8,32,64") from None
    if not ks or any(k <= 0 for k in ks):
        raise ConfigError(f"--k {text!r}: expected positive integers, e.g. 8,32,64")
    return ks


def build_config(args: argparse.Namespace) -> Any:
    """The EvalConfig from `--config` (if any) with the flags applied on top, validated once."""
    raw: dict[str, Any] = load_yaml(args.config) if args.config else {}
    raw = apply_overrides(raw, args.overrides)
    source = args.config or "command line"
    for flag, key in (("benchmark", "benchmark"), ("data", "data"), ("video_root", "video_root"),
                      ("out", "output_dir"), ("limit", "limit")):
        if getattr(args, flag) is not None:
            raw[key] = getattr(args, flag)
    if args.strict:
        raw["strict"] = True
    if args.k is not None:
        raw["k"] = parse_ks(args.k)
    if args.downstream is not None:
        raw["downstream"] = {**(raw.get("downstream") or {}), **parse_downstream(args.downstream, args.downstream_model)}
    if args.selector is not None:
        selectors = []
        for name in [s.strip() for s in args.selector.split(",") if s.strip()]:
            if name not in SELECTOR_NAMES:
                raise ConfigError(f"--selector {name!r}: expected one of {', '.join(SELECTOR_NAMES)}")
            spec: dict[str, Any] = {"name": name, "device": args.device}
            if name == "kframes":
                spec["model"] = args.selector_model
                if args.mode is not None:  # else the trained model's own mode (its stage.json)
                    spec.update(mode=args.mode, label=f"kframes-{args.mode}")
            elif name in ("similarity", "bolt"):
                spec["model"] = args.clip_model
            if args.num_candidates is not None:
                spec["num_candidates"] = args.num_candidates
            selectors.append(spec)
        raw["selectors"] = selectors
    if "data" not in raw:
        raise ConfigError(f"{source}: --data is required (the benchmark's annotation file)")
    return validate_config(raw, EvalConfig, source)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline.evaluation.evaluate import dry_run, evaluate
    from pipeline.evaluation.report import render_markdown

    cfg = build_config(args)
    if args.dry_run:
        print(json.dumps(dry_run(cfg, args.out), indent=2, ensure_ascii=False))
        return 0

    summary = evaluate(cfg, progress=not args.quiet)
    print(render_markdown(summary))
    print(f"results: {Path(cfg.output_dir) / 'results.jsonl'}  plot: {Path(cfg.output_dir) / 'accuracy_vs_k.png'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="answer a benchmark with a downstream model over each selector's k frames (accuracy, cost, plot)",
        description="Evaluate frame selectors: accuracy per k, per task type and as the benchmark itself reports "
        "it, cost per question, a markdown table and an accuracy-vs-k plot. Resumable: rerun the same command to "
        "continue. Malformed benchmark records are skipped and reported (--strict: an error); --dry-run loads the "
        "benchmark without any model and prints what it holds.",
    )
    p.add_argument("--config", help="eval recipe (configs/eval/*.yaml); flags override it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set downstream.max_pixels=200704 (repeatable)")
    p.add_argument("--benchmark", choices=list(BENCHMARKS))
    p.add_argument("--data", help="annotation file (MLVU: a task .json or the json/ folder)")
    p.add_argument("--dry-run", action="store_true",
                   help="load the benchmark without a model and print a JSON summary (with --out: write questions.jsonl)")
    p.add_argument("--strict", action="store_true",
                   help="a malformed record in the benchmark file is an error (default: skipped and reported)")
    p.add_argument("--video-root", help="folder of the videos (default: the benchmark's download layout)")
    p.add_argument("--selector", help="comma-separated: uniform, similarity, bolt, kframes")
    p.add_argument("--selector-model", help="kframes: trained selector folder (or 'tiny')")
    p.add_argument("--mode", default=None, choices=SAMPLER_MODES,
                   help="kframes any-k mode (default: the trained model's, from its stage.json; else auto)")
    p.add_argument("--clip-model", help="similarity/bolt: CLIP or SigLIP id or folder (or 'tiny-clip')")
    p.add_argument("--num-candidates", type=int, help="T candidate frames for kframes/similarity/bolt (default 256)")
    p.add_argument("--k", help="frame budgets, e.g. 8,32,64")
    p.add_argument("--downstream", help="transformers:MODEL (tiny = the local tiny model) or vllm:URL")
    p.add_argument("--downstream-model", help="vllm: the served model name (default Qwen/Qwen2.5-VL-7B-Instruct)")
    p.add_argument("--device", default="cpu", help="device of the selector models (cpu, cuda, cuda:1)")
    p.add_argument("--out", help="run folder (default runs/eval)")
    p.add_argument("--limit", type=int, help="only the first N questions (after skipping malformed records)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)
