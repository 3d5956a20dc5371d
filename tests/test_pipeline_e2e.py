"""The tiny pipeline end to end (configs/pipeline/tiny.yaml): every stage for real, killed half-way and rerun.

`kframes run` starts in a subprocess and is SIGKILLed once SFT2 has written its first complete checkpoint; the
rerun must finish the job without redoing data or SFT1 and resume SFT2 from that checkpoint. Then every
stage's manifest is checked, and a third run must skip everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.orchestration.orchestrate import load_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/pipeline/tiny.yaml")



def _kill_when(proc: subprocess.Popen, ready, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kframes run ended (exit {proc.returncode}) before the kill point")
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the kill point was not reached in time")


@pytest.mark.slow
def test_tiny_pipeline_killed_and_rerun_finishes_with_every_manifest(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipeline.cli.basic import validate_file
    from stages.checkpoints import find_resume_checkpoint
    from stages.manifest import data_fingerprint, read_manifest

    run = tmp_path / "run"
    # SFT2 long enough that the kill lands between its first checkpoint and its end
    overrides = [f"output_dir={run}", "sft2:train.max_steps=12", "sft2:train.save_steps=2"]
    plan = load_pipeline(CONFIG, overrides)
    env = {**os.environ, "KFRAMES_CACHE": str(tiny_model_dir.parent), "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "run", "--config", CONFIG, *(a for o in overrides for a in ("--set", o))],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _kill_when(proc, lambda: find_resume_checkpoint(run / "sft2") is not None)
    assert plan.read_record("sft2").status == "running"
    before = {s: plan.read_record(s).finished_at for s in ("data", "sft1")}

    outcomes = run_pipeline(load_pipeline(CONFIG, overrides))
    actions = {o.stage: o.action for o in outcomes}
    assert actions == {"data": "skip", "sft1": "skip", "sft2": "resume", "grpo": "start", "select": "start",
                       "eval": "start"}
    assert {s: plan.read_record(s).finished_at for s in ("data", "sft1")} == before

    # data: PeakClips and the task files, valid against the contracts
    rec = plan.read_record("data")
    assert rec.status == "done" and rec.summary["videos"] == 4
    assert validate_file(str(run / "data/peakclips.jsonl")) == []
    for stage in ("sft1", "sft2", "grpo"):
        assert validate_file(str(plan.tasks_file(stage, "train"))) == []

    # the three training stages: each from the previous one's final model, on the data stage's tasks
    started = {"sft1": "tiny", "sft2": str(run / "sft1" / "final"), "grpo": str(run / "sft2" / "final")}
    for stage in ("sft1", "sft2", "grpo"):
        cfg = plan.configs[stage]
        m = read_manifest(run / stage)
        assert m is not None and m.stage == stage
        assert m.global_step == cfg.train.max_steps
        assert m.config == cfg.model_dump(mode="json")
        files = {"train": cfg.data.train_file, "eval": cfg.data.eval_file}
        assert m.data_fingerprint == data_fingerprint(files)
        if stage == "sft1":
            assert m.init_from is None
        else:
            assert m.started_from == started[stage] and m.init_from == str(run / {"sft2": "sft1", "grpo": "sft2"}[stage])
        assert plan.read_record(stage).status == "done"
    assert read_manifest(run / "sft2").resumed_from is not None  # SFT2 continued from the checkpoint it had

    # select: k frames per held-out question from the trained selector
    sel = [json.loads(line) for line in (run / "select/selections.jsonl").read_text().splitlines()]
    questions = (run / "samples/heldout.jsonl").read_text().splitlines()
    assert len(sel) == len(questions) == 2
    for r in sel:
        assert r["indices"] == sorted(set(r["indices"])) and len(r["indices"]) == plan.configs["grpo"].reward.k  # the trained model's k
        assert all(0 <= i < r["num_frames"] for i in r["indices"])
        assert len(r["timestamps_s"]) == len(r["indices"])

    # eval: both selectors at both k on the held-out questions
    summary = json.loads((run / "eval/summary.json").read_text())
    assert (run / "eval/report.md").is_file()
    assert set(summary["selectors"]) == {"uniform", "kframes-auto"} and summary["ks"] == [2, 4]
    assert set(plan.read_record("eval").summary) == {f"accuracy/{s}/k{k}" for s in summary["selectors"] for k in (2, 4)}

    # nothing left to do
    again = run_pipeline(load_pipeline(CONFIG, overrides))
    assert {o.action for o in again} == {"skip"}

    # the demo's report over the same run (every stage skipped): stage times, hit rates, contact sheets
    from pipeline.orchestration.demo import run_demo

    report = run_demo(run, config=CONFIG, overrides=overrides[1:]).read_text()
    for stage in ("data", "sft1", "sft2", "grpo", "select", "eval"):
        assert f"| {stage} | done |" in report
    assert "| K-frames selector |" in report and "| uniform |" in report
    hits = json.loads((run / "hit_rates.json").read_text())
    assert hits["questions"] == 2 and 0 <= hits["selector_frame_hit_rate"] <= 1
    assert len(list((run / "sheets").glob("*.png"))) == 2


def test_span_hits() -> None:
    from pipeline.orchestration.demo import span_hits

    assert span_hits([0.5, 1.0, 2.0, 3.0], [1.0, 3.0]) == (0.5, True)  # [start, end): 1.0 in, 3.0 out
    assert span_hits([0.0, 5.0], [1.0, 3.0]) == (0.0, False)
