"""The downstream model behind a vLLM OpenAI-compatible server (`vllm serve`), spoken to over HTTP.

Written for vLLM 0.11 (V1 engine; pinned in requirements/vllm-server.txt). Start the server with

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --logprobs-mode processed_logprobs --max-logprobs 20 \
        --limit-mm-per-prompt '{"image": 64}' --port 8000

One question is one `POST {url}/chat/completions`:

    {"model": MODEL, "messages": render_mcq_messages(...) with each image as
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
     "max_tokens": 1, "logprobs": true, "top_logprobs": 20,
     "allowed_token_ids": [ids of "A", "B", ...], "return_tokens_as_token_ids": true,
     "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 0}

and the option letters' log-probs are read from `choices[0].logprobs.content[0].top_logprobs` (tokens come back
as `token_id:N`, so letters are matched by id, not by spelling). Why each field:
- `--logprobs-mode processed_logprobs` + `allowed_token_ids`: vLLM's default (raw) log-probs are computed before
  `allowed_token_ids` applies, so a letter outside the top-20 of the whole vocabulary would be missing; processed
  log-probs are taken after the mask, so all letters are always there. With a raw-mode server the backend still
  works whenever every letter is in the top `top_logprobs`, and says how to fix the server when one is not.
- temperature 1, top_p 1, top_k -1, min_p 0, repetition_penalty 1: processed log-probs also go through the sampling
  processors, and `vllm serve` fills unset ones from the model's generation_config (Qwen2.5-VL's sets top_k=1 and
  repetition_penalty=1.05, which would zero out all letters but one and penalise letters seen in the options).
- The letters' token ids come from the server's own `POST /tokenize`, so no local tokenizer is needed.
- PNG data URLs (default) carry exactly the pixels the in-process backend sees; then both backends give the same
  numbers up to float error (tests/test_rewards.py checks it against a loopback server, benchmarks/gpu/ on a real
  Qwen2.5-VL).

The server batches concurrent requests itself (continuous batching), so the client sends up to `concurrency`
requests at once from a thread pool. Connection errors, timeouts, 429 and 5xx are retried with exponential backoff;
when the server cannot be reached the BackendError says so and names the URL.
"""

from __future__ import annotations

import base64
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.core.errors import BackendError, ConfigError
from pipeline.core.retry import RetryableError, with_retries
from rewards.backends.base import MCQRequest, normalise_over_options, option_letters
from rewards.backends.prompt import render_mcq_messages

logger = logging.getLogger(__name__)

VLLM_VERSION = "0.11.0"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def image_data_url(image: Any, fmt: str = "png") -> str:
    """A PIL image as a data URL (PNG: lossless, so the server decodes exactly these pixels)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def openai_messages(request: MCQRequest, image_format: str = "png") -> list[dict[str, Any]]:
    """`render_mcq_messages` with each image placeholder filled in as an OpenAI `image_url` part (in order)."""
    images = iter(request.images)
    out = []
    for msg in render_mcq_messages(request.timestamps_s, request.question, request.options):
        parts = []
        for part in msg["content"]:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(next(images), image_format)}})
            else:
                parts.append(part)
        out.append({"role": msg["role"], "content": parts})
    return out


def _server_root(url: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000` (vLLM serves /tokenize and /health at the root)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class VLLMBackend:
    """Scores option letters with a model served by vLLM (`DownstreamBackend`)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 8,
        top_logprobs: int = 20,
        image_format: str = "png",
        backoff_s: float = 0.5,
    ) -> None:
        import httpx

        if not url or not url.startswith(("http://", "https://")):
            raise ConfigError(f"downstream.url: expected the vLLM server's http(s) base URL (…/v1), got {url!r}")
        self.url = url.rstrip("/")
        self.root = _server_root(self.url)
        self.model = model
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        self.image_format = image_format
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), limits=httpx.Limits(max_connections=concurrency))
        self._letter_ids: dict[str, int] | None = None

    def close(self) -> None:
        self._client.close()

    # ---- HTTP with retries ------------------------------------------------------------------------------

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return with_retries(
            lambda: self._post_once(url, body),
            what=f"vLLM server at {self.url}",
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
        )

    def _post_once(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = self._client.post(url, json=body)
        except httpx.ConnectError as exc:
            raise RetryableError(f"not reachable ({exc}); is `vllm serve` running there?") from None
        except httpx.TimeoutException:
            raise RetryableError(f"no answer within {self.timeout_s:g}s (downstream.timeout_s)") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"connection failed ({exc})") from None
        if resp.status_code in RETRY_STATUS:
            raise RetryableError(f"answered {resp.status_code}: {resp.text[:300]}")
        if resp.status_code >= 400:
            raise BackendError(f"vLLM server at {self.url} rejected {url} ({resp.status_code}): {resp.text[:500]}")
        try:
            return resp.json()
        except ValueError:
            raise BackendError(f"vLLM server at {self.url}: {url} did not return JSON: {resp.text[:200]!r}") from None

    # ---- letters ----------------------------------------------------------------------------------------

    def letter_token_ids(self, n: int) -> list[int]:
        if self._letter_ids is None:
            ids = {}
            for letter in option_letters(26):
                out = self._post(f"{self.root}/tokenize", {"model": self.model, "prompt": letter, "add_special_tokens": False})
                toks = out.get("tokens")
                if not isinstance(toks, list) or len(toks) != 1:
                    raise BackendError(f"vLLM server at {self.url}: option letter {letter!r} is not one token ({toks})")
                ids[letter] = int(toks[0])
            self._letter_ids = ids
        return [self._letter_ids[letter] for letter in option_letters(n)]

    # ---- one question -----------------------------------------------------------------------------------

    def request_body(self, request: MCQRequest) -> dict[str, Any]:
        n = len(request.options)
        return {
            "model": self.model,
            "messages": openai_messages(request, self.image_format),
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": max(self.top_logprobs, n),
            "allowed_token_ids": self.letter_token_ids(n),
            "return_tokens_as_token_ids": True,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": 0,
        }

    def _one(self, request: MCQRequest) -> list[float]:
        body = self.request_body(request)
        out = self._post(f"{self.url}/chat/completions", body)
        try:
            content = out["choices"][0]["logprobs"]["content"][0]
            entries = [content, *content.get("top_logprobs", [])]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"vLLM server at {self.url}: no logprobs in the answer: {str(out)[:300]}") from None
        letters = option_letters(len(request.options))
        by_id = dict(zip(body["allowed_token_ids"], letters))
        found: dict[str, float] = {}
        for e in entries:
            tok = str(e.get("token", ""))
            letter = by_id.get(int(tok.split(":", 1)[1])) if tok.startswith("token_id:") else (tok if tok in letters else None)
            if letter is not None and letter not in found:
                found[letter] = float(e["logprob"])
        missing = [x for x in letters if x not in found]
        if missing:
            raise BackendError(
                f"vLLM server at {self.url} returned no log-prob for option(s) {', '.join(missing)} among its top "
                f"{body['top_logprobs']}; start it with `--logprobs-mode processed_logprobs` so that allowed_token_ids "
                "restricts the log-probs to the option letters"
            )
        return normalise_over_options([found[x] for x in letters])

    def option_logprobs(self, requests: list[MCQRequest]) -> list[list[float]]:
        if not requests:
            return []
        n = max(len(r.options) for r in requests)
        self.letter_token_ids(n)  # once, before the threads start
        if len(requests) == 1 or self.concurrency == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


