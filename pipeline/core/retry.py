"""Retry with exponential backoff, for everything that talks to a model server.

The annotator's OpenAI-compatible client (`data_builder.llm`) and the reward's vLLM client
(`rewards.backends.vllm_backend`) fail the same ways (timeouts, refused connections, 429/5xx, a malformed
body), so they share one loop: a transient failure raises `RetryableError` and is retried; anything else
(a 4xx that retrying cannot fix) propagates at once; the last failure becomes a `BackendError` that says
what was called, what went wrong and how many attempts were made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.core.errors import BackendError
from pipeline.core.secrets import redact

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryableError(Exception):
    """A failure worth retrying (timeout, 5xx, malformed body); anything else propagates at once."""


def with_retries(fn: Callable[[], T], *, what: str, max_retries: int, backoff_s: float) -> T:
    """Call `fn`; on RetryableError wait backoff_s * 2**attempt and try again, at most max_retries times.

    The final error reads `"{what}: {last failure} (after N attempts)"`.
    """
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except RetryableError as exc:
            reason = redact(str(exc))
            if attempt == max_retries:
                raise BackendError(redact(f"{what}: {reason} (after {max_retries + 1} attempts)")) from None
            delay = backoff_s * (2**attempt)
            log.warning("%s: %s; retrying in %.2fs (%d/%d)", redact(what), reason, delay, attempt + 1, max_retries)
            time.sleep(delay)
    raise AssertionError("unreachable")
