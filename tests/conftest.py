"""Shared fixtures: the tiny local model (built once per session), the real test videos in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny model trains several times faster on one thread than on two contended ones.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real videos with known cuts, NExT-QA questions); skips when it is absent."""
    if not (SHARED_DATA / "ground_truth.json").is_file():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (CI has it beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny Qwen2.5-VL with processor, built locally once (cached under $KFRAMES_CACHE)."""
    from pipeline.core.models import build_tiny_model

    cache = os.environ.get("KFRAMES_CACHE") or str(ROOT / ".cache" / "kframes")
    return build_tiny_model(cache)


@pytest.fixture(scope="session")
def real_processor_model_dir(shared_data: Path) -> Path:
    """A tiny random-weight Qwen2.5-VL with the REAL Qwen2.5-VL processor of ../shared/data (tokenizer, published
    chat template, image processor, special-token ids, generation config), built locally once."""
    from pipeline.core.models import build_tiny_model_from_processor

    cache = os.environ.get("KFRAMES_CACHE") or str(ROOT / ".cache" / "kframes")
    return build_tiny_model_from_processor(shared_data / "qwen2_5_vl_7b_instruct_processor", cache)
