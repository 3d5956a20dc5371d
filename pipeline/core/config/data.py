"""The data stage's recipe (`configs/<size>/data.yaml`): scenes, the annotating LLM, captions, queries, relevance,
clips and the training tasks of every stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.core.config.base import Dtype, Section
from pipeline.core.config.common import FramesSection


class ScenesSection(Section):
    """Scene segmentation (data_builder.scenes; defaults argued there): histogram differences (the paper's method),
    TransNetV2, or both, and the post-processing."""

    detector: Literal["histogram", "transnetv2", "hybrid"] = Field(
        "histogram",
        description="histogram: exact cuts and fades (fast); transnetv2: the learned detector on every frame (slow on "
        "CPU); hybrid: histogram cuts and fades plus TransNetV2's gradual transitions where the histogram is in doubt",
    )
    threshold: float = Field(
        0.15, gt=0, lt=1, description="HistogramDetector threshold: a cut candidate when 1 - correlation >= this"
    )
    bins: int = Field(256, gt=1, le=256, description="luma histogram bins")
    downscale_width: int = Field(160, gt=0, description="frames are decoded at this width for detection")
    adaptive_ratio: float | None = Field(
        3.0, gt=1, description="a cut must be this many times the mean difference of its neighbours (None: off)"
    )
    adaptive_window: int = Field(2, gt=0, description="neighbours on each side for adaptive_ratio (frames)")
    min_scene_len_s: float = Field(0.3, ge=0, description="shorter scenes are merged into a neighbour")
    max_scene_len_s: float | None = Field(60.0, gt=0, description="longer scenes are split evenly")
    gradual: Literal["none", "fade", "dissolve", "fade+dissolve"] = Field(
        "fade", description="gradual transitions: fades through black and/or dissolves (twin comparison)"
    )
    fade_luma: float = Field(16.0, ge=0, le=255, description="mean luma (0-255) below which a frame counts as black")
    fade_max_step: float = Field(
        10.0, gt=0, description="luma change per frame up to which a change next to black is a fade, not a cut"
    )
    dissolve_low: float = Field(
        0.03, gt=0, lt=1, description="twin comparison: per-frame difference that opens/continues a gradual candidate"
    )
    dissolve_min_frames: int = Field(4, gt=1, description="twin comparison: shortest dissolve (frames)")
    batch_size: int = Field(64, gt=0, description="frames decoded per batch (bounds memory)")
    num_threads: int = Field(0, ge=0, description="decoding threads (0: auto)")
    decoder: Literal["pyav", "decord"] = Field(
        "pyav", description="pyav: sequential luma-only pass (fast); decord: RGB frames from the random-access reader"
    )
    skip_loop_filter: bool = Field(
        True, description="pyav: skip the H.264/HEVC deblocking filter (cheaper decode; histograms barely change)"
    )
    transnet_threshold: float = Field(
        0.5, gt=0, lt=1, description="transnetv2/hybrid: a transition where TransNetV2's probability is above this"
    )
    transnet_device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="transnetv2/hybrid: auto (CUDA if present), cpu, cuda[:N]"
    )
    transnet_batch: int = Field(4, gt=0, description="transnetv2/hybrid: 100-frame windows per model call (bounds memory)")
    doubt_window_s: float = Field(
        0.5, gt=0, le=10, description="hybrid: the change over this many seconds decides where TransNetV2 runs"
    )
    doubt_threshold: float = Field(
        0.15, gt=0, lt=1, description="hybrid: 1 - correlation of histograms doubt_window_s apart at or above which a "
        "stretch without a cut or black frame goes to TransNetV2"
    )
    doubt_max_residual: float = Field(
        0.3, gt=0, description="hybrid: a stretch goes to TransNetV2 only if its frames are cross-fades of its two ends "
        "up to this relative residual (test videos: a dissolve 0.06, camera motion 0.49-0.97); >= 1: every stretch"
    )


class LLMSection(Section):
    """The annotating model (data_builder.llm): captions, chapters, queries, relevance scores."""

    backend: Literal["transformers", "openai"] = Field(
        "transformers", description="transformers: a local chat VLM/LLM; openai: any OpenAI-compatible server"
    )
    model: str = Field("tiny", description="hub id or folder (transformers), served model name (openai), or 'tiny'")
    base_url: str | None = Field(None, description="openai: e.g. http://node:8000/v1 (vllm serve) or a hosted API")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key (never logged)")
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0, description="prompts per generate() call (transformers) or in flight (openai)")
    videos_in_flight: int | None = Field(
        None, gt=0, description="openai: videos annotated at once, sharing the batch_size request slots "
        "(None: batch_size / 4, at least 4, at most 16); transformers: always 1"
    )
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, description="retries after a timeout, a 5xx/429 or a malformed answer")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    max_image_pixels: int = Field(448 * 448, gt=0, description="frames sent to the LLM are resized to at most this")
    device: str = "cpu"
    dtype: Dtype = "float32"
    cache_dir: str | None = Field(None, description="answer cache (default: <output_dir>/llm_cache)")


class CaptionsSection(Section):
    """Hierarchical captions (data_builder.captions): scene -> chapter -> video summary."""

    frames_per_scene: int = Field(4, gt=0, description="n frames shown to the LLM per scene caption")
    import_file: str | None = Field(
        None, description="JSON of existing captions per video_id (scene-indexed or time spans); skips the LLM for them"
    )
    chapter_grouping: Literal["llm", "fixed"] = Field(
        "llm", description="llm: the LLM groups consecutive scene captions (fallback: fixed); fixed: chapter_size scenes"
    )
    chapter_size: int = Field(4, gt=0, description="scenes per chapter for `fixed` (and the llm fallback)")
    max_reasks: int = Field(1, ge=0, description="re-asks for a malformed chapter grouping")


class QueriesSection(Section):
    source: Literal["user", "llm", "both"] = Field("user", description="user: a JSONL file; llm: generated per video")
    file: str | None = Field(None, description="JSONL: video_id, text, optional options, answer, query_id")
    per_video: int = Field(3, ge=0, description="queries the LLM writes per video (source llm/both)")
    num_options: int = Field(4, ge=2, description="options of a generated multiple-choice query")
    max_reasks: int = Field(1, ge=0)


class RelevanceSection(Section):
    """Per-scene relevance (data_builder.relevance). Final score formula in the module docstring."""

    scorer: Literal["llm", "embedding", "lexical"] = Field(
        "llm", description="llm: 1-5 + reason from the caption hierarchy; embedding: sentence-transformers; "
        "lexical: BM25 query/caption overlap (model-free)"
    )
    max_reasks: int = Field(2, ge=0, description="re-asks for a malformed LLM answer before recording a failure")
    embedding_model: str = Field("sentence-transformers/all-MiniLM-L6-v2", description="embedding scorer's model")
    similarity_model: str | None = Field(
        None, description="CLIP/SigLIP id or folder ('tiny-clip' locally) to refine scores; None: no refinement"
    )
    similarity_weight: float = Field(0.5, ge=0, le=4, description="w in score = clip(llm + w*(2*sim_rel - 1), 1, 5)")
    frames_per_scene: int = Field(4, gt=0, description="frames per scene compared with the query by similarity")


class ClipsSection(Section):
    """P1/P2 clips from final scene scores (data_builder.clips)."""

    p1_threshold: float = Field(4.9, ge=1, le=5, description="score >= this: P1 (paper: 4.9)")
    p2_threshold: float = Field(4.3, ge=1, le=5, description="score in [p2, p1): P2 (paper: 4.3)")
    merge_adjacent: bool = Field(True, description="merge consecutive scenes of one priority into one clip")
    sparsity_filter: bool = Field(False, description="KVTP: drop queries whose relevance covers most of the video")
    sparsity_beta: float = Field(1.5, gt=0, description="KVTP beta: keep if max(r) >= beta*alpha (paper: 1.5-2.3)")
    sparsity_points: int = Field(64, gt=1, description="N frames of the uniform grid the sparsity is measured on")
    sparsity_temperature: float = Field(1.0, gt=0, description="softmax temperature over the 1-5 scores")


class TasksSection(Section):
    """Training examples of each stage (data_builder.tasks)."""

    sft1_mix: dict[str, float] = Field(
        default_factory=lambda: {"caption_to_scene": 1.0, "scene_to_caption": 1.0, "relevance": 1.0},
        description="relative share of each SFT1 task; 0 disables one",
    )
    sft1_max_examples: int | None = Field(None, gt=0, description="cap on SFT1 examples (after mixing)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of VIDEOS held out for validation")
    seed: int = 0


class DataConfig(Section):
    stage: Literal["data"] = "data"
    videos_dir: str | None = None
    output_dir: str = "runs/data"
    scenes: ScenesSection = Field(default_factory=ScenesSection)
    llm: LLMSection = Field(default_factory=LLMSection)
    frames: FramesSection = Field(default_factory=FramesSection)
    captions: CaptionsSection = Field(default_factory=CaptionsSection)
    queries: QueriesSection = Field(default_factory=QueriesSection)
    relevance: RelevanceSection = Field(default_factory=RelevanceSection)
    clips: ClipsSection = Field(default_factory=ClipsSection)
    tasks: TasksSection = Field(default_factory=TasksSection)
