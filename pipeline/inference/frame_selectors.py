"""Frame selectors behind one interface: uniform, image-text similarity top-k, BOLT-style inverse-transform
sampling, and K-frames (the trained selector plus the any-k sampler).

Every selector works in two steps, because that is where the cost of keyframe selection lies and what
K-frames' "any-k" claim is about:

- `analyze(video, question, options)` does the expensive, k-independent work (the selector's generation,
  or scoring T candidate frames with an image-text model) and returns a JSON-able dict, so `kframes eval`
  caches it once per question and reuses it for every k;
- `choose(analysis, video, k)` turns it into exactly min(k, num_frames) sorted frame indices (cheap).

`select(...)` runs both. Frame indices are 0-based indices into the decoded stream; timestamps come from
the decoder (VFR-correct), never from index / fps.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from data_builder.image_text import ImageTextScorer
from data_builder.video import VideoTimeline, uniform_indices
from pipeline.core.contracts import KeyClip
from pipeline.core.errors import ConfigError
from pipeline.core.models import model_fingerprint, resolve_model
from pipeline.inference.selector import NEUTRAL_GENERATION, effective_sampler
from pipeline.core.sampler import sample_frames

if TYPE_CHECKING:
    from pipeline.core.config import SelectorSection


@dataclass
class Selection:
    """The frames a selector chose for one question and one k."""

    indices: list[int]
    timestamps_s: list[float]
    fallback: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def uniform_fill(chosen: Sequence[int], num_frames: int, k: int) -> list[int]:
    """`chosen` topped up with uniformly spread unused frames to exactly min(k, num_frames), sorted unique.

    Callers pass at most k frames; a selector that found fewer (duplicates, a short candidate grid) still
    hands the downstream model the k frames it was budgeted, as the uniform baseline does.
    """

    target = min(k, num_frames)
    used = set(int(i) for i in chosen)
    if len(used) > target:
        raise ValueError(f"{len(used)} frames chosen for k={k}")
    count = target
    while len(used) < target:
        for i in uniform_indices(num_frames, count):
            if len(used) >= target:
                break
            used.add(i)
        count = min(2 * count, num_frames)
    return sorted(used)


class FrameSelector(ABC):
    """Chooses k frames of a video for a question. Subclasses implement `analyze` and `choose`."""

    name: str = "selector"

    def __init__(self, label: str | None = None) -> None:
        self._label = label

    @property
    def label(self) -> str:
        """Human name for tables and plots."""
        return self._label or self.name

    def settings(self) -> dict[str, Any]:
        """Everything that changes `analyze` (a model by its content, not its path); it keys the analysis cache."""
        return {"name": self.name}

    def choice_settings(self) -> dict[str, Any]:
        """Everything else that changes `choose` (the sampler's mode and weights); with `settings` it keys results."""
        return {}

    def model_content(self, model: str) -> str:
        """The content fingerprint of this selector's model, read once per run: weights retrained in place at the
        same path are another model."""
        cached = getattr(self, "_model_content", None)
        if cached is None:
            cached = self._model_content = model_fingerprint(resolve_model(model))
        return cached

    @property
    def selector_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.label}-{digest}"

    @property
    def result_id(self) -> str:
        """The key of this selector's results: a rerun with another model, model content or setting recomputes."""
        both = {"analysis": self.settings(), "choice": self.choice_settings()}
        return f"{self.label}-{hashlib.sha256(json.dumps(both, sort_keys=True).encode()).hexdigest()[:12]}"

    @abstractmethod
    def analyze(self, video: VideoTimeline, question: str, options: Sequence[str] | None = None) -> dict[str, Any]:
        """The k-independent (expensive) part; JSON-able, cached by `kframes eval`."""

    @abstractmethod
    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:
        """Exactly min(k, num_frames) sorted unique frame indices from an analysis."""

    def select(self, video: VideoTimeline, question: str, options: Sequence[str] | None, k: int) -> Selection:
        return self.choose(self.analyze(video, question, options), video, k)


class UniformSelector(FrameSelector):
    """The baseline every paper reports: k frames at the midpoints of k equal segments."""

    name = "uniform"

    def analyze(self, video: VideoTimeline, question: str, options: Sequence[str] | None = None) -> dict[str, Any]:
        return {}

    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:

        idx = uniform_indices(video.num_frames, min(k, video.num_frames))
        return Selection(idx, video.times(idx))


# ----------------------------------------------------------------------------------------------------
# Image-text similarity (CLIP / SigLIP)
# ----------------------------------------------------------------------------------------------------


class _ScoredSelector(FrameSelector):
    """Shared analysis of the similarity baselines: T uniform candidates scored against the question."""

    def __init__(
        self,
        model: str,
        *,
        num_candidates: int = 256,
        batch_size: int = 32,
        max_pixels: int | None = None,
        device: str = "cpu",
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self.model = model
        self.num_candidates = num_candidates
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.device = device
        self._scorer: ImageTextScorer | None = None

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "model_content": self.model_content(self.model), "T": self.num_candidates,
                "max_pixels": self.max_pixels}

    @property
    def scorer(self) -> ImageTextScorer:
        if self._scorer is None:  # loaded on first use: a fully cached rerun never loads the model
            self._scorer = ImageTextScorer(
                self.model, device=self.device, batch_size=self.batch_size, max_pixels=self.max_pixels
            )
        return self._scorer

    def analyze(self, video: VideoTimeline, question: str, options: Sequence[str] | None = None) -> dict[str, Any]:

        candidates = uniform_indices(video.num_frames, min(self.num_candidates, video.num_frames))
        return {"candidates": candidates, "scores": self.scorer.score_frames(video.path, candidates, question)}


class SimilarityTopKSelector(_ScoredSelector):
    """The k candidate frames most similar to the question (the common CLIP/SigLIP top-k baseline)."""

    name = "similarity"

    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:
        cands, scores = analysis["candidates"], np.asarray(analysis["scores"], dtype=float)
        order = np.argsort(-scores, kind="stable")[: min(k, len(cands))]
        idx = uniform_fill([cands[i] for i in order], video.num_frames, k)
        return Selection(idx, video.times(idx))


def inverse_transform_sample(scores: Sequence[float], k: int, alpha: float) -> list[int]:
    """BOLT's inverse transform sampling: positions (into `scores`) of k quantiles of p ~ normalised(s)^alpha.

    Scores are min-max normalised and raised to `alpha` (sharper for larger alpha); their cumulative sum
    is the CDF over the candidate grid, and frame j is taken at the (j + 0.5)/k quantile. Relevant stretches
    get dense frames while every part of the video keeps some probability mass, unlike top-k.
    """
    s = np.asarray(scores, dtype=float)
    n = len(s)
    if n == 0 or k <= 0:
        return []
    span = s.max() - s.min()
    p = ((s - s.min()) / span) ** alpha if span > 0 else np.ones(n)
    p = p + 1e-6  # no candidate has zero mass, so the CDF is strictly increasing
    cdf = np.cumsum(p) / p.sum()
    q = (np.arange(k) + 0.5) / k
    return sorted(set(np.searchsorted(cdf, q, side="left").clip(0, n - 1).tolist()))


class BoltSelector(_ScoredSelector):
    """BOLT-style inverse-transform sampling over the question-frame similarity (Liu et al., CVPR 2025)."""

    name = "bolt"

    def __init__(self, model: str, *, alpha: float = 2.5, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.alpha = alpha

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "alpha": self.alpha}

    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:
        cands = analysis["candidates"]
        pos = inverse_transform_sample(analysis["scores"], min(k, len(cands)), self.alpha)
        idx = uniform_fill([cands[i] for i in pos], video.num_frames, k)
        return Selection(idx, video.times(idx), info={"distinct_quantiles": len(pos)})


# ----------------------------------------------------------------------------------------------------
# K-frames
# ----------------------------------------------------------------------------------------------------


class KFramesSelector(FrameSelector):
    """The trained selector predicts clips once per question; the any-k sampler turns them into k frames."""

    name = "kframes"

    def __init__(
        self,
        model: str,
        *,
        mode: str = "auto",
        num_candidates: int = 256,
        max_pixels: int | None = None,
        max_new_tokens: int = 256,
        device: str = "cpu",
        label: str | None = None,
        **sampler_kwargs: Any,
    ) -> None:
        super().__init__(label)
        self.model = model
        self.mode = mode
        self.num_candidates = num_candidates
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.sampler_kwargs = sampler_kwargs
        self._selector: Any = None

    @property
    def label(self) -> str:
        return self._label or f"kframes-{self.mode}"

    def settings(self) -> dict[str, Any]:
        # The mode is not part of the analysis: one prediction serves every mode and k.
        return {"name": self.name, "model": self.model, "model_content": self.model_content(self.model), "T": self.num_candidates,
                "max_pixels": self.max_pixels, "max_new_tokens": self.max_new_tokens, "generation": NEUTRAL_GENERATION}

    def choice_settings(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.sampler_kwargs}

    @property
    def selector_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:8]
        return f"kframes-{digest}"

    @property
    def selector(self) -> Any:
        if self._selector is None:
            from pipeline.inference.selector import Selector

            self._selector = Selector.from_pretrained(
                resolve_model(self.model),
                num_candidates=self.num_candidates,
                max_pixels=self.max_pixels,
                device=self.device,
            )
        return self._selector

    def analyze(self, video: VideoTimeline, question: str, options: Sequence[str] | None = None) -> dict[str, Any]:
        pred = self.selector.predict(video.path, question, list(options) if options else None, max_new_tokens=self.max_new_tokens)
        parsed = pred.clips
        return {
            "clips": [c.model_dump(mode="json") for c in parsed.clips],
            "error": parsed.error,
            "raw": getattr(pred, "raw", None) or getattr(pred, "text", None),
            "timings": getattr(pred, "timings", None),
        }

    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:
        clips = [KeyClip.model_validate(c) for c in analysis.get("clips") or []]
        res = sample_frames(
            clips, video.num_frames, video.fps, k, self.mode, timestamps_s=list(video.timestamps_s), **self.sampler_kwargs
        )
        info: dict[str, Any] = {"mode": res.mode}
        if res.token_budget is not None:
            info["token_budget"] = [round(float(x), 4) for x in res.token_budget]
        return Selection(list(res.indices), video.times(res.indices), fallback=bool(res.fallback), info=info)


def make_selector(spec: SelectorSection) -> FrameSelector:
    """Build the selector a config section describes (models are loaded lazily, on first analysis)."""
    if spec.name == "uniform":
        return UniformSelector(spec.label)
    if spec.name in ("similarity", "bolt"):
        if not spec.model:
            raise ConfigError(f"selector {spec.name!r} needs model: a CLIP/SigLIP id or folder, or 'tiny-clip'")
        common = dict(
            num_candidates=spec.num_candidates,
            batch_size=spec.batch_size,
            max_pixels=spec.max_pixels,
            device=spec.device,
            label=spec.label,
        )
        if spec.name == "bolt":
            return BoltSelector(spec.model, alpha=spec.bolt_alpha, **common)
        return SimilarityTopKSelector(spec.model, **common)
    if spec.name == "kframes":
        if not spec.model:
            raise ConfigError("selector 'kframes' needs model: the trained selector's folder, or 'tiny'")
        sampler, _ = effective_sampler(spec, spec.model)  # the trained model's settings, unless the recipe sets them
        return KFramesSelector(
            spec.model,
            mode=sampler.mode,
            num_candidates=spec.num_candidates,
            max_pixels=spec.max_pixels,
            max_new_tokens=spec.max_new_tokens,
            device=spec.device,
            label=spec.label,
            **sampler.sampler_kwargs(),
        )
    raise ConfigError(f"unknown selector {spec.name!r}; expected uniform, similarity, bolt or kframes")


__all__ = [
    "BoltSelector",
    "FrameSelector",
    "KFramesSelector",
    "Selection",
    "SimilarityTopKSelector",
    "UniformSelector",
    "inverse_transform_sample",
    "make_selector",
    "uniform_fill",
]
