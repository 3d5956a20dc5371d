"""The downstream model behind a vLLM OpenAI-compatible server (`vllm serve`), spoken to over HTTP.

Written for vLLM 0.33 (pinned in requirements/vllm-server.txt) and checked against its request and response models
(vllm/entrypoints/openai/chat_completion/protocol.py); older servers are still served (see "Two ways to ask").
Start the server with

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --max-model-len 32768 --limit-mm-per-prompt '{"image": 64}' \
        --max-logprobs 20 --logprobs-mode processed_logprobs

One question is one `POST {url}/chat/completions`:

    {"model": MODEL, "messages": render_mcq_messages(...) with each image as
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
     "max_completion_tokens": 1, "logprobs": true, "logprob_token_ids": [ids of "A", "B", ...],
     "allowed_token_ids": [the same ids], "return_tokens_as_token_ids": true,
     "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
     "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": 0}

and the option letters' log-probs are read from `choices[0].logprobs.content[0]` (the sampled token) and its
`top_logprobs` (tokens come back as `token_id:N`, so letters are matched by id, not by spelling).

Two ways to ask, chosen by probing the server once (`logprobs_api`):
- `logprob_token_ids` (vLLM >= 0.31): the server returns the log-prob of exactly these ids, whatever their rank in
  the vocabulary, so every letter is there for any number of options up to 26, in raw and in processed mode, and
  `--max-logprobs` does not apply (vLLM caps the list at 128 ids).
- `top_logprobs` (older servers, which ignore the unknown field): the top `max(downstream.top_logprobs, n)` entries.
  vLLM's default (raw) log-probs are computed before `allowed_token_ids` applies, so a letter outside the top of
  the whole vocabulary would be missing; `--logprobs-mode processed_logprobs` takes them after the mask, so all
  letters are there. The server's `--max-logprobs` (default 20) must be at least the number of options.
The probe is one 1-token request on a text prompt that asks for two letters' ids: a server that knows the field
answers with both, one that does not answers with none.

Why the other fields:
- temperature 1, top_p 1, top_k 0 (vLLM's "off"; -1 is its deprecated spelling), min_p 0, repetition_penalty 1:
  processed log-probs also go through the sampling processors, and `vllm serve` fills unset ones from the model's
  generation_config (Qwen2.5-VL's sets top_k=1 and repetition_penalty=1.05, which would zero out all letters but
  one and penalise letters seen in the options).
- `max_completion_tokens` (vLLM deprecates `max_tokens`).
- The letters' token ids come from the server's own `POST /tokenize`, so no local tokenizer is needed.
- PNG data URLs (default) carry exactly the pixels the in-process backend sees; then both backends give the same
  numbers up to float error (tests/test_rewards.py checks it against a loopback server, benchmarks/gpu/ on a real
  Qwen2.5-VL). The PNG is written at the lowest compression (`png_bytes`: the "Up" row filter, deflate level 1
  with ISA-L): lossless, over 10x cheaper to make than PIL's default level 6 for about 25% more bytes (README
  "## Video I/O").
  `image_format: jpeg` (quality 95) is several times cheaper again and smaller, but changes the pixels (README
  "## Video I/O" gives the measured error), so the reward no longer sees exactly what the in-process backend sees.
- The completions of a GRPO group share most of their frames: `option_logprobs` encodes each distinct image of the
  group once, in the request pool's threads, before the requests go out.

The server batches concurrent requests itself (continuous batching), so the client sends up to `concurrency`
requests at once from a thread pool. Connection errors, timeouts, 429 and 5xx are retried with exponential backoff;
when the server cannot be reached the BackendError says so and names the URL.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from pipeline.core.errors import BackendError, ConfigError
from pipeline.core.retry import RetryableError, with_retries
from pipeline.core.secrets import redact, register_secret
from rewards.backends.base import MAX_OPTIONS, MCQRequest, normalise_over_options, option_letters
from rewards.backends.prompt import render_mcq_messages

logger = logging.getLogger(__name__)

VLLM_VERSION = "0.33.0"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
LogprobsAPI = Literal["auto", "logprob_token_ids", "top_logprobs"]

# Sampling that leaves the next-token distribution as the model gives it (see the module docstring).
NEUTRAL_SAMPLING: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": 0,
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


try:  # ISA-L's deflate: the same zlib stream format, about 4x faster than zlib at level 1
    from isal.isal_zlib import compress as _deflate
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the same format, slower
    from zlib import compress as _deflate


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB image `[H, W, 3]` as a PNG at the lowest compression: every row "Up"-filtered (the difference
    to the row above, one numpy subtraction) and deflated at level 1 (ISA-L). Lossless like any PNG; PIL's encoder
    at its lowest level tries every filter per row and deflates with zlib, about 5x the CPU for the same size."""
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up (the first row's "above" is zero, so it is stored as is)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", _deflate(raw.tobytes(), 1))
            + _png_chunk(b"IEND", b""))


def image_data_url(image: Any, fmt: str = "png") -> str:
    """A PIL image as a data URL (PNG: lossless, so the server decodes exactly these pixels; JPEG: quality 95)."""
    if fmt == "jpeg":
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        data, mime = buf.getvalue(), "image/jpeg"
    elif image.mode == "RGB":
        data, mime = png_bytes(np.asarray(image)), "image/png"
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(
    request: MCQRequest, image_format: str = "png", urls: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """`render_mcq_messages` with each image placeholder filled in as an OpenAI `image_url` part (in order).
    `urls`: data URLs already made, by `id()` of the image (images shared by several requests are encoded once)."""
    images = iter(request.images)
    out = []
    for msg in render_mcq_messages(request.timestamps_s, request.question, request.options):
        parts = []
        for part in msg["content"]:
            if part["type"] == "image":
                image = next(images)
                url = urls.get(id(image)) if urls is not None else None
                parts.append({"type": "image_url", "image_url": {"url": url or image_data_url(image, image_format)}})
            else:
                parts.append(part)
        out.append({"role": msg["role"], "content": parts})
    return out


def _server_root(url: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000` (vLLM serves /tokenize and /health at the root)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _error_message(text: str) -> str:
    """vLLM's error body `{"error": {"message": ...}}` (or FastAPI's `{"detail": ...}`) as one line."""
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            param = f" (param {err['param']})" if err.get("param") else ""
            return f"{err['message']}{param}"
        if "detail" in body:
            return str(body["detail"])[:500]
    return text[:500]


def token_logprobs(content: dict[str, Any], wanted: list[int]) -> dict[int, float]:
    """The log-probs of the `wanted` token ids found in one `logprobs.content[i]` entry (the sampled token and its
    `top_logprobs`), matched by id through vLLM's `token_id:N` spelling (`return_tokens_as_token_ids`)."""
    wanted_set = set(wanted)
    found: dict[int, float] = {}
    for entry in [content, *(content.get("top_logprobs") or [])]:
        tok = str(entry.get("token", ""))
        if not tok.startswith("token_id:"):
            continue
        try:
            tid = int(tok.split(":", 1)[1])
        except ValueError:
            continue
        if tid in wanted_set and tid not in found and entry.get("logprob") is not None:
            found[tid] = float(entry["logprob"])
    return found


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
        logprobs_api: LogprobsAPI = "auto",
        api_key_env: str | None = None,
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
        self.logprobs_api: LogprobsAPI = logprobs_api
        headers = {}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:  # `vllm serve --api-key`: the key travels in a header and is masked in every message
            register_secret(key)
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), limits=httpx.Limits(max_connections=concurrency),
                                    headers=headers)
        self._letter_ids: dict[str, int] | None = None
        self._setup_lock = threading.Lock()

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
            raise RetryableError(redact(f"answered {resp.status_code}: {_error_message(resp.text)[:300]}"))
        if resp.status_code >= 400:
            raise BackendError(redact(
                f"vLLM server at {self.url} rejected {url} ({resp.status_code}): {_error_message(resp.text)}")
            )
        try:
            return resp.json()
        except ValueError:
            raise BackendError(redact(f"vLLM server at {self.url}: {url} did not return JSON: {resp.text[:200]!r}")) from None

    # ---- letters and the server's abilities (asked once) ---------------------------------------------------

    def letter_token_ids(self, n: int) -> list[int]:
        if self._letter_ids is None:
            ids = {}
            for letter in option_letters(MAX_OPTIONS):
                out = self._post(f"{self.root}/tokenize", {"model": self.model, "prompt": letter, "add_special_tokens": False})
                toks = out.get("tokens")
                if not isinstance(toks, list) or len(toks) != 1:
                    raise BackendError(f"vLLM server at {self.url}: option letter {letter!r} is not one token ({toks})")
                ids[letter] = int(toks[0])
            if len(set(ids.values())) != len(ids):
                raise BackendError(f"vLLM server at {self.url}: two option letters share a token id ({ids})")
            self._letter_ids = ids
        return [self._letter_ids[letter] for letter in option_letters(n)]

    def _probe_logprob_token_ids(self) -> bool:
        """Whether the server answers `logprob_token_ids` (one 1-token request on a text prompt)."""
        wanted = self.letter_token_ids(2)
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Answer with A or B."}]}],
            "max_completion_tokens": 1,
            "logprobs": True,
            "logprob_token_ids": wanted,
            "return_tokens_as_token_ids": True,
            **NEUTRAL_SAMPLING,
        }
        try:
            out = self._post(f"{self.url}/chat/completions", body)
            content = out["choices"][0]["logprobs"]["content"][0]
        except BackendError as exc:
            if "logprob_token_ids" in str(exc):  # a server that knows the field but refuses it here
                logger.warning("vLLM server at %s refused logprob_token_ids (%s); using top_logprobs", self.url, exc)
                return False
            raise
        except (KeyError, IndexError, TypeError):
            raise BackendError(redact(f"vLLM server at {self.url}: no logprobs in the answer: {str(out)[:300]}")) from None
        return len(token_logprobs(content, wanted)) == len(wanted)

    def resolved_logprobs_api(self) -> LogprobsAPI:
        """`logprob_token_ids` or `top_logprobs`: the configured one, or (auto) what the server answers."""
        with self._setup_lock:
            if self.logprobs_api == "auto":
                self.logprobs_api = "logprob_token_ids" if self._probe_logprob_token_ids() else "top_logprobs"
                if self.logprobs_api == "top_logprobs":
                    logger.warning(
                        "vLLM server at %s does not answer logprob_token_ids (vLLM >= 0.31 does): asking for the top "
                        "%d log-probs instead, which needs `--logprobs-mode processed_logprobs` and "
                        "`--max-logprobs` >= the number of options",
                        self.url,
                        self.top_logprobs,
                    )
            return self.logprobs_api

    # ---- one question -----------------------------------------------------------------------------------

    def request_body(self, request: MCQRequest, urls: dict[int, str] | None = None) -> dict[str, Any]:
        n = len(request.options)
        ids = self.letter_token_ids(n)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(request, self.image_format, urls),
            "max_completion_tokens": 1,
            "logprobs": True,
        }
        if self.resolved_logprobs_api() == "logprob_token_ids":
            body["logprob_token_ids"] = ids
        else:
            body["top_logprobs"] = max(self.top_logprobs, n)
        body.update({"allowed_token_ids": ids, "return_tokens_as_token_ids": True, **NEUTRAL_SAMPLING})
        return body

    def _one(self, request: MCQRequest, urls: dict[int, str] | None = None) -> list[float]:
        body = self.request_body(request, urls)
        try:
            out = self._post(f"{self.url}/chat/completions", body)
        except BackendError as exc:
            if "top_logprobs" in body and "max allowed" in str(exc):
                raise BackendError(
                    f"{exc}. With {len(request.options)} options this server needs `--max-logprobs "
                    f"{body['top_logprobs']}` or more (it has no logprob_token_ids; vLLM >= 0.31 has, and then "
                    "--max-logprobs does not matter)"
                ) from None
            raise
        try:
            content = out["choices"][0]["logprobs"]["content"][0]
        except (KeyError, IndexError, TypeError):
            raise BackendError(redact(f"vLLM server at {self.url}: no logprobs in the answer: {str(out)[:300]}")) from None
        letters = option_letters(len(request.options))
        ids = body["allowed_token_ids"]
        found = token_logprobs(content, ids)
        missing = [letter for letter, tid in zip(letters, ids) if tid not in found]
        if missing:
            if "logprob_token_ids" in body:
                raise BackendError(
                    f"vLLM server at {self.url} returned no log-prob for option(s) {', '.join(missing)} although "
                    f"logprob_token_ids asked for them: {str(content)[:300]}"
                )
            raise BackendError(
                f"vLLM server at {self.url} returned no log-prob for option(s) {', '.join(missing)} among its top "
                f"{body['top_logprobs']} (downstream.top_logprobs); start it with `--logprobs-mode processed_logprobs` "
                "so that allowed_token_ids restricts the log-probs to the option letters, or use vLLM >= 0.31 "
                "(logprob_token_ids)"
            )
        return normalise_over_options([found[tid] for tid in ids])

    def option_logprobs(self, requests: list[MCQRequest]) -> list[list[float]]:
        if not requests:
            return []
        self.resolved_logprobs_api()  # tokenize the letters and probe once, before the threads start
        unique = list({id(image): image for r in requests for image in r.images}.values())
        if len(requests) == 1 or self.concurrency == 1:
            urls = {id(image): image_data_url(image, self.image_format) for image in unique}
            return [self._one(r, urls) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            encoded = pool.map(lambda image: image_data_url(image, self.image_format), unique)
            urls = {id(image): url for image, url in zip(unique, encoded, strict=True)}
            return list(pool.map(lambda r: self._one(r, urls), requests))

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
