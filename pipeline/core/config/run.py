"""The whole curriculum (`configs/pipeline/*.yaml`, `kframes run`) and the Slurm profile (`kframes submit`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.core.config.base import RecipeStage, Section, Stage
from pipeline.core.config.common import SamplerSection


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
    fps: float = Field(10.0, gt=0)
    width: int = Field(160, ge=32)
    height: int = Field(120, ge=32)
    min_scene_s: float = Field(2.0, gt=0)
    max_scene_s: float = Field(5.0, gt=0)
    whole_seconds: bool = Field(False, description="scene durations in whole seconds (clip bounds on whole seconds)")
    video_s: int | None = Field(
        None, gt=0, description="every video this long (whole seconds): scene durations split it (needs whole_seconds)"
    )
    queries: Literal["pair", "per_scene", "landmark"] = Field(
        "pair", description="pair: a shape and a colour query per video; per_scene: a shape query about every scene; "
        "landmark: one scene per video on the landmark colour, and a shape query about it"
    )
    landmark_color: Literal["red", "green", "blue", "yellow", "purple", "orange", "cyan", "gray"] = Field(
        "red", description="the landmark scene's background colour (queries: landmark), one of the generator's palette"
    )
    barcode: bool = Field(True, description="the frame number as a barcode along the top (needs 96x48 pixels)")


class PipelineStagesSection(Section):
    """The recipe of each stage. `kframes run` rewires their folders (see PipelineConfig)."""

    data: str = Field(description="data recipe (configs/<size>/data.yaml)")
    sft1: str
    sft2: str
    grpo: str
    eval: str | None = Field(None, description="eval recipe; None: the eval stage is left out")


class PipelineSelectSection(SamplerSection):
    """The select stage: the trained selector picks k frames for each held-out question (pipeline.inference.selector).

    The sampler fields (mode, priority_weights, background_share) not set here are the trained model's (its GRPO
    reward's), and so is k when it is not set."""

    questions: str | None = Field(
        None,
        description="JSONL of held-out questions (video, question, options, answer); default: the sample videos' "
        "held-out queries, else the GRPO validation tasks",
    )
    k: int | None = Field(None, gt=0, description="frames per question (default: the trained model's reward.k, else 8)")
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
    overrides: dict[RecipeStage, list[str]] = Field(
        default_factory=dict, description="stage -> list of KEY=VALUE applied to its recipe"
    )


class SlurmArraySection(Section):
    """The data, select or eval stage as a Slurm job array: `tasks` shards (`--array=0-(tasks-1)%parallel`), each
    with the stage's resources (one node each), then one merge job (`afterok` on the array) that writes the stage's
    outputs as one process would have."""

    tasks: int = Field(1, gt=0, description="N: array tasks; task i does every i-th share of the videos or questions")
    parallel: int | None = Field(None, gt=0, description="M: tasks running at once (%M); None: as many as Slurm allows")
    merge_cpus: int = Field(2, gt=0, description="CPUs of the merge job (it reads the shards' outputs; no GPU)")
    merge_mem: str | None = Field("16G", description="--mem of the merge job")
    merge_time: str = Field("02:00:00", description="wall time of the merge job")


class SlurmStageSection(Section):
    """Per-stage changes to the profile's resources (unset fields keep the profile's value)."""

    nodes: int | None = Field(None, gt=0)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_node: int | None = Field(None, gt=0)
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    accelerate_config: str | None = None
    python: str | None = Field(
        None, description="another environment for this stage, e.g. grpo with grpo.use_vllm: requirements/gpu-vllm.txt"
    )
    array: SlurmArraySection | None = Field(
        None, description="data, select, eval: run as a job array of shards plus a merge job (None: one job)"
    )


class SlurmVLLMSection(Section):
    """The vLLM server that answers the GRPO reward's downstream questions (reward.downstream.backend=vllm).

    It runs in its own environment (requirements/vllm-server.txt, activated by `setup`). An eval job array whose
    recipe has `downstream.backend: vllm` gives each task its own server of `downstream.model` with these `gpus`,
    `setup`, `extra_args`, `port` and `wait_timeout_s`, on its own node."""

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


class SlurmGenerationSection(Section):
    """The vLLM server that generates GRPO's completions (`grpo.use_vllm: true` with `grpo.vllm_mode: server`).

    It serves the GRPO stage's starting model (SFT2's final/) the way TRL 1.16 expects, `VLLM_SERVER_DEV_MODE=1
    vllm serve MODEL --weight-transfer-config '{"backend": "nccl"}' --logprobs-mode processed_logprobs
    --max-logprobs -1 --enable-scale-out`, from the grpo stage's environment (`stages.grpo.python`, else `python`),
    which must be requirements/gpu-vllm.txt's; the trainer pushes its weights into it after each step.
    `vllm_mode: colocate` needs no server.
    """

    placement: Literal["step", "node", "reward_node"] = Field(
        "step",
        description="step: a job step on the first training node's GPUs; node: its own node in the job; "
        "reward_node: beside the reward's vLLM server on its node (needs vllm.placement: node)",
    )
    gpus: int = Field(1, gt=0, description="GPUs of the server (tensor parallel size)")
    port: int = Field(8001, gt=0, lt=65536)
    setup: list[str] = Field(default_factory=list, description="more shell lines before `vllm serve`")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` arguments")
    wait_timeout_s: int = Field(1800, gt=0, description="the trainer waits this long for the server to answer")


class SlurmAnnotatorSection(Section):
    """The data stage's annotating model as a vLLM server for its job array (`llm.backend: openai`).

    `vllm serve <llm.model> --tensor-parallel-size <gpus>` runs as its own job, started before the array; each
    array task waits until `GET /v1/models` answers and sends its requests there (`--set data:llm.base_url=...`).
    A small job that depends on the whole array (`afterany`) stops it when the last task has ended.
    """

    serve: bool = Field(
        True, description="false: no server job; the recipe's llm.base_url is used as is (a hosted API, your own server)"
    )
    model: str | None = Field(None, description="default: the data recipe's llm.model (also the served name)")
    gpus: int = Field(8, ge=0, description="GPUs of the server and its tensor-parallel size; 0: a CPU server, no --gres")
    partition: str | None = Field(None, description="default: the profile's partition (GPUs)")
    time: str | None = Field(None, description="default: the data stage's time; it must outlast the whole array")
    cpus: int | None = Field(None, gt=0, description="--cpus-per-task of the server job (default: the profile's)")
    mem: str | None = Field(None, description="--mem of the server job (default: the profile's)")
    port: int = Field(8000, gt=0, lt=65536)
    setup: list[str] = Field(default_factory=list, description="shell lines before `vllm serve` (its own venv)")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` arguments")
    wait_timeout_s: int = Field(3600, gt=0, description="each task waits this long for the server to answer")


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
    stages: dict[Stage, SlurmStageSection] = Field(
        default_factory=dict
    )
    vllm: SlurmVLLMSection = Field(default_factory=SlurmVLLMSection)
    vllm_generation: SlurmGenerationSection = Field(default_factory=SlurmGenerationSection)
    annotator: SlurmAnnotatorSection = Field(default_factory=SlurmAnnotatorSection)
