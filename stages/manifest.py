"""`OUTPUT/final/stage.json`: what a finished stage produced, from what, and how well.

Stages hand off through their output folders (SFT1 -> SFT2 -> GRPO), and a researcher reading a result weeks
later must be able to tell exactly which model, recipe and data made it. The manifest is written last, after the
model and processor, so a `final/` folder with a readable manifest is a finished stage; `read_manifest` returning
None means "not finished" (the orchestrator relies on that to skip completed stages).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_write_json, verify_digests

MANIFEST_NAME = "stage.json"


class StageManifest(BaseModel):
    """The record of one finished training stage."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="sft1, sft2 or grpo")
    started_from: str = Field(description="the weights training started from: a hub id, a folder, or init_from's final/")
    base_model: str = Field(description="the original pretrained model at the root of the curriculum")
    init_from: str | None = Field(None, description="the previous stage's output folder, when there was one")
    config: dict[str, Any] = Field(description="the resolved stage config (after --set overrides)")
    config_hash: str = Field(description="sha256 of the resolved config, to tell reruns of the same recipe apart")
    data_fingerprint: str = Field(description="sha256 over the contents of the task files")
    data_files: dict[str, str] = Field(default_factory=dict, description="role (train/eval) -> path")
    num_train_examples: int = 0
    global_step: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    resumed_from: str | None = Field(None, description="the checkpoint the last run resumed from, if any")
    lora: str = Field("none", description="none | merged | adapter")
    world_size: int = 1
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="every file of final/ at save time: relative path -> {size, sha256}"
    )
    finished_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(paths: dict[str, str | None]) -> str:
    """sha256 over (role, content hash) of each data file: the same data under another path gives the same print."""
    h = hashlib.sha256()
    for role in sorted(paths):
        path = paths[role]
        if path is None:
            continue
        h.update(f"{role}:{file_sha256(path)}\n".encode())
    return h.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what training does, for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("kframes", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def write_manifest(stage_dir: str | os.PathLike[str], manifest: StageManifest) -> Path:
    """Write `<stage_dir>/stage.json` atomically. Returns its path."""
    path = Path(stage_dir) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def verify_final(final_dir: str | os.PathLike[str], manifest: StageManifest) -> list[str]:
    """What no longer matches the digests the manifest recorded at save time (empty: the model is as saved)."""
    return verify_digests(final_dir, manifest.files)


def read_manifest(stage_dir: str | os.PathLike[str]) -> StageManifest | None:
    """The manifest of a finished stage. Accepts the stage's output folder or its `final/`.

    Returns None when there is none (the stage has not finished); raises DataError when the file exists but is
    not a manifest (a hand-edited or foreign file must not pass for a finished stage).
    """
    root = Path(stage_dir)
    for cand in (root / MANIFEST_NAME, root / "final" / MANIFEST_NAME):
        if cand.is_file():
            try:
                return StageManifest.model_validate_json(cand.read_text())
            except ValidationError as exc:
                raise DataError(f"{cand}: not a valid stage manifest ({exc.errors()[0].get('msg')})") from None
    return None
