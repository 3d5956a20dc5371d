"""Loading the selector for a training stage: which weights, which parts train, LoRA, and the final save.

The paper trains the projector and the language model and keeps the vision encoder frozen; that is the default
here (`model.freeze_vision`, `model.freeze_projector`). With `lora.enabled` the language model gets LoRA adapters
(peft) instead of full fine-tuning, the projector stays fully trainable unless frozen, and the adapter is merged
into the final model when `lora.merge_at_end` is set (so the next stage and inference load a plain model).

Module names are those of the Qwen2-VL family in transformers 5 (`model.visual`, `model.visual.merger`,
`model.language_model`); other architectures fail loudly instead of silently training everything.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.models import resolve_model
from stages.manifest import read_manifest

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
VISION_TOWER_NAMES = ("model.visual", "visual")
PROJECTOR_NAME = "merger"
# Linear layers of Qwen2.5-VL's vision blocks, adapted by LoRA only when the vision tower is not frozen.
VISION_LORA_TARGETS = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")


def resolve_model_path(name_or_path: str, init_from: str | None) -> str:
    """Where a stage's starting weights are.

    - `init_from` set (SFT2 after SFT1, GRPO after SFT2): the previous stage's `final/` (given its output folder or
      the `final/` itself). It must hold a manifest, i.e. the previous stage finished; otherwise a ConfigError says
      which stage to run first.
    - `name_or_path == "tiny"`: the locally built tiny Qwen2.5-VL (built once, cached under $KFRAMES_CACHE).
    - anything else: a hub id or a local folder, passed to `from_pretrained` as is.
    """
    if init_from:
        root = Path(init_from)
        final = root / "final" if (root / "final").is_dir() else root
        if read_manifest(final) is None:
            raise ConfigError(
                f"init_from: {init_from}: no finished stage there (expected {root / 'final' / 'stage.json'}); "
                "run the previous stage first"
            )
        return str(final)

    return resolve_model(name_or_path)


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_pretrained(path: str, *, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """Load a full model from `path`; a stage's adapter-only `final/` (LoRA not merged) is merged onto its base.

    The adapter's base is the weights its stage started from (`started_from` in its manifest), loaded the same
    way, so a chain of unmerged stages still resolves to one plain model.
    """
    from transformers import AutoModelForImageTextToText

    if (Path(path) / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        manifest = read_manifest(path)
        if manifest is None:
            raise ConfigError(f"{path}: a LoRA adapter without a stage.json; cannot tell which base model it adapts")
        base = load_pretrained(manifest.started_from, dtype=dtype, attn_implementation=attn_implementation)
        return PeftModel.from_pretrained(base, path).merge_and_unload()
    try:
        return AutoModelForImageTextToText.from_pretrained(
            path, dtype=_torch_dtype(dtype), attn_implementation=attn_implementation
        )
    except OSError as exc:
        raise ConfigError(f"model.name_or_path: cannot load {path!r} ({exc})") from None


def load_processor(path: str, frames: Any | None = None):
    """The model's processor, with the image size limits of `frames` (a FramesSection) when given.

    The limits are set on the processor itself, so the processor saved into `final/` resizes frames at inference
    exactly as in training.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    if frames is not None:
        processor.image_processor.size = {"shortest_edge": int(frames.min_pixels), "longest_edge": int(frames.max_pixels)}
    return processor


def vision_modules(model) -> tuple[Any, Any]:
    """(vision tower, projector) of a Qwen2-VL-family model; a ConfigError for another architecture."""
    for name in VISION_TOWER_NAMES:
        try:
            tower = model.get_submodule(name)
        except AttributeError:
            continue
        projector = getattr(tower, PROJECTOR_NAME, None)
        if projector is not None:
            return tower, projector
    raise ConfigError(
        f"{type(model).__name__}: no vision tower with a '{PROJECTOR_NAME}' projector found "
        f"(looked for {', '.join(VISION_TOWER_NAMES)}); freezing is defined for the Qwen2-VL family"
    )


def apply_freezing(model, *, freeze_vision: bool, freeze_projector: bool) -> dict[str, int]:
    """Set requires_grad: vision encoder (without projector) and projector as asked, the rest trainable.

    Returns trainable/frozen parameter counts, logged and kept in the run's metrics.
    """
    tower, projector = vision_modules(model)
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_vision:
        projector_ids = {id(p) for p in projector.parameters()}
        for p in tower.parameters():
            if id(p) not in projector_ids:
                p.requires_grad_(False)
    if freeze_projector:
        for p in projector.parameters():
            p.requires_grad_(False)
    return parameter_counts(model)


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}


def lora_target_regex(target_modules: list[str], *, include_vision: bool) -> str:
    """A peft `target_modules` regex (full match): the named linear layers of the language model only.

    Qwen2.5-VL's vision blocks reuse names like `gate_proj`; a plain name list would silently put adapters on the
    frozen vision encoder too.
    """
    names = "|".join(re.escape(m) for m in target_modules)
    pattern = rf".*language_model\..*\.({names})"
    if include_vision:
        vis = "|".join(re.escape(m) for m in VISION_LORA_TARGETS)
        pattern = rf"(?:{pattern}|.*visual\.blocks\..*\.({vis}))"
    return pattern


def zero_stage(cfg: Any) -> int | None:
    """The DeepSpeed ZeRO stage this run uses (accelerate's env, or the config's `deepspeed` JSON), if any."""
    env = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if env:
        return int(env)
    path = getattr(cfg, "deepspeed", None)
    if path:
        import json

        try:
            stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"deepspeed: cannot read {path} ({exc})") from None
        return int(stage) if stage is not None else None
    return None


def apply_lora(model, cfg: Any):
    """Wrap `model` with LoRA adapters per `cfg.lora`; the projector is fully trained unless frozen."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    modules_to_save = [] if cfg.model.freeze_projector else [PROJECTOR_NAME]
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora.target_modules, include_vision=not cfg.model.freeze_vision),
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    kwargs = {}
    # ZeRO-3 gathers parameters into buffers of one dtype: keep adapters in the base dtype (TRL issue #6089).
    if zero_stage(cfg) == 3:
        kwargs["autocast_adapter_dtype"] = False
    return get_peft_model(model, peft_cfg, **kwargs)


def load_model_and_processor(cfg: Any, *, model_path: str | None = None) -> tuple[Any, Any]:
    """The model and processor a stage trains, ready for a TRL trainer.

    `cfg` is a stage config with `model`, `lora`, `frames` and `init_from` sections (SFTConfig or GRPOConfig).
    Loads the weights from `model_path` or `resolve_model_path(...)` in `model.dtype` with
    `model.attn_implementation`, freezes per `model.freeze_vision`/`freeze_projector`, and wraps the model with
    LoRA when `lora.enabled`. The processor gets `frames.min_pixels`/`max_pixels`.
    """
    path = model_path or resolve_model_path(cfg.model.name_or_path, cfg.init_from)
    model = load_pretrained(path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    processor = load_processor(path, cfg.frames)
    counts = apply_freezing(model, freeze_vision=cfg.model.freeze_vision, freeze_projector=cfg.model.freeze_projector)
    if cfg.lora.enabled:
        from transformers import set_seed

        set_seed(cfg.train.seed)  # adapter init is random: the same recipe must start from the same adapter
        model = apply_lora(model, cfg)
        counts = parameter_counts(model)
    logger.info(
        "loaded %s: %d of %d parameters trainable (vision %s, projector %s, lora %s)",
        path,
        counts["trainable_params"],
        counts["total_params"],
        "frozen" if cfg.model.freeze_vision else "trained",
        "frozen" if cfg.model.freeze_projector else "trained",
        "on" if cfg.lora.enabled else "off",
    )
    return model, processor


@contextmanager
def zero3_init_disabled() -> Iterator[None]:
    """Load models in this process alone, even inside a ZeRO-3 run.

    Under ZeRO-3 transformers builds every model inside `deepspeed.zero.Init`, which partitions parameters with
    collective calls: a load on the main process only would wait forever for the other ranks.
    """
    import transformers.integrations.deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref  # what set_hf_deepspeed_config stored (a weak reference)
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def merge_adapter(adapter_dir: str, base_path: str, out_dir: str, *, dtype: str, attn_implementation: str) -> None:
    """Merge a saved LoRA adapter into a fresh copy of its base model and save the plain model to `out_dir`.

    Done from the saved adapter rather than the live training model, so it works the same under DDP and
    ZeRO-2/3 (where the live weights are sharded across ranks). Runs on the main process only.
    """
    from peft import PeftModel

    with zero3_init_disabled():
        base = load_pretrained(base_path, dtype=dtype, attn_implementation=attn_implementation)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
