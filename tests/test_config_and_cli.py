"""Recipes load strictly, overrides work, errors name file/key/type; `kframes validate` and `config show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.core.config import STAGE_CONFIGS, load_stage_config
from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", ["tiny", "qwen2_5_vl_3b"])
@pytest.mark.parametrize("stage", ["data", "sft1", "sft2", "grpo"])
def test_every_shipped_recipe_loads(size, stage):
    cfg = load_stage_config(stage, ROOT / "configs" / size / f"{stage}.yaml")
    assert isinstance(cfg, STAGE_CONFIGS[stage])


def test_paper_defaults_in_the_gpu_recipes():
    grpo = load_stage_config("grpo", ROOT / "configs/qwen2_5_vl_3b/grpo.yaml")
    assert grpo.train.learning_rate == 1e-6 and grpo.grpo.beta == 0.01
    assert grpo.model.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert grpo.reward.downstream.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    sft1 = load_stage_config("sft1", ROOT / "configs/qwen2_5_vl_3b/sft1.yaml")
    assert sft1.train.learning_rate == 1e-5 and sft1.model.freeze_vision and sft1.frames.num_candidates == 256


def test_override_is_applied_and_typed():
    cfg = load_stage_config("sft1", ROOT / "configs/tiny/sft1.yaml", ["train.learning_rate=2e-5", "lora.enabled=true"])
    assert cfg.train.learning_rate == pytest.approx(2e-5)
    assert cfg.lora.enabled is True


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/tiny/sft1.yaml").read_text() + "\noptimizer: adamw\n")
    with pytest.raises(ConfigError) as exc:
        load_stage_config("sft1", bad)
    assert str(bad) in str(exc.value) and "optimizer: unknown key" in str(exc.value)


def test_bad_value_names_key_and_expected_type():
    with pytest.raises(ConfigError) as exc:
        load_stage_config("sft1", ROOT / "configs/tiny/sft1.yaml", ["train.per_device_batch_size=many"])
    msg = str(exc.value)
    assert "sft1.yaml" in msg and "train.per_device_batch_size" in msg and "int" in msg


def test_stage_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="for stage 'sft1'"):
        load_stage_config("sft2", ROOT / "configs/tiny/sft1.yaml")


def test_config_show_prints_resolved_config(capsys):
    rc = main(["config", "show", "grpo", "--config", str(ROOT / "configs/tiny/grpo.yaml"), "--set", "grpo.beta=0.05"])
    out = capsys.readouterr().out
    assert rc == 0 and "beta: 0.05" in out and "num_generations: 4" in out


def test_config_show_bad_key_exits_2_with_one_line(capsys):
    rc = main(["config", "show", "sft1", "--config", str(ROOT / "configs/tiny/sft1.yaml"), "--set", "train.lr=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.lr: unknown key" in err and "Traceback" not in err


def test_validate_reports_each_bad_line(tmp_path, capsys):
    good = {
        "id": "e1",
        "task": "sft2.key_clips",
        "video": "v.mp4",
        "frame_indices": [0, 5],
        "timestamps_s": [0.0, 0.2],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "[]"}],
    }
    lines = [
        json.dumps(good),
        json.dumps({**good, "task": "nope"}),
        "{not json",
        json.dumps({**good, "timestamps_s": [0.0]}),
        json.dumps(good),
    ]
    f = tmp_path / "tasks.jsonl"
    f.write_text("\n".join(lines) + "\n")
    rc = main(["validate", str(f)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert [line.split(":")[1] for line in out] == ["2", "3", "4"]
    assert out[0].startswith(f"{f}:2: task:")
    assert "not valid JSON" in out[1]

    f.write_text(json.dumps(good) + "\n")
    assert main(["validate", str(f)]) == 0
