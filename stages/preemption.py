"""Save a checkpoint and stop when the cluster is about to take the job away.

Slurm warns a job before it ends it: `--signal=B:USR1@120` sends USR1 to the batch shell two minutes before
the time limit, and a preemption sends SIGTERM to every process of the job, then SIGKILL after the
partition's GraceTime. Between the warning and the kill the trainer must finish its step, write a complete
checkpoint and exit, so that the requeued job resumes there instead of at the last periodic save.

Two ways in, because the signal does not always reach the training processes: `accelerate launch` (and
torchrun under it) does not forward USR1 to its workers, so the batch script's trap touches a request file
(`$KFRAMES_PREEMPT_FILE`) that every rank polls; and a SIGUSR1/SIGTERM that does reach a trainer process sets
the same request. Ranks agree through one all-reduce per step (a 4-byte tensor: negligible next to a VLM
step), so all of them save the same step and leave together; a rank that saved alone would hang the others.

After the save, `PreemptionCallback` raises `Preempted` (a SystemExit with code 75, EX_TEMPFAIL): the stage
is NOT finished, so no `final/` and no manifest are written, and the orchestrator's record stays "running".
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline.core.io import atomic_write_json

logger = logging.getLogger(__name__)

PREEMPT_FILE_ENV = "KFRAMES_PREEMPT_FILE"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" - the batch script requeues the job


class Preempted(SystemExit):
    """Raised after the pre-preemption checkpoint is complete; the process exits with EXIT_PREEMPTED."""

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint = checkpoint


class PreemptionCallback(TrainerCallback):
    """Checkpoint-and-exit on a preemption request (a signal or the request file). A no-op otherwise.

    Must come after `stages.checkpoints.CompleteCheckpointCallback` in the trainer's callbacks (run_trainer puts
    the caller's callbacks last), so that the checkpoint carries its completeness marker before we leave.
    """

    def __init__(self, request_file: str | os.PathLike[str] | None = None, *, handle_signals: bool = True) -> None:
        path = request_file if request_file is not None else os.environ.get(PREEMPT_FILE_ENV)
        self.request_file = Path(path) if path else None
        self._signalled = threading.Event()
        self._stopping = False
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only set a flag: the checkpoint is written between steps, never from inside a signal handler.
        logger.warning("received %s: saving a checkpoint after this step, then exiting", signal.Signals(signum).name)
        self._signalled.set()

    def requested_here(self) -> bool:
        return self._signalled.is_set() or (self.request_file is not None and self.request_file.exists())

    def _requested_anywhere(self) -> bool:
        """True when any rank saw a request (so that all ranks save the same step)."""
        local = self.requested_here()
        try:
            import torch
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is a dependency
            return local
        if not (dist.is_available() and dist.is_initialized()):
            return local
        device = "cpu"
        if dist.get_backend() == "nccl":
            device = f"cuda:{torch.cuda.current_device()}"
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if not self._stopping and self._requested_anywhere():
            self._stopping = True
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if not self._stopping:
            return control
        checkpoint = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and self.request_file is not None:
            atomic_write_json(
                self.request_file.with_name(self.request_file.name + ".saved"),
                {"checkpoint": checkpoint, "step": state.global_step},
            )
        logger.warning("preemption: checkpoint %s saved; exiting with %d to be requeued", checkpoint, EXIT_PREEMPTED)
        raise Preempted(checkpoint)
