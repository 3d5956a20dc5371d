"""The supervised recipe shared by SFT1 (temporal grounding) and SFT2 (key-clip prediction).

TRL's SFTTrainer does the training; this recipe only says what it trains on and how:
- data: the stage's task file, frames decoded at batch time (stages.batches), at most T (`frames.num_candidates`)
  frames per example, each resized to at most `frames.max_pixels`;
- loss: only on the assistant's answer (`assistant_only_loss`, from the `{% generation %}` markers of the chat
  template), never on the prompt or the frames;
- model: vision encoder frozen, projector and language model trained (or LoRA), per the recipe (stages.modeling);
- schedule, checkpoints, resume and the final manifest: stages.common.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import SFTConfig
from stages.batches import dataset_from_file
from stages.common import run_trainer, training_args_kwargs

# Which task names each SFT stage trains on (TrainingExample.task prefixes).
STAGE_TASKS = {"sft1": "sft1.", "sft2": "sft2."}


def sft_args(cfg: SFTConfig):
    """TRL's SFTConfig for a recipe: the shared training arguments plus the SFT-specific ones."""
    from trl import SFTConfig as TRLSFTConfig

    return TRLSFTConfig(
        **training_args_kwargs(cfg),
        max_length=cfg.train.max_length,  # None: never truncate (a cut would drop image tokens but not pixels)
        assistant_only_loss=True,
        dataset_kwargs={"skip_prepare_dataset": True},  # rows are built on access, frames and all
    )


def build_trainer(cfg: SFTConfig, model: Any, processor: Any, train_dataset, eval_dataset, callbacks: list[Any]):
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=sft_args(cfg),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=callbacks,
    )


def train(cfg: SFTConfig, *, resume: bool = True, callbacks: Sequence[Any] = ()) -> Path:
    """Train SFT1 or SFT2 (`cfg.stage`) and return `<output_dir>/final`."""
    prefix = STAGE_TASKS[cfg.stage]
    train_ds = dataset_from_file(cfg.data.train_file, cfg.frames, task_prefix=prefix)
    eval_ds = dataset_from_file(cfg.data.eval_file, cfg.frames, task_prefix=prefix) if cfg.data.eval_file else None

    def make_trainer(model, processor, all_callbacks):
        return build_trainer(cfg, model, processor, train_ds, eval_ds, all_callbacks)

    return run_trainer(
        cfg.stage,
        cfg,
        make_trainer,
        data_files={"train": cfg.data.train_file, "eval": cfg.data.eval_file},
        resume=resume,
        callbacks=callbacks,
        num_train_examples=len(train_ds),
    )
