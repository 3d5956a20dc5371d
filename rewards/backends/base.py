"""What every downstream backend shares: the request, the protocol, the option letters, the normalisation.

The reward and the evaluation both ask a frozen MLLM one question: given these frames, how likely is each option
letter as the next token? A backend answers with one log-probability per option. Whatever the backend, the numbers
are normalised the same way, as a log-softmax over the option letters' logits, so that the in-process model and a
vLLM server give the same value for the same model and input (the reward's ratio p_ans / mean p_wrong does not
depend on the normalisation, but a logged p_ans or an argmax over a partial vocabulary would).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

MAX_OPTIONS = 26


@dataclass
class MCQRequest:
    """One multiple-choice question over frames: the images (PIL), their timestamps, the question and options."""

    images: list[Any]
    timestamps_s: list[float]
    question: str
    options: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.timestamps_s):
            raise ValueError(f"MCQRequest: {len(self.images)} images but {len(self.timestamps_s)} timestamps")
        if not 2 <= len(self.options) <= MAX_OPTIONS:
            raise ValueError(f"MCQRequest: need 2..{MAX_OPTIONS} options, got {len(self.options)}")


@runtime_checkable
class DownstreamBackend(Protocol):
    """A frozen MLLM that scores the option letters of multiple-choice questions over frames."""

    def option_logprobs(self, requests: list[MCQRequest]) -> list[list[float]]:
        """For each request, log p of each option letter (A, B, ...) as the next token, normalised over the letters."""
        ...


def option_letters(n: int) -> list[str]:
    if not 1 <= n <= MAX_OPTIONS:
        raise ValueError(f"expected 1..{MAX_OPTIONS} options, got {n}")
    return [chr(65 + i) for i in range(n)]


def normalise_over_options(values: Sequence[float]) -> list[float]:
    """Log-softmax over the option letters. Accepts logits or full-vocabulary log-probs (the same result)."""
    m = max(values)
    if m == -math.inf:
        raise ValueError("every option letter has probability 0")
    lse = m + math.log(sum(math.exp(v - m) for v in values))
    return [float(v - lse) for v in values]
