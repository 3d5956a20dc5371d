"""Configuration: one YAML file per stage and model size, loaded into pydantic models.

A recipe is a plain YAML file (`configs/<size>/<stage>.yaml`), readable on its own, open-r1 style. It is
validated strictly: an unknown key or a bad value is an error naming the file, the key and the expected
type, because a typo silently ignored costs a GPU-day. Command-line overrides (`--set train.learning_rate=2e-5`)
are applied to the raw YAML before validation, so they get the same checks.

Each stage owns its section classes below; `STAGE_CONFIGS` maps a stage name to its top-level model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------------------
# Shared sections
# ----------------------------------------------------------------------------------------------------


class ModelSection(Section):
    name_or_path: str = Field(
        "tiny", description="hub id, local folder, or 'tiny' for the locally built tiny Qwen2.5-VL"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
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


class TaskFilesSection(Section):
    train_file: str
    eval_file: str | None = None


# ----------------------------------------------------------------------------------------------------
# Data (PeakClips) stage
# ----------------------------------------------------------------------------------------------------


class VideoSection(Section):
    decode_batch_size: int = Field(32, gt=0, description="frames decoded per batch; bounds memory")
    num_threads: int = Field(1, ge=0, description="decord decoding threads (0: auto)")


class ScenesSection(Section):
    """Histogram scene segmentation and its post-processing (issue 3, data_builder.scenes; defaults argued there)."""

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


class LLMSection(Section):
    """The annotating model (issue 4, data_builder.llm): captions, chapters, queries, relevance scores."""

    backend: Literal["transformers", "openai"] = Field(
        "transformers", description="transformers: a local chat VLM/LLM; openai: any OpenAI-compatible server"
    )
    model: str = Field("tiny", description="hub id or folder (transformers), served model name (openai), or 'tiny'")
    base_url: str | None = Field(None, description="openai: e.g. http://node:8000/v1 (vllm serve) or a hosted API")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key (never logged)")
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0, description="prompts per generate() call (transformers) or in flight (openai)")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, description="retries after a timeout, a 5xx/429 or a malformed answer")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    max_image_pixels: int = Field(448 * 448, gt=0, description="frames sent to the LLM are resized to at most this")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
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
    video: VideoSection = Field(default_factory=VideoSection)
    scenes: ScenesSection = Field(default_factory=ScenesSection)
    llm: LLMSection = Field(default_factory=LLMSection)
    frames: FramesSection = Field(default_factory=FramesSection)
    captions: CaptionsSection = Field(default_factory=CaptionsSection)
    queries: QueriesSection = Field(default_factory=QueriesSection)
    relevance: RelevanceSection = Field(default_factory=RelevanceSection)
    clips: ClipsSection = Field(default_factory=ClipsSection)
    tasks: TasksSection = Field(default_factory=TasksSection)


# ----------------------------------------------------------------------------------------------------
# Training stages
# ----------------------------------------------------------------------------------------------------


class SFTConfig(Section):
    stage: Literal["sft1", "sft2"]
    output_dir: str
    init_from: str | None = Field(None, description="previous stage's output folder (its final/ is loaded)")
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    frames: FramesSection = Field(default_factory=FramesSection)
    data: TaskFilesSection
    train: TrainSection = Field(default_factory=TrainSection)
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (usually set by accelerate)")


class DownstreamSection(Section):
    """The frozen downstream MLLM that answers the multiple-choice question (reward and eval; rewards.backends)."""

    backend: Literal["transformers", "vllm"] = "transformers"
    model: str = Field("tiny", description="hub id or folder ('tiny': the local tiny Qwen2.5-VL); vllm: served name")
    url: str | None = Field(None, description="vLLM OpenAI-compatible base URL, e.g. http://node:8000/v1")
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


class RewardSection(Section):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"downstream_logprob": 1.0, "format": 0.5},
        description="reward name -> weight (rewards.registry)",
    )
    tau: float = Field(1.0, gt=0)
    k: int = Field(8, gt=0)
    mode: Literal["focused", "hybrid", "auto", "set"] = "auto"
    unparseable: Literal["uniform", "floor"] = Field(
        "uniform", description="task reward of an unparseable completion: from uniform frames, or `floor`"
    )
    floor: float = Field(-1.0, ge=-1, le=1)
    priority_weights: dict[str, float] | None = Field(None, description="any-k sampler weights (None: P1=2, P2=1)")
    background_share: float = Field(0.25, ge=0, lt=1, description="hybrid mode: share of k spent outside the clips")
    downstream: DownstreamSection = Field(default_factory=DownstreamSection)


class GRPOSection(Section):
    num_generations: int = Field(8, gt=1)
    beta: float = Field(0.01, ge=0, description="KL coefficient (paper: 0.01)")
    max_completion_length: int = Field(256, gt=0)
    temperature: float = Field(1.0, gt=0)
    use_vllm: bool = Field(False, description="generate completions with vLLM (TRL; GPU only)")
    vllm_mode: Literal["server", "colocate"] = "colocate"
    vllm_server_url: str | None = Field(None, description="server mode: `trl vllm-serve` base URL")
    log_completions: bool = False


class GRPOConfig(Section):
    stage: Literal["grpo"] = "grpo"
    output_dir: str
    init_from: str | None = None
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    frames: FramesSection = Field(default_factory=FramesSection)
    data: TaskFilesSection
    train: TrainSection = Field(default_factory=lambda: TrainSection(learning_rate=1e-6))
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    deepspeed: str | None = None


# ----------------------------------------------------------------------------------------------------
# Evaluation (issue 9): `kframes eval`
# ----------------------------------------------------------------------------------------------------


class SelectorSection(Section):
    """One frame selector to evaluate (pipeline.frame_selectors)."""

    name: Literal["uniform", "similarity", "bolt", "kframes"] = "uniform"
    label: str | None = Field(None, description="name in tables and plots (default: derived from the settings)")
    model: str | None = Field(
        None,
        description="kframes: trained selector folder (a stage's output or its final/) or 'tiny'; "
        "similarity/bolt: a CLIP/SigLIP hub id or folder, or 'tiny-clip'",
    )
    mode: Literal["focused", "hybrid", "auto", "set", "soft"] = Field("auto", description="kframes: any-k mode")
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
    k: list[int] = Field(default_factory=lambda: [8, 32, 64], min_length=1, description="frame budgets")
    selectors: list[SelectorSection] = Field(default_factory=lambda: [SelectorSection()], min_length=1)
    downstream: DownstreamSection = Field(default_factory=DownstreamSection)
    output_dir: str = "runs/eval"
    video_cache: int = Field(4, ge=0, description="decoded videos kept in memory")


# ----------------------------------------------------------------------------------------------------
# The whole curriculum (issue 8): `kframes run`, and cluster profiles for `kframes submit`
# ----------------------------------------------------------------------------------------------------


class SamplesSection(Section):
    """Synthetic sample videos made before the data stage (data_builder.synthetic): the demo and the tests.

    Each video is a run of distinct scenes (a coloured shape each) with captions and multiple-choice queries
    whose answer is visible in exactly one scene, so a selector's frames can be scored against the truth.
    `heldout_videos` never reach the data stage: the select and eval stages ask their queries.
    """

    train_videos: int = Field(6, gt=0, description="videos PeakClips and the training tasks are built from")
    heldout_videos: int = Field(2, gt=0, description="unseen videos whose queries the select/eval stages answer")
    seed: int = 0
    min_scenes: int = Field(3, gt=1)
    max_scenes: int = Field(5, gt=1)


class PipelineStagesSection(Section):
    """The recipe of each stage. `kframes run` rewires their folders (see PipelineConfig)."""

    data: str = Field(description="data recipe (configs/<size>/data.yaml)")
    sft1: str
    sft2: str
    grpo: str
    eval: str | None = Field(None, description="eval recipe; None: the eval stage is left out")


class PipelineSelectSection(Section):
    """The select stage: the trained selector picks k frames for each held-out question (pipeline.select)."""

    questions: str | None = Field(
        None,
        description="JSONL of held-out questions (video, question, options, answer); default: the sample videos' "
        "held-out queries, else the GRPO validation tasks",
    )
    k: int = Field(8, gt=0)
    mode: Literal["focused", "hybrid", "auto", "set", "soft"] = "auto"
    num_candidates: int | None = Field(None, gt=0, description="T (default: the GRPO recipe's frames.num_candidates)")
    max_pixels: int | None = Field(None, gt=0, description="default: the GRPO recipe's frames.max_pixels")
    max_new_tokens: int = Field(256, gt=0)
    limit: int | None = Field(None, gt=0, description="only the first N questions")


class PipelineConfig(Section):
    """data -> sft1 -> sft2 -> grpo -> select -> eval under one folder.

    The stage recipes stay as they are on disk; the pipeline overrides only the wiring, so that every stage
    reads what the previous one wrote: `<output_dir>/<stage>` as each output folder, the data stage's task
    files as the training data, SFT1 -> SFT2 -> GRPO through `init_from`, and the GRPO model as the selector
    that select and eval use. `overrides` adds `--set`-style changes per stage.
    """

    stage: Literal["pipeline"] = "pipeline"
    output_dir: str = "runs/pipeline"
    stages: PipelineStagesSection
    samples: SamplesSection | None = Field(None, description="generate sample videos first (demo, tests)")
    select: PipelineSelectSection = Field(default_factory=PipelineSelectSection)
    eval_on: Literal["heldout", "recipe"] = Field(
        "heldout",
        description="heldout: eval asks the select stage's held-out questions; recipe: the eval recipe's own "
        "benchmark and data (MLVU, Video-MME, ...)",
    )
    overrides: dict[Literal["data", "sft1", "sft2", "grpo", "eval"], list[str]] = Field(
        default_factory=dict, description="stage -> list of KEY=VALUE applied to its recipe"
    )


class SlurmStageSection(Section):
    """Per-stage changes to the profile's resources (unset fields keep the profile's value)."""

    nodes: int | None = Field(None, gt=0)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_node: int | None = Field(None, gt=0)
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    accelerate_config: str | None = None


class SlurmVLLMSection(Section):
    """The vLLM server that answers the GRPO reward's downstream questions (reward.downstream.backend=vllm)."""

    placement: Literal["node", "step"] = Field(
        "node", description="node: its own node(s) in the job; step: a job step on the first training node's GPUs"
    )
    nodes: int = Field(1, gt=0, description="placement=node: nodes given to the server")
    gpus: int = Field(1, gt=0, description="GPUs of the server (tensor parallel size)")
    model: str | None = Field(None, description="default: the GRPO recipe's reward.downstream.model")
    port: int = Field(8000, gt=0, lt=65536)
    setup: list[str] = Field(default_factory=list, description="shell lines before `vllm serve` (its own venv)")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` arguments")
    wait_timeout_s: int = Field(1800, gt=0, description="the trainer waits this long for the server to answer")


class SlurmProfile(Section):
    """A Slurm cluster profile for `kframes submit` (configs/cluster/slurm.yaml)."""

    pipeline: str = Field(description="the pipeline config whose stages are submitted")
    run_dir: str | None = Field(None, description="scripts and logs (default: <pipeline output_dir>/slurm)")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = Field("24:00:00", description="wall time per job (a requeued job gets it again)")
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(8, ge=0, description="0: a CPU job (accelerate --cpu)")
    gpu_type: str | None = Field(None, description="e.g. a100: --gres=gpu:a100:N")
    cpus_per_node: int | None = Field(None, gt=0)
    mem: str | None = Field("0", description="--mem per node ('0': all of it)")
    constraint: str | None = None
    exclusive: bool = True
    requeue: bool = True
    signal_seconds: int = Field(120, gt=0, description="USR1 this long before the time limit: checkpoint, requeue")
    main_process_port: int = Field(29500, gt=0, lt=65536)
    accelerate_config: str = "configs/accelerate/zero2.yaml"
    python: str = Field("python", description="the interpreter of the kframes environment on the nodes")
    setup: list[str] = Field(default_factory=list, description="shell lines before each stage (module load, venv)")
    env: dict[str, str] = Field(default_factory=dict)
    extra_sbatch: list[str] = Field(default_factory=list, description="more sbatch options, e.g. --mail-type=END")
    stages: dict[Literal["data", "sft1", "sft2", "grpo", "select", "eval"], SlurmStageSection] = Field(
        default_factory=dict
    )
    vllm: SlurmVLLMSection = Field(default_factory=SlurmVLLMSection)


STAGE_CONFIGS: dict[str, type[Section]] = {
    "data": DataConfig,
    "sft1": SFTConfig,
    "sft2": SFTConfig,
    "grpo": GRPOConfig,
    "eval": EvalConfig,
    "pipeline": PipelineConfig,
}

C = TypeVar("C", bound=BaseModel)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=2e-5` -> (["train", "learning_rate"], 2e-05). The value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.learning_rate=2e-5")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "2e-5" as a string (no dot); numbers are what a user means there.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def _expected_type(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The annotation of the field at `loc`, for error messages."""
    cls: Any = model
    ann: Any = None
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        cls = ann
        if get_origin(ann) is not None:  # Optional[X] etc.: look through to a model if there is one
            models = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            cls = models[0] if models else None
    if ann is None:
        return None
    return getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")


def validate_config(raw: dict[str, Any], model: type[C], source: str) -> C:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            key = ".".join(str(p) for p in loc) or "(top level)"
            if err.get("type") == "extra_forbidden":
                lines.append(f"{source}: {key}: unknown key")
                continue
            expected = _expected_type(model, loc)
            hint = f" (expected {expected})" if expected else ""
            lines.append(f"{source}: {key}: {err.get('msg')}{hint}, got {err.get('input')!r}")
        raise ConfigError("\n".join(lines)) from None


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike[str], model: type[C], overrides: list[str] | None = None) -> C:
    """Load a YAML file into `model`, after applying `--set` overrides."""
    raw = apply_overrides(load_yaml(path), overrides)
    return validate_config(raw, model, str(path))


def load_stage_config(stage: str, path: str | os.PathLike[str], overrides: list[str] | None = None) -> BaseModel:
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_CONFIGS)}")
    cfg = load_config(path, STAGE_CONFIGS[stage], overrides)
    declared = getattr(cfg, "stage", stage)
    if declared != stage:
        raise ConfigError(f"{path}: stage: this file is for stage {declared!r}, not {stage!r}")
    return cfg


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
