"""`kframes submit` against a real Slurm: a single-node slurmctld + slurmd on localhost, CPU only.

tests/slurm/start_local_slurm.sh installs Debian's slurm-wlm daemons and munge when they are missing (as root,
with apt) and starts them with their own config, ports and state under a temporary folder; where that cannot
be done, the tests skip with the script's reason. The jobs run the tiny pipeline's stages exactly as a cluster
would: the generated sbatch script, `srun` job steps, the stage records.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "tests/slurm/start_local_slurm.sh"
STOP = ROOT / "tests/slurm/stop_local_slurm.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SFT1_STEPS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not sys.platform.startswith("linux"):
        pytest.skip("a local Slurm needs Linux")
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "KFRAMES_SLURMCTLD_PORT": str(_free_port()), "KFRAMES_SLURMD_PORT": str(_free_port())}
    proc = subprocess.run(["bash", str(START), str(state)], env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        subprocess.run(["bash", str(STOP), str(state)], capture_output=True, timeout=60, check=False)
        reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        pytest.skip(f"cannot start a local Slurm: {reason}")
    env["SLURM_CONF"] = proc.stdout.strip().splitlines()[-1]
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", os.environ.get("USER", "root")], env=env, capture_output=True, check=False)
        subprocess.run(["bash", str(STOP), str(state)], capture_output=True, timeout=60, check=False)


def _job_state(job_id: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True, check=False).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _wait(job_id: str, env: dict[str, str], *, until: set[str], timeout_s: float = 900) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    info: dict[str, str] = {}
    requeued_at: float | None = None
    while time.monotonic() < deadline:
        info = _job_state(job_id, env)
        if info.get("JobState") in until:
            return info
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime" and info.get("Restarts") != "0":
            # Slurm makes a requeued job wait ~2 minutes before it is eligible again; skip that wait, but only once
            # the node has let go of the previous run (started at once, the job is killed: "credential revoked")
            requeued_at = requeued_at or time.monotonic()
            if time.monotonic() - requeued_at > 5:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env,
                               capture_output=True, check=False)
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout_s}s: {info.get('JobState')} "
                         f"(reason {info.get('Reason')}, dependency {info.get('Dependency')})")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, slurm: dict[str, str]) -> dict[str, Path]:
    """A copy of the tiny pipeline writing under a temp folder, and a CPU profile for the local cluster."""
    tmp = tmp_path_factory.mktemp("submit")
    pipe = yaml.safe_load((ROOT / "configs/pipeline/tiny.yaml").read_text())
    pipe["output_dir"] = str(tmp / "run")
    pipe["stages"] = {k: str(ROOT / v) for k, v in pipe["stages"].items()}
    # enough steps that the signal lands mid-training even on an idle machine; no periodic saves, so the only
    # checkpoint is the one the signal asks for
    pipe["overrides"]["sft1"] = [f"train.max_steps={SFT1_STEPS}", "train.save_steps=1000", "train.logging_steps=1"]
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(pipe))
    (tmp / "profile.yaml").write_text(yaml.safe_dump(_cpu_profile(tmp / "pipeline.yaml")))
    return {"tmp": tmp, "profile": tmp / "profile.yaml", "run": tmp / "run"}


def _cpu_profile(pipeline: Path, **changes) -> dict:
    """A profile for the local cluster: CPU jobs in its `debug` partition, this interpreter, the tiny-model cache."""
    cache = os.environ.get("KFRAMES_CACHE") or str(ROOT / ".cache" / "kframes")
    profile = {
        "pipeline": str(pipeline),
        "partition": "debug",
        "time": "00:30:00",
        "nodes": 1,
        "gpus_per_node": 0,
        "mem": None,
        "exclusive": False,
        "python": sys.executable,
        "env": {"KFRAMES_CACHE": cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    }
    return {**profile, **changes}


def _submit(stage: str, setup: dict[str, Path], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "submit", stage, "--profile", str(setup["profile"])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_first_stage_runs_as_a_slurm_job(setup: dict[str, Path], slurm: dict[str, str]) -> None:
    from pipeline.orchestration.orchestrate import load_pipeline

    job = _submit("data", setup, slurm)
    info = _wait(job, slurm, until={"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"})
    log = setup["run"] / "slurm" / "logs" / f"data-{job}.out"
    assert info["JobState"] == "COMPLETED", log.read_text(errors="replace") if log.is_file() else info
    text = log.read_text(errors="replace")
    assert f"[kframes] stage data: job {job}, restart 0" in text
    assert "[kframes] stage data finished with exit code 0" in text
    plan = load_pipeline(str(setup["tmp"] / "pipeline.yaml"))
    rec = plan.read_record("data")
    assert rec is not None and rec.status == "done" and rec.key == plan.keys["data"]
    assert plan.tasks_file("sft1", "train").is_file()


def test_time_limit_warning_checkpoints_requeues_and_resumes(setup: dict[str, Path], slurm: dict[str, str]) -> None:
    """USR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit): the trainer saves a
    complete checkpoint and stops, the script requeues the job, and the restarted job resumes and finishes."""
    from pipeline.orchestration.orchestrate import load_pipeline
    from stages.manifest import read_manifest

    plan = load_pipeline(str(setup["tmp"] / "pipeline.yaml"))
    if plan.read_record("data") is None:
        pytest.skip("needs the data stage of test_first_stage_runs_as_a_slurm_job")
    job = _submit("sft1", setup, slurm)
    log = setup["run"] / "slurm" / "logs" / f"sft1-{job}.out"
    out_dir = plan.stage_dir("sft1")
    step = re.compile(rf"\| ([1-9]\d*)/{SFT1_STEPS} \[")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # until the trainer's progress bar shows a first finished step
        if log.is_file() and step.search(log.read_text(errors="replace")):
            break
        assert _job_state(job, slurm).get("JobState") in {"PENDING", "RUNNING", "CONFIGURING"}, log.read_text(errors="replace")
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm, check=True)
    info = _wait(job, slurm, until={"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout_s=900)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "USR1: asking the trainer to save a checkpoint and stop" in text
    assert "requeueing" in text and f"[kframes] stage sft1: job {job}, restart 1" in text
    manifest = read_manifest(out_dir / "final")
    assert manifest is not None and manifest.global_step == SFT1_STEPS
    assert manifest.resumed_from is not None and "checkpoint-" in manifest.resumed_from
    rec = plan.read_record("sft1")
    assert rec.status == "done" and rec.attempts == 2


# ----------------------------------------------------------------------------------------------------
# Job arrays: the data stage with its annotating server, the eval stage
# ----------------------------------------------------------------------------------------------------

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def _array_tasks(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """Task id -> state of every task of an array job."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True,
                         check=False).stdout
    tasks = {}
    for line in out.splitlines():
        info = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        tasks[info.get("ArrayTaskId", "?")] = info.get("JobState", "?")
    return tasks


def _submit_jobs(stage: str, profile: Path, env: dict[str, str]) -> dict[str, str]:
    """`kframes submit STAGE`: job name -> id, from its stderr lines."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "submit", stage, "--profile", str(profile)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S+)\s+job (\d+)", out.stderr, flags=re.M)}


@pytest.fixture(scope="module")
def array_setup(tmp_path_factory: pytest.TempPathFactory, slurm: dict[str, str], shared_data: Path) -> dict[str, Path]:
    """A pipeline whose data stage asks an OpenAI-compatible annotator, a profile running data and eval as job
    arrays, and a `vllm` on the jobs' PATH that serves tests/annotator_loopback.py (vLLM's arguments, no GPU)."""
    from test_arrays import _eval_questions, annotated_pipeline, data_queries, data_videos

    tmp = tmp_path_factory.mktemp("arrays")
    bindir = tmp / "bin"
    bindir.mkdir()
    fake = bindir / "vllm"
    fake.write_text(f'#!/bin/bash\nexec {sys.executable} {ROOT / "tests/annotator_loopback.py"} "$@"\n')
    fake.chmod(0o755)
    videos = data_videos(shared_data, tmp / "videos")
    queries = data_queries(tmp / "queries.jsonl", marked="fades")
    pipeline = annotated_pipeline(tmp, videos, queries, "http://set-by-the-array:1/v1", tmp / "run")
    raw = yaml.safe_load(pipeline.read_text())
    raw["eval_on"] = "recipe"  # eval asks its own questions: it reads nothing of grpo and select
    raw["overrides"]["eval"] = [
        "benchmark=jsonl", f"data={_eval_questions(shared_data, tmp / 'questions.jsonl')}", "k=[2, 4]",
        "selectors=[{name: uniform}, {name: bolt, model: tiny-clip, num_candidates: 8}]", "downstream.max_pixels=3136",
    ]
    pipeline.write_text(yaml.safe_dump(raw))
    profile = _cpu_profile(
        pipeline,
        setup=[f"export PATH={bindir}:$PATH"],
        extra_sbatch=["--oversubscribe"],  # the local node has 1 or 2 CPUs; the tasks mostly wait on HTTP
        # one CPU per job: the local node may declare a single CPU (nproc honours OMP_NUM_THREADS=1)
        stages={"data": {"array": {"tasks": 3, "parallel": 3, "merge_cpus": 1, "merge_mem": None}},
                "eval": {"array": {"tasks": 2, "merge_cpus": 1, "merge_mem": None}}},
        annotator={"gpus": 0, "port": _free_port(), "wait_timeout_s": 300},
    )
    profile["env"]["KFRAMES_LOOPBACK_FAIL_FILE"] = str(tmp / "refuse.txt")
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
    return {"tmp": tmp, "profile": tmp / "profile.yaml", "pipeline": pipeline, "logs": tmp / "run" / "slurm" / "logs",
            "videos": videos, "queries": queries}


def _log(setup: dict[str, Path], name: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(setup["logs"].glob(f"{name}-*.out")))


def test_data_array_with_its_annotating_server_resumes_a_failed_task_and_merges(
    array_setup: dict[str, Path], slurm: dict[str, str]
) -> None:
    """3 tasks over 5 shared videos against the loopback annotator served as its own job: the task whose video the
    annotator refuses fails, so the merge never runs and the server is stopped; resubmitted, that task builds
    only that video, the others nothing, and the merge writes the stage (tests/test_arrays.py compares a merged
    build with a one-process one)."""
    from pipeline.orchestration.orchestrate import load_pipeline

    (array_setup["tmp"] / "refuse.txt").write_text("zeppelin")  # every question about fades.mp4 (shard 0/3)
    jobs = _submit_jobs("data", array_setup["profile"], slurm)
    assert list(jobs) == ["data-annotator", "data-array", "data-annotator-stop", "data-merge"]
    stop = _wait(jobs["data-annotator-stop"], slurm, until=ENDED)
    assert stop["JobState"] == "COMPLETED", _log(array_setup, "data-annotator-stop")
    tasks = _array_tasks(jobs["data-array"], slurm)
    assert tasks == {"0": "FAILED", "1": "COMPLETED", "2": "COMPLETED"}, _log(array_setup, "data")
    server = _wait(jobs["data-annotator"], slurm, until=ENDED)
    server_log = _log(array_setup, "data-annotator")
    assert server["JobState"] == "COMPLETED" and "USR2: stopping the server" in server_log, server_log
    merge = _wait(jobs["data-merge"], slurm, until=ENDED, timeout_s=120)
    assert merge["JobState"] == "CANCELLED"  # its dependency can never be satisfied
    plan = load_pipeline(str(array_setup["pipeline"]))
    out = plan.stage_dir("data")
    assert sorted(p.stem for p in (out / "videos").glob("*.json")) == ["bikes", "counter", "delayed_start",
                                                                       "goldeneye-vfr-drop3"]
    assert plan.read_record("data").status == "running" and not (out / "tasks").exists()
    built_at = {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.json")}

    (array_setup["tmp"] / "refuse.txt").unlink()
    jobs = _submit_jobs("data", array_setup["profile"], slurm)
    merge = _wait(jobs["data-merge"], slurm, until=ENDED, timeout_s=300)
    logs = _log(array_setup, "data")
    assert merge["JobState"] == "COMPLETED", _log(array_setup, "data-merge") + logs
    assert _array_tasks(jobs["data-array"], slurm) == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED"}
    assert "shard 0/3: {'built': 1, 'resumed': 1}" in logs  # only the video it had not finished
    assert "shard 1/3: {'built': 0, 'resumed': 2}" in logs and "shard 2/3: {'built': 0, 'resumed': 1}" in logs
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.json") if p.name in built_at} == built_at
    assert _wait(jobs["data-annotator"], slurm, until=ENDED)["JobState"] == "COMPLETED"
    record = plan.read_record("data")
    assert record.status == "done" and record.key == plan.keys["data"] and record.summary["shards"] == 3
    assert record.summary["videos"] == 5 and plan.tasks_file("sft1", "train").is_file()
    assert len((out / "peakclips.jsonl").read_text().splitlines()) == 5


def test_eval_array_of_two_tasks_merges_into_the_one_process_run(
    array_setup: dict[str, Path], slurm: dict[str, str]
) -> None:
    from test_arrays import assert_same_eval

    from pipeline.evaluation.evaluate import evaluate
    from pipeline.orchestration.orchestrate import StageRecord, load_pipeline

    plan = load_pipeline(str(array_setup["pipeline"]))
    for stage in ("grpo", "select"):  # eval_on: recipe with baseline selectors reads neither; marked done
        plan.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        plan.write_record(StageRecord(stage=stage, key=plan.keys[stage], status="done"))
    jobs = _submit_jobs("eval", array_setup["profile"], slurm)
    assert list(jobs) == ["eval-array", "eval-merge"]
    merge = _wait(jobs["eval-merge"], slurm, until=ENDED)
    assert merge["JobState"] == "COMPLETED", _log(array_setup, "eval-merge") + _log(array_setup, "eval")
    assert _array_tasks(jobs["eval-array"], slurm) == {"0": "COMPLETED", "1": "COMPLETED"}
    record = plan.read_record("eval")
    assert record.status == "done" and record.summary["shards"] == 2

    single = array_setup["tmp"] / "eval-one-process"
    evaluate(plan.configs["eval"].model_copy(update={"output_dir": str(single)}), progress=False)
    assert_same_eval(plan.stage_dir("eval"), single)
