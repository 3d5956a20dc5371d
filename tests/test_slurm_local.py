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
    while time.monotonic() < deadline:
        info = _job_state(job_id, env)
        if info.get("JobState") in until:
            return info
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime" and info.get("Restarts") != "0":
            # Slurm makes a requeued job wait ~2 minutes before it is eligible again; skip that wait
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env,
                           capture_output=True, check=False)
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout_s}s: {info.get('JobState')}")


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
    cache = os.environ.get("KFRAMES_CACHE") or str(ROOT / ".cache" / "kframes")
    profile = {
        "pipeline": str(tmp / "pipeline.yaml"),
        "partition": "debug",
        "time": "00:30:00",
        "nodes": 1,
        "gpus_per_node": 0,
        "mem": None,
        "exclusive": False,
        "python": sys.executable,
        "env": {"KFRAMES_CACHE": cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    }
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
    return {"tmp": tmp, "profile": tmp / "profile.yaml", "run": tmp / "run"}


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
