"""Rewards by name, chosen with weights in the recipe (open-r1 style).

    reward:
      weights: {downstream_logprob: 1.0, format: 0.5}

`build_rewards(cfg.reward)` returns the reward functions in the order of `weights` and the weights themselves, for
TRL's `GRPOTrainer(reward_funcs=...)` and `GRPOConfig(reward_weights=...)`; TRL sums them (total = task reward +
w_format * format reward, SPEC section 6) and logs each one's mean and std per step as `rewards/<name>/mean`.

A new reward is a module with a factory decorated by `@register_reward("name")`; the factory takes the shared
`RewardContext` and returns a TRL reward function `(prompts, completions, **columns) -> list[float]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import RewardSection
from pipeline.errors import ConfigError
from rewards.context import RewardContext

RewardFunc = Callable[..., list[float | None]]
RewardFactory = Callable[[RewardContext], RewardFunc]

_REGISTRY: dict[str, RewardFactory] = {}
_BUILTIN_MODULES = ("rewards.format", "rewards.downstream")


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    def deco(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtins() -> None:
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def available_rewards() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def build_rewards(cfg: RewardSection, *, backend: Any | None = None) -> tuple[list[RewardFunc], list[float], RewardContext]:
    """The reward functions named in `cfg.weights` (in that order), their weights, and their shared context.

    `backend` overrides the downstream backend of `cfg.downstream` (tests pass a stand-in).
    """
    _load_builtins()
    if not cfg.weights:
        raise ConfigError("reward.weights: empty; name at least one reward, e.g. {downstream_logprob: 1.0}")
    unknown = [n for n in cfg.weights if n not in _REGISTRY]
    if unknown:
        raise ConfigError(
            f"reward.weights: unknown reward(s) {', '.join(map(repr, unknown))}; available: {', '.join(sorted(_REGISTRY))}"
        )
    ctx = RewardContext(cfg=cfg, backend=backend)
    funcs = []
    for name in cfg.weights:
        func = _REGISTRY[name](ctx)
        func.__name__ = name  # TRL logs rewards/<__name__>/mean
        funcs.append(func)
    return funcs, [float(w) for w in cfg.weights.values()], ctx
