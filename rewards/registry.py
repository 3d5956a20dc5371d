"""Rewards by name, chosen with weights in the recipe (open-r1 style).

    reward:
      weights: {downstream_logprob: 1.0, format: 0.5}

`build_rewards(cfg.reward)` returns the reward functions in the order of `weights` and the weights themselves, for
TRL's `GRPOTrainer(reward_funcs=...)` and `GRPOConfig(reward_weights=...)`; TRL sums them (total = task reward +
w_format * format reward, SPEC section 6) and logs each one's mean and std per step as `rewards/<name>/mean`.

A new reward is a factory in `REWARDS`: it takes the shared `RewardContext` and returns a TRL reward function
`(prompts, completions, **columns) -> list[float]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.core.config import RewardSection
from pipeline.core.errors import ConfigError
from rewards.context import RewardContext
from rewards.downstream import make_downstream_reward
from rewards.format import make_format_reward

RewardFunc = Callable[..., list[float | None]]
RewardFactory = Callable[[RewardContext], RewardFunc]

# Reward name (as written in `reward.weights`) -> factory. A new reward is a factory added here.
REWARDS: dict[str, RewardFactory] = {
    "format": make_format_reward,
    "downstream_logprob": make_downstream_reward,
}


def available_rewards() -> list[str]:
    return sorted(REWARDS)


def build_rewards(cfg: RewardSection, *, backend: Any | None = None) -> tuple[list[RewardFunc], list[float], RewardContext]:
    """The reward functions named in `cfg.weights` (in that order), their weights, and their shared context.

    `backend` overrides the downstream backend of `cfg.downstream` (tests pass a stand-in).
    """
    if not cfg.weights:
        raise ConfigError("reward.weights: empty; name at least one reward, e.g. {downstream_logprob: 1.0}")
    unknown = [n for n in cfg.weights if n not in REWARDS]
    if unknown:
        raise ConfigError(
            f"reward.weights: unknown reward(s) {', '.join(map(repr, unknown))}; available: {', '.join(sorted(REWARDS))}"
        )
    ctx = RewardContext(cfg=cfg, backend=backend)
    funcs = []
    for name in cfg.weights:
        func = REWARDS[name](ctx)
        func.__name__ = name  # TRL logs rewards/<__name__>/mean
        funcs.append(func)
    return funcs, [float(w) for w in cfg.weights.values()], ctx
