"""The evaluation recipe (`configs/eval/*.yaml`, `kframes eval`): a benchmark, frame selectors, k, the downstream model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.core.config.base import Section
from pipeline.core.config.common import DownstreamSection, SamplerSection


class SelectorSection(SamplerSection):
    """One frame selector to evaluate (pipeline.inference.frame_selectors)."""

    name: Literal["uniform", "similarity", "bolt", "kframes"] = "uniform"
    label: str | None = Field(None, description="name in tables and plots (default: derived from the settings)")
    model: str | None = Field(
        None,
        description="kframes: trained selector folder (a stage's output or its final/) or 'tiny'; "
        "similarity/bolt: a CLIP/SigLIP hub id or folder, or 'tiny-clip'",
    )
    num_candidates: int = Field(256, gt=0, description="T: candidate frames the selector scores or sees")
    max_pixels: int | None = Field(None, gt=0, description="pixels per candidate frame (None: the model's default)")
    batch_size: int = Field(32, gt=0, description="similarity/bolt: frames per encoder batch")
    bolt_alpha: float = Field(2.5, gt=0, description="bolt: exponent sharpening the normalised similarity")
    max_new_tokens: int = Field(256, gt=0, description="kframes: generation budget of the selector")
    device: str = "cpu"


class EvalConfig(Section):
    stage: Literal["eval"] = "eval"
    benchmark: Literal["mlvu", "videomme", "longvideobench", "lvbench", "nextqa", "jsonl"] = "jsonl"
    data: str = Field(description="the benchmark's annotation file (or MLVU's json/ folder)")
    video_root: str | None = Field(None, description="where the videos are (default: the benchmark's layout)")
    limit: int | None = Field(None, gt=0, description="evaluate only the first N questions")
    strict: bool = Field(False, description="a malformed record in the benchmark file is an error (default: skipped and reported)")
    k: list[int] = Field(default_factory=lambda: [8, 32, 64], min_length=1, description="frame budgets")
    selectors: list[SelectorSection] = Field(default_factory=lambda: [SelectorSection()], min_length=1)
    downstream: DownstreamSection = Field(default_factory=DownstreamSection)
    output_dir: str = "runs/eval"
    video_cache: int = Field(4, ge=0, description="decoded videos kept in memory")
