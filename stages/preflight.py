"""What a training recipe's examples cost in tokens, checked before a GPU is spent on them (`kframes check`).

A recipe fixes T (`frames.num_candidates`), the pixels per frame (`frames.max_pixels`) and the longest sequence
(`train.max_length`); the processor turns each frame into `(h/28) * (w/28)` visual tokens. When an example is longer
than `max_length`, TRL cuts it, the cut drops image tokens but not the images, and the Qwen processor fails on the
first batch with "Mismatch in image token count" — hours into a cluster job. This module renders examples exactly as
training does (the stage's own messages, the chat template of the recipe's processor, frames at the size the
decoder hands out) and counts their tokens, without decoding a frame: the pixels do not change the counts.

Two kinds of examples are checked: a sample of the stage's real task file (when it exists), and hypothetical ones
for videos given by size and length (`WxH:SECONDS`), which show what the recipe implies at full scale before any
data is built. Every training stage runs the first kind on start (`check_before_training`).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_builder.video import read_video_info, target_size, uniform_indices
from pipeline.core.config import TrainConfig
from pipeline.core.contracts import KeyClip, TrainingExample
from pipeline.core.errors import ConfigError, DataError, VideoError
from pipeline.core.io import read_jsonl_models
from pipeline.core.prompt import format_clips, render_selector_messages
from stages.batches import limit_frames

# A typical request and answer for hypothetical examples: the length of a real query and of a 3-clip answer.
TYPICAL_QUERY = "What does the person in the red jacket pick up from the kitchen table after the phone rings?"
TYPICAL_OPTIONS = ["A set of car keys", "A coffee mug", "A folded newspaper", "A mobile phone charger"]
TYPICAL_REASON = "the person reaches for the table right after the phone rings"


@dataclass
class ExampleCost:
    """Token counts of one rendered example."""

    id: str
    task: str
    frames: int
    frame_size: tuple[int, int]  # (width, height) as the decoder hands the frames out
    visual_tokens_per_frame: int
    text_tokens: int
    total_tokens: int

    @property
    def visual_tokens(self) -> int:
        return self.total_tokens - self.text_tokens


@dataclass
class CheckReport:
    stage: str
    processor: str
    num_candidates: int
    max_pixels: int
    max_length: int | None
    examples: list[ExampleCost] = field(default_factory=list)
    train_examples: int | None = None
    completion_tokens: int = 0  # GRPO: generated tokens added to each prompt
    sequences_per_step: int = 1  # per device: batch x accumulation (x generations for GRPO)
    gpus: int = 1

    def problems(self) -> list[str]:
        """One line per example that `max_length` would cut, with the numbers and the setting to change."""
        if self.max_length is None:
            return []
        out = []
        for ex in self.examples:
            need = ex.total_tokens + self.completion_tokens
            if need > self.max_length:
                out.append(
                    f"example {ex.id}: {need:,} tokens ({ex.frames} frames x {ex.visual_tokens_per_frame} visual "
                    f"tokens + {ex.text_tokens:,} text{' + ' + str(self.completion_tokens) + ' generated' if self.completion_tokens else ''}) "
                    f"> train.max_length {self.max_length:,}: the cut would drop image tokens; raise train.max_length "
                    f"to at least {need:,} (or lower frames.max_pixels / frames.num_candidates)"
                )
        return out

    def full_scale(self) -> dict[str, Any]:
        """What the recipe implies per optimizer step and per epoch (from the mean example)."""
        mean = sum(ex.total_tokens for ex in self.examples) / len(self.examples) if self.examples else 0.0
        per_step = (mean + self.completion_tokens) * self.sequences_per_step * self.gpus
        out: dict[str, Any] = {
            "mean_tokens_per_example": round(mean),
            "tokens_per_step": round(per_step),
            "gpus": self.gpus,
        }
        if self.train_examples is not None:
            prompts_per_step = self.sequences_per_step * self.gpus
            out["examples_per_epoch"] = self.train_examples
            out["steps_per_epoch"] = math.ceil(self.train_examples / max(prompts_per_step, 1))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "processor": self.processor,
            "T": self.num_candidates,
            "max_pixels": self.max_pixels,
            "max_length": self.max_length,
            "examples": [{**asdict(ex), "visual_tokens": ex.visual_tokens} for ex in self.examples],
            "full_scale": self.full_scale(),
            "problems": self.problems(),
        }

    def render(self) -> str:
        rows = [
            f"{self.stage}: T={self.num_candidates}, max_pixels={self.max_pixels:,}, "
            f"max_length={self.max_length if self.max_length is None else f'{self.max_length:,}'}, processor {self.processor}",
            f"{'example':<34} {'frames':>6} {'frame':>9} {'vis/frame':>9} {'visual':>8} {'text':>7} {'total':>8}  cut?",
        ]
        limit = self.max_length
        for ex in self.examples:
            cut = "CUT" if limit is not None and ex.total_tokens + self.completion_tokens > limit else "ok"
            size = f"{ex.frame_size[0]}x{ex.frame_size[1]}"
            rows.append(f"{ex.id[:34]:<34} {ex.frames:>6} {size:>9} {ex.visual_tokens_per_frame:>9} "
                        f"{ex.visual_tokens:>8,} {ex.text_tokens:>7,} {ex.total_tokens:>8,}  {cut}")
        scale = self.full_scale()
        rows.append(
            f"full scale: {scale['mean_tokens_per_example']:,} tokens per example (mean), "
            f"{scale['tokens_per_step']:,} tokens per optimizer step on {scale['gpus']} GPU(s)"
            + (f", {scale['examples_per_epoch']:,} examples and {scale['steps_per_epoch']:,} steps per epoch"
               if "examples_per_epoch" in scale else "")
        )
        return "\n".join(rows)


def _image_token_id(processor: Any) -> int:
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<|image_pad|>"))
    return int(token_id)


def example_cost(processor: Any, example: TrainingExample, frame_size: tuple[int, int], *, generation: bool) -> ExampleCost:
    """Render `example` as its stage trains on it and count its tokens (blank frames of the decoded size)."""
    from PIL import Image

    messages = [m.model_dump() for m in example.messages]
    if generation:  # GRPO: the prompt only; the completion is generated
        messages = [m for m in messages if m["role"] != "assistant"]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    n = len(example.frame_indices)
    images = [Image.new("RGB", frame_size)] * n if n else None
    enc = processor(text=[text], images=images, return_tensors="np")
    ids = enc["input_ids"][0]
    visual = int((ids == _image_token_id(processor)).sum())
    per_frame = visual // n if n else 0
    return ExampleCost(example.id, example.task, n, frame_size, per_frame, int(len(ids)) - visual, int(len(ids)))


def hypothetical_example(stage: str, width: int, height: int, duration_s: float, num_candidates: int,
                         fps: float = 30.0) -> TrainingExample:
    """An example of `stage` for a video of this size and length, rendered by the stage's own renderer."""
    num_frames = max(1, int(round(duration_s * fps)))
    idx = uniform_indices(num_frames, num_candidates)
    times = [round(i / fps, 3) for i in idx]
    clips = [KeyClip(start_s=duration_s * a, end_s=duration_s * b, priority=p, reason=TYPICAL_REASON)
             for a, b, p in ((0.12, 0.15, "P1"), (0.40, 0.43, "P2"), (0.71, 0.73, "P1"))]
    options = TYPICAL_OPTIONS if stage == "grpo" else None
    task = "caption_to_scene" if stage == "sft1" else "key_clips"
    request = "A person in a red jacket picks up a set of keys from the kitchen table." if stage == "sft1" else TYPICAL_QUERY
    user = render_selector_messages(times, request, task=task, duration_s=duration_s, options=options)
    answer = (f'{{"start": {clips[0].start_s:.1f}, "end": {clips[0].end_s:.1f}}}' if stage == "sft1"
              else format_clips(clips, duration_s=duration_s))
    messages = [*user, {"role": "assistant", "content": answer}] if stage != "grpo" else user
    example = TrainingExample(
        id=f"{width}x{height}:{duration_s:g}s", task={"sft1": "sft1.caption_to_scene", "sft2": "sft2.key_clips",
                                                     "grpo": "grpo.mcq"}[stage],
        video="(hypothetical)", frame_indices=idx, timestamps_s=times, messages=messages, num_frames=num_frames,
        duration_s=duration_s, question=TYPICAL_QUERY if stage == "grpo" else None, options=options,
        answer=0 if stage == "grpo" else None,
    )
    return example


def parse_video_spec(spec: str) -> tuple[int, int, float]:
    """`1920x1080:3600` -> (1920, 1080, 3600.0)."""
    try:
        size, seconds = spec.split(":")
        w, h = (int(x) for x in size.lower().split("x"))
        duration = float(seconds)
    except ValueError:
        raise ConfigError(f"--video {spec!r}: expected WIDTHxHEIGHT:SECONDS, e.g. 1920x1080:3600") from None
    if w <= 0 or h <= 0 or not (math.isfinite(duration) and duration > 0):
        raise ConfigError(f"--video {spec!r}: width, height and seconds must be positive")
    return w, h, duration


def check_recipe(
    cfg: TrainConfig,
    processor: Any,
    *,
    processor_name: str,
    videos: Sequence[str] = (),
    sample: int = 8,
    gpus: int = 1,
    seed: int = 0,
) -> CheckReport:
    """Token costs of `sample` real examples of the stage's task file (if it exists) and of one hypothetical example
    per `videos` spec, with the recipe's processor, T and max_pixels."""
    stage = cfg.stage
    generation = stage == "grpo"
    T, max_pixels = cfg.frames.num_candidates, cfg.frames.max_pixels
    report = CheckReport(stage, processor_name, T, max_pixels, cfg.train.max_length, gpus=gpus)
    per_device = cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps
    report.sequences_per_step = per_device
    if generation:
        report.completion_tokens = cfg.grpo.max_completion_length
        report.sequences_per_step = per_device  # TRL's batch counts completions: num_generations per prompt inside it

    train_file = Path(cfg.data.train_file)
    if train_file.is_file():
        examples = read_jsonl_models(train_file, TrainingExample)
        prefix = f"{stage}."
        examples = [ex for ex in examples if ex.task.startswith(prefix)]
        report.train_examples = len(examples)
        chosen = random.Random(seed).sample(examples, min(sample, len(examples)))
        sizes: dict[str, tuple[int, int]] = {}
        for ex in chosen:
            if ex.video not in sizes:
                try:
                    info = read_video_info(ex.video)
                except VideoError as exc:
                    raise DataError(f"{train_file}: example {ex.id}: {exc}") from None
                sizes[ex.video] = target_size(info.width, info.height, max_pixels=max_pixels)
            report.examples.append(example_cost(processor, limit_frames(ex, T), sizes[ex.video], generation=generation))
    for spec in videos:
        w, h, duration = parse_video_spec(spec)
        ex = hypothetical_example(stage, w, h, duration, T)
        report.examples.append(example_cost(processor, ex, target_size(w, h, max_pixels=max_pixels), generation=generation))
    return report


def check_before_training(cfg: TrainConfig, processor: Any, processor_name: str) -> CheckReport:
    """The start-of-stage check: a sample of the real examples; any example `max_length` would cut is an error."""
    report = check_recipe(cfg, processor, processor_name=processor_name, sample=8,
                          gpus=int(os.environ.get("WORLD_SIZE", "1")))
    problems = report.problems()
    if problems:
        raise ConfigError(f"{cfg.data.train_file}: " + "; ".join(problems[:3]) + " (run `kframes check` for the table)")
    return report
