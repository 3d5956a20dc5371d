"""Sections that several recipes share: the model, LoRA, the frames the selector sees, task files, and the frozen
downstream model (the GRPO reward and evaluation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.core.config.base import Dtype, SamplerMode, Section


class ModelSection(Section):
    name_or_path: str = Field(
        "tiny", description="hub id, local folder, or 'tiny' for the locally built tiny Qwen2.5-VL"
    )
    dtype: Dtype = "bfloat16"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    freeze_vision: bool = Field(True, description="the paper freezes the vision encoder")
    freeze_projector: bool = Field(False, description="the paper trains the projector (merger)")


class LoraSection(Section):
    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_at_end: bool = Field(True, description="merge the adapter into the final model")


class FramesSection(Section):
    """How the selector sees a video: T candidate frames, each resized to at most max_pixels."""

    num_candidates: int = Field(256, gt=0, description="T, uniformly sampled candidate frames (paper: 256)")
    max_pixels: int = Field(128 * 28 * 28, gt=0, description="pixels per frame after resizing")
    min_pixels: int = Field(4 * 28 * 28, gt=0)
    cache_size: int = Field(8, ge=0, description="decoded videos kept in memory by the batch builder")
    store: bool = Field(
        True,
        description="data: write each video's T candidates at max_pixels to <out>/frames (raw uint8, T*H*W*3 bytes "
        "per video); training: read them from there instead of decoding at batch time (data_builder.frame_store)",
    )


class TaskFilesSection(Section):
    train_file: str
    eval_file: str | None = None


class DownstreamSection(Section):
    """The frozen downstream MLLM that answers the multiple-choice question (reward and eval; rewards.backends)."""

    backend: Literal["transformers", "vllm"] = "transformers"
    model: str = Field("tiny", description="hub id or folder ('tiny': the local tiny Qwen2.5-VL); vllm: served name")
    url: str | None = Field(None, description="vLLM OpenAI-compatible base URL, e.g. http://node:8000/v1")
    api_key_env: str | None = Field(
        None, description="vllm: environment variable holding the server's --api-key (sent as a header, never logged)"
    )
    max_pixels: int = Field(256 * 28 * 28, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, gt=0, description="vllm: requests in flight at once")
    batch_size: int = Field(4, gt=0, description="transformers: questions per forward pass")
    device: str = Field("auto", description="transformers: 'auto' (cuda if available), 'cpu', 'cuda:0', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    top_logprobs: int = Field(20, gt=0, description="vllm: top_logprobs asked for (server's --max-logprobs caps it)")
    image_format: Literal["png", "jpeg"] = Field(
        "png", description="vllm: data-URL encoding; png is lossless (same pixels as in-process), jpeg is smaller"
    )


class SamplerSection(Section):
    """How the any-k sampler turns the selector's clips into k frames (pipeline.core.sampler).

    One definition for everything that samples: the GRPO reward (`reward:`), the select stage (`select:`), each
    kframes selector of an eval recipe and the lmms-eval plugin. What the reward optimised is what is evaluated:
    select and eval take the trained model's own settings (from its `final/stage.json`) for every field a recipe does
    not set itself (`trained_sampler`).
    """

    mode: SamplerMode = "auto"
    priority_weights: dict[str, float] | None = Field(None, description="P1/P2 weights of the allocation (None: P1=2, P2=1)")
    background_share: float = Field(0.25, ge=0, lt=1, description="hybrid and soft: share of k spent outside the clips")

    def sampler_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `sample_frames` besides the clips, the video, k and the mode."""
        return {"weights": self.priority_weights, "background_share": self.background_share}

    def sampler_settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "priority_weights": self.priority_weights, "background_share": self.background_share}
