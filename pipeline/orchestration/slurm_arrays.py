"""The sbatch scripts of a stage run as a job array (`stages.<stage>.array` in the Slurm profile).

A data, select or eval stage with an `array` section becomes up to four jobs, which
pipeline.orchestration.submission chains:

- `<stage>-annotator` (data, `llm.backend: openai`, `annotator.serve`): `vllm serve <llm.model>
  --tensor-parallel-size <annotator.gpus>` as its own job; once `GET /v1/models` answers it writes its address to
  `<run_dir>/state/data-annotator-<job id>.url`.
- `<stage>-array`: `--array=0-(N-1)%M`, each task on the stage's own resources (its partition, CPUs, GPUs, memory,
  time) running `kframes run --only STAGE --shard $SLURM_ARRAY_TASK_ID/N` (pipeline.orchestration.arrays). Data
  tasks start once the annotator job has started (`after`) and wait until it answers (`wait-server`); eval tasks
  whose recipe has `downstream.backend: vllm` each serve the downstream model on their own GPUs first.
- `<stage>-annotator-stop` (`afterany` on the array): stops the annotator once the last task has ended, however.
- `<stage>-merge` (`afterok` on the array): `kframes run --only STAGE --merge-shards N`, one small CPU job.
"""

from __future__ import annotations

import string
from pathlib import Path

from pipeline.core.config.run import SlurmArraySection, SlurmProfile
from pipeline.core.errors import ConfigError
from pipeline.orchestration.arrays import ARRAY_STAGES
from pipeline.orchestration.orchestrate import Plan
from pipeline.orchestration.slurm import (
    REPO_ROOT,
    StageResources,
    _abs,
    _gres,
    _q,
    _sbatch_options,
    _shell_words,
    stage_resources,
)

_TEMPLATES = Path(__file__).parent / "templates"
ARRAY_TEMPLATE = string.Template((_TEMPLATES / "array.sbatch").read_text())
SERVER_TEMPLATE = string.Template((_TEMPLATES / "server.sbatch").read_text())
STOP_TEMPLATE = string.Template((_TEMPLATES / "stop.sbatch").read_text())
MERGE_TEMPLATE = string.Template((_TEMPLATES / "merge.sbatch").read_text())
ITEMS = {"data": "videos", "select": "questions", "eval": "questions"}


def array_section(profile: SlurmProfile, stage: str) -> SlurmArraySection | None:
    """The stage's `array` section, None for a stage run as one job."""
    section = profile.stages.get(stage)
    array = section.array if section is not None else None
    if array is not None and stage not in ARRAY_STAGES:
        raise ConfigError(f"stages.{stage}.array: only {', '.join(ARRAY_STAGES)} run as job arrays")
    return array


def serves_annotator(plan: Plan, profile: SlurmProfile, stage: str) -> bool:
    """Whether the data array gets its annotating model's server as a job of its own."""
    return stage == "data" and profile.annotator.serve and plan.configs["data"].llm.backend == "openai"


def serves_downstream(plan: Plan, stage: str) -> bool:
    """Whether each eval task serves its own downstream model with vLLM."""
    return stage == "eval" and plan.configs["eval"].downstream.backend == "vllm"


def _setup(profile: SlurmProfile) -> str:
    lines = [*profile.setup, *[f"export {k}={_q(v)}" for k, v in profile.env.items()]]
    return "\n".join(lines) if lines else "# (no setup lines in the profile)"


def _options(options: list[str]) -> str:
    return "\n".join(f"#SBATCH {opt}" for opt in options)


def _run_command(res: StageResources, pipeline_path: str, stage: str, *extra: str) -> list[str]:
    return [res.python, "-m", "pipeline.cli.main", "run", "--config", _abs(pipeline_path), "--only", stage, *extra]


def render_array_script(
    plan: Plan,
    profile: SlurmProfile,
    stage: str,
    array: SlurmArraySection,
    *,
    pipeline_path: str,
    run_dir: Path,
    force_token: str | None = None,
) -> str:
    """One task of the stage's job array: shard $SLURM_ARRAY_TASK_ID of `array.tasks`."""
    res = stage_resources(profile, stage)
    logs, state = run_dir / "logs", run_dir / "state"
    options = _sbatch_options(profile, res, stage, nodes=1, logs=logs, output=f"{stage}-%A_%a.out", exclusive=False)
    span = f"0-{array.tasks - 1}" + (f"%{array.parallel}" if array.parallel else "")
    options.insert(1, f"--array={span}")
    run_cmd = _run_command(res, pipeline_path, stage, "--shard", "$SHARD")
    if force_token:
        run_cmd += ["--force-token", force_token]
    server, server_stop, step_gres = "", "", ""
    if serves_annotator(plan, profile, stage):
        ann = profile.annotator
        url_file = _q(f"{state}/{stage}-annotator-") + '"$KFRAMES_SERVER_JOB.url"'
        server = "\n".join([
            "# The annotating model: the server job $KFRAMES_SERVER_JOB writes its address once it answers.",
            ': "${KFRAMES_SERVER_JOB:?set by kframes submit: the id of the data-annotator job}"',
            f'ANNOTATOR_URL=$({res.python} -m pipeline.orchestration.slurm wait-server {url_file} '
            f'--job "$KFRAMES_SERVER_JOB" --timeout {ann.wait_timeout_s}) '
            '|| { echo "[kframes] the annotating server (job $KFRAMES_SERVER_JOB) did not answer"; exit 1; }',
            'echo "[kframes] annotating server: $ANNOTATOR_URL"',
            "export ANNOTATOR_URL",
            "",
        ])
        run_cmd += ["--set", f"{stage}:llm.base_url=$ANNOTATOR_URL"]
    elif serves_downstream(plan, stage):
        server, server_stop, step_gres = _downstream_server(plan, profile, res, stage, logs)
        run_cmd += ["--set", f"{stage}:downstream.url=$DOWNSTREAM_URL"]
    what = f"{res.gpus_per_node} GPU(s)" if res.gpus_per_node else "CPU"
    launch = (f"# shard $SHARD, one process ({what})\n"
              f"srun --nodes=1 --ntasks=1{step_gres} bash -c {_q(_shell_words(run_cmd))} &")
    return ARRAY_TEMPLATE.substitute(
        stage=stage,
        pipeline=pipeline_path,
        tasks=array.tasks,
        items=ITEMS[stage],
        sbatch_options=_options(options),
        repo_root=_q(REPO_ROOT),
        setup=_setup(profile),
        state_dir=_q(state),
        logs_dir=_q(logs),
        server=server,
        launch=launch,
        server_stop=server_stop,
    )


def _downstream_server(
    plan: Plan, profile: SlurmProfile, res: StageResources, stage: str, logs: Path
) -> tuple[str, str, str]:
    """Bash that serves this eval task's downstream model on some of its GPUs (sets DOWNSTREAM_URL), the lines that
    stop it, and the --gres of the evaluation's own step (the rest of the GPUs, for the selectors)."""
    vllm = profile.vllm
    if res.gpus_per_node <= vllm.gpus:
        raise ConfigError(
            f"stages.{stage}: each task serves its downstream model on vllm.gpus={vllm.gpus} GPU(s) and needs at least "
            f"one more for the selectors; gpus_per_node is {res.gpus_per_node}"
        )
    gres = _gres(profile)
    serve_cmd = " ".join(
        ["exec vllm serve", _q(plan.configs["eval"].downstream.model), "--host 127.0.0.1", '--port "$DOWNSTREAM_PORT"',
         f"--tensor-parallel-size {vllm.gpus}", *map(_q, vllm.extra_args)]
    )
    serve = "; ".join([*vllm.setup, serve_cmd])
    lines = [
        "# This task's downstream model: a vLLM server on its own GPUs, on this node (a port per task, so that tasks",
        "# sharing a node do not collide); the evaluation starts once it answers.",
        f"export DOWNSTREAM_PORT=$(( {vllm.port} + SLURM_ARRAY_TASK_ID % 1000 ))",
        'export DOWNSTREAM_URL="http://127.0.0.1:$DOWNSTREAM_PORT/v1"',
        f"srun --nodes=1 --ntasks=1 --gres={gres(vllm.gpus)} --exact --output={logs}/{stage}-vllm-%A_%a.out "
        f"bash -c {_q(serve)} &",
        "VLLM_PID=$!",
        (
            f'{res.python} -m pipeline.orchestration.slurm wait-http "$DOWNSTREAM_URL/models" --timeout '
            f'{vllm.wait_timeout_s} --pid "$VLLM_PID" || {{ echo "[kframes] the downstream vLLM server did not come up"; '
            'kill "$VLLM_PID" 2>/dev/null; exit 1; }'
        ),
        "",
    ]
    stop = 'kill "$VLLM_PID" 2>/dev/null; wait "$VLLM_PID" 2>/dev/null\n'
    return "\n".join(lines), stop, f" --gres={gres(res.gpus_per_node - vllm.gpus)} --exact"


def render_merge_script(
    plan: Plan, profile: SlurmProfile, stage: str, array: SlurmArraySection, *, pipeline_path: str, run_dir: Path
) -> str:
    """The job after the array (afterok): joins its shards into the stage's outputs and marks the stage done."""
    base = stage_resources(profile, stage)
    res = StageResources(nodes=1, gpus_per_node=0, cpus_per_node=array.merge_cpus, mem=array.merge_mem,
                         time=array.merge_time, partition=base.partition, accelerate_config=base.accelerate_config,
                         python=base.python)
    name = f"{stage}-merge"
    logs = run_dir / "logs"
    run_cmd = _run_command(res, pipeline_path, stage, "--merge-shards", str(array.tasks))
    options = _sbatch_options(profile, res, name, nodes=1, logs=logs)
    return MERGE_TEMPLATE.substitute(
        stage=stage,
        pipeline=pipeline_path,
        tasks=array.tasks,
        sbatch_options=_options([o for o in options if not o.startswith("--signal=")]),  # nothing to save early
        repo_root=_q(REPO_ROOT),
        setup=_setup(profile),
        logs_dir=_q(logs),
        command=" ".join(map(_q, run_cmd)),
    )


def render_annotator_script(plan: Plan, profile: SlurmProfile, *, pipeline_path: str, run_dir: Path) -> str:
    """The data array's annotating model as its own job: `vllm serve` until the array has ended."""
    ann = profile.annotator
    base = stage_resources(profile, "data")
    res = StageResources(nodes=1, gpus_per_node=ann.gpus, cpus_per_node=ann.cpus or profile.cpus_per_node,
                         mem=ann.mem if ann.mem is not None else profile.mem, time=ann.time or base.time,
                         partition=ann.partition or profile.partition, accelerate_config=base.accelerate_config,
                         python=profile.python)
    name = "data-annotator"
    logs, state = run_dir / "logs", run_dir / "state"
    model = ann.model or plan.configs["data"].llm.model
    serve_cmd = ["exec vllm serve", _q(model), "--host 0.0.0.0", f"--port {ann.port}"]
    if ann.gpus:
        serve_cmd.append(f"--tensor-parallel-size {ann.gpus}")
    serve = "; ".join([*ann.setup, " ".join([*serve_cmd, *map(_q, ann.extra_args)])])
    gres = f" --gres={_gres(profile)(ann.gpus)}" if ann.gpus else ""
    return SERVER_TEMPLATE.substitute(
        what=f"The annotating model ({model}, vLLM)",
        stage="data",
        name=name,
        pipeline=pipeline_path,
        sbatch_options=_options(_sbatch_options(profile, res, name, nodes=1, logs=logs)),
        repo_root=_q(REPO_ROOT),
        setup=_setup(profile),
        state_dir=_q(state),
        logs_dir=_q(logs),
        port=ann.port,
        serve_line=f"srun --nodes=1 --ntasks=1{gres} bash -c {_q(serve)} &",
        python=profile.python,
        wait_timeout_s=ann.wait_timeout_s,
    )


def render_annotator_stop_script(profile: SlurmProfile, *, run_dir: Path) -> str:
    """A one-minute job after the whole data array (afterany) that stops its annotating server."""
    base = stage_resources(profile, "data")
    res = StageResources(nodes=1, gpus_per_node=0, cpus_per_node=1, mem="1G", time="00:10:00",
                         partition=base.partition, accelerate_config=base.accelerate_config, python=base.python)
    options = _sbatch_options(profile, res, "data-annotator-stop", nodes=1, logs=run_dir / "logs", requeue=False)
    return STOP_TEMPLATE.substitute(
        what="the annotating model's server", stage="data", sbatch_options=_options(options)
    )
