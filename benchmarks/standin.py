"""Stand-in model servers for the I/O benchmark and its tests: real HTTP, fixed latency, deterministic answers.

- `llm`: an OpenAI-compatible chat server playing the PeakClips annotator. Each answer is a function of the prompt
  alone (a caption, a chapter grouping in JSON, a summary, multiple-choice questions in JSON, a 1-5 relevance score
  in JSON, chosen by the prompt's wording and a hash of it), so two builds that ask the same questions get the same
  answers, in whatever order they ask. Each request waits a latency drawn uniformly from `[lo, hi]` (seeded), like a
  busy server's jitter. `GET /stats` reports requests served, the most in flight at once, and how many prompts
  were asked more than once.
- `vllm`: enough of `vllm serve` for the reward client (`POST /tokenize`, `/v1/chat/completions` with
  `logprob_token_ids`): answers after `latency` seconds with log-probs that depend only on the prompt's text.

Each runs in its own process (`Standin(...)` starts it and reads its port), so its CPU time is not the client's.

    python benchmarks/standin.py llm --latency 0.05 0.35 --seed 0     # prints the port, serves until killed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WORDS = ("red", "green", "blue", "circle", "square", "car", "dog", "tree", "river", "table", "light", "door")


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _prompt_text(messages: list[dict[str, Any]]) -> tuple[str, int]:
    texts, images = [], 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                images += 1
                texts.append(hashlib.sha256(part["image_url"]["url"].encode()).hexdigest()[:16])  # what it shows
    return "\n".join(texts), images


def annotator_answer(prompt: str) -> str:
    """What the stand-in annotator answers to one of data_builder's prompts (a function of the prompt and its
    images only: scenes that look different get different captions)."""
    h = _h(prompt)
    if prompt.startswith("These ") and "frames come from one scene" in prompt:
        return f"A {WORDS[h % len(WORDS)]} and a {WORDS[(h >> 8) % len(WORDS)]} in this scene."
    if "Group consecutive scenes" in prompt:
        ids = [int(x) for x in re.findall(r"^Scene (\d+) \(", prompt, flags=re.M)]
        groups = [ids[i : i + 3] for i in range(0, len(ids), 3)]
        return json.dumps([{"start_scene": g[0], "end_scene": g[-1], "text": f"part {k}"} for k, g in enumerate(groups)])
    if "Describe this part of the video" in prompt:
        return f"A part about {WORDS[h % len(WORDS)]}."
    if "Summarise the whole video" in prompt:
        return f"A video about {WORDS[h % len(WORDS)]} and {WORDS[(h >> 8) % len(WORDS)]}."
    if "multiple-choice questions" in prompt:
        count = int(m.group(1)) if (m := re.search(r"Write (\d+) multiple-choice", prompt)) else 3
        n = int(m.group(1)) if (m := re.search(r"with (\d+) options", prompt)) else 4
        return json.dumps([
            {"question": f"When is the {WORDS[(h >> (4 * q)) % len(WORDS)]} shown (question {q})?",
             "options": [f"option {q}.{o}" for o in range(n)], "answer": (h >> q) % n}
            for q in range(count)
        ])
    if "You rate how relevant one scene" in prompt:
        return json.dumps({"score": 1 + h % 5, "reason": f"it shows the {WORDS[h % len(WORDS)]}"})
    return "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def serve(kind: str, latency: tuple[float, float], seed: int) -> None:
    rng = random.Random(seed)
    lock = threading.Lock()
    stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "repeated": 0}
    seen: dict[str, int] = {}  # prompts asked more than once: a client that should have asked once

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client's connection pool is reused

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, obj: Any) -> None:
            raw = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            with lock:
                self._send(dict(stats))

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.endswith("/tokenize"):
                self._send({"tokens": [1000 + ord(str(body.get("prompt", "A"))[0])]})
                return
            prompt, _ = _prompt_text(body.get("messages", []))
            with lock:
                wait = rng.uniform(*latency)
                seen[prompt] = seen.get(prompt, 0) + 1
                stats["repeated"] += seen[prompt] == 2
                stats["requests"] += 1
                stats["in_flight"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            try:
                time.sleep(wait)
                if kind == "llm":
                    self._send({"choices": [{"message": {"role": "assistant", "content": annotator_answer(prompt)}}]})
                    return
                ids = body.get("logprob_token_ids") or body.get("allowed_token_ids") or []
                h = _h(prompt)
                entries = [{"token": f"token_id:{tid}", "logprob": -0.1 - ((h >> (3 * k)) % 7) / 2.0}
                           for k, tid in enumerate(ids)]
                content = {**entries[0], "top_logprobs": entries} if entries else {"token": "x", "logprob": 0.0}
                self._send({"choices": [{"logprobs": {"content": [content]}}]})
            finally:
                with lock:
                    stats["in_flight"] -= 1

    httpd = _Server(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


class Standin:
    """`with Standin("llm", latency=(0.05, 0.35)) as s: s.url` -> http://127.0.0.1:PORT/v1, served by a subprocess."""

    def __init__(self, kind: str, *, latency: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> None:
        self.kind, self.latency, self.seed = kind, latency, seed
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()

    def __enter__(self) -> Standin:
        cmd = [sys.executable, str(Path(__file__).resolve()), self.kind, "--latency", str(self.latency[0]),
               str(self.latency[1]), "--seed", str(self.seed)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"stand-in {self.kind} server did not start: {line!r}")
        self.port = int(line)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("llm", "vllm"))
    p.add_argument("--latency", nargs=2, type=float, default=(0.2, 0.2), metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    serve(a.kind, (a.latency[0], a.latency[1]), a.seed)
