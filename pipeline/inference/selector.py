"""Inference: the trained selector predicts clips for a video and a query; the any-k sampler turns them into k frames.

`Selector.predict` is the expensive, k-independent half (decode T candidate frames, render them with the one
prompt renderer, generate, parse with the one parser); `select_frames` adds the cheap half (the any-k sampler),
so a caller that needs several k, or several modes, runs the model once. Timings are reported per phase
(decode, model, sampling), because the overhead of keyframe selection is what a user weighs against its gain.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_builder.video import FrameCache, VideoTimeline, candidate_frames
from pipeline.core.config import SamplerSection
from pipeline.core.contracts import KeyClip, VideoInfo
from pipeline.core.models import resolve_model
from pipeline.core.prompt import ParsedClips, parse_clips, render_selector_messages
from pipeline.core.sampler import SampleResult, sample_frames
from stages.manifest import read_manifest
from stages.modeling import load_pretrained, load_processor


# How the selector decodes unless told otherwise: greedy, no repetition penalty. A checkpoint's own
# generation_config.json (Qwen2.5-VL ships do_sample=True and repetition_penalty=1.05) is NOT inherited: a penalty
# on repeated digits would push clip bounds away from the timestamps the prompt shows.
NEUTRAL_GENERATION: dict[str, Any] = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}


@dataclass
class Prediction:
    """The selector's answer for one video and query, before any k is chosen."""

    clips: ParsedClips
    raw: str
    timings: dict[str, float]
    video: VideoInfo
    candidate_indices: list[int]
    candidate_timestamps_s: list[float]
    frame_times_s: np.ndarray = field(repr=False)  # presentation time of every frame (for the sampler)
    generation: dict[str, Any] = field(default_factory=dict)  # the decoding settings in effect


@dataclass
class SelectionResult:
    """k frames for one video and query: the clips they came from, the frames, and what each phase cost."""

    video: str
    query: str
    k: int
    mode: str
    clips: list[KeyClip]
    parse_error: str | None
    indices: list[int]
    timestamps_s: list[float]
    fallback: bool
    fallback_reason: str | None
    allocations: list[dict[str, Any]]
    token_budget: list[float] | None
    timings: dict[str, float]
    raw: str
    dropped: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["clips"] = [c.model_dump(mode="json") for c in self.clips]
        return d


def trained_sampler(model: str | Path) -> dict[str, Any]:
    """The sampler settings and k a selector was trained with (its GRPO reward's, from `final/stage.json`), or {}."""
    path = Path(resolve_model(str(model)))
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None or manifest.stage != "grpo":
        return {}
    reward = manifest.config.get("reward") or {}
    return {key: reward[key] for key in (*SamplerSection.model_fields, "k") if key in reward}


def effective_sampler(section: SamplerSection | None, model: str | Path) -> tuple[SamplerSection, dict[str, str]]:
    """The sampler settings to select with: each field the recipe set itself, else the trained model's, else the
    default; and where each came from (`recipe`, `trained model`, `default`), for the record."""
    trained = trained_sampler(model)
    given = section.model_fields_set if section is not None else set()
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in SamplerSection.model_fields:
        if section is not None and name in given:
            values[name], source[name] = getattr(section, name), "recipe"
        elif name in trained:
            values[name], source[name] = trained[name], "trained model"
        else:
            source[name] = "default"
    return SamplerSection.model_validate(values), source


def _device_and_dtype(device: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, ("bfloat16" if device.startswith("cuda") else "float32")


class Selector:
    """The trained selector, ready for inference: a model, its processor and a frame cache.

    Build it with `from_pretrained` (a stage's output folder, its `final/`, a model folder, or 'tiny').
    Frames are decoded at most `max_pixels` each (default: the processor's own limit, so the decoder, not the
    processor, does the downscaling).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        num_candidates: int = 256,
        max_pixels: int | None = None,
        cache_videos: int = 4,
        generation: dict[str, Any] | None = None,
    ) -> None:
        if num_candidates <= 0:
            raise ValueError(f"num_candidates must be positive, got {num_candidates}")
        self.model = model
        self.processor = processor
        self.num_candidates = num_candidates
        self.generation = {**NEUTRAL_GENERATION, **(generation or {})}
        if max_pixels is None:
            size = getattr(processor, "image_processor", None)
            size = getattr(size, "size", None) or {}
            max_pixels = (
                size.get("longest_edge") if hasattr(size, "get") else getattr(size, "longest_edge", None)
            )
        self.max_pixels = int(max_pixels) if max_pixels else None
        self.cache = FrameCache(max_videos=cache_videos)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        num_candidates: int = 256,
        max_pixels: int | None = None,
        device: str = "cpu",
        attn_implementation: str = "sdpa",
        generation: dict[str, Any] | None = None,
    ) -> Selector:
        path = resolve_model(str(model_dir))
        device, dtype = _device_and_dtype(device)
        model = load_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        model.to(device).eval().requires_grad_(False)
        return cls(model, load_processor(path), num_candidates=num_candidates, max_pixels=max_pixels,
                   generation=generation)

    def generation_config(self, max_new_tokens: int) -> Any:
        """A fresh GenerationConfig: the selector's settings, and only the checkpoint's stop and pad tokens."""
        from transformers import GenerationConfig

        own = self.model.generation_config
        tok = self.processor.tokenizer
        pad = own.pad_token_id if own.pad_token_id is not None else tok.pad_token_id
        return GenerationConfig(**self.generation, max_new_tokens=max_new_tokens, eos_token_id=own.eos_token_id,
                                pad_token_id=pad if pad is not None else tok.eos_token_id)

    def messages(self, timeline: VideoTimeline, query: str, options: Sequence[str] | None = None) -> tuple[list[int], list[dict[str, Any]]]:
        """The candidate frames of a video and the selector's prompt over them: the same rule and renderer as the
        training examples of the data stage, so a model sees at inference what it was trained on."""
        cand, cand_t = candidate_frames(timeline, self.num_candidates)
        return cand, render_selector_messages(cand_t, query, duration_s=timeline.duration_s, options=options)

    def predict(
        self,
        video_path: str | Path,
        query: str,
        options: Sequence[str] | None = None,
        max_new_tokens: int = 256,
    ) -> Prediction:
        """Decode the T candidate frames, show them to the selector with the query, parse its clip list.

        The output is parsed leniently (valid clips are kept, bad items listed in `clips.dropped`); when no
        valid clip remains, `clips.error` says why and the sampler will fall back to uniform frames.
        """
        import torch

        t0 = time.perf_counter()
        info = self.cache.info(video_path, max_pixels=self.max_pixels)  # the reader the frames come from
        timeline = self.cache.timeline(video_path, max_pixels=self.max_pixels)
        cand, messages = self.messages(timeline, query, options)
        images = self.cache.images(video_path, cand, max_pixels=self.max_pixels)
        t1 = time.perf_counter()

        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt").to(self.model.device)
        tok = self.processor.tokenizer
        config = self.generation_config(max_new_tokens)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config)
        raw = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        t2 = time.perf_counter()
        parsed = parse_clips(raw, info.duration_s, strict=False)
        return Prediction(
            clips=parsed,
            raw=raw,
            timings={
                "decode_s": t1 - t0,
                "model_s": t2 - t1,
                "prompt_tokens": int(inputs["input_ids"].shape[1]),
            },
            video=info,
            candidate_indices=list(cand),
            candidate_timestamps_s=timeline.times(cand),
            frame_times_s=np.asarray(timeline.timestamps_s, dtype=np.float64),
            generation={**self.generation, "max_new_tokens": max_new_tokens},
        )


def choose_frames(
    prediction: Prediction, k: int, mode: str = "auto", **sampler_kwargs: Any
) -> tuple[SampleResult, float]:
    """The any-k half: the prediction's clips -> k frames (and the seconds it took)."""
    t0 = time.perf_counter()
    res = sample_frames(
        prediction.clips.clips,
        prediction.video.num_frames,
        prediction.video.fps,
        k,
        mode,
        timestamps_s=prediction.frame_times_s,
        **sampler_kwargs,
    )
    return res, time.perf_counter() - t0


def select_frames(
    selector: Selector,
    video_path: str | Path,
    query: str,
    k: int,
    mode: str = "auto",
    options: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 256,
    **sampler_kwargs: Any,
) -> SelectionResult:
    """Run the selector on one video and query and return k frames with their clips, timestamps and timings."""
    pred = selector.predict(video_path, query, options, max_new_tokens=max_new_tokens)
    return selection_from_prediction(pred, str(video_path), query, k, mode, **sampler_kwargs)


def selection_from_prediction(
    pred: Prediction, video: str, query: str, k: int, mode: str = "auto", **sampler_kwargs: Any
) -> SelectionResult:
    res, sampling_s = choose_frames(pred, k, mode, **sampler_kwargs)
    timings = {
        "decode_s": pred.timings["decode_s"],
        "model_s": pred.timings["model_s"],
        "sampling_s": sampling_s,
    }
    timings["total_s"] = sum(timings.values())
    return SelectionResult(
        video=video,
        query=query,
        k=k,
        mode=res.mode,
        clips=list(pred.clips.clips),
        parse_error=pred.clips.error,
        indices=res.indices,
        timestamps_s=[float(pred.frame_times_s[i]) for i in res.indices],
        fallback=res.fallback,
        fallback_reason=res.fallback_reason if pred.clips.ok else f"unparseable output: {pred.clips.error}",
        allocations=res.allocations,
        token_budget=res.token_budget,
        timings={k2: round(v, 6) for k2, v in timings.items()},
        raw=pred.raw,
        dropped=list(pred.clips.dropped) + res.dropped,
        generation=dict(pred.generation),
    )
