"""GRPO generation on vLLM (`grpo.use_vllm`): refused with the install line where vLLM is missing, before any
model loads; the recipe's fields reach TRL's GRPOConfig under TRL's names.

The CPU environment has no vLLM (it lives in requirements/gpu-vllm.txt's environment), so the refusal is what runs
here; the Slurm side (the generation server `kframes submit grpo` starts) is in tests/test_slurm.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from pipeline.core.config import GRPOConfig, GRPOSection, load_config
from pipeline.core.errors import ConfigError
from stages.grpo import VLLM_INSTALL, check_vllm_generation, grpo_args, train, trl_vllm_range

ROOT = Path(__file__).resolve().parents[1]
NO_VLLM = importlib.util.find_spec("vllm") is None


def _recipe(tmp_path: Path, *changes: str) -> GRPOConfig:
    overrides = [f"output_dir={tmp_path / 'grpo'}", f"init_from={tmp_path / 'no-sft2-here'}", *changes]
    return load_config(str(ROOT / "configs/tiny/grpo.yaml"), GRPOConfig, overrides)


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here; the refusal is for environments without it")
def test_use_vllm_without_vllm_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    cfg = _recipe(tmp_path, "grpo.use_vllm=true")
    # init_from points nowhere: had the stage got as far as loading the model, that would be the error instead
    with pytest.raises(ConfigError, match=r"grpo.use_vllm: vLLM is not installed.*requirements/gpu-vllm.txt") as exc:
        train(cfg)
    assert VLLM_INSTALL in str(exc.value)
    assert not (tmp_path / "grpo").exists()  # nothing written


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here; the refusal is for environments without it")
def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "train", "grpo", "--config", str(ROOT / "configs/tiny/grpo.yaml"),
         "--set", f"output_dir={tmp_path / 'grpo'}", "--set", "grpo.use_vllm=true", "--set", "grpo.vllm_mode=server"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "grpo.use_vllm" in line]
    assert len(lines) == 1 and "pip install -r requirements/gpu-vllm.txt" in lines[0]


def test_use_vllm_off_needs_nothing() -> None:
    check_vllm_generation(GRPOSection())  # the default: no vLLM, no server


def test_the_pinned_vllm_is_inside_trls_range() -> None:
    """requirements/gpu-vllm.txt pins the vLLM that the installed TRL says it supports."""
    pins = dict(
        line.split("==") for line in (ROOT / "requirements/gpu-vllm.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    import trl

    assert pins["trl"] == trl.__version__
    supported = SpecifierSet(trl_vllm_range())
    assert str(supported) and pins["vllm"] in supported, (pins["vllm"], str(supported))


def test_recipe_fields_reach_trl_under_its_names(tmp_path: Path) -> None:
    cfg = _recipe(tmp_path, "grpo.use_vllm=true", "grpo.vllm_gpu_memory_utilization=0.4")
    args = grpo_args(cfg, [1.0, 0.5])
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.4
    cfg = _recipe(tmp_path, "grpo.use_vllm=true", "grpo.vllm_mode=server", "grpo.vllm_server_url=http://gen-node:8001/")
    args = grpo_args(cfg, [1.0, 0.5])
    assert args.vllm_mode == "server" and args.vllm_server_base_url == "http://gen-node:8001"
    cfg = _recipe(tmp_path, "grpo.use_vllm=true", "grpo.vllm_mode=server", "grpo.vllm_server_url=http://gen-node:8001/v1")
    assert grpo_args(cfg, [1.0, 0.5]).vllm_server_base_url == "http://gen-node:8001"
