"""The base of every config section, and the names used across recipes: stages and sampler modes."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

# The pipeline's stages, in order; the training stages among them; the any-k sampler's modes (pipeline.core.sampler).
Stage = Literal["data", "sft1", "sft2", "grpo", "select", "eval"]
TrainStage = Literal["sft1", "sft2", "grpo"]
RecipeStage = Literal["data", "sft1", "sft2", "grpo", "eval"]  # the stages that have a recipe file of their own
SamplerMode = Literal["focused", "hybrid", "auto", "set", "soft"]
Dtype = Literal["float32", "bfloat16", "float16"]

STAGES: tuple[str, ...] = get_args(Stage)
TRAIN_STAGES: tuple[str, ...] = get_args(TrainStage)
RECIPE_STAGES: tuple[str, ...] = get_args(RecipeStage)
SAMPLER_MODES: tuple[str, ...] = get_args(SamplerMode)


def without_fields(config: dict[str, Any], dotted: Iterable[str]) -> dict[str, Any]:
    """A copy of a resolved config (`model_dump(mode="json")`) less the fields named `section.field`: what a key
    that must not change with them (a server's address, how long a run goes on) hashes."""
    out = json.loads(json.dumps(config, default=str))
    for name in dotted:
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, and so is a float that is inf or nan (`1e999`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def finite_float(text: str) -> float:
    """argparse type of every float flag: a number, not inf or nan (`1e999` is inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """argparse type of counts (k, T, token budgets)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value
