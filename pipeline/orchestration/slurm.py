"""The sbatch script of one pipeline stage run as one job (`kframes submit`; pipeline.orchestration.submission).

Each job runs exactly what `kframes run --only STAGE` runs on a laptop (pipeline.orchestration.orchestrate), so the stage
records, skipping and resume rules are the same on the cluster; only the launch differs:

- training stages: `srun` one task per node, each running `accelerate launch` with the profile's DeepSpeed
  config (`--num_machines`, `--machine_rank $SLURM_NODEID`, `--main_process_ip` = the first node), 8 GPUs per
  node by default; data, select and eval run as one task, or as job arrays (pipeline.orchestration.slurm_arrays).
- preemption: `#SBATCH --requeue` and `--signal=B:USR1@120`. The batch shell traps USR1 (time limit coming)
  and TERM (preemption), touches `$KFRAMES_PREEMPT_FILE`, which every trainer rank polls after each step
  (stages.preemption): they save a complete checkpoint and exit; then the script requeues the job with
  `scontrol requeue`, and the restarted job resumes from that checkpoint (the stage record says "running").
- GRPO with `reward.downstream.backend: vllm`: the vLLM server that answers the reward's questions runs as its
  own job step, on its own node(s) of the job (`vllm.placement: node`) or on some GPUs of the first node
  (`step`); the trainer starts once `GET /v1/models` answers, and is given the URL.
- GRPO with `grpo.use_vllm` and `grpo.vllm_mode: server`: the generation server (TRL's server mode, a `vllm serve`
  of the starting model) runs the same way (`vllm_generation.placement`: `step`, `node`, or `reward_node` beside the
  reward server); the trainer starts once `GET /health` answers, and is given its URL. `colocate` needs no server.
- logs and scripts live in the run folder: `<run_dir>/scripts/<stage>.sbatch`, `<run_dir>/logs/<stage>-<jobid>.out`.

`python -m pipeline.orchestration.slurm wait-http URL` is the readiness probe the scripts call (no curl needed on the
nodes); `wait-server FILE --job ID` waits for a server that runs as its own job (a job array's annotating model).
"""

from __future__ import annotations

import argparse
import os
import shlex
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import SlurmProfile, SlurmStageSection, load_config
from pipeline.core.errors import ConfigError
from pipeline.orchestration.orchestrate import TRAIN_STAGES, Plan

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_TEMPLATE = string.Template((Path(__file__).parent / "templates" / "stage.sbatch").read_text())


@dataclass
class StageResources:
    nodes: int
    gpus_per_node: int
    cpus_per_node: int | None
    mem: str | None
    time: str
    partition: str | None
    accelerate_config: str
    python: str


def load_profile(path: str, overrides: list[str] | None = None) -> SlurmProfile:
    return load_config(path, SlurmProfile, overrides)


def stage_resources(profile: SlurmProfile, stage: str) -> StageResources:
    """The profile's resources with the stage's own changes. Non-training stages use one node."""
    s = profile.stages.get(stage) or SlurmStageSection()
    pick = lambda name: getattr(s, name) if getattr(s, name) is not None else getattr(profile, name)
    nodes = pick("nodes") if stage in TRAIN_STAGES else (s.nodes or 1)
    return StageResources(
        nodes=nodes,
        gpus_per_node=pick("gpus_per_node"),
        cpus_per_node=pick("cpus_per_node"),
        mem=pick("mem"),
        time=pick("time"),
        partition=pick("partition"),
        accelerate_config=pick("accelerate_config"),
        python=pick("python"),
    )


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _abs(path: str | Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (Path.cwd() / p).resolve())


def uses_vllm_server(plan: Plan, stage: str) -> bool:
    if stage != "grpo":
        return False
    return plan.configs["grpo"].reward.downstream.backend == "vllm"


def uses_generation_server(plan: Plan, stage: str) -> bool:
    """GRPO generating its completions on a separate vLLM server (TRL's server mode)."""
    if stage != "grpo":
        return False
    g = plan.configs["grpo"].grpo
    return g.use_vllm and g.vllm_mode == "server"


def starting_model(plan: Plan) -> str:
    """What the GRPO stage starts from, which the generation server serves: SFT2's `final/` (it need not exist yet
    when the chained jobs are submitted), else the recipe's model."""
    cfg = plan.configs["grpo"]
    if cfg.init_from:
        root = Path(cfg.init_from)
        return _abs(root if root.name == "final" else root / "final")
    return cfg.model.name_or_path


def _sbatch_options(
    profile: SlurmProfile,
    res: StageResources,
    stage: str,
    *,
    nodes: int,
    logs: Path,
    output: str | None = None,
    exclusive: bool = True,
    requeue: bool = True,
) -> list[str]:
    """The `#SBATCH` options of a job named kframes-`stage`; `output` replaces its log's name (`<stage>-%j.out`),
    `exclusive=False` leaves out --exclusive (array tasks share nodes), `requeue=False` leaves out --requeue and
    the time-limit signal (a job with nothing to save)."""
    gres = _gres(profile)
    sb: list[str] = [
        f"--job-name=kframes-{stage}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        f"--time={res.time}",
        f"--output={logs}/{output or f'{stage}-%j.out'}",
        "--open-mode=append",  # a requeued job appends to the same log
        f"--chdir={REPO_ROOT}",
    ]
    if res.gpus_per_node:
        sb.append(f"--gres={gres(res.gpus_per_node)}")
    if res.cpus_per_node:
        sb.append(f"--cpus-per-task={res.cpus_per_node}")
    if res.mem is not None:
        sb.append(f"--mem={res.mem}")
    for flag, value in (("partition", res.partition), ("account", profile.account), ("qos", profile.qos),
                        ("constraint", profile.constraint)):
        if value:
            sb.append(f"--{flag}={value}")
    if exclusive and profile.exclusive and res.gpus_per_node:
        sb.append("--exclusive")
    if requeue and profile.requeue:
        sb.append("--requeue")
    if requeue:
        sb.append(f"--signal=B:USR1@{profile.signal_seconds}")
    sb.extend(profile.extra_sbatch)
    return sb


def _gres(profile: SlurmProfile):
    return lambda n: f"gpu:{profile.gpu_type}:{n}" if profile.gpu_type else f"gpu:{n}"


def _main_node_server_gpus(profile: SlurmProfile, *, with_vllm: bool, with_gen: bool) -> int:
    """GPUs of the first training node taken by servers placed there as job steps."""
    taken = profile.vllm.gpus if with_vllm and profile.vllm.placement == "step" else 0
    gen = profile.vllm_generation
    return taken + (gen.gpus if with_gen and gen.placement == "step" else 0)


def _check_vllm_placement(profile: SlurmProfile, res: StageResources, *, with_vllm: bool, with_gen: bool) -> None:
    vllm, gen = profile.vllm, profile.vllm_generation
    if res.gpus_per_node == 0:
        what = "reward.downstream.backend=vllm" if with_vllm else "grpo.vllm_mode=server"
        raise ConfigError(f"{what} needs GPUs (gpus_per_node > 0)")
    steps = [name for name, on in (("vllm", with_vllm and vllm.placement == "step"),
                                   ("vllm_generation", with_gen and gen.placement == "step")) if on]
    if steps and res.nodes != 1:
        raise ConfigError(f"{steps[0]}.placement=step needs the grpo stage on one node (stages.grpo.nodes: 1)")
    taken = _main_node_server_gpus(profile, with_vllm=with_vllm, with_gen=with_gen)
    if steps and taken >= res.gpus_per_node:
        raise ConfigError(
            f"{' and '.join(f'{n}.placement=step' for n in steps)}: the server GPU(s) ({taken}) leave none of the "
            f"node's {res.gpus_per_node} to the trainer; use placement: node"
        )
    if with_gen and gen.placement == "reward_node":
        if not with_vllm or vllm.placement != "node":
            raise ConfigError(
                "vllm_generation.placement=reward_node needs the reward's vLLM server on its own node "
                "(reward.downstream.backend: vllm and vllm.placement: node)"
            )
        if vllm.gpus + gen.gpus > res.gpus_per_node:
            raise ConfigError(
                f"vllm_generation.placement=reward_node: the two servers' {vllm.gpus} + {gen.gpus} GPUs do not fit "
                f"on one node of {res.gpus_per_node}; use placement: node or step"
            )


def _vllm_server_block(
    plan: Plan, profile: SlurmProfile, res: StageResources, stage: str, logs: Path, *, shared: bool = False
) -> str:
    """Bash that starts the reward's vLLM server as a job step and waits until it answers (sets VLLM_URL).
    `shared`: the generation server runs on the same node, so each step takes only its own GPUs (`--exact`)."""
    vllm = profile.vllm
    gres = _gres(profile)
    model = vllm.model or plan.configs["grpo"].reward.downstream.model
    if vllm.placement == "node":
        node_line = f"VLLM_NODE=${{NODES[{res.nodes}]}}"
        srun = f'srun --nodes=1 --ntasks=1 -w "$VLLM_NODE" --gres={gres(vllm.gpus)}' + (" --exact" if shared else "")
    else:
        node_line = "VLLM_NODE=$MAIN_NODE"
        srun = f'srun --nodes=1 --ntasks=1 -w "$VLLM_NODE" --gres={gres(vllm.gpus)} --exact'
    serve_cmd = " ".join(
        ["exec vllm serve", _q(model), "--host 0.0.0.0", f"--port {vllm.port}",
         f"--tensor-parallel-size {vllm.gpus}", *map(_q, vllm.extra_args)]
    )
    serve = "; ".join([*vllm.setup, serve_cmd])
    lines = [
        node_line,
        "",
        "# The reward's downstream model: a vLLM server as its own job step; the trainer waits until it answers.",
        f'VLLM_URL="http://$VLLM_NODE:{vllm.port}/v1"',
        f"{srun} --output={logs}/{stage}-vllm-%j.out bash -c {_q(serve)} &",
        "VLLM_PID=$!",
        (
            f'{res.python} -m pipeline.orchestration.slurm wait-http "$VLLM_URL/models" --timeout '
            f'{vllm.wait_timeout_s} --pid "$VLLM_PID" || {{ echo "[kframes] the vLLM server did not come up"; '
            'kill "$VLLM_PID" 2>/dev/null; exit 1; }'
        ),
    ]
    return "\n".join(lines) + "\n"


def generation_serve_args(plan: Plan, profile: SlurmProfile) -> list[str]:
    """`vllm serve` arguments of the generation server, as TRL 1.16's `trl vllm-serve` builds them
    (trl/scripts/vllm_serve.py: the weight-transfer engine the trainer pushes weights through, processed log-probs
    for its importance-sampling correction, no cap on log-probs, and the scale-out endpoints that multimodal prompts
    use; vLLM >= 0.30). Run with VLLM_SERVER_DEV_MODE=1, which exposes the weight-transfer endpoints."""
    gen = profile.vllm_generation
    return [
        "serve", starting_model(plan), "--host", "0.0.0.0", "--port", str(gen.port),
        "--tensor-parallel-size", str(gen.gpus), "--weight-transfer-config", '{"backend": "nccl"}',
        "--logprobs-mode", "processed_logprobs", "--max-logprobs", "-1", "--enable-scale-out", *gen.extra_args,
    ]


def _generation_server_block(
    plan: Plan, profile: SlurmProfile, res: StageResources, stage: str, logs: Path, *, with_vllm: bool
) -> str:
    """Bash that starts GRPO's generation server as a job step and waits until it answers (sets GEN_URL)."""
    gen = profile.vllm_generation
    gres = _gres(profile)
    if gen.placement == "node":
        reward_nodes = profile.vllm.nodes if with_vllm and profile.vllm.placement == "node" else 0
        node_line = f"GEN_NODE=${{NODES[{res.nodes + reward_nodes}]}}"
    elif gen.placement == "reward_node":
        node_line = "GEN_NODE=$VLLM_NODE"
    else:
        node_line = "GEN_NODE=$MAIN_NODE"
    srun = f'srun --nodes=1 --ntasks=1 -w "$GEN_NODE" --gres={gres(gen.gpus)}'
    if gen.placement != "node":
        srun += " --exact"
    serve_cmd = " ".join(
        ["export VLLM_SERVER_DEV_MODE=1; exec", _q(res.python), "-m vllm.entrypoints.cli.main",
         *map(_q, generation_serve_args(plan, profile))]
    )
    serve = "; ".join([*gen.setup, serve_cmd])
    lines = [
        node_line,
        "",
        "# GRPO's completions: a vLLM server of the starting model (TRL's server mode); the trainer pushes its",
        "# weights into it after each step. The trainer starts once it answers.",
        f'GEN_URL="http://$GEN_NODE:{gen.port}"',
        f"{srun} --output={logs}/{stage}-generation-%j.out bash -c {_q(serve)} &",
        "GEN_PID=$!",
        (
            f'{res.python} -m pipeline.orchestration.slurm wait-http "$GEN_URL/health" --timeout '
            f'{gen.wait_timeout_s} --pid "$GEN_PID" || {{ echo "[kframes] the generation server did not come up"; '
            'kill "$GEN_PID" ${VLLM_PID:+"$VLLM_PID"} 2>/dev/null; exit 1; }'
        ),
    ]
    return "\n".join(lines) + "\n"


def _shell_words(args: list[str]) -> str:
    """Quote for `bash -c '...'`: words holding `$` stay expandable inside the task (double quotes)."""
    return " ".join(shlex.quote(a) if "$" not in a else f'"{a}"' for a in args)


def _launch_block(
    profile: SlurmProfile, res: StageResources, stage: str, run_cmd: list[str], *, with_vllm: bool, with_gen: bool
) -> str:
    """Bash that starts the stage as a background job step (`STEP_PID=$!` follows it)."""
    step_gpus = res.gpus_per_node - _main_node_server_gpus(profile, with_vllm=with_vllm, with_gen=with_gen)
    if stage not in TRAIN_STAGES or step_gpus <= 0:
        what = "one process (CPU)" if stage in TRAIN_STAGES else "one process"
        return f"# {what}\n" + f'srun --nodes=1 --ntasks=1 -w "$MAIN_NODE" bash -c {_q(_shell_words(run_cmd))} &'
    nodes = res.nodes
    launch = [res.python, "-m", "accelerate.commands.launch", "--config_file", _abs(res.accelerate_config),
              "--num_machines", str(nodes), "--num_processes", str(nodes * step_gpus),
              "--machine_rank", "$SLURM_NODEID", "--main_process_ip", "$MAIN_NODE",
              "--main_process_port", str(profile.main_process_port), "-m", *run_cmd[2:]]
    node_list = '$(IFS=,; echo "${NODES[*]:0:' + str(nodes) + '}")'
    gres_opt = f" --gres={_gres(profile)(step_gpus)}" if with_vllm or with_gen else ""
    lines = [f"# {nodes} node(s) x {step_gpus} GPU(s): one accelerate launcher per node.", "export MAIN_NODE"]
    if with_vllm:
        lines.append("export VLLM_URL")
    if with_gen:
        lines.append("export GEN_URL")
    # $SLURM_NODEID and $VLLM_URL are expanded inside each task, not here
    lines.append(
        f'srun --kill-on-bad-exit=1 --nodes={nodes} --ntasks-per-node=1 -w "{node_list}"{gres_opt} '
        f"bash -c {_q(_shell_words(launch))} &"
    )
    return "\n".join(lines)


def render_script(
    plan: Plan, profile: SlurmProfile, stage: str, *, pipeline_path: str, run_dir: Path, force: bool = False
) -> str:
    """The sbatch script of one stage (a pure function of its inputs: the dry run prints exactly this).

    The fixed bash (signal traps, the wait loop, requeue) is the template `templates/stage.sbatch`; this fills in
    the stage's resources, its optional vLLM server and its launch line.
    """
    res = stage_resources(profile, stage)
    with_vllm = uses_vllm_server(plan, stage)
    with_gen = uses_generation_server(plan, stage)
    if with_vllm or with_gen:
        _check_vllm_placement(profile, res, with_vllm=with_vllm, with_gen=with_gen)
    extra_nodes = profile.vllm.nodes if with_vllm and profile.vllm.placement == "node" else 0
    extra_nodes += 1 if with_gen and profile.vllm_generation.placement == "node" else 0
    shared = with_gen and profile.vllm_generation.placement == "reward_node"
    logs, state = run_dir / "logs", run_dir / "state"
    run_cmd = [res.python, "-m", "pipeline.cli.main", "run", "--config", _abs(pipeline_path), "--only", stage]
    if force:
        # only the first attempt starts over: a requeued job must resume, so the script drops the flag once used
        run_cmd.append("$FORCE_FLAG")
    if with_vllm:
        run_cmd += ["--set", "grpo:reward.downstream.url=$VLLM_URL"]
    if with_gen:
        run_cmd += ["--set", "grpo:grpo.vllm_server_url=$GEN_URL"]
    force_block = (
        "# --force: start the stage over on the first run only; a requeued restart resumes instead\n"
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then FORCE_FLAG=--force; else FORCE_FLAG=--no-force; fi\n'
        "export FORCE_FLAG\n"
        if force
        else ""
    )
    setup = [*profile.setup, *[f"export {k}={_q(v)}" for k, v in profile.env.items()]]
    return STAGE_TEMPLATE.substitute(
        stage=stage,
        pipeline=pipeline_path,
        sbatch_options="\n".join(
            f"#SBATCH {opt}" for opt in _sbatch_options(profile, res, stage, nodes=res.nodes + extra_nodes, logs=logs)
        ),
        repo_root=_q(REPO_ROOT),
        setup="".join(line + "\n" for line in setup).rstrip("\n") if setup else "# (no setup lines in the profile)",
        state_dir=_q(state),
        logs_dir=_q(logs),
        force=force_block,
        server=(_vllm_server_block(plan, profile, res, stage, logs, shared=shared) if with_vllm else "")
        + (_generation_server_block(plan, profile, res, stage, logs, with_vllm=with_vllm) if with_gen else ""),
        launch=_launch_block(profile, res, stage, run_cmd, with_vllm=with_vllm, with_gen=with_gen),
        server_stop="".join(
            f'kill "${pid}" 2>/dev/null; wait "${pid}" 2>/dev/null\n'
            for pid, on in (("VLLM_PID", with_vllm), ("GEN_PID", with_gen)) if on
        ),
    )


# ----------------------------------------------------------------------------------------------------
# `python -m pipeline.orchestration.slurm wait-http URL` / `wait-server FILE --job ID`: the servers' readiness probes
# ----------------------------------------------------------------------------------------------------


# Job states in which a job will not run again on its own: `wait-server` stops waiting for it. (A preempted job
# that Slurm requeues comes back PENDING, and is waited for.)
_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
          "SPECIAL_EXIT", "TIMEOUT"}


def job_alive(job: str, *, squeue: str = "squeue") -> bool:
    """Whether Slurm still has job `job` pending or running (True when squeue cannot tell: no Slurm here)."""
    try:
        proc = subprocess.run([squeue, "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60,
                              check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return True
    states = proc.stdout.split()
    if proc.returncode != 0 or not states:
        return False  # unknown to the controller: it ended a while ago
    return any(state not in _ENDED for state in states)


def wait_server(
    url_file: str | Path, *, job: str, timeout_s: float, interval_s: float = 5.0, squeue: str = "squeue"
) -> str | None:
    """Wait until the server job `job` has written its address to `url_file` and `GET <address>/models` answers;
    return the address. None when the job ends first or `timeout_s` passes."""
    import httpx

    path = Path(url_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = path.read_text().strip() if path.is_file() else ""
        if url:
            try:
                if httpx.get(f"{url}/models", timeout=min(10.0, interval_s * 2)).status_code == 200:
                    print(f"wait-server: {url} is up", file=sys.stderr)
                    return url
            except httpx.HTTPError:
                pass
        if not job_alive(job, squeue=squeue):
            print(f"wait-server: job {job} ended before its server answered", file=sys.stderr)
            return None
        time.sleep(interval_s)
    print(f"wait-server: job {job}'s server did not answer within {timeout_s:.0f}s", file=sys.stderr)
    return None


def wait_http(url: str, *, timeout_s: float, pid: int | None = None, interval_s: float = 5.0) -> bool:
    """Poll `url` until it answers 200, the timeout passes, or process `pid` (the server's step) is gone."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"wait-http: the server process {pid} ended before {url} answered", file=sys.stderr)
                return False
            except PermissionError:
                pass
        try:
            if httpx.get(url, timeout=min(10.0, interval_s * 2)).status_code == 200:
                print(f"wait-http: {url} is up", file=sys.stderr)
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    print(f"wait-http: {url} did not answer within {timeout_s:.0f}s", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.orchestration.slurm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("wait-http", help="wait until URL answers 200")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--pid", type=int, default=None)
    p.add_argument("--interval", type=float, default=5.0)
    p = sub.add_parser("wait-server", help="wait for a server job's address file, then until it answers; print it")
    p.add_argument("url_file")
    p.add_argument("--job", required=True, help="the server's Slurm job id (waiting stops when it ends)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.cmd == "wait-server":
        url = wait_server(args.url_file, job=args.job, timeout_s=args.timeout, interval_s=args.interval)
        if url is None:
            return 1
        print(url)
        return 0
    return 0 if wait_http(args.url, timeout_s=args.timeout, pid=args.pid, interval_s=args.interval) else 1


if __name__ == "__main__":
    sys.exit(main())
