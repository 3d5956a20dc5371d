"""The whole curriculum with the REAL Qwen2.5-VL processor (tokenizer, published chat template, image processor,
special-token ids, generation config of ../shared/data) around a tiny random-weight model: SFT1, SFT2, GRPO, select
and eval as a user runs them, plus `kframes tiny-model --processor` and `kframes check` on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.orchestration.orchestrate import load_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_model_command_builds_from_a_processor_folder(shared_data: Path, real_processor_model_dir: Path,
                                                           capsys, monkeypatch) -> None:
    monkeypatch.setenv("KFRAMES_CACHE", str(real_processor_model_dir.parent))
    processor = shared_data / "qwen2_5_vl_7b_instruct_processor"
    assert main(["tiny-model", "--processor", str(processor)]) == 0
    assert capsys.readouterr().out.strip() == str(real_processor_model_dir)
    config = json.loads((real_processor_model_dir / "config.json").read_text())
    real = json.loads((processor / "config.json").read_text())
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert config[key] == real[key]
    assert config["text_config"]["vocab_size"] == real["vocab_size"] and config["text_config"]["num_hidden_layers"] == 2


@pytest.mark.slow
def test_the_curriculum_runs_on_the_real_processor(tmp_path: Path, shared_data: Path, real_processor_model_dir: Path,
                                                   monkeypatch) -> None:
    monkeypatch.setenv("KFRAMES_CACHE", str(real_processor_model_dir.parent))
    monkeypatch.setenv("KFRAMES_PROCESSOR_DIR", str(shared_data / "qwen2_5_vl_7b_instruct_processor"))
    run = tmp_path / "run"
    overrides = [f"output_dir={run}", "sft1:model.name_or_path=tiny-real", "sft2:model.name_or_path=tiny-real",
                 "grpo:model.name_or_path=tiny-real", "grpo:reward.downstream.model=tiny-real",
                 "eval:downstream.model=tiny-real",
                 # as few steps as show each stage working: the 151k-token vocabulary makes every step dearer
                 "sft1:train.max_steps=2", "sft1:train.save_steps=2", "sft2:train.max_steps=2", "sft2:train.save_steps=2",
                 "grpo:train.max_steps=1", "grpo:train.save_steps=1", "select.limit=1", "eval:k=[2]"]
    plan = load_pipeline(str(ROOT / "configs/pipeline/tiny.yaml"), overrides)
    outcomes = run_pipeline(plan)
    assert [o.stage for o in outcomes] == ["data", "sft1", "sft2", "grpo", "select", "eval"]
    assert all(plan.read_record(s).status == "done" for s in plan.stages)
    # the trained selector kept the checkpoint's own decoding defaults; selection did not use them
    saved = json.loads((run / "grpo" / "final" / "generation_config.json").read_text())
    assert saved.get("repetition_penalty") == 1.05
    selections = [json.loads(x) for x in (run / "select" / "selections.jsonl").read_text().splitlines()]
    assert selections and all(s["generation"]["repetition_penalty"] == 1.0 and not s["generation"]["do_sample"]
                              for s in selections)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["downstream"].endswith("tiny-real")
    # the preflight on the trained stage's real examples, with the real processor
    assert main(["check", "--config", "configs/tiny/sft2.yaml", "--set", f"data.train_file={run}/data/tasks/sft2.train.jsonl",
                 "--set", "init_from=null", "--set", "model.name_or_path=tiny-real", "--gpus", "1"]) == 0
