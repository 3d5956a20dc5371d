"""Recipes: one YAML file per stage and model size, loaded into pydantic models (open-r1 style).

One schema per recipe, in a module per stage family: `data` (PeakClips), `train` (SFT1, SFT2 and GRPO, which share
`TrainConfig`), `eval`, and `run` (the whole pipeline and the Slurm profile); `common` holds the sections several
share, `base` the stage names and sampler modes used everywhere, and `loader` the one way a recipe is read.
"""

from pipeline.core.config.base import (
    RECIPE_STAGES,
    SAMPLER_MODES,
    STAGES,
    TRAIN_STAGES,
    Dtype,
    RecipeStage,
    SamplerMode,
    Section,
    Stage,
    TrainStage,
    finite_float,
    positive_int,
    without_fields,
)
from pipeline.core.config.common import (
    DownstreamSection,
    FramesSection,
    LoraSection,
    ModelSection,
    SamplerSection,
    TaskFilesSection,
)
from pipeline.core.config.data import (
    CaptionsSection,
    ClipsSection,
    DataConfig,
    LLMSection,
    QueriesSection,
    RelevanceSection,
    ScenesSection,
    TasksSection,
)
from pipeline.core.config.eval import EvalConfig, SelectorSection
from pipeline.core.config.loader import (
    STAGE_CONFIGS,
    add_config_args,
    apply_overrides,
    dump_config,
    load_config,
    load_recipe,
    load_stage_config,
    load_yaml,
    parse_override,
    set_dotted,
    validate_config,
)
from pipeline.core.config.run import (
    PipelineConfig,
    PipelineSelectSection,
    PipelineStagesSection,
    SamplesSection,
    SlurmProfile,
    SlurmStageSection,
    SlurmVLLMSection,
)
from pipeline.core.config.train import GRPO_ENDPOINT_FIELDS, GRPOConfig, GRPOSection, RewardSection, SFTConfig, TrainConfig, TrainSection

__all__ = [
    "GRPO_ENDPOINT_FIELDS",
    "RECIPE_STAGES", "SAMPLER_MODES", "STAGES", "TRAIN_STAGES", "Dtype", "RecipeStage", "SamplerMode", "Section", "without_fields",
    "Stage", "TrainStage", "finite_float", "positive_int", "DownstreamSection", "SamplerSection", "FramesSection", "LoraSection", "ModelSection", "TaskFilesSection",
    "CaptionsSection", "ClipsSection", "DataConfig", "LLMSection", "QueriesSection", "RelevanceSection",
    "ScenesSection", "TasksSection", "EvalConfig", "SelectorSection", "STAGE_CONFIGS", "add_config_args",
    "apply_overrides", "dump_config", "load_config", "load_recipe", "load_stage_config", "load_yaml",
    "parse_override", "set_dotted", "validate_config", "PipelineConfig", "PipelineSelectSection",
    "PipelineStagesSection", "SamplesSection", "SlurmProfile", "SlurmStageSection", "SlurmVLLMSection",
    "GRPOConfig", "GRPOSection", "RewardSection", "SFTConfig", "TrainConfig", "TrainSection",
]
