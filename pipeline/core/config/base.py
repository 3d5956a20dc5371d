"""The base of every config section, and the names used across recipes: stages and sampler modes."""

from __future__ import annotations

from typing import Literal, get_args

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


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
