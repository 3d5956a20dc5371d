"""Checkpoints a restarted run can trust.

`transformers.Trainer` writes `OUTPUT/checkpoint-STEP` piece by piece (weights, optimizer, scheduler, RNG state
of every rank, trainer_state.json). A job killed half-way (Slurm preemption, OOM, a node failure) leaves a folder
that looks like a checkpoint but is not one, and resuming from it either crashes or, worse, silently restarts
from a corrupted optimizer state. So a checkpoint counts as complete only when it holds our marker file, which
`CompleteCheckpointCallback` writes last: after the Trainer's `on_save` event (which follows the whole save), after
every rank has finished its share (a barrier), atomically, on the main process. Anything without the marker is
ignored by `find_resume_checkpoint` and removed by `discard_incomplete_checkpoints` before training restarts, so
that the Trainer's own checkpoint rotation never counts it either.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from pipeline.core.io import atomic_write_json, verify_digests

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "kframes_complete.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The STEP of a `checkpoint-STEP` folder name, or None for any other name."""
    m = _CHECKPOINT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when the folder carries the completeness marker, written after everything else."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Every `checkpoint-STEP` folder under `output_dir`, oldest step first (complete or not)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return [p for _, p in sorted(found, key=lambda sp: sp[0])]


def checkpoint_damage(path: str | os.PathLike[str]) -> list[str]:
    """Files of a complete checkpoint whose size differs from what its marker recorded (a truncated copy, a disk
    that filled up after the save): such a checkpoint is complete on paper only."""
    try:
        recorded = json.loads((Path(path) / COMPLETE_MARKER).read_text(encoding="utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return [f"{COMPLETE_MARKER}: unreadable"]
    return verify_digests(path, recorded, hashes=False)


def find_resume_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest COMPLETE and intact `checkpoint-STEP` under `output_dir`, or None when there is none.

    A damaged one (a file shorter than when it was saved) is passed over, with a warning, for the one before it.
    """
    for p in reversed([p for p in list_checkpoints(output_dir) if is_complete_checkpoint(p)]):
        damage = checkpoint_damage(p)
        if not damage:
            return str(p)
        logger.warning("passing over %s: %s", p, "; ".join(damage[:3]))
    return None


def discard_incomplete_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove checkpoint folders without the marker (leftovers of a killed save). Returns what was removed.

    Call on the main process only, before the Trainer starts: a resumed run may save a checkpoint of the same
    step again, and must not write into (or rotate around) a half-written one.
    """
    removed = []
    for p in list_checkpoints(output_dir):
        if not is_complete_checkpoint(p):
            logger.warning("discarding incomplete checkpoint %s (no %s: its save was interrupted)", p, COMPLETE_MARKER)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoint_run_key(path: str | os.PathLike[str]) -> str | None:
    """The run key a complete checkpoint was saved under (None: no marker, or a marker written without one)."""
    try:
        key = json.loads((Path(path) / COMPLETE_MARKER).read_text()).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def foreign_checkpoints(output_dir: str | os.PathLike[str], run_key: str) -> list[Path]:
    """Complete checkpoints under `output_dir` saved by another run (another config, data or starting model)."""
    return [p for p in list_checkpoints(output_dir)
            if is_complete_checkpoint(p) and checkpoint_run_key(p) not in (None, run_key)]


class CompleteCheckpointCallback(TrainerCallback):
    """Marks `checkpoint-STEP` complete once every rank has saved its part of it.

    The Trainer fires `on_save` after `_save_checkpoint` returns on each rank; a barrier makes sure all ranks (each
    writes its own RNG state and, under DeepSpeed, its optimizer shard) are done before the main process writes the
    marker. Works for GRPO and SFT alike: it only looks at `args.output_dir` and `state.global_step`. The marker
    records `run_key` (what determines the run: config, data, starting model), so that a checkpoint is only ever
    resumed by the run that saved it.
    """

    def __init__(self, run_key: str | None = None) -> None:
        self.run_key = run_key

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if folder.is_dir() and (folder / "trainer_state.json").is_file():
                sizes = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size}
                         for p in sorted(folder.rglob("*")) if p.is_file()}
                atomic_write_json(
                    folder / COMPLETE_MARKER,
                    {"step": state.global_step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_key": self.run_key,
                     "files": sizes},
                )
            else:  # never mark something the Trainer did not finish writing
                logger.warning("on_save for step %d but %s has no trainer_state.json", state.global_step, folder)
        _barrier()
        return control


def restore_weights_with_key_conversion(trainer) -> None:
    """Make `trainer` restore full-model checkpoints through `from_pretrained`, which renames keys.

    Qwen2.5-VL (like other VLMs with a checkpoint conversion mapping) is saved with its original hub key names
    (`visual.*`, `model.layers.*`) but built with new ones (`model.visual.*`, `model.language_model.*`).
    `Trainer._load_from_checkpoint` loads the file with `load_state_dict(strict=False)` and no renaming, so a
    resumed run silently restarts from the *initial* weights with the checkpoint's optimizer state
    (transformers issue #43701, still open in 5.23). Loading the checkpoint folder with `from_pretrained` applies
    the same conversion as any other load; we copy its weights in strictly, so a mismatch fails loudly.
    DeepSpeed restores its own module states and PEFT its adapters: those paths are left to the Trainer.
    """
    from peft import PeftModel

    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint: str, model=None):
        target = model if model is not None else trainer.model
        folder = Path(resume_from_checkpoint)
        full_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
        if isinstance(target, PeftModel) or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or not full_weights:
            return original(resume_from_checkpoint, model)
        param = next(target.parameters())
        loaded = type(target).from_pretrained(str(folder), dtype=param.dtype)
        target.load_state_dict(loaded.state_dict(), strict=True)
        logger.info("restored model weights from %s", folder)
        return None

    trainer._load_from_checkpoint = load
