"""The training stages by name: what `kframes train STAGE` and the pipeline's training stages call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from stages import grpo, sft
from stages.launch import TrainFunction

TRAINERS: dict[str, TrainFunction] = {"sft1": sft.train, "sft2": sft.train, "grpo": grpo.train}


def train_stage(stage: str, cfg: Any, *, resume: bool = True, callbacks: Sequence[Any] = ()) -> Path:
    """Train `stage` ("sft1", "sft2" or "grpo") with its config; returns `<output_dir>/final`."""
    if stage not in TRAINERS:
        raise ConfigError(f"unknown training stage {stage!r}; expected one of {', '.join(TRAINERS)}")
    return TRAINERS[stage](cfg, resume=resume, callbacks=callbacks)
