"""A loopback stand-in for `vllm serve`, for testing the vLLM backend over real HTTP without a GPU.

It speaks the part of vLLM 0.33's OpenAI-compatible API that the backend uses, with vLLM's field names, validation
messages and response shape (vllm/entrypoints/openai/chat_completion/{protocol,serving}.py, vllm/sampling_params.py,
vllm/v1/sample/sampler.py), and answers with log-probs computed by the transformers backend's own model on the same
images:

- `POST /v1/chat/completions` with image data URLs, `max_completion_tokens` (or the deprecated `max_tokens`) = 1,
  `logprobs`, `top_logprobs` or `logprob_token_ids`, `allowed_token_ids`, `return_tokens_as_token_ids`, the
  sampling fields; `POST /tokenize`; `GET /health`, `/v1/models`, `/version`.
- log-probs: the full-vocabulary log-softmax of the next-token logits (`raw_logprobs`, vLLM's default), or, in
  `processed_logprobs` mode, of the logits after `allowed_token_ids`, temperature and top-k. The sampled token is
  drawn (seeded by `seed`) from the processed distribution.
- the entries of one position, in vLLM's order: the sampled token first, then the `logprob_token_ids` (all of them)
  or the top `top_logprobs` (the list is cut to `top_logprobs` entries, the sampled token included); tokens spelt
  `token_id:N` with `return_tokens_as_token_ids`.
- errors as vLLM's `{"error": {"message", "type", "param", "code"}}`: `top_logprobs` above `--max-logprobs`,
  `logprob_token_ids` without `logprobs` or longer than 128, out-of-vocabulary ids, `top_k < -1`.

`logprob_token_ids=False` plays an older server (vLLM < 0.31, e.g. 0.11), which ignores that field as it ignores
any unknown one.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from PIL import Image

MAX_LOGPROB_TOKEN_IDS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS


class RequestError(Exception):
    """A request vLLM would refuse with 400 (VLLMValidationError)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, code: int, err_type: str = "BadRequestError", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _decode_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """OpenAI messages -> messages with `{"type": "image"}` placeholders, and the decoded images in order."""
    images: list[Image.Image] = []
    out = []
    for msg in messages:
        parts = []
        content = msg["content"]
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                _, b64 = url.split(",", 1)
                img = Image.open(io.BytesIO(base64.b64decode(b64)))
                img.load()
                images.append(img)
                parts.append({"type": "image"})
            else:
                parts.append(part)
        out.append({"role": msg["role"], "content": parts})
    return out, images


class LoopbackVLLM:
    """`with LoopbackVLLM(backend) as srv: srv.url` -> http://127.0.0.1:PORT/v1 (a real socket, real HTTP)."""

    def __init__(
        self,
        backend: Any,
        *,
        logprobs_mode: str = "processed_logprobs",
        logprob_token_ids: bool = True,
        max_logprobs: int = 20,
        fail_first: int = 0,
    ) -> None:
        self.backend = backend  # a TransformersBackend: its model and processor compute the numbers
        self.logprobs_mode = logprobs_mode
        self.logprob_token_ids = logprob_token_ids  # False: an older vLLM that ignores the field
        self.max_logprobs = max_logprobs  # `--max-logprobs`
        self.fail_first = fail_first  # answer 503 to this many chat requests first (to test retries)
        self.version = "0.33.0" if logprob_token_ids else "0.11.0"
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> LoopbackVLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def tokenizer(self) -> Any:
        return self.backend.processor.tokenizer

    # ---- what vLLM's request model and SamplingParams would refuse -------------------------------------------

    def validate(self, body: dict[str, Any], vocab_size: int) -> dict[str, Any]:
        """The request as the engine sees it (unknown fields dropped), or RequestError with vLLM's message."""
        req = dict(body)
        if not self.logprob_token_ids:
            req.pop("logprob_token_ids", None)  # an unknown field: logged and ignored
        ids = req.get("logprob_token_ids")
        if ids and not req.get("logprobs"):
            raise RequestError("when using `logprob_token_ids`, `logprobs` must be set to true.", "logprob_token_ids")
        top = req.get("top_logprobs")
        if top is not None:
            if top < 0 and top != -1:
                raise RequestError("`top_logprobs` must be a positive value or -1.", "top_logprobs")
            if (top == -1 or top > 0) and not req.get("logprobs"):
                raise RequestError("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        top_k = req.get("top_k")
        if top_k is not None and top_k < -1:
            raise RequestError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        # ChatCompletionRequest.to_sampling_params: logprobs = top_logprobs unless logprob_token_ids is set
        num_logprobs = (top or 0) if req.get("logprobs") and not ids else None
        if num_logprobs == -1:
            num_logprobs = vocab_size
        if num_logprobs and num_logprobs > self.max_logprobs:
            raise RequestError(
                f"Requested sample logprobs of {num_logprobs}, which is greater than max allowed: {self.max_logprobs}",
                "logprobs",
            )
        if ids:
            if len(ids) > MAX_LOGPROB_TOKEN_IDS:
                raise RequestError(
                    f"Requested logprob_token_ids of length {len(ids)}, which is greater than max allowed: "
                    f"{MAX_LOGPROB_TOKEN_IDS}",
                    "logprob_token_ids",
                )
            bad = [i for i in ids if not 0 <= i < vocab_size]
            if bad:
                raise RequestError(
                    f"token_id(s) {bad} in logprob_token_ids contain out-of-vocab token ids. Vocabulary size: "
                    f"{vocab_size}",
                    "logprob_token_ids",
                )
        max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
        if max_tokens != 1:
            raise RequestError("the loopback server generates one token (max_completion_tokens=1) only")
        return req

    # ---- one chat completion ---------------------------------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages, images = _decode_messages(body["messages"])
        with self._lock:  # one forward at a time, as one engine would
            logits = self.backend.next_token_logits([messages], [images])[0].float()
        req = self.validate(body, logits.shape[-1])
        processed = logits.clone()
        if req.get("allowed_token_ids"):
            mask = torch.full_like(processed, float("-inf"))
            mask[req["allowed_token_ids"]] = 0.0
            processed = processed + mask
        temperature = req.get("temperature", 1.0)
        if temperature is not None and temperature > 1e-5:
            processed = processed / temperature
        top_k = req.get("top_k") or 0
        if top_k > 0:
            kth = torch.topk(processed, top_k).values[-1]
            processed = processed.masked_fill(processed < kth, float("-inf"))
        raw_lp = torch.log_softmax(logits, dim=-1)
        processed_lp = torch.log_softmax(processed, dim=-1)
        lp = processed_lp if self.logprobs_mode == "processed_logprobs" else raw_lp
        gen = torch.Generator().manual_seed(int(req.get("seed") or 0))
        sampled = int(torch.multinomial(processed_lp.exp(), 1, generator=gen))

        as_ids = bool(req.get("return_tokens_as_token_ids"))
        tok = self.tokenizer

        def name(i: int) -> str:
            return f"token_id:{i}" if as_ids else tok.decode([i])

        def entry(i: int) -> dict[str, Any]:
            token = name(i)
            return {"token": token, "logprob": max(float(lp[i]), -9999.0), "bytes": list(token.encode("utf-8"))}

        logprobs = None
        if req.get("logprobs"):
            ids = req.get("logprob_token_ids")
            if ids:
                order, limit = [sampled, *ids], None  # all of them (return_all)
            else:
                k = req.get("top_logprobs") or 0
                k = logits.shape[-1] if k == -1 else k
                order, limit = [sampled, *torch.topk(lp, k).indices.tolist()], k
            position = list(dict.fromkeys(order))  # a dict keyed by token id: the sampled token first
            top = [entry(i) for i in position[:limit]]
            decoded = tok.decode([sampled])
            content = {
                "token": name(sampled),
                "logprob": max(float(lp[sampled]), -9999.0),
                "bytes": list(decoded.encode("utf-8")),
                "top_logprobs": top,
            }
            logprobs = {"content": [content]}
        prompt_tokens = 1 + sum(len(str(p.get("text", ""))) for m in messages for p in m["content"])
        return {
            "id": f"chatcmpl-loopback-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": tok.decode([sampled]),
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": logprobs,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                    "weight_versions": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + 1, "completion_tokens": 1,
                      "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _send(self, code: int, obj: dict[str, Any] | None) -> None:
                data = b"" if obj is None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, None)
                elif self.path == "/version":
                    self._send(200, {"version": outer.version})
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "loopback", "object": "model"}]})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    ids = outer.tokenizer.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                    self._send(200, {"count": len(ids), "max_model_len": 32768, "tokens": ids, "token_strs": None})
                elif self.path == "/v1/chat/completions":
                    with outer._lock:
                        outer.requests.append(body)
                        fail = outer.fail_first > 0
                        outer.fail_first -= int(fail)
                    if fail:
                        self._send(503, error_body("The engine is busy", 503, "ServiceUnavailableError"))
                        return
                    try:
                        self._send(200, outer.chat(body))
                    except RequestError as exc:
                        self._send(400, error_body(str(exc), 400, param=exc.param))
                else:
                    self._send(404, {"detail": "Not Found"})

        return Handler
