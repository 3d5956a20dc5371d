"""The annotating LLM's backends: the openai backend over REAL HTTP (a loopback server run by the test),
retries on timeouts / 5xx / malformed bodies, the API key never leaking, the disk cache, and the local
transformers backend with the tiny model."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from data_builder.llm import CachedBackend, LLMRequest, OpenAIBackend, TransformersBackend, make_llm
from pipeline.core.config import LLMSection
from pipeline.core.errors import BackendError, ConfigError

SECRET = "sk-test-0123456789-secret"


class FakeServer:
    """An OpenAI-compatible /v1/chat/completions whose behaviour is chosen by the prompt's first word."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                prompt = next(p["text"] for p in content if p["type"] == "text")
                with server.lock:
                    server.attempts[prompt] += 1
                    n = server.attempts[prompt]
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(prompt.split(":", 1)[0], prompt, n, content)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code: int, raw: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _answer(self, mode: str, prompt: str, n: int, content: list) -> None:
                images = sum(1 for p in content if p["type"] == "image_url")
                ok = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"echo {prompt} images={images}"}}]})
                if mode == "slow-once" and n == 1:
                    time.sleep(1.5)
                if mode == "gate":  # hold the request until 3 are in flight (or 3 s pass): shows concurrency
                    deadline = time.monotonic() + 3.0
                    while server.max_in_flight < 3 and time.monotonic() < deadline:
                        time.sleep(0.01)
                if (mode == "500-twice" and n <= 2) or mode == "always-500":
                    return self._send(500, b'{"error": "internal"}')
                if mode == "malformed" or (mode == "malformed-once" and n == 1):
                    return self._send(200, b"<html>not json at all")
                if mode == "nochoices":
                    return self._send(200, b'{"object": "chat.completion"}')
                if mode == "bad-request":
                    return self._send(400, b'{"error": "model not found"}')
                auth = (self.headers.get("Authorization") or "").encode()
                if mode == "echo-401":  # gateways echo the request's headers in their errors
                    return self._send(401, b'{"error": "bad key: ' + auth + b'"}')
                if mode == "echo-500":
                    return self._send(500, b'{"error": "upstream failed for ' + auth + b'"}')
                if mode == "echo-malformed":
                    return self._send(200, b"<html>" + auth + b"</html>")
                return self._send(200, ok.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture()
def backend(server, monkeypatch):
    monkeypatch.setenv("KFRAMES_TEST_KEY", SECRET)
    b = OpenAIBackend(
        base_url=server.url, model="served-model", api_key_env="KFRAMES_TEST_KEY", batch_size=3,
        timeout_s=0.5, max_retries=2, backoff_s=0.01,
    )
    yield b
    b.close()


def test_openai_batch_keeps_order_sends_images_and_key(server, monkeypatch):
    monkeypatch.setenv("KFRAMES_TEST_KEY", SECRET)
    backend = OpenAIBackend(base_url=server.url, model="served-model", api_key_env="KFRAMES_TEST_KEY",
                            batch_size=3, timeout_s=10, max_retries=0)
    img = Image.new("RGB", (64, 48), (200, 10, 10))
    reqs = [LLMRequest(prompt=f"gate:{i}", images=[img] * (i % 3)) for i in range(7)]
    out = backend.generate(reqs)
    backend.close()
    assert out == [f"echo gate:{i} images={i % 3}" for i in range(7)]
    assert set(server.auth) == {f"Bearer {SECRET}"}
    assert server.max_in_flight == 3  # batch_size requests in flight, never more
    part = next(p for r in server.requests for p in r["messages"][-1]["content"] if p["type"] == "image_url")
    assert part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert server.requests[0]["model"] == "served-model"


def test_timeout_is_retried(server, backend):
    assert backend.generate([LLMRequest(prompt="slow-once:a")]) == ["echo slow-once:a images=0"]
    assert server.attempts["slow-once:a"] == 2


def test_500_is_retried_then_succeeds(server, backend):
    assert backend.generate([LLMRequest(prompt="500-twice:a")]) == ["echo 500-twice:a images=0"]
    assert server.attempts["500-twice:a"] == 3


def test_persistent_500_fails_after_the_retries(server, backend):
    with pytest.raises(BackendError, match="HTTP 500") as exc:
        backend.generate([LLMRequest(prompt="always-500:a")])
    assert server.attempts["always-500:a"] == 3  # 1 + max_retries
    assert "3 attempts" in str(exc.value) and server.url in str(exc.value)


@pytest.mark.parametrize("mode", ["malformed", "nochoices"])
def test_malformed_body_is_retried_then_an_error(server, backend, mode):
    with pytest.raises(BackendError, match="malformed"):
        backend.generate([LLMRequest(prompt=f"{mode}:a")])
    assert server.attempts[f"{mode}:a"] == 3


def test_malformed_once_recovers(server, backend):
    assert backend.generate([LLMRequest(prompt="malformed-once:a")]) == ["echo malformed-once:a images=0"]


def test_client_error_is_not_retried(server, backend):
    with pytest.raises(BackendError, match="HTTP 400.*model not found"):
        backend.generate([LLMRequest(prompt="bad-request:a")])
    assert server.attempts["bad-request:a"] == 1


def test_api_key_never_in_errors_logs_or_cache(server, backend, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    messages = []
    for mode in ("always-500", "malformed", "bad-request"):
        with pytest.raises(BackendError) as exc:
            backend.generate([LLMRequest(prompt=f"{mode}:k")])
        messages.append(str(exc.value))
    cached = CachedBackend(backend, tmp_path / "cache", {"max_new_tokens": 8})
    cached.generate([LLMRequest(prompt="ok:k")])
    cache_text = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert caplog.records, "the retries should have been logged"
    for text in [*messages, caplog.text, cache_text]:
        assert SECRET not in text


def test_cache_makes_a_rerun_free(server, backend, tmp_path):
    img = Image.new("RGB", (32, 32), (0, 0, 255))
    reqs = [LLMRequest(prompt="ok:1", images=[img]), LLMRequest(prompt="ok:2"), LLMRequest(prompt="ok:1", images=[img])]
    first = CachedBackend(backend, tmp_path / "c", {"max_new_tokens": 8})
    out1 = first.generate(reqs)
    assert len(server.requests) == 2  # the repeated prompt is generated once
    assert first.misses == 2 and out1[0] == out1[2]

    again = CachedBackend(backend, tmp_path / "c", {"max_new_tokens": 8})  # a new process, same folder
    assert again.generate(reqs) == out1
    assert len(server.requests) == 2 and again.hits == 3 and again.misses == 0

    # a different image, different settings or a different model is a different question
    other_img = Image.new("RGB", (32, 32), (0, 255, 0))
    again.generate([LLMRequest(prompt="ok:1", images=[other_img])])
    CachedBackend(backend, tmp_path / "c", {"max_new_tokens": 16}).generate([LLMRequest(prompt="ok:2")])
    backend.identity = "openai:another-model"
    CachedBackend(backend, tmp_path / "c", {"max_new_tokens": 8}).generate([LLMRequest(prompt="ok:2")])
    assert len(server.requests) == 5


def test_make_llm_checks_the_config(tmp_path):
    with pytest.raises(ConfigError, match="base_url"):
        make_llm(LLMSection(backend="openai", model="m"), tmp_path)


def test_transformers_backend_tiny_model_batches_and_is_deterministic(tiny_model_dir, tmp_path):
    backend = TransformersBackend(str(tiny_model_dir), max_new_tokens=6, batch_size=2, backoff_s=0.0)
    img = Image.new("RGB", (80, 60), (10, 200, 10))
    reqs = [
        LLMRequest(prompt="Describe the scene.", images=[img, img]),
        LLMRequest(prompt="Group these scenes.", system="You annotate videos."),
        LLMRequest(prompt="Describe the scene.", images=[img]),
    ]
    out = backend.generate(reqs)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert backend.generate(reqs) == out  # greedy decoding: same prompt, same answer
    cached = CachedBackend(backend, tmp_path / "c", {"max_new_tokens": 6})
    assert cached.generate(reqs) == out and cached.misses == 3
    assert CachedBackend(backend, tmp_path / "c", {"max_new_tokens": 6}).generate(reqs) == out


@pytest.mark.parametrize("mode", ["echo-401", "echo-500", "echo-malformed"])
def test_a_server_echoing_the_key_never_gets_it_into_errors_logs_or_summaries(server, backend, tmp_path, caplog, mode):
    from pipeline.core.logs import setup_logging

    setup_logging()
    with caplog.at_level(logging.WARNING):
        with pytest.raises(BackendError) as err:
            backend.generate([LLMRequest(prompt=f"{mode}: q")])
    assert SECRET not in str(err.value) and SECRET not in caplog.text
    if mode != "echo-500":  # the body is part of these errors: the key in it is masked
        assert "***" in str(err.value)
