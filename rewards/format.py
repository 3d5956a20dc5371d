"""The format reward: 1 when the completion is a valid clip list (pipeline.core.prompt.parse_clips, strict), else 0.

Strict: one bad item (a span past the end, an unknown priority) costs the whole format reward, although the
downstream reward still uses the valid items. The parser is the one inference uses, so what is rewarded here is
exactly what the any-k sampler can consume at test time.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.prompt import parse_clips
from rewards.context import RewardContext, completion_text


def format_score(text: str, duration_s: float) -> float:
    return 1.0 if parse_clips(text, duration_s, strict=True).ok else 0.0


class FormatReward:
    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx
        self.__name__ = "format"

    def __call__(self, prompts: list[Any], completions: list[Any], *, video: list[str], **_: Any) -> list[float]:
        return [format_score(completion_text(c), self.ctx.video(v).duration_s) for c, v in zip(completions, video)]


def make_format_reward(ctx: RewardContext) -> FormatReward:
    return FormatReward(ctx)
