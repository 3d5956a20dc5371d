"""Loading a recipe: YAML, then `--set` overrides, then strict validation, with errors that name the file and key.

A recipe is validated strictly: an unknown key or a bad value is an error naming the file, the key and the expected
type, because a typo silently ignored costs a GPU-day. Command-line overrides (`--set train.learning_rate=2e-5`) are
applied to the raw YAML before validation, so they get the same checks. `load_recipe` is the one loader: `kframes
train`, `kframes config show` and `kframes run` (which also rewires each stage's folders) all go through it, so a
recipe declared for one stage is refused in another's place.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.config.base import Section
from pipeline.core.config.data import DataConfig
from pipeline.core.config.eval import EvalConfig
from pipeline.core.config.run import PipelineConfig
from pipeline.core.config.train import GRPOConfig, SFTConfig
from pipeline.core.errors import ConfigError

STAGE_CONFIGS: dict[str, type[Section]] = {
    "data": DataConfig,
    "sft1": SFTConfig,
    "sft2": SFTConfig,
    "grpo": GRPOConfig,
    "eval": EvalConfig,
    "pipeline": PipelineConfig,
}

C = TypeVar("C", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=2e-5` -> (["train", "learning_rate"], 2e-05). The value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.learning_rate=2e-5")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "2e-5" as a string (no dot); numbers are what a user means there.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def _expected_type(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The annotation of the field at `loc`, for error messages."""
    cls: Any = model
    ann: Any = None
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        cls = ann
        if get_origin(ann) is not None:  # Optional[X] etc.: look through to a model if there is one
            models = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            cls = models[0] if models else None
    if ann is None:
        return None
    return getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")


def validate_config(raw: dict[str, Any], model: type[C], source: str) -> C:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            key = ".".join(str(p) for p in loc) or "(top level)"
            if err.get("type") == "extra_forbidden":
                lines.append(f"{source}: {key}: unknown key")
                continue
            expected = _expected_type(model, loc)
            hint = f" (expected {expected})" if expected else ""
            lines.append(f"{source}: {key}: {err.get('msg')}{hint}, got {err.get('input')!r}")
        raise ConfigError("\n".join(lines)) from None


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike[str], model: type[C], overrides: list[str] | None = None) -> C:
    """Load a YAML file into `model`, after applying `--set` overrides."""
    raw = apply_overrides(load_yaml(path), overrides)
    return validate_config(raw, model, str(path))


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """`raw["a"]["b"] = value` for `dotted="a.b"`, creating sections on the way."""
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_recipe(
    stage: str,
    path: str | os.PathLike[str],
    overrides: list[str] | None = None,
    *,
    wiring: dict[str, Any] | None = None,
    finish: Callable[[dict[str, Any]], None] | None = None,
) -> Section:
    """A stage's recipe: YAML -> `wiring` (dotted keys a caller sets, e.g. the pipeline's folders) -> `overrides`
    -> `finish` (the caller's last word on the raw mapping) -> validation against the stage's schema.

    The file's own `stage:` must name this stage: an SFT2 recipe given for SFT1 is an error, not a silent retarget.
    """
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_CONFIGS)}")
    raw = load_yaml(path)
    declared = raw.get("stage")
    if declared is not None and declared != stage:
        raise ConfigError(f"{path}: stage: this file is for stage {declared!r}, not {stage!r}")
    raw.setdefault("stage", stage)
    for dotted, value in (wiring or {}).items():
        set_dotted(raw, dotted, value)
    raw = apply_overrides(raw, overrides)
    if finish is not None:
        finish(raw)
    cfg = validate_config(raw, STAGE_CONFIGS[stage], str(path))
    if getattr(cfg, "stage", stage) != stage:
        raise ConfigError(f"{path}: stage: this file is for stage {cfg.stage!r}, not {stage!r}")
    return cfg


def load_stage_config(stage: str, path: str | os.PathLike[str], overrides: list[str] | None = None) -> Any:
    """The recipe of `stage` at `path`, with `--set` overrides (what `kframes train` and `config show` read)."""
    return load_recipe(stage, path, overrides)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def add_config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE`, shared by every command that reads a recipe."""
    p.add_argument("--config", required=required, help="YAML recipe (configs/<size>/<stage>.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.learning_rate=2e-5 (repeatable)",
    )
