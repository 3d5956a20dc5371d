"""What every training stage (SFT1, SFT2, GRPO) shares: the public API of `stages/`.

A stage module builds its datasets and its TRL trainer; everything around that lives here and is the same for
every stage:

- `resolve_model_path`, `load_model_and_processor` (stages.modeling): which weights to start from, dtype and
  attention, the frozen vision encoder, optional LoRA.
- `training_args_kwargs`: the TrainingArguments fields every stage takes from its recipe's `train` section.
- `find_resume_checkpoint`, `CompleteCheckpointCallback` (stages.checkpoints): resume only from complete checkpoints.
- `StageManifest`, `write_manifest`, `read_manifest` (stages.manifest): `OUTPUT/final/stage.json`.
- `run_trainer`: the driver (resume or start over, train, evaluate, save `final/` with its manifest).

A stage module `stages.<name>` exposes `train(cfg, *, resume=True, callbacks=()) -> Path` (the `final/` folder),
usually as a call to `run_trainer` with a function that builds its trainer:

    def train(cfg, *, resume=True, callbacks=()):
        data = {"train": cfg.data.train_file, "eval": cfg.data.eval_file}
        def make_trainer(model, processor, callbacks):
            return GRPOTrainer(model=model, processing_class=processor, callbacks=callbacks, ...)
        return run_trainer("grpo", cfg, make_trainer, data_files=data, resume=resume, callbacks=callbacks)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import GRPO_ENDPOINT_FIELDS, without_fields
from pipeline.core.errors import ConfigError
from pipeline.core.io import OutputLock, file_digests
from stages.checkpoints import (
    COMPLETE_MARKER,
    CompleteCheckpointCallback,
    discard_incomplete_checkpoints,
    find_resume_checkpoint,
    foreign_checkpoints,
    list_checkpoints,
    restore_weights_with_key_conversion,
)
from stages.manifest import (
    StageManifest,
    verify_final,
    config_hash,
    data_fingerprint,
    library_versions,
    read_manifest,
    write_manifest,
)
from stages.guards import FiniteLossCallback
from stages.modeling import (
    load_model_and_processor,
    load_processor,
    merge_adapter,
    parameter_counts,
    resolve_model_path,
)
from stages.preflight import check_before_training

__all__ = [
    "COMPLETE_MARKER",
    "CompleteCheckpointCallback",
    "FINAL_DIR",
    "StageManifest",
    "find_resume_checkpoint",
    "load_model_and_processor",
    "read_manifest",
    "resolve_model_path",
    "run_trainer",
    "training_args_kwargs",
    "write_manifest",
]

logger = logging.getLogger(__name__)

FINAL_DIR = "final"

TrainerFactory = Callable[[Any, Any, list[Any]], Any]  # (model, processor, callbacks) -> transformers.Trainer


def cpu_multiprocess() -> bool:
    """Several processes on a machine without GPUs (CI, the two-process ZeRO-2 test): gloo is the only backend."""
    import torch

    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed_state():
    """accelerate's process state, created before the trainer so the driver can coordinate ranks.

    Under `accelerate launch` with DeepSpeed on a CPU-only machine accelerate initialises the process group but
    leaves its backend unset and then reports a single process; naming gloo avoids that (GPU runs are untouched).
    """
    from accelerate import PartialState

    return PartialState(**({"backend": "gloo"} if cpu_multiprocess() else {}))


def _checkpointing_argument() -> str:
    """TrainingArguments' name for gradient checkpointing: `activation_checkpointing` in transformers 5.23 (where
    `gradient_checkpointing` is a deprecated alias), `gradient_checkpointing` in older releases such as the 5.17 of
    the vLLM GPU environment (requirements/gpu-vllm.txt)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_args_kwargs(cfg: Any) -> dict[str, Any]:
    """TrainingArguments fields from a stage recipe (`output_dir`, `train`, `deepspeed`), for SFTConfig/GRPOConfig.

    Checkpoints keep the optimizer and RNG state (resume must continue the same run, not restart it), and columns
    are not pruned because our datasets build their rows on access (stages.batches).
    """
    import torch

    t = cfg.train
    return {
        "output_dir": cfg.output_dir,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": t.per_device_batch_size,
        "per_device_eval_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "num_train_epochs": t.num_epochs,
        "max_steps": t.max_steps,
        "warmup_steps": t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        "lr_scheduler_type": t.lr_scheduler,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "save_only_model": False,
        "logging_steps": t.logging_steps,
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": t.bf16,
        _checkpointing_argument(): t.gradient_checkpointing,
        "dataloader_num_workers": t.dataloader_num_workers,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "report_to": list(t.report_to) or "none",
        "deepspeed": cfg.deepspeed,
        "remove_unused_columns": False,
        "eval_strategy": "no",  # evaluated once at the end (run_trainer): eval on a video model costs GPU-hours
        **({"ddp_backend": "gloo"} if cpu_multiprocess() else {}),
    }


def _clear_previous_run(out: Path) -> None:
    """`--no-resume`: remove the checkpoints and final model of an earlier run, so none of them is resumed later."""
    for ckpt in list_checkpoints(out):
        shutil.rmtree(ckpt, ignore_errors=True)
    for name in (FINAL_DIR, ".final-partial", ".final-adapter", ".final-old"):
        shutil.rmtree(out / name, ignore_errors=True)
    if list_checkpoints(out) or (out / FINAL_DIR).exists():
        raise ConfigError(f"output_dir: {out}: could not remove the previous run's checkpoints")


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _last_logged(log_history: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """The last logged value of each key (the training loss and token accuracy at the end of the run)."""
    out: dict[str, float] = {}
    for entry in reversed(log_history):
        for key in keys:
            if key in entry and f"last_{key}" not in out:
                out[f"last_{key}"] = float(entry[key])
    return out


def save_final(trainer: Any, processor: Any, cfg: Any, manifest: StageManifest, *, started_from: str) -> Path:
    """Write `OUTPUT/final`: model (LoRA merged on request), processor, then the manifest, then swap it in.

    Built in `OUTPUT/.final-partial` and renamed into place, so `final/` is either the previous complete one or
    the new complete one. Every rank must call this (saving under ZeRO-3 gathers the sharded weights).
    """
    from peft import PeftModel

    state = trainer.accelerator.state
    out = Path(cfg.output_dir)
    final, partial, adapter_dir, old = (out / n for n in (FINAL_DIR, ".final-partial", ".final-adapter", ".final-old"))
    is_lora = isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    merge = is_lora and cfg.lora.merge_at_end
    if state.is_main_process:
        for p in (partial, adapter_dir, old):
            shutil.rmtree(p, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(adapter_dir if merge else partial))  # all ranks; the main process writes
    trainer.accelerator.wait_for_everyone()
    if state.is_main_process:
        if merge:
            merge_adapter(
                str(adapter_dir),
                started_from,
                str(partial),
                dtype=cfg.model.dtype,
                attn_implementation=cfg.model.attn_implementation,
            )
            shutil.rmtree(adapter_dir, ignore_errors=True)
        (partial / "training_args.bin").unlink(missing_ok=True)
        processor.save_pretrained(str(partial))
        manifest.lora = "merged" if merge else ("adapter" if is_lora else "none")
        manifest.files = file_digests(partial)  # checked before final/ is trusted again (verify_final)
        write_manifest(partial, manifest)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("stage %s finished: %s", manifest.stage, final)
    trainer.accelerator.wait_for_everyone()
    return final


# What may change between a run and its continuation: where it is written, how long it goes on (a longer
# `max_steps` continues the run; a decaying learning rate then follows the new length from the resumed step), how
# often it saves and logs, and where its servers are.
CONTINUATION_FIELDS: tuple[str, ...] = (
    "output_dir", "train.max_steps", "train.num_epochs", "train.save_steps", "train.save_total_limit",
    "train.logging_steps", "train.dataloader_num_workers", "train.report_to", *GRPO_ENDPOINT_FIELDS,
)


def run_key(config: dict[str, Any], fingerprint: str, init_manifest: StageManifest | None) -> str:
    """What the steps a training run has taken depend on: its config (less `CONTINUATION_FIELDS`), its data and,
    after another stage, that stage's finished model (its config, data and step). A checkpoint is resumed only by a
    run with the same key."""
    import hashlib

    start = None if init_manifest is None else [init_manifest.config_hash, init_manifest.data_fingerprint,
                                                 init_manifest.global_step]
    blob = json.dumps({"config": without_fields(config, CONTINUATION_FIELDS), "data": fingerprint, "init": start},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def run_trainer(
    stage: str,
    cfg: Any,
    make_trainer: TrainerFactory,
    *,
    data_files: dict[str, str | None],
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    num_train_examples: int = 0,
) -> Path:
    """Run one training stage end to end and return its `final/` folder.

    1. With `resume`, a `final/` whose manifest matches this config and data is returned as is (nothing to do);
       otherwise incomplete checkpoints are discarded and training continues from the newest complete one.
       Without `resume`, the previous run's checkpoints and final model are removed and training starts over.
    2. Loads the model (`load_model_and_processor`), builds the trainer with `make_trainer(model, processor,
       callbacks)` (the callbacks include `CompleteCheckpointCallback`; pass them to the trainer), trains.
    3. Evaluates once on the trainer's eval dataset, if it has one, and writes `final/` with the manifest.
    """
    state = distributed_state()
    out = Path(cfg.output_dir)
    # One writer per output folder: the main process holds the lock for the whole run (other ranks follow it).
    with OutputLock(out) if state.is_main_process else contextlib.nullcontext():
        final = out / FINAL_DIR
        config = cfg.model_dump(mode="json")
        chash = config_hash(config)
        fingerprint = data_fingerprint(data_files)

        if resume:
            done = read_manifest(final)
            if done is not None and done.config_hash == chash and done.data_fingerprint == fingerprint:
                damaged = verify_final(final, done)
                if not damaged:
                    logger.info("%s: already finished with this config and data (%s); --no-resume retrains", stage, final)
                    return final
                logger.warning("%s: %s does not match what was saved (%s); training it again", stage, final,
                               "; ".join(damaged[:3]))
        started_from = resolve_model_path(cfg.model.name_or_path, cfg.init_from)
        init_manifest = read_manifest(started_from) if cfg.init_from else None
        key = run_key(config, fingerprint, init_manifest)
        foreign = foreign_checkpoints(out, key) if resume else []
        if foreign:  # refused before anything in the folder is touched
            raise ConfigError(
                f"output_dir: {out}: {foreign[-1].name} was saved by a run with another config, data or starting "
                "model, so resuming it would not give this run's result; rerun with --no-resume to start over there "
                "(its checkpoints and final model are removed), or set another output_dir"
            )
        if state.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            if resume:
                discard_incomplete_checkpoints(out)
            else:
                _clear_previous_run(out)
        state.wait_for_everyone()
        checkpoint = find_resume_checkpoint(out) if resume else None
        if checkpoint:
            logger.info("%s: resuming from %s", stage, checkpoint)
        # Before the model loads: an example that max_length would cut fails here, not on the first batch.
        check_before_training(cfg, load_processor(started_from, cfg.frames), started_from)
        model, processor = load_model_and_processor(cfg, model_path=started_from)
        counts = parameter_counts(model)
        trainer = make_trainer(model, processor, [CompleteCheckpointCallback(key), FiniteLossCallback(), *callbacks])
        restore_weights_with_key_conversion(trainer)

        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = _numeric(result.metrics)
        metrics.update(_last_logged(trainer.state.log_history, ("loss", "mean_token_accuracy")))
        if trainer.eval_dataset is not None:
            metrics.update(_numeric(trainer.evaluate()))
        metrics.update({k: float(v) for k, v in counts.items()})

        manifest = StageManifest(
            stage=stage,
            started_from=started_from,
            base_model=init_manifest.base_model if init_manifest else cfg.model.name_or_path,
            init_from=cfg.init_from,
            config=config,
            config_hash=chash,
            data_fingerprint=fingerprint,
            data_files={k: str(v) for k, v in data_files.items() if v},
            num_train_examples=num_train_examples,
            global_step=int(trainer.state.global_step),
            metrics=metrics,
            resumed_from=checkpoint,
            world_size=int(trainer.args.world_size),
            versions=library_versions(),
        )
        return save_final(trainer, processor, cfg, manifest, started_from=started_from)
