"""The downstream log-prob reward (SPEC section 6): do the clips a completion predicts let the frozen MLLM answer?

For each completion of a group:
1. parse its clips with `pipeline.core.prompt.parse_clips` (lenient: valid items are kept, the format reward punishes
   the rest). Nothing valid: the task reward comes from `k` uniform frames (`reward.unparseable: uniform`) or is
   the fixed `reward.floor` (`unparseable: floor`, no downstream call);
2. turn the clips into `k` frame indices with the any-k sampler (`pipeline.core.sampler.sample_frames`, `reward.mode`);
3. decode the frames (all completions of one video in one `FrameCache` call: the group is decoded once) and ask the
   downstream backend for the option letters' log-probs;
4. reward = tanh((1/tau) * (log p_ans - log mean_{y != ans} p_y)), in (-1, 1): 0 when the answer is no more likely
   than the average wrong option, towards 1 as the frames make the answer clear. Normalising p over the options
   or over the vocabulary gives the same value.
Per step it logs (TRL `log_metric`) the mean p of the answer, the downstream accuracy (argmax = answer), the share
of completions that fell back to uniform frames, and the seconds spent decoding and in the backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from pipeline.core.errors import DataError
from pipeline.core.prompt import parse_clips
from pipeline.core.sampler import sample_frames, uniform_frames
from rewards.backends import MCQRequest
from rewards.context import RewardContext, completion_text


def logprob_reward(logprobs: Sequence[float], answer: int, tau: float) -> float:
    """tanh((1/tau) * (log p_ans - log mean_wrong p)) from per-option log-probs (any normalisation)."""
    if not 0 <= answer < len(logprobs) or len(logprobs) < 2:
        raise DataError(f"answer index {answer} does not fit {len(logprobs)} options")
    wrong = [lp for i, lp in enumerate(logprobs) if i != answer]
    m = max(wrong)
    log_mean_wrong = m + math.log(sum(math.exp(lp - m) for lp in wrong)) - math.log(len(wrong))
    return math.tanh((logprobs[answer] - log_mean_wrong) / tau)


class DownstreamLogprobReward:
    """TRL reward function; dataset columns `video`, `question`, `options`, `answer` arrive as keyword lists."""

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx
        self.__name__ = "downstream_logprob"

    def frame_indices(self, text: str, video: str) -> tuple[list[int] | None, bool]:
        """(indices, fell_back) for one completion; indices None means 'use the floor'."""
        cfg = self.ctx.cfg
        facts = self.ctx.video(video)
        parsed = parse_clips(text, facts.duration_s, strict=False)
        if parsed.ok:
            res = sample_frames(
                parsed.clips,
                facts.num_frames,
                facts.fps,
                cfg.k,
                cfg.mode,
                weights=cfg.priority_weights,
                background_share=cfg.background_share,
                timestamps_s=facts.timestamps_s,
            )
            return list(res.indices), bool(res.fallback)
        if cfg.unparseable == "floor":
            return None, True
        return uniform_frames(facts.num_frames, cfg.k, facts.fps, facts.timestamps_s), True

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        *,
        video: list[str],
        question: list[str],
        options: list[list[str]],
        answer: list[int],
        log_metric: Any = None,
        **_: Any,
    ) -> list[float]:
        cfg = self.ctx.cfg
        n = len(completions)
        chosen: list[list[int] | None] = []
        fallbacks = 0
        for text, vid in zip((completion_text(c) for c in completions), video):
            indices, fell_back = self.frame_indices(text, vid)
            chosen.append(indices)
            fallbacks += int(fell_back)

        # One decode per video: the union of the frames every completion of the group asks for.
        t0 = time.perf_counter()
        pixels: dict[tuple[str, int], Any] = {}
        for vid in dict.fromkeys(video):
            union = sorted({i for idx, v in zip(chosen, video) if v == vid and idx for i in idx})
            if union:
                images = self.ctx.frames.images(vid, union, max_pixels=cfg.downstream.max_pixels)
                pixels.update({(vid, i): img for i, img in zip(union, images)})
        decode_s = time.perf_counter() - t0

        rows, requests = [], []
        for row in range(n):
            if chosen[row] is None:
                continue
            ts = self.ctx.video(video[row]).timestamps_s
            idx = chosen[row]
            requests.append(
                MCQRequest(
                    images=[pixels[(video[row], i)] for i in idx],
                    timestamps_s=[ts[i] for i in idx],
                    question=question[row],
                    options=list(options[row]),
                )
            )
            rows.append(row)
        t1 = time.perf_counter()
        logprobs = self.ctx.get_backend().option_logprobs(requests) if requests else []
        backend_s = time.perf_counter() - t1

        rewards = [float(cfg.floor)] * n
        p_ans, correct = [], []
        for row, lps in zip(rows, logprobs):
            ans = int(answer[row])
            rewards[row] = logprob_reward(lps, ans, cfg.tau)
            p_ans.append(math.exp(lps[ans] - math.log(sum(math.exp(x) for x in lps))))
            correct.append(float(max(range(len(lps)), key=lps.__getitem__) == ans))
        if log_metric is not None and n:
            log_metric("downstream/fallback_rate", fallbacks / n)
            log_metric("downstream/decode_s", decode_s)
            log_metric("downstream/backend_s", backend_s)
            if p_ans:
                log_metric("downstream/p_answer", sum(p_ans) / len(p_ans))
                log_metric("downstream/accuracy", sum(correct) / len(correct))
        return rewards


def make_downstream_reward(ctx: RewardContext) -> DownstreamLogprobReward:
    return DownstreamLogprobReward(ctx)
