"""Every long job, killed at a moment it is busy (SIGKILL, SIGTERM or Ctrl-C), resumes to the same result.

Each job runs as a user runs it (a subprocess of the `kframes` command or `python -m stages.STAGE`), is killed as soon
as it has written part of its output, and is run again to the end; the result is compared with an uninterrupted
run of the same command. `kframes run` itself is killed and rerun in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Sample videos and the tiny pipeline's data stage (task files of every stage), built once."""
    run = tmp_path_factory.mktemp("kill") / "run"
    rc = main(["run", "--config", "configs/pipeline/tiny.yaml", "--set", f"output_dir={run}",
               "--set", "samples.train_videos=8", "--only", "data"])
    assert rc == 0
    return run


def _env(tiny_model_dir: Path) -> dict[str, str]:
    return {**os.environ, "KFRAMES_CACHE": str(tiny_model_dir.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _kframes(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli.main", *args]


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child, before exec: SIGINT back to its default. A job started in the background by a non-interactive
    shell (CI runners, `nohup ... &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_when_busy(cmd: list[str], env: dict[str, str], log: Path, busy: Callable[[], bool], sig: int) -> None:
    """Start `cmd`, send `sig` to it as soon as `busy()` (it has written part of its output), wait for it to end."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_ctrl_c_as_in_a_terminal)
        deadline = time.monotonic() + 1800  # a loaded 2-core machine is slow; progress, not time, decides
        try:
            while not busy():
                if proc.poll() is not None:
                    raise AssertionError(f"ended (exit {proc.returncode}) before it was killed:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError("no progress to kill it at")
                time.sleep(0.05)
            os.killpg(proc.pid, sig)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode != 0, "the job was not interrupted"


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()) \
        if path.is_file() else 0


def _untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "timings"} for line in path.read_text().splitlines()]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def test_data_build_killed_by_sigterm_resumes_to_the_same_peakclips(built: Path, tiny_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    samples, out = built / "samples", tmp_path / "data"
    cmd = _kframes("data", "build", "--config", "configs/tiny/data.yaml", "--videos", str(samples / "videos"),
                   "--captions", str(samples / "captions.json"), "--queries", str(samples / "queries.jsonl"),
                   "--out", str(out), "--quiet")
    env = _env(tiny_model_dir)
    _kill_when_busy(cmd, env, tmp_path / "killed.log", lambda: _lines_in(out / "videos") >= 1, signal.SIGTERM)
    assert not (out / "tasks").exists()
    _run(cmd, env, tmp_path / "rerun.log")
    assert (out / "peakclips.jsonl").read_text() == (built / "data" / "peakclips.jsonl").read_text()
    for name in ("sft1.train.jsonl", "sft2.train.jsonl", "grpo.train.jsonl"):
        assert (out / "tasks" / name).read_text() == (built / "data" / "tasks" / name).read_text()


def _lines_in(folder: Path) -> int:
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


@pytest.mark.parametrize(("stage", "sig"), [("sft1", signal.SIGKILL), ("grpo", signal.SIGTERM)])
def test_training_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(
    built: Path, tiny_model_dir: Path, tmp_path: Path, stage: str, sig: int
) -> None:
    from stages.checkpoints import find_resume_checkpoint
    from stages.manifest import read_manifest

    steps = 6
    common = ["--config", f"configs/tiny/{stage}.yaml", "--set", f"data.train_file={built}/data/tasks/{stage}.train.jsonl",
              "--set", "data.eval_file=null", "--set", "init_from=null", "--set", f"train.max_steps={steps}",
              "--set", "train.save_steps=2"]
    env = _env(tiny_model_dir)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    cmd = [sys.executable, "-m", f"stages.{stage}", *common, "--set", f"output_dir={killed}"]
    _kill_when_busy(cmd, env, tmp_path / "killed.log", lambda: find_resume_checkpoint(killed) is not None, sig)
    assert not (killed / "final").exists()
    _run(cmd, env, tmp_path / "rerun.log")
    _run([sys.executable, "-m", f"stages.{stage}", *common, "--set", f"output_dir={reference}"], env,
         tmp_path / "reference.log")

    resumed, ref = read_manifest(killed / "final"), read_manifest(reference / "final")
    assert resumed.resumed_from is not None and resumed.global_step == ref.global_step == steps
    a, b = _weights(killed / "final"), _weights(reference / "final")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def _questions(built: Path, path: Path) -> Path:
    """The held-out sample questions as a select batch and as eval questions."""
    qs = [json.loads(line) for line in (built / "samples" / "heldout.jsonl").read_text().splitlines()]
    # 192 distinct items (each question reworded, at k = 1..8): seconds of work even on a fast machine, so that the
    # interruption lands between two of them rather than after the last
    items = [(q, k, n) for n in range(24) for k in range(1, 9) for q in qs][:192]
    with path.open("w") as fh:
        for i, (q, k, n) in enumerate(items):
            fh.write(json.dumps({"id": f"q{i}", "video": q["video"], "query": f"{q['question']} (asked {n + 1}x)",
                                 "options": q["options"], "k": k}) + "\n")
    return path


def test_select_batch_interrupted_by_ctrl_c_resumes_to_the_same_selections(built: Path, tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    batch = _questions(built, tmp_path / "batch.jsonl")
    args = ["select", "--model", "tiny", "--batch", str(batch), "--k", "4", "--num-candidates", "8",
            "--max-new-tokens", "16"]
    env = _env(tiny_model_dir)
    out, ref = tmp_path / "out.jsonl", tmp_path / "ref.jsonl"
    partial = out.with_name(out.name + ".partial")
    _kill_when_busy(_kframes(*args, "--out", str(out)), env, tmp_path / "killed.log",
                    lambda: _lines(partial) >= 1, signal.SIGINT)
    assert not out.exists()
    _run(_kframes(*args, "--out", str(out)), env, tmp_path / "rerun.log")
    _run(_kframes(*args, "--out", str(ref)), env, tmp_path / "ref.log")
    assert _untimed(out) == _untimed(ref)


def test_eval_killed_resumes_to_the_same_results(built: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    with questions.open("w") as fh:  # each question 8 times under its own id: enough work to be killed mid-run
        for line in (built / "samples" / "heldout.jsonl").read_text().splitlines():
            q = json.loads(line)
            for n in range(8):
                rec = {k: q[k] for k in ("video", "question", "options", "answer")}
                fh.write(json.dumps({"question_id": f"{q['question_id']}-{n}", **rec}) + "\n")
    args = ["eval", "--config", "configs/eval/tiny.yaml", "--data", str(questions), "--set", "selectors=[{name: uniform}, "
            "{name: kframes, model: tiny, num_candidates: 8, max_new_tokens: 16}]", "--set", "k=[2, 4, 8]"]
    env = _env(tiny_model_dir)
    out, ref = tmp_path / "eval", tmp_path / "ref"
    _kill_when_busy(_kframes(*args, "--out", str(out)), env, tmp_path / "killed.log",
                    lambda: _lines(out / "results.jsonl") >= 1, signal.SIGKILL)
    assert not (out / "summary.json").exists()
    _run(_kframes(*args, "--out", str(out)), env, tmp_path / "rerun.log")
    _run(_kframes(*args, "--out", str(ref)), env, tmp_path / "ref.log")
    def results(path: Path) -> list[dict]:  # without the timings (keys ending in _s, but the frames' timestamps)
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        recs = [{k: v for k, v in r.items() if not k.endswith("_s") or k == "timestamps_s"} for r in recs]
        return sorted(recs, key=lambda r: (r["selector"], r["k"], r["question_id"]))

    assert results(out / "results.jsonl") == results(ref / "results.jsonl")
