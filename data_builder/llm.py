"""Generation backends for the PeakClips annotator: a local transformers model or an OpenAI-compatible server.

Building PeakClips asks an MLLM tens of thousands of small questions (a caption per scene, a score per scene
and query). Three things make that affordable and restartable:

- **Batching.** `generate(requests)` takes a list (or any iterable): the transformers backend runs `batch_size`
  prompts per `model.generate` call (left padding); the openai backend keeps up to `batch_size` HTTP requests in
  flight from ONE pool shared by every caller (`submit`), so several videos annotated at once (data_builder.build)
  fill the same `batch_size` slots, and no request waits for a slower one of its batch: a slot is refilled as soon
  as its answer arrives. A request produced by an iterable (caption frames decoded scene by scene) is sent as soon
  as it is produced, so decoding overlaps the requests already in flight.
- **Retries with backoff.** A timeout, a connection error, a 5xx/429 or a malformed body is retried
  (`backoff_s`, doubling) up to `max_retries` times, then a `BackendError` names the server and the problem.
  Other 4xx (bad model name, bad key) fail at once: retrying them only burns time.
- **A disk cache keyed by model and prompt** (`CachedBackend`): the sha256 of the backend's identity, the
  generation settings, the text and the pixels of every image. A rerun after a crash, or a rerun with one
  more query, pays only for what is new. Entries are written atomically, one small JSON file each, as each
  answer arrives (an interrupt loses only the requests in flight), so concurrent shards can share the cache.

The API key of the openai backend is read from the environment variable named in the config; it travels
only in the Authorization header and never appears in an error message, a log line or the cache.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.errors import BackendError, ConfigError
from pipeline.core.io import atomic_write_json
from pipeline.core.models import resolve_model
from pipeline.core.secrets import redact, register_secret
from pipeline.core.retry import RetryableError, with_retries

log = logging.getLogger(__name__)


@dataclass
class LLMRequest:
    """One prompt: optional system text, the user's text, and images shown before it (PIL images)."""

    prompt: str
    images: list[Any] = field(default_factory=list)
    system: str | None = None


class GenerationBackend(Protocol):
    """What every backend offers: a stable identity (for the cache) and batched generation."""

    identity: str

    def generate(self, requests: Sequence[LLMRequest]) -> list[str]: ...


def image_digest(image: Any) -> str:
    """sha256 of an image's mode, size and pixels (so the cache key changes when the frame does)."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def resize_to_max_pixels(image: Any, max_pixels: int) -> Any:
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = (max_pixels / (w * h)) ** 0.5
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))))


# ----------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP (vllm serve, a hosted API)
# ----------------------------------------------------------------------------------------------------


class OpenAIBackend:
    """Chat completions over HTTP with httpx; images as base64 JPEG data URLs.

    One pool of `batch_size` threads sends every request, whoever submits it: that is the number in flight at the
    server. At most `queue_factor * batch_size` more wait their turn (`submit` blocks beyond that), which bounds
    the memory of queued requests (their images) however many callers produce them.
    """

    queue_factor = 4

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        batch_size: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_image_pixels: int = 448 * 448,
    ) -> None:
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_image_pixels = max_image_pixels
        self.identity = f"openai:{model}"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env)
        if key:  # local vLLM servers usually need none
            register_secret(key)
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=batch_size, max_keepalive_connections=batch_size),
        )
        self._pool = ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="llm")
        self._slots = threading.BoundedSemaphore(batch_size * (1 + self.queue_factor))

    def _payload(self, req: LLMRequest) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for img in req.images:
            buf = io.BytesIO()
            resize_to_max_pixels(img, self.max_image_pixels).convert("RGB").save(buf, format="JPEG", quality=90)
            url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": req.prompt})
        messages: list[dict[str, Any]] = []
        if req.system:
            messages.append({"role": "system", "content": req.system})
        messages.append({"role": "user", "content": content})
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }

    def _post_once(self, payload: dict[str, Any]) -> str:
        import httpx

        try:
            resp = self._client.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise RetryableError("timed out") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"connection failed ({type(exc).__name__})") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RetryableError(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            # Not retryable (bad model, bad key, bad request). The body helps; the request headers never appear.
            raise BackendError(redact(f"{self.url}: HTTP {resp.status_code}: {resp.text[:300]}"))
        try:
            text = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError(redact(f"malformed response body: {resp.text[:120]!r}")) from None
        if not isinstance(text, str):
            raise RetryableError("malformed response body: message content is not a string")
        return text

    def _one(self, req: LLMRequest) -> str:
        payload = self._payload(req)
        return with_retries(
            lambda: self._post_once(payload), what=self.url, max_retries=self.max_retries, backoff_s=self.backoff_s
        )

    def submit(self, request: LLMRequest) -> Future[str]:
        """Queue one request on the shared pool; blocks while the queue is full."""
        self._slots.acquire()
        try:
            future = self._pool.submit(self._one, request)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def generate(self, requests: Sequence[LLMRequest]) -> list[str]:
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


# ----------------------------------------------------------------------------------------------------
# Local transformers model (a chat VLM such as Qwen2.5-VL, or the tiny one in tests)
# ----------------------------------------------------------------------------------------------------


class TransformersBackend:
    """A local chat model through its processor's chat template; batched greedy (or sampled) generation."""

    def __init__(
        self,
        model: str,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        batch_size: int = 8,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_image_pixels: int = 448 * 448,
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor


        path = resolve_model(model)
        self.identity = f"transformers:{model}"
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_image_pixels = max_image_pixels
        self.seed = seed
        self.device = torch.device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"llm.model {model!r}: cannot load a chat vision-language model ({exc})") from None
        self.model.to(self.device).eval()
        self.processor.tokenizer.padding_side = "left"

    def _conversation(self, req: LLMRequest) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in req.images]
        content.append({"type": "text", "text": req.prompt})
        conv: list[dict[str, Any]] = []
        if req.system:
            conv.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
        conv.append({"role": "user", "content": content})
        return conv

    def _generate_batch(self, batch: Sequence[LLMRequest]) -> list[str]:
        import torch

        texts = [
            self.processor.apply_chat_template(self._conversation(r), tokenize=False, add_generation_prompt=True)
            for r in batch
        ]
        images = [resize_to_max_pixels(img, self.max_image_pixels).convert("RGB") for r in batch for img in r.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(self.device)
        do_sample = self.temperature > 0
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": do_sample}
        if do_sample:
            gen_kwargs["temperature"] = self.temperature
            torch.manual_seed(self.seed)
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, **gen_kwargs)
        except torch.OutOfMemoryError as exc:  # transient when other jobs share the GPU
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise RetryableError(f"out of memory ({exc})") from None
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def generate(self, requests: Sequence[LLMRequest]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i : i + self.batch_size]
            out.extend(
                with_retries(
                    lambda b=batch: self._generate_batch(b),
                    what=self.identity,
                    max_retries=self.max_retries,
                    backoff_s=self.backoff_s,
                )
            )
        return out


# ----------------------------------------------------------------------------------------------------
# Disk cache
# ----------------------------------------------------------------------------------------------------


class CachedBackend:
    """Wraps a backend with a disk cache keyed by model, generation settings and prompt (text + pixels).

    With a pooled backend (a server) every uncached request is submitted as soon as it is known, and each answer is
    cached as it arrives; with an in-process model, requests go in chunks of its batch size, each cached when it
    returns. `hits` and `misses` count lookups, so a caller (and a test) can see that a rerun paid nothing.
    Thread-safe: several videos may be annotated at once.
    """

    def __init__(self, backend: GenerationBackend, cache_dir: str | os.PathLike[str], settings: dict[str, Any]) -> None:
        self.backend = backend
        self.identity = backend.identity
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self.hits = 0
        self.misses = 0
        self._count = threading.Lock()
        self._asked: dict[str, Future[str]] = {}  # pooled: prompts in flight, shared by callers asking the same

    @property
    def pooled(self) -> bool:
        """Whether the backend serves requests from a shared pool (then several callers may share it)."""
        return callable(getattr(self.backend, "submit", None))

    def key(self, req: LLMRequest) -> str:
        blob = json.dumps(
            {
                "model": self.backend.identity,
                "settings": self.settings,
                "system": req.system,
                "prompt": req.prompt,
                "images": [image_digest(img) for img in req.images],
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> str | None:
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            text = json.loads(p.read_text(encoding="utf-8"))["text"]
        except (ValueError, KeyError, TypeError):
            text = None
        if isinstance(text, str):
            return text
        log.warning("%s: damaged cache entry; asking again", p)  # regenerated and overwritten
        return None

    def _store(self, key: str, text: str) -> None:
        atomic_write_json(self._path(key), {"model": self.identity, "text": text}, indent=None)

    def _count_lookup(self, hit: bool) -> None:
        with self._count:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def generate(self, requests: Iterable[LLMRequest]) -> list[str]:
        """One answer per request, in order. One generation per distinct prompt, even when a batch repeats one."""
        if self.pooled:
            return self._generate_pooled(requests)
        reqs = list(requests)
        keys = [self.key(r) for r in reqs]
        answers: dict[str, str] = {}
        todo: dict[str, int] = {}  # first request of each uncached prompt
        for i, k in enumerate(keys):
            if k in todo:
                continue
            text = answers.get(k) or self._cached(k)
            self._count_lookup(text is not None)
            if text is None:
                todo[k] = i
            else:
                answers[k] = text
        # Chunks of the backend's batch size, each cached as soon as it returns: an interrupt loses one chunk.
        chunk = max(1, int(getattr(self.backend, "batch_size", 8)))
        firsts = list(todo.values())
        for start in range(0, len(firsts), chunk):
            part = firsts[start : start + chunk]
            for i, text in zip(part, self.backend.generate([reqs[i] for i in part]), strict=True):
                self._store(keys[i], text)
                answers[keys[i]] = text
        return [answers[k] for k in keys]

    def _shared(self, key: str, req: LLMRequest) -> Future[str]:
        """The answer to `req`: a request in flight for the same prompt (another video may have asked it a moment
        ago), else a new one. Its answer is cached as soon as it arrives, whoever waits for it."""
        with self._count:
            fut = self._asked.get(key)
            if fut is not None:
                return fut
            fut = self._asked[key] = Future()
        text = self._cached(key)  # answered (and forgotten) between the caller's look in the cache and now
        if text is not None:
            self._settle(key, fut, None, None, text)
            return fut
        try:
            sent = self.backend.submit(req)  # type: ignore[attr-defined]  # may wait for room in the queue
        except BaseException as exc:
            self._settle(key, fut, None, exc)
            raise
        sent.add_done_callback(lambda done: self._settle(key, fut, done, None))
        return fut

    def _settle(
        self, key: str, fut: Future[str], done: Future[str] | None, error: BaseException | None, text: str | None = None
    ) -> None:
        if done is not None:
            if done.cancelled():
                error = CancelledError()
            elif (error := done.exception()) is None:
                text = done.result()
                try:
                    self._store(key, text)
                except OSError as exc:  # the answer is still good; the next run asks again
                    log.warning("%s: answer not cached (%s)", self._path(key), exc)
        with self._count:
            self._asked.pop(key, None)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(text or "")

    def _generate_pooled(self, requests: Iterable[LLMRequest]) -> list[str]:
        keys: list[str] = []
        answers: dict[str, str] = {}
        pending: dict[Future[str], str] = {}
        asked: set[str] = set()
        for req in requests:  # an iterable is consumed as requests are sent: its work overlaps theirs
            k = self.key(req)
            keys.append(k)
            if k in asked:
                continue
            text = answers.get(k) or self._cached(k)
            self._count_lookup(text is not None)
            if text is not None:
                answers[k] = text
                continue
            asked.add(k)
            pending[self._shared(k, req)] = k
        while pending:  # the first failure raises; the others' answers are cached as they arrive all the same
            done, _ = wait(list(pending), return_when=FIRST_EXCEPTION)
            for fut in done:
                answers[pending.pop(fut)] = fut.result()
        return [answers[k] for k in keys]


def make_llm(cfg: Any, cache_dir: str | os.PathLike[str] | None = None) -> CachedBackend:
    """Build the backend named in an LLMSection, wrapped in the disk cache (cfg.cache_dir or `cache_dir`)."""
    if cfg.backend == "openai":
        if not cfg.base_url:
            raise ConfigError("llm.base_url: the openai backend needs a server URL, e.g. http://node:8000/v1")
        backend: GenerationBackend = OpenAIBackend(
            base_url=cfg.base_url,
            model=cfg.model,
            api_key_env=cfg.api_key_env,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            batch_size=cfg.batch_size,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            max_image_pixels=cfg.max_image_pixels,
        )
    elif cfg.backend == "transformers":
        backend = TransformersBackend(
            cfg.model,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            batch_size=cfg.batch_size,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            max_image_pixels=cfg.max_image_pixels,
            device=cfg.device,
            dtype=cfg.dtype,
        )
    else:  # pragma: no cover - the config's Literal rejects it first
        raise ConfigError(f"llm.backend: unknown backend {cfg.backend!r}")
    where = cfg.cache_dir or cache_dir
    if where is None:
        raise ConfigError("llm.cache_dir: no cache folder given")
    settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "max_image_pixels": cfg.max_image_pixels}
    return CachedBackend(backend, where, settings)
