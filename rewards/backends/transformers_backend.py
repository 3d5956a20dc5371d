"""The in-process downstream backend: a frozen Qwen2.5-VL (or any image-text-to-text model) run by transformers.

The default on one machine and in tests. Each batch of questions is rendered with `render_mcq_messages`, put
through the model's own chat template and processor (left-padded, so the last position of every row is the
position that predicts the answer), and the next-token logits of the option letters are read and normalised
over the letters (rewards.backends.base). Nothing is generated: one forward pass per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pipeline.core.errors import BackendError, ConfigError
from pipeline.core.models import resolve_model
from rewards.backends.base import MCQRequest, normalise_over_options, option_letters
from rewards.backends.prompt import render_mcq_messages

logger = logging.getLogger(__name__)


def _device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return torch.device(device), {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


class TransformersBackend:
    """Scores option letters with a frozen model in this process (`DownstreamBackend`)."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        attn_implementation: str = "sdpa",
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve_model(model)
        self.device, self.dtype = _device_and_dtype(device, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=self.dtype, attn_implementation=attn_implementation
            )
        except OSError as exc:
            raise ConfigError(f"downstream.model: cannot load {model!r} ({exc})") from None
        self.model.to(self.device).eval().requires_grad_(False)
        self.processor.tokenizer.padding_side = "left"  # the last position of every row predicts the answer
        self.batch_size = batch_size
        self.name = model
        self._letter_ids = [self._single_token_id(letter) for letter in option_letters(26)]
        self._torch = torch

    def _single_token_id(self, letter: str) -> int:
        ids = self.processor.tokenizer.encode(letter, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"downstream.model {self.name!r}: option letter {letter!r} is not one token ({ids})")
        return int(ids[0])

    def letter_token_ids(self, n: int) -> list[int]:
        return self._letter_ids[:n]

    def next_token_logits(self, messages: Sequence[list[dict[str, Any]]], images: Sequence[list[Any]]):
        """Next-token logits [B, vocab] (float32, CPU) after the generation prompt of each conversation.

        `messages[i]` has one `{"type": "image"}` placeholder per image of `images[i]`. Public so that a test can
        serve these very numbers over HTTP, as a vLLM server would.
        """
        texts = [
            self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages
        ]
        flat = [img for imgs in images for img in imgs]
        inputs = self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with self._torch.inference_mode():
            out = self.model(**inputs, logits_to_keep=1)
        return out.logits[:, -1, :].float().cpu()

    def option_logprobs(self, requests: list[MCQRequest]) -> list[list[float]]:
        results: list[list[float]] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            messages = [render_mcq_messages(r.timestamps_s, r.question, r.options) for r in chunk]
            try:
                logits = self.next_token_logits(messages, [r.images for r in chunk])
            except RuntimeError as exc:  # CUDA OOM and friends: name what failed
                raise BackendError(f"downstream model {self.name!r} failed on a batch of {len(chunk)}: {exc}") from exc
            for row, req in zip(logits, chunk):
                ids = self.letter_token_ids(len(req.options))
                results.append(normalise_over_options(row[ids].tolist()))
        return results
