"""`make demo`, shortened: the curriculum trains on generated videos and is measured on held-out ones.

One run of `run_demo` (configs/pipeline/demo.yaml with fewer videos and steps, seeded, one torch thread) serves both
tests. The first checks what the report must hold whatever was learnt: every stage and the SFT2-alone ablation done,
the three ablation rows measured on the same held-out questions against the same uniform baseline, the learning
curves drawn. The second is the demo's purpose: the selector beats uniform sampling by a clear margin on videos
it never saw (a wrong label mask, frames misaligned with their timestamps or a broken parser would leave it at
uniform's level).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/pipeline/demo.yaml")
SHORT = [
    "samples.train_videos=200",
    "samples.heldout_videos=12",
    "sft1:train.max_steps=60",
    "sft1:train.save_steps=60",
    "sft2:train.max_steps=160",
    "sft2:train.save_steps=160",
    "grpo:train.max_steps=2",
    "grpo:train.save_steps=2",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.orchestration.demo import run_demo

    torch.set_num_threads(min(2, os.cpu_count() or 1))  # seeded: the same numbers on every run with 2 threads
    out = tmp_path_factory.mktemp("demo") / "out"
    run_demo(out, config=CONFIG, overrides=SHORT)
    return out


def test_shortened_demo_reports_the_ablation_and_learning_curves(demo_run: Path) -> None:
    report = (demo_run / "report.md").read_text()
    for stage in ("data", "sft1", "sft2", "grpo", "select"):
        assert f"| {stage} | done |" in report
    results = json.loads((demo_run / "demo_results.json").read_text())
    rows = {r["training"]: r for r in results["ablation"]}
    assert list(rows) == ["SFT2 only", "SFT1 + SFT2", "SFT1 + SFT2 + GRPO"]
    questions = {r["questions"] for r in rows.values()}
    assert questions == {results["headline"]["questions"]} and questions.pop() == 12  # one question per video
    baseline = {(r["uniform_frame_hit_rate"], r["uniform_accuracy"]) for r in rows.values()}
    assert len(baseline) == 1  # one uniform baseline: the same questions, the same k
    for r in rows.values():
        for key in ("selector_frame_hit_rate", "selector_scene_recall", "fallback_rate", "selector_accuracy"):
            assert 0.0 <= r[key] <= 1.0
    assert results["headline"] == {k: v for k, v in rows["SFT1 + SFT2 + GRPO"].items() if k != "training"}
    assert (demo_run / "learning_curves.png").stat().st_size > 10_000
    assert "| SFT2 only |" in report and "![learning curves](learning_curves.png)" in report
    assert (demo_run / "ablation/sft2_only/final/stage.json").is_file()


def test_shortened_demo_selector_beats_uniform_on_heldout_videos(demo_run: Path) -> None:
    head = json.loads((demo_run / "demo_results.json").read_text())["headline"]
    assert head["fallback_rate"] <= 0.25
    assert head["selector_frame_hit_rate"] >= 1.5 * head["uniform_frame_hit_rate"]
    assert head["selector_scene_recall"] >= head["uniform_scene_recall"] + 0.25
    assert head["selector_accuracy"] >= head["uniform_accuracy"] + 0.25
