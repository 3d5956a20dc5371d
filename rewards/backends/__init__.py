"""Downstream backends: a frozen MLLM that scores the option letters of a multiple-choice question over frames.

- `transformers` (rewards.backends.transformers_backend): in-process, the default on one machine and in tests.
- `vllm` (rewards.backends.vllm_backend): an OpenAI-compatible vLLM server, spoken to over HTTP.

Both render the question with `render_mcq_messages` and return log-probs normalised over the option letters, so
they give the same number for the same model and input. The GRPO reward (rewards.downstream) and the evaluation
(pipeline.evaluation.evaluate) get theirs from `make_backend(cfg.downstream)`.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import ConfigError
from rewards.backends.base import DownstreamBackend, MCQRequest, normalise_over_options, option_letters
from rewards.backends.prompt import ANSWER_INSTRUCTION, render_mcq_messages

__all__ = [
    "ANSWER_INSTRUCTION",
    "DownstreamBackend",
    "MCQRequest",
    "make_backend",
    "normalise_over_options",
    "option_letters",
    "render_mcq_messages",
]


def make_backend(cfg: Any) -> DownstreamBackend:
    """The backend a `pipeline.core.config.DownstreamSection` asks for (loads the model or checks the URL)."""
    if cfg.backend == "transformers":
        from rewards.backends.transformers_backend import TransformersBackend

        return TransformersBackend(cfg.model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size)
    if cfg.backend == "vllm":
        from rewards.backends.vllm_backend import VLLMBackend

        if not cfg.url:
            raise ConfigError("downstream.url: the vllm backend needs the server's base URL, e.g. http://node:8000/v1")
        return VLLMBackend(
            cfg.url,
            cfg.model,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            concurrency=cfg.concurrency,
            top_logprobs=cfg.top_logprobs,
            image_format=cfg.image_format,
            api_key_env=cfg.api_key_env,
        )
    raise ConfigError(f"downstream.backend: unknown backend {cfg.backend!r}; expected transformers or vllm")
