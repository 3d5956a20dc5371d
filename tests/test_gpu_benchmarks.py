"""The weight-free full-size GPU benchmark runs its own code on a CPU when shrunk (`--tiny`): what a GPU machine
will run is exercised here, although only the GPU measures it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_full_size_benchmark_code_runs_shrunk_on_cpu(shared_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import bench_full_size
    finally:
        sys.path.pop(0)
    out = tmp_path / "full_size.json"
    rc = bench_full_size.main(["--tiny", "--steps", "1", "--warmup", "0", "--out", str(out),
                               "--processor", str(shared_data / "qwen2_5_vl_7b_instruct_processor")])
    assert rc == 0
    report = json.loads(out.read_text())
    sft, grpo = report["results"]
    assert sft["kind"] == "sft" and sft["tokens_per_example"] > sft["visual_tokens"] > 0 and sft["step_s"] > 0
    assert grpo["kind"] == "grpo" and set(grpo["breakdown_s"]) == {"generate_s", "policy_s", "reference_s", "reward_s"}
