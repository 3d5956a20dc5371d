"""GRPO: the selector learns from the frozen downstream model's reward (SPEC section 6), starting from SFT2.

TRL's GRPOTrainer does the RL; this recipe says what it trains on and how it is scored:
- data: the `grpo.mcq` task file (data_builder tasks). Each row is the selector's prompt (the T candidate frames
  after their timestamps, the question and its options; pipeline.core.prompt.render_selector_messages) with the frames
  decoded when the batch is built (stages.batches), plus the `video`, `question`, `options` and `answer` columns
  that TRL hands to the reward functions;
- rewards: by name with weights from `reward.weights` (rewards.registry): the downstream log-prob reward
  (rewards.downstream) and the format reward (rewards.format); TRL logs each one's mean per step;
- GRPO: `grpo.num_generations` completions per prompt (the group), KL coefficient `grpo.beta` (paper 0.01) against
  the starting model, `train.learning_rate` (paper 1e-6), `grpo.max_completion_length`;
- optional TRL vLLM generation on GPUs (`grpo.use_vllm`), in the environment of requirements/gpu-vllm.txt (vLLM
  inside TRL's supported range): `vllm_mode: colocate` runs vLLM inside each training process, `server` talks to a
  `vllm serve` of the starting model (`grpo.vllm_server_url`; `kframes submit grpo` starts it). Without vLLM
  installed the stage stops before any model loads and says how to install it;
- model, checkpoints, resume and the final manifest: stages.common, as for SFT1/SFT2 (`init_from` = SFT2's
  output folder; ZeRO-2/3 through `accelerate launch --config_file configs/accelerate/zero{2,3}.yaml`).

    kframes train grpo --config configs/tiny/grpo.yaml
    accelerate launch --config_file configs/accelerate/zero2.yaml -m stages.grpo --config configs/qwen2_5_vl_3b/grpo.yaml
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import GRPOConfig, GRPOSection
from pipeline.core.contracts import TrainingExample
from pipeline.core.errors import ConfigError, DataError
from rewards.registry import build_rewards
from stages.batches import build_dataset, frame_store_for, load_examples
from stages.common import run_trainer, training_args_kwargs

TASK_PREFIX = "grpo."
VLLM_INSTALL = "python3.11 -m venv .venv-gpu && .venv-gpu/bin/pip install -r requirements/gpu-vllm.txt -e ."

logger = logging.getLogger(__name__)


def trl_vllm_range() -> str:
    """The vLLM versions the installed TRL supports, from its `vllm` extra (TRL 1.16: `>=0.22.0,<=0.31.0`)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    for line in requires("trl") or []:
        req = Requirement(line)
        if req.name == "vllm" and req.marker is not None and req.marker.evaluate({"extra": "vllm"}):
            return str(req.specifier)
    return ""


def check_vllm_generation(g: GRPOSection) -> None:
    """With `grpo.use_vllm`, refuse before any model loads what cannot work: no vLLM in this environment (TRL would
    raise ImportError only once the policy model is loaded), or server mode without the server's URL."""
    if not g.use_vllm:
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet

    try:
        installed = version("vllm")
    except PackageNotFoundError:
        raise ConfigError(
            "grpo.use_vllm: vLLM is not installed in this environment; GRPO generation on vLLM needs the GPU training "
            f"environment of requirements/gpu-vllm.txt: {VLLM_INSTALL} (or set grpo.use_vllm=false)"
        ) from None
    supported = trl_vllm_range()
    if supported and not SpecifierSet(supported).contains(installed.split("+")[0], prereleases=True):
        logger.warning(
            "grpo.use_vllm: vLLM %s is outside the range TRL supports (%s); requirements/gpu-vllm.txt pins one inside",
            installed,
            supported,
        )
    if g.vllm_mode == "server" and not g.vllm_server_url:
        raise ConfigError(
            "grpo.vllm_server_url: vllm_mode=server needs the generation server's base URL (e.g. http://node:8001; "
            "`kframes submit grpo` starts the server and sets it), or use vllm_mode=colocate"
        )


def grpo_row(example: TrainingExample, images: list[Any]) -> dict[str, Any]:
    """A GRPO row: the prompt (user turns only; the selector writes the answer), its frames, the reward columns."""
    prompt = [m.model_dump() for m in example.messages if m.role != "assistant"]
    return {
        "prompt": prompt,
        "images": images,
        "video": example.video,
        "question": example.question,
        "options": list(example.options or []),
        "answer": int(example.answer if example.answer is not None else -1),
    }


def load_grpo_examples(path: str) -> list[TrainingExample]:
    """The task file's examples. The contract already requires question, options and answer of a `grpo.mcq` line;
    the reward also needs a wrong option to compare the answer with."""
    examples = load_examples(path, task_prefix=TASK_PREFIX, require_answer=False)
    for n, ex in enumerate(examples, start=1):
        if len(ex.options or []) < 2:
            raise DataError(f"{path}: example {n} ({ex.id}): the reward needs at least two options, got {ex.options}")
    return examples


def grpo_args(cfg: GRPOConfig, reward_weights: list[float]):
    """TRL's GRPOConfig for a recipe: the shared training arguments plus the GRPO ones."""
    from trl import GRPOConfig as TRLGRPOConfig

    g = cfg.grpo
    kwargs: dict[str, Any] = dict(
        num_generations=g.num_generations,
        beta=g.beta,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        reward_weights=reward_weights,
        log_completions=g.log_completions,
        use_vllm=g.use_vllm,
    )
    if g.use_vllm:
        kwargs["vllm_mode"] = g.vllm_mode
        if g.vllm_mode == "colocate":
            kwargs["vllm_gpu_memory_utilization"] = g.vllm_gpu_memory_utilization
        elif g.vllm_server_url:  # TRL adds /v1/... itself
            url = g.vllm_server_url.rstrip("/")
            kwargs["vllm_server_base_url"] = url[: -len("/v1")] if url.endswith("/v1") else url
    try:
        return TRLGRPOConfig(**training_args_kwargs(cfg), **kwargs)
    except ValueError as exc:  # e.g. batch not divisible by num_generations: say which recipe keys to change
        raise ConfigError(f"grpo/train: {exc}") from None


def train(
    cfg: GRPOConfig, *, resume: bool = True, callbacks: Sequence[Any] = (), backend: Any | None = None
) -> Path:
    """Train GRPO and return `<output_dir>/final`. `backend` replaces the configured downstream model (tests)."""
    check_vllm_generation(cfg.grpo)
    train_examples = load_grpo_examples(cfg.data.train_file)
    eval_examples = load_grpo_examples(cfg.data.eval_file) if cfg.data.eval_file else None
    f = cfg.frames
    kw = dict(num_candidates=f.num_candidates, max_pixels=f.max_pixels, cache_size=f.cache_size)
    train_ds = build_dataset(train_examples, grpo_row, store_dir=frame_store_for(cfg.data.train_file, f), **kw)
    eval_ds = (build_dataset(eval_examples, grpo_row, store_dir=frame_store_for(cfg.data.eval_file, f), **kw)
               if eval_examples and cfg.data.eval_file else None)
    reward_funcs, weights, _ = build_rewards(cfg.reward, backend=backend)
    args = grpo_args(cfg, weights)

    def make_trainer(model, processor, all_callbacks):
        from trl import GRPOTrainer

        return GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=processor,
            callbacks=all_callbacks,
        )

    return run_trainer(
        "grpo",
        cfg,
        make_trainer,
        data_files={"train": cfg.data.train_file, "eval": cfg.data.eval_file},
        resume=resume,
        callbacks=callbacks,
        num_train_examples=len(train_ds),
    )


__all__ = ["check_vllm_generation", "grpo_row", "load_grpo_examples", "grpo_args", "train", "trl_vllm_range"]

if __name__ == "__main__":
    from stages.launch import main

    sys.exit(main("grpo", train))
