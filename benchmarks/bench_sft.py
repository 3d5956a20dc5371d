"""SFT throughput and peak memory: the kframes recipe against a plain TRL SFTTrainer on the same data.

What it answers: does our batch building (rows made from the task file's JSON, frames read from the data stage's
frame store when the batch is built, the completeness-marker callback) cost anything against what a researcher
would write with TRL directly (an in-memory `datasets.Dataset` with the decoded frames as an `images` column, the
same model, the same frozen vision encoder, the same TRL arguments)? Target: within 10% of plain TRL.

The videos are realistic sources: 640x360 H.264 at 30 fps with a keyframe every 250 frames (data_builder.
synthetic_long), so a frame costs what it costs in real footage; the recipe's T candidates are taken from them at
its max_pixels. `kframes` reads them from the frame store the data stage writes (data_builder.frame_store; written
here before the runs, as `kframes data build` does); `kframes_decode` is the same recipe without a store, decoding
each example's frames when its batch is built (a worker's cache does not hold a video between epochs of a real
dataset; by default the run is one epoch, so each video is decoded once, for its first example); `plain_trl` holds
every decoded frame in memory from the start. All variants train the same SFT2 examples (query -> a clip) for the
same steps. Each run is its own process (peak
RSS is per process), variants alternate, and the median over `--repeats` is reported. Tokens/s counts every token of a step (prompt, frames
and answer: what the model processes) from TRL's `num_tokens` log, after `--warmup` steps. Reported: wall-clock
tokens/s (whole run and from the median step) and tokens per second of process CPU time. The target is checked
on the median step's wall time on a GPU node, and on CPU time on a CPU box, where both variants run with one
thread and wall time mostly measures whoever else is using the cores.

    python benchmarks/bench_sft.py [--steps 16] [--repeats 3] [--out benchmarks/results/sft.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("kframes", "kframes_decode", "plain_trl")
TARGET_RATIO = 0.9  # kframes tokens/s >= 90% of plain TRL's


# ----------------------------------------------------------------------------------------------------------
# Data and recipe
# ----------------------------------------------------------------------------------------------------------


VIDEO_SECONDS = 60.0


def write_task_file(work: Path, *, videos: int, frames: int, size: tuple[int, int], max_pixels: int,
                    seed: int = 0) -> Path:
    """SFT2 examples (two per video) on realistic H.264 videos, rendered with the project's one prompt renderer, in
    a data build's layout (`tasks/` beside the `frames/` store, which is written here as the data stage does)."""
    from data_builder.frame_store import FrameStore, store_beside
    from data_builder.synthetic_long import write_long_video
    from data_builder.video import VideoTimeline, candidate_frames
    from pipeline.core.contracts import KeyClip, TrainingExample
    from pipeline.core.io import atomic_write_jsonl
    from pipeline.core.prompt import format_clips, render_selector_messages

    cache = Path(os.environ.get("KFRAMES_CACHE", ROOT / ".cache" / "kframes")) / "bench-sft"
    examples = []
    for v in range(videos):
        path = cache / f"video_{seed}_{v}_{size[0]}x{size[1]}.mp4"
        if not path.is_file():
            write_long_video(path, duration_s=VIDEO_SECONDS, size=size, gop=250, scene_s=10.0, seed=seed * 100 + v)
        timeline = VideoTimeline.read(path)
        idx, ts = candidate_frames(timeline, frames)
        for q in range(2):
            start = 10.0 * (2 * q + v % 3)
            clip = KeyClip(start_s=start, end_s=start + 10.0, priority="P1", reason=f"scene {2 * q + v % 3}")
            messages = render_selector_messages(ts, f"When does scene {2 * q + v % 3} start?", duration_s=VIDEO_SECONDS)
            messages.append({"role": "assistant", "content": format_clips([clip])})
            examples.append(TrainingExample(id=f"v{v}-q{q}", task="sft2.key_clips", video=str(path),
                                            frame_indices=idx, timestamps_s=ts, messages=messages,
                                            num_frames=timeline.num_frames, duration_s=timeline.duration_s))
    path = work / "data" / "tasks" / "sft2.train.jsonl"
    atomic_write_jsonl(path, examples)
    store = FrameStore(store_beside(path))
    for video in sorted({ex.video for ex in examples}):
        store.write(video, frames, max_pixels)
    return path


def recipe(config: str | None, train_file: str, out: str, overrides: list[str]):
    """The stage config both variants train with: a YAML recipe (GPU script) or the tiny CPU defaults."""
    from pipeline.core.config import SFTConfig, apply_overrides, load_yaml, validate_config

    if config:
        raw = load_yaml(config)
    else:
        raw = {"stage": "sft2", "model": {"name_or_path": "tiny", "dtype": "float32"},
               "frames": {"num_candidates": 16, "max_pixels": 3136, "min_pixels": 3136},
               "train": {"learning_rate": 1e-4, "per_device_batch_size": 2, "bf16": False,
                         "gradient_checkpointing": False, "logging_steps": 1}}
    raw.update({"output_dir": out, "init_from": None, "data": {"train_file": train_file}})
    raw = apply_overrides(raw, ["train.logging_steps=1", "train.save_steps=100000", *overrides])
    return validate_config(raw, SFTConfig, config or "bench defaults")


# ----------------------------------------------------------------------------------------------------------
# One measured run (in its own process)
# ----------------------------------------------------------------------------------------------------------


class _StepClock(TrainerCallback):
    """Wall and process CPU time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.wall: dict[int, float] = {}
        self.cpu: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.wall[state.global_step] = time.perf_counter()
        self.cpu[state.global_step] = time.process_time()


def _plain_trl_trainer(cfg, examples_path: str, callbacks: list[Any]):
    """What one writes with TRL alone: decoded frames in a Dataset's `images` column, TRL's own everything."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from data_builder.video import FrameCache
    from pipeline.core.contracts import TrainingExample
    from pipeline.core.io import read_jsonl_models
    from stages.common import training_args_kwargs
    from stages.modeling import resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path, None)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=getattr(torch, cfg.model.dtype), attn_implementation=cfg.model.attn_implementation
    )
    for name, p in model.named_parameters():  # the paper's freezing, by hand
        p.requires_grad_(not (name.startswith("model.visual.") and ".merger." not in name))
    processor = AutoProcessor.from_pretrained(path)
    processor.image_processor.size = {"shortest_edge": cfg.frames.min_pixels, "longest_edge": cfg.frames.max_pixels}
    cache = FrameCache()
    rows = []
    for ex in read_jsonl_models(examples_path, TrainingExample):
        messages = [m.model_dump() for m in ex.messages]
        messages[-1]["content"] = [{"type": "text", "text": messages[-1]["content"]}]  # one Arrow schema
        rows.append({"messages": messages,
                     "images": cache.images(ex.video, ex.frame_indices, max_pixels=cfg.frames.max_pixels)})
    args = SFTConfig(**{**training_args_kwargs(cfg), "remove_unused_columns": True},
                     max_length=cfg.train.max_length, assistant_only_loss=True)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                      callbacks=callbacks)


def _kframes_trainer(cfg, examples_path: str, callbacks: list[Any]):
    """The recipe as `kframes train sft2` builds it (stages.sft), minus the final save: with the frame store beside
    the task file (`kframes`), or with `frames.store: false` (`kframes_decode`: decoded at batch time)."""
    from stages.batches import dataset_from_file
    from stages.checkpoints import CompleteCheckpointCallback
    from stages.common import load_model_and_processor
    from stages.sft import build_trainer

    ds = dataset_from_file(examples_path, cfg.frames, task_prefix="sft2.")
    model, processor = load_model_and_processor(cfg)
    return build_trainer(cfg, model, processor, ds, None, [CompleteCheckpointCallback(), *callbacks])


def run_variant(variant: str, cfg, examples_path: str, warmup: int) -> dict[str, Any]:
    import torch

    clock = _StepClock()
    if variant == "kframes_decode":
        cfg = cfg.model_copy(update={"frames": cfg.frames.model_copy(update={"store": False})})
    build = _plain_trl_trainer if variant == "plain_trl" else _kframes_trainer
    trainer = build(cfg, examples_path, [clock])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steps = trainer.state.global_step
    tokens = {e["step"]: e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e}
    if warmup >= steps or warmup not in tokens:
        raise SystemExit(f"need more steps than --warmup ({steps} <= {warmup})")
    seconds = clock.wall[steps] - clock.wall[warmup]
    cpu_seconds = clock.cpu[steps] - clock.cpu[warmup]
    step_walls = [clock.wall[s] - clock.wall[s - 1] for s in range(warmup + 1, steps + 1)]
    n_tokens = tokens[steps] - tokens[warmup]
    return {
        "variant": variant,
        "steps_timed": steps - warmup,
        "tokens": n_tokens,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_s": n_tokens / seconds,
        "tokens_per_s_median_step": n_tokens / (steps - warmup) / statistics.median(step_walls),
        "tokens_per_cpu_s": n_tokens / cpu_seconds,
        "steps_per_s": (steps - warmup) / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "final_loss": next(e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e),
    }


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------


def _spawn(variant: str, args: argparse.Namespace, train_file: Path, work: Path, run: int) -> dict[str, Any]:
    result = work / f"{variant}-{run}.json"
    cmd = [sys.executable, __file__, "--worker", variant, "--train-file", str(train_file), "--result", str(result),
           "--output-dir", str(work / f"out-{variant}-{run}"), "--warmup", str(args.warmup)]
    if args.config:
        cmd += ["--config", args.config]
    for item in [f"train.max_steps={args.steps}", *args.overrides]:
        cmd += ["--set", item]
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")  # comparable single-thread runs on a shared CPU box
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        out[variant] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
            "tokens_per_s_median_step": statistics.median(r["tokens_per_s_median_step"] for r in mine),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in mine),
            "steps_per_s": statistics.median(r["steps_per_s"] for r in mine),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
            "peak_gpu_mib": statistics.median(r["peak_gpu_mib"] for r in mine) if mine[0]["peak_gpu_mib"] else None,
            "tokens_per_step": mine[0]["tokens"] / mine[0]["steps_timed"],
            "runs": len(mine),
        }
    return out


def print_table(summary: dict[str, dict[str, Any]], ratios: dict[str, float], basis: str) -> None:
    print(f"{'variant':<14} {'tokens/s':>9} {'tok/s (median step)':>20} {'tokens/CPU-s':>13} {'tok/step':>9} "
          f"{'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    for variant, s in summary.items():
        gpu = f"{s['peak_gpu_mib']:.0f}" if s["peak_gpu_mib"] else "-"
        print(f"{variant:<14} {s['tokens_per_s']:>9.0f} {s['tokens_per_s_median_step']:>20.0f} "
              f"{s['tokens_per_cpu_s']:>13.0f} {s['tokens_per_step']:>9.0f} {s['peak_rss_mib']:>13.0f} {gpu:>13}")
    print("kframes / plain TRL: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    verdict = "meets" if ratios[basis] >= TARGET_RATIO else "MISSES"
    print(f"target (>= {TARGET_RATIO} on {basis}): {verdict}")


def main(argv: list[str] | None = None, *, default_config: str | None = None,
         default_out: str = "benchmarks/results/sft.json", default_videos: int = 16,
         default_video_size: str = "640x360") -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=default_config, help="an SFT recipe YAML (default: the tiny CPU recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant (median reported)")
    p.add_argument("--videos", type=int, default=default_videos,
                   help="generated H.264 videos of 60 s (2 examples each; 16: one epoch at 16 steps x batch 2)")
    p.add_argument("--video-size", default=default_video_size, help="WxH of the generated videos (decoding cost)")
    p.add_argument("--out", default=default_out)
    # worker mode (one measured run in this process)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--train-file", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.worker:
        import logging

        logging.disable(logging.WARNING)
        cfg = recipe(args.config, args.train_file, args.output_dir, args.overrides)
        from pipeline.core.io import atomic_write_json

        atomic_write_json(args.result, run_variant(args.worker, cfg, args.train_file, args.warmup))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        probe = recipe(args.config, "unused", str(work / "probe"), args.overrides)
        size = tuple(int(x) for x in args.video_size.lower().split("x"))
        train_file = write_task_file(work, videos=args.videos, frames=probe.frames.num_candidates, size=size,
                                     max_pixels=probe.frames.max_pixels)
        runs = []
        for r in range(args.repeats):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate, so drift hits all
            for variant in order:
                runs.append(_spawn(variant, args, train_file, work, r))
                print(f"  run {r} {variant}: {runs[-1]['tokens_per_s']:.0f} tokens/s", flush=True)

    summary = summarize(runs)
    ratios = {key: summary["kframes"][key] / summary["plain_trl"][key]
              for key in ("tokens_per_s", "tokens_per_s_median_step", "tokens_per_cpu_s")}
    decode_ratios = {key: summary["kframes_decode"][key] / summary["plain_trl"][key]
                     for key in ("tokens_per_s", "tokens_per_s_median_step", "tokens_per_cpu_s")}
    import torch

    # A GPU node is the benchmark's own: wall time. A shared CPU box is not: process CPU time per token is what
    # stays comparable when other jobs steal the cores (both variants run single-threaded there).
    basis = "tokens_per_s_median_step" if torch.cuda.is_available() else "tokens_per_cpu_s"
    ratio = ratios[basis]
    from pipeline.core.io import atomic_write_json

    result = {
        "benchmark": "sft",
        "config": args.config or "tiny (built-in)",
        "overrides": args.overrides,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "examples": 2 * args.videos,
        "video_size": args.video_size,
        "frames_per_example": probe.frames.num_candidates,
        "per_device_batch_size": probe.train.per_device_batch_size,
        "summary": summary,
        "kframes_vs_plain": ratios,
        "kframes_decode_vs_plain": decode_ratios,
        "target_basis": basis,
        "kframes_vs_plain_peak_rss": summary["kframes"]["peak_rss_mib"] / summary["plain_trl"]["peak_rss_mib"],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "runs": runs,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    atomic_write_json(ROOT / args.out if not Path(args.out).is_absolute() else args.out, result)
    print_table(summary, ratios, basis)
    print("kframes_decode / plain TRL (no frame store): " + ", ".join(f"{k} {v:.3f}" for k, v in decode_ratios.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
