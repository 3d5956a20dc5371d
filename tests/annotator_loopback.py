"""A loopback stand-in for `vllm serve` of the annotating model: the OpenAI chat API over real HTTP, no GPU.

It answers each of the data builder's prompts in the form its parser accepts: a scene caption naming the frames'
dominant colour, a chapter grouping of the listed scenes (two per chapter) as JSON, one-sentence chapter texts and
summaries, multiple-choice questions as JSON, and `{"score": n, "reason": ...}` relevance scores (5 when the query
shares a word with the scene's caption, else 1-3 from a hash of the prompt). The answers depend only on the request,
so two builds of the same videos get the same records whatever the order or sharding of their requests.

Like a server with a fixed batch, it serves at most `concurrency` requests at once, each taking `delay_s`; the rest
wait. `GET /v1/models` and `/health` answer as vLLM's do, and a request for another model is a 404. Requests whose
text holds the string in the file named by `$KFRAMES_LOOPBACK_FAIL_FILE` (while that file exists) get a 400, the way
a server refuses a request it cannot serve.

    python tests/annotator_loopback.py serve MODEL --port 8000 [--host 0.0.0.0] [--delay 0.2] [--concurrency 16]

takes `vllm serve`'s arguments (and ignores the ones it has no use for, e.g. --tensor-parallel-size), so a script
named `vllm` that runs it can stand in for vLLM in a Slurm job.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COLOURS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "red": (200, 30, 30),
    "green": (30, 160, 40), "blue": (30, 50, 200), "yellow": (230, 210, 30), "orange": (240, 130, 20),
    "purple": (110, 30, 140), "cyan": (50, 210, 220), "brown": (120, 70, 30),
}
_WORD = re.compile(r"[a-z]{4,}")
_COMMON = {"what", "which", "where", "when", "happens", "shown", "scene", "video", "frames", "first", "there", "this",
           "that", "with", "from", "does", "moving", "slowly", "background"}


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _colour(data_url: str) -> str:
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB").resize((8, 8))
    pixels = list(img.getdata())
    mean = [sum(p[c] for p in pixels) / len(pixels) for c in range(3)]
    return min(COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOURS[n], mean, strict=True)))


def answer(prompt: str, images: list[str]) -> str:
    """The annotator's answer to one prompt of data_builder (captions, relevance, queries)."""
    if prompt.startswith("These ") and "frames come from one scene" in prompt:
        colours = [_colour(u) for u in images]
        main = max(set(colours), key=colours.count) if colours else "gray"
        span = re.search(r"\(([\d.]+)s to ([\d.]+)s\)", prompt)
        when = f" from {span.group(1)}s to {span.group(2)}s" if span else ""
        return f"A mostly {main} picture{when}, shown in {len(images)} frames."
    if "Group consecutive scenes" in prompt:
        ids = [int(m) for m in re.findall(r"^Scene (\d+) \(", prompt, flags=re.M)]
        chapters = [{"start_scene": ids[i], "end_scene": ids[min(i + 1, len(ids) - 1)], "text": f"Part {i // 2 + 1}."}
                    for i in range(0, len(ids), 2)]
        return json.dumps(chapters)
    if "Describe this part of the video" in prompt:
        return "A part of the video with " + str(len(re.findall(r"^Scene ", prompt, flags=re.M))) + " scenes."
    if "Summarise the whole video" in prompt:
        return f"A video in {len(re.findall(r'^- ', prompt, flags=re.M)) or 'several'} parts."
    if "multiple-choice questions" in prompt:
        n = int(re.search(r"Write (\d+) multiple-choice", prompt).group(1))
        k = int(re.search(r"with (\d+) options", prompt).group(1))
        return json.dumps([{"question": f"Which colour dominates part {i + 1}?",
                            "options": [name for name in list(COLOURS)[:k]], "answer": (i + _digest(prompt)) % k}
                           for i in range(n)])
    if prompt.startswith("You rate how relevant one scene"):
        query = re.search(r"^Query: (.*)$", prompt, flags=re.M)
        scene = re.search(r"^Scene \([^)]*\): (.*)$", prompt, flags=re.M)
        q_words = set(_WORD.findall((query.group(1) if query else "").lower())) - _COMMON
        s_words = set(_WORD.findall((scene.group(1) if scene else "").lower())) - _COMMON
        shared = sorted(q_words & s_words)
        score = 5 if shared else 1 + _digest(prompt) % 3
        reason = f"it shows {shared[0]}" if shared else "nothing the query asks about"
        return json.dumps({"score": score, "reason": reason})
    return "OK."


class LoopbackAnnotator:
    """The server, in a thread of this process (tests) or as the main loop (`serve_forever`, a Slurm job)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, model: str = "loopback-annotator",
                 delay_s: float = 0.0, concurrency: int = 64) -> None:
        self.model = model
        self.delay_s = delay_s
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, obj: Any) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    return self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                if self.path == "/health":
                    return self._send(200, {})
                return self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if body.get("model") != server.model:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                      "type": "NotFoundError", "code": 404}})
                content = body["messages"][-1]["content"]
                parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
                prompt = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
                images = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
                fail = server.fail_marker()
                with server._slots:
                    with server._lock:
                        server.requests += 1
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    try:
                        time.sleep(server.delay_s)
                        if fail and fail in prompt:
                            return self._send(400, {"error": {"message": "refused by the test", "code": 400}})
                        text = answer(prompt, images)
                    finally:
                        with server._lock:
                            server.in_flight -= 1
                self._send(200, {"id": "cmpl-loopback", "object": "chat.completion", "model": server.model,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}]})

        ThreadingHTTPServer.request_queue_size = 256
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host if host != '0.0.0.0' else '127.0.0.1'}:{self.port}/v1"
        self._thread: threading.Thread | None = None

    @staticmethod
    def fail_marker() -> str | None:
        path = os.environ.get("KFRAMES_LOOPBACK_FAIL_FILE")
        if path and os.path.isfile(path):
            return open(path, encoding="utf-8").read().strip() or None
        return None

    def start(self) -> LoopbackAnnotator:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="annotator_loopback", description="a loopback stand-in for `vllm serve`")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=float(os.environ.get("KFRAMES_LOOPBACK_DELAY", "0")))
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("KFRAMES_LOOPBACK_CONCURRENCY", "64")))
    args, _ = parser.parse_known_args(argv)  # vLLM's own flags (--tensor-parallel-size, ...) are accepted and unused
    server = LoopbackAnnotator(host=args.host, port=args.port, model=args.model, delay_s=args.delay,
                               concurrency=args.concurrency)
    print(f"annotator loopback: serving {args.model} on {args.host}:{server.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
