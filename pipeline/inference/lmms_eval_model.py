"""An lmms-eval model: Qwen2.5-VL answering over the k frames a K-frames selector chose.

lmms-eval users run any of its video tasks with K-frames' keyframes instead of uniform frames, without
forking lmms-eval:

    pip install -e .            # registers the plugin (entry point group "lmms_eval.models")
    lmms-eval --model kframes_qwen2_5_vl --tasks mlvu_dev,videomme \\
      --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,selector=runs/qwen2_5_vl_3b/grpo,k=32,mode=auto

Written for lmms-eval 0.7.3 (`LMMS_EVAL_VERSION`). Since 0.6 lmms-eval discovers plugin models through the
`lmms_eval.models` entry-point group, whose value must be a `ModelManifest` or a callable returning one
(lmms_eval.models.registry_v2); `manifest()` below is that callable, and pyproject.toml points to it. The
class is a "simple" model (`is_simple = True`): requests carry `(context, gen_kwargs, doc_to_visual,
doc_id, task, split)`, and the video path comes from the task's `doc_to_visual`.

For each request with a video, the selector picks k frames; they are shown to Qwen2.5-VL as images, each
after its timestamp (`<t=12.4s>`, the project's one timestamp format), followed by the task's prompt.
`selector=` is one of (`SAMPLINGS`; the model logs which one it uses when it is built, and `sampling`
names it):

- `lmms_uniform` (the default): lmms-eval's own uniform sampling, the frames its video loaders take
  (`lmms_eval.models.model_utils.load_video`: `np.linspace(0, n - 1, k, dtype=int)`, first and last frame
  included), so a uniform baseline run through this plugin is lmms-eval's uniform baseline under K-frames'
  prompt. (lmms-eval's own `qwen2_5_vl` model samples differently: qwen_vl_utils at 2 fps, then a linspace
  of `max_num_frames` of those.)
- `uniform`: the midpoints of k equal segments, `kframes eval --selector uniform`'s baseline.
- a trained K-frames folder (or `tiny`): the selector's clips, turned into k frames by the any-k sampler.

lmms-eval is imported lazily: without it this module still imports (tests run the class against the
real tiny models), and the base class is a minimal stand-in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_builder.video import VIDEO_EXTENSIONS
from pipeline.core.config import SamplerSection
from pipeline.core.models import resolve_model
from pipeline.core.prompt import format_timestamp
from pipeline.inference.selector import effective_sampler
from pipeline.inference.frame_selectors import (
    FrameSelector,
    KFramesSelector,
    Selection,
    UniformSelector,
    VideoTimeline,
)

LMMS_EVAL_VERSION = "0.7.3"
MODEL_ID = "kframes_qwen2_5_vl"
SAMPLINGS = {
    "lmms_uniform": "lmms-eval's uniform sampling (np.linspace over all frames, first and last included)",
    "uniform": "kframes' uniform sampling (midpoints of k equal segments)",
}
log = logging.getLogger(__name__)


try:  # the real base class when lmms-eval is installed (its registry checks issubclass(cls, lmms))
    from lmms_eval.api.model import lmms as _LmmsBase
except ImportError:  # pragma: no cover - exercised whenever lmms-eval is absent

    class _LmmsBase:  # type: ignore[no-redef]
        """The parts of lmms_eval.api.model.lmms this class relies on."""

        is_simple = True

        def __init__(self) -> None:
            self._rank, self._world_size = 0, 1
            self.task_dict: dict[str, Any] = {}
            self.cache_hook = None

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size


def lmms_uniform_indices(num_frames: int, k: int) -> list[int]:
    """The frames lmms-eval's video loaders take for k frames of `num_frames`: its own function when lmms-eval
    is installed, else the same formula (`np.unique(np.linspace(0, n - 1, k, dtype=int))`)."""
    count = min(k, num_frames)
    if count <= 0:
        return []
    try:
        from lmms_eval.models.model_utils.load_video import _compute_uniform_indices
    except ImportError:
        return [int(i) for i in np.unique(np.linspace(0, num_frames - 1, count, dtype=int))]
    return [int(i) for i in _compute_uniform_indices(num_frames, count)]


class LmmsUniformSelector(FrameSelector):
    """lmms-eval's uniform frames (`lmms_uniform_indices`), behind the project's selector interface."""

    name = "lmms_uniform"

    def analyze(self, video: VideoTimeline, question: str, options: Sequence[str] | None = None) -> dict[str, Any]:
        return {}

    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:
        idx = lmms_uniform_indices(video.num_frames, k)
        return Selection(idx, video.times(idx))


def manifest() -> Any:
    """The entry point's payload: lmms-eval calls it at start-up to register `kframes_qwen2_5_vl`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.KFramesQwen2_5_VL")


class KFramesQwen2_5_VL(_LmmsBase):
    """Qwen2.5-VL over K-frames keyframes (or uniform frames: `selector=lmms_uniform` or `uniform`), as an
    lmms-eval model."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct",
        selector: str = "lmms_uniform",
        k: int = 32,
        mode: str | None = None,
        num_candidates: int = 256,
        selector_max_pixels: int | None = None,
        max_pixels: int = 256 * 28 * 28,
        device: str = "cuda",
        dtype: str = "bfloat16",
        attn_implementation: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"{MODEL_ID}: unknown model_args {sorted(kwargs)}")
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration


        self.k = int(k)
        self.max_pixels = int(max_pixels)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size_per_gpu = int(batch_size)
        self._device = torch.device(device)
        path = resolve_model(pretrained)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self._model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=getattr(torch, dtype), **extra
        ).to(self._device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self._tokenizer = self.processor.tokenizer
        if selector == "lmms_uniform":
            self.selector: FrameSelector = LmmsUniformSelector()
            self.sampling = SAMPLINGS["lmms_uniform"]
        elif selector == "uniform":
            self.selector = UniformSelector()
            self.sampling = SAMPLINGS["uniform"]
        else:
            # the trained model's sampler settings (its stage.json), unless mode= is given
            sampler, _ = effective_sampler(SamplerSection(mode=mode) if mode else None, selector)
            self.selector = KFramesSelector(
                selector, mode=sampler.mode, num_candidates=int(num_candidates),
                max_pixels=int(selector_max_pixels) if selector_max_pixels else None, device=device,
                **sampler.sampler_kwargs(),
            )
            self.sampling = f"K-frames selector {selector} (mode={sampler.mode}, {num_candidates} candidate frames)"
        self._frames: Any = None
        _announce(f"{MODEL_ID}: k={self.k} frames per video by {self.sampling}")

    # lmms-eval reads these
    @property
    def model(self) -> Any:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def device(self) -> Any:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eos_token_id

    # --------------------------------------------------------------------------------------------
    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if doc_to_visual is not None else None
        return [v for v in (visuals or []) if v is not None]

    def select_frames(self, video: str, query: str) -> tuple[list[Any], list[float]]:
        """The k frames the selector picks for `query` (the task's prompt), as images with timestamps."""
        if self._frames is None:
            from data_builder.video import FrameCache

            self._frames = FrameCache(max_videos=2)
        meta = VideoTimeline.read(video)
        sel = self.selector.select(meta, query, None, self.k)
        return self._frames.images(video, sel.indices, max_pixels=self.max_pixels), sel.timestamps_s

    def build_inputs(self, context: str, visuals: Sequence[Any], continuation: str | None = None) -> tuple[Any, int]:
        """Processor inputs: each frame after its timestamp, then the task's prompt (plus a continuation)."""
        content: list[dict[str, Any]] = []
        images: list[Any] = []
        for v in visuals:
            if isinstance(v, str) and v.lower().endswith(VIDEO_EXTENSIONS):
                frames, times = self.select_frames(v, context)
                for _frame, t in zip(frames, times, strict=True):
                    content += [{"type": "text", "text": format_timestamp(t)}, {"type": "image"}]
                images += frames
            elif hasattr(v, "convert"):  # a PIL image from an image task: passed through unchanged
                content.append({"type": "image"})
                images.append(v.convert("RGB"))
        content.append({"type": "text", "text": context.replace("<image>", "")})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt")
        prompt_len = len(inputs["input_ids"][0])
        if continuation:
            inputs = self.processor(text=[prompt + continuation], images=images or None, return_tensors="pt")
        return inputs.to(self._device), prompt_len

    def generate_until(self, requests: list[Any]) -> list[str]:
        import torch
        from tqdm import tqdm

        out = []
        for req in tqdm(requests, desc=MODEL_ID, disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            inputs, prompt_len = self.build_inputs(context, self._visuals(doc_to_visual, doc_id, task, split))
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            with torch.inference_mode():
                ids = self._model.generate(
                    **inputs,
                    max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=gen_kwargs.get("top_p") if temperature > 0 else None,
                    pad_token_id=self._tokenizer.pad_token_id,
                )
            text = self._tokenizer.decode(ids[0, prompt_len:], skip_special_tokens=True)
            for stop in until:
                if stop and stop != "\n\n":  # as lmms-eval's qwen2_5_vl: "\n\n" would truncate answers
                    text = text.split(stop)[0]
            out.append(text)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """log p(continuation | frames, context) and whether greedy decoding would produce it."""
        import torch

        out = []
        for req in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(doc) if callable(doc_to_target) else str(doc_to_target)
            inputs, prompt_len = self.build_inputs(context, self._visuals(doc_to_visual, doc_id, task, split), continuation)
            with torch.inference_mode():
                logits = self._model(**inputs).logits[0].float()
            target = inputs["input_ids"][0, prompt_len:]
            logp = torch.log_softmax(logits[prompt_len - 1 : -1], dim=-1)
            total = float(logp.gather(1, target[:, None]).sum())
            greedy = bool((logp.argmax(-1) == target).all())
            out.append((total, greedy))
        return out

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID} does not support multi-round generation")


def _announce(message: str) -> None:
    """Say which frames the model sees: on lmms-eval's own log when it runs there, else on this module's."""
    try:
        from loguru import logger
    except ImportError:
        log.info(message)
        return
    logger.info(message)
