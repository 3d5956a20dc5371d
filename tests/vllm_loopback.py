"""A loopback stand-in for `vllm serve`, for testing the vLLM backend over real HTTP without a GPU.

It speaks the part of vLLM's OpenAI-compatible API the backend uses (`POST /v1/chat/completions` with image data
URLs, `max_tokens=1`, `logprobs`/`top_logprobs`, `allowed_token_ids`, `return_tokens_as_token_ids`; `POST /tokenize`;
`GET /health`) and answers with log-probs computed by the transformers backend's own model on the same images, the
way vLLM does: the full-vocabulary log-softmax of the next-token logits, restricted to `allowed_token_ids` first in
`processed_logprobs` mode and not in `raw_logprobs` mode (vLLM's default), then the top `top_logprobs` entries.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from PIL import Image


def _decode_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """OpenAI messages -> messages with `{"type": "image"}` placeholders, and the decoded images in order."""
    images: list[Image.Image] = []
    out = []
    for msg in messages:
        parts = []
        for part in msg["content"]:
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

    def __init__(self, backend: Any, *, logprobs_mode: str = "processed_logprobs", fail_first: int = 0) -> None:
        self.backend = backend  # a TransformersBackend: its model and processor compute the numbers
        self.logprobs_mode = logprobs_mode
        self.fail_first = fail_first  # answer 503 to this many chat requests first (to test retries)
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

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages, images = _decode_messages(body["messages"])
        with self._lock:  # one forward at a time, as one engine would
            logits = self.backend.next_token_logits([messages], [images])[0]
        if self.logprobs_mode == "processed_logprobs" and body.get("allowed_token_ids"):
            mask = torch.full_like(logits, float("-inf"))
            mask[body["allowed_token_ids"]] = 0.0
            logits = logits + mask
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, int(body.get("top_logprobs") or 0))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        tok = self.backend.processor.tokenizer

        def entry(i: int, lp: float) -> dict[str, Any]:
            name = f"token_id:{i}" if as_ids else tok.convert_ids_to_tokens(i)
            return {"token": name, "logprob": max(lp, -9999.0), "bytes": None}

        chosen = int(torch.argmax(logprobs))
        content = entry(chosen, float(logprobs[chosen]))
        content["top_logprobs"] = [entry(int(i), float(v)) for v, i in zip(top.values, top.indices)]
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": tok.decode([chosen])},
                 "logprobs": {"content": [content]}, "finish_reason": "length"}
            ],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    ids = outer.backend.processor.tokenizer.encode(body["prompt"], add_special_tokens=False)
                    self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": 32768})
                elif self.path == "/v1/chat/completions":
                    with outer._lock:
                        outer.requests.append(body)
                        fail = outer.fail_first > 0
                        outer.fail_first -= int(fail)
                    if fail:
                        self._send(503, {"error": "engine busy"})
                    elif body.get("max_tokens") != 1:
                        self._send(400, {"error": "loopback serves max_tokens=1 only"})
                    else:
                        self._send(200, outer.chat(body))
                else:
                    self._send(404, {"error": f"no route {self.path}"})

        return Handler
