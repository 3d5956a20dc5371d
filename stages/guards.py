"""Stop a training run whose loss is no longer a number, before anything is saved from it.

A learning rate a hundred times too high, or a corrupt batch, turns the weights into NaN within a few steps. The
Trainer would go on, save checkpoints of NaN weights and publish them as `final/`, and the next stage would start
from them. This callback raises at the first logged loss (or gradient norm) that is inf or NaN instead.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from pipeline.core.errors import KframesError


class TrainingDiverged(KframesError):
    """The loss became inf or NaN: nothing of this run is published."""


class FiniteLossCallback(TrainerCallback):
    WATCHED = ("loss", "grad_norm", "eval_loss")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key in self.WATCHED:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise TrainingDiverged(
                    f"{args.output_dir}: step {state.global_step}: {key} is {value}; training stopped and no final "
                    f"model was written (lower train.learning_rate, now {args.learning_rate:g}, or check the data)"
                )
