"""The training recipes (`configs/<size>/{sft1,sft2,grpo}.yaml`): what SFT and GRPO share, and GRPO's own sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.core.config.base import Section
from pipeline.core.config.common import (
    DownstreamSection,
    FramesSection,
    LoraSection,
    ModelSection,
    SamplerSection,
    TaskFilesSection,
)


class TrainSection(Section):
    learning_rate: float = Field(1e-5, gt=0, description="paper: 1e-5 for SFT, 1e-6 for RL")
    per_device_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: use num_epochs")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(3, gt=0)
    logging_steps: int = Field(10, gt=0)
    seed: int = 42
    bf16: bool = True
    gradient_checkpointing: bool = True
    max_length: int | None = Field(None, gt=0)
    dataloader_num_workers: int = Field(0, ge=0)
    report_to: list[str] = Field(default_factory=list)


class TrainConfig(Section):
    """Fields every training stage has: where it writes, what it starts from, the model, its frames and data."""

    output_dir: str
    init_from: str | None = Field(None, description="previous stage's output folder (its final/ is loaded)")
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    frames: FramesSection = Field(default_factory=FramesSection)
    data: TaskFilesSection
    train: TrainSection = Field(default_factory=TrainSection)
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (usually set by accelerate)")


class SFTConfig(TrainConfig):
    stage: Literal["sft1", "sft2"]


class RewardSection(SamplerSection):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"downstream_logprob": 1.0, "format": 0.5},
        description="reward name -> weight (rewards.registry)",
    )
    tau: float = Field(1.0, gt=0)
    k: int = Field(8, gt=0)
    unparseable: Literal["uniform", "floor"] = Field(
        "uniform", description="task reward of an unparseable completion: from uniform frames, or `floor`"
    )
    floor: float = Field(-1.0, ge=-1, le=1)
    downstream: DownstreamSection = Field(default_factory=DownstreamSection)


class GRPOSection(Section):
    num_generations: int = Field(8, gt=1)
    beta: float = Field(0.01, ge=0, description="KL coefficient (paper: 0.01)")
    max_completion_length: int = Field(256, gt=0)
    temperature: float = Field(1.0, gt=0)
    use_vllm: bool = Field(
        False, description="generate completions with vLLM (TRL; GPU; the environment of requirements/gpu-vllm.txt)"
    )
    vllm_mode: Literal["server", "colocate"] = Field(
        "colocate",
        description="colocate: vLLM inside each training process, on its GPUs; server: a separate `vllm serve` "
        "(started by `kframes submit grpo`, or by hand: README)",
    )
    vllm_server_url: str | None = Field(
        None, description="server mode: the generation server's base URL without /v1, e.g. http://node:8001"
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="colocate: share of each GPU's memory given to vLLM (the rest trains)"
    )
    log_completions: bool = False


# Where GRPO finds its servers, not what it computes: left out of every key that decides whether a run resumes, so
# that a job requeued on another node (another address) resumes instead of starting over.
GRPO_ENDPOINT_FIELDS: tuple[str, ...] = ("reward.downstream.url", "grpo.vllm_server_url")


class GRPOConfig(TrainConfig):
    stage: Literal["grpo"] = "grpo"
    train: TrainSection = Field(default_factory=lambda: TrainSection(learning_rate=1e-6))
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    reward: RewardSection = Field(default_factory=RewardSection)
