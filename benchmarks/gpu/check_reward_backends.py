"""Do the two downstream backends give the same numbers on a real Qwen2.5-VL? (GPU node; not run on CPU CI.)

The CPU test (tests/test_rewards.py) checks the vLLM backend's request/response handling against a loopback server
that serves the transformers backend's own numbers. This script checks the real thing: the in-process transformers
backend and a real `vllm serve` of the same model, on the same frames and questions, in bf16 on one GPU.

    # a server you started yourself (see the README: --logprobs-mode processed_logprobs is required)
    python benchmarks/gpu/check_reward_backends.py --url http://localhost:8000/v1
    # or let the script start one from vLLM's own environment (requirements/vllm-server.txt)
    python benchmarks/gpu/check_reward_backends.py --vllm-bin ~/venvs/vllm/bin/vllm
    # -> benchmarks/results/reward_backends_gpu.json and a table

Questions come from generated videos with a known answer (data_builder.synthetic: "What shape is shown on the red
background?"), k frames each, uniformly or on the answer scene (so both confident and unsure answers are compared).
Pass: the option argmax agrees on >= 95% of the questions and the reward (tau = 1) differs by at most 0.05; bf16
kernels differ between transformers and vLLM (attention, fused norms), so exact equality is not expected on GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _wait_for(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"check_reward_backends: vllm serve exited with {proc.returncode}")
        try:
            if httpx.get(url.rstrip("/") + "/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(5)
    sys.exit(f"check_reward_backends: {url} did not come up within {timeout_s:.0f}s")


def build_requests(n_videos: int, k: int, max_pixels: int, seed: int):
    from data_builder.synthetic import make_sample_videos
    from data_builder.video import FrameCache, uniform_indices
    from rewards.backends import MCQRequest

    out = Path(tempfile.mkdtemp(prefix="kframes-reward-check-"))
    videos = make_sample_videos(out, n_videos, seed=seed, size=(640, 360))
    cache = FrameCache(max_videos=4)
    reqs, answers = [], []
    for v in videos:
        for q in v.queries:
            on_scene = [i for i in range(v.num_frames) if q.start_s <= i / v.fps < q.end_s]
            for idx in (uniform_indices(v.num_frames, k), [on_scene[j] for j in uniform_indices(len(on_scene), k)]):
                ts = cache.timestamps(v.path, idx)
                reqs.append(MCQRequest(cache.images(v.path, idx, max_pixels=max_pixels), ts, q.text, list(q.options)))
                answers.append(q.answer)
    return reqs, answers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct")
    ap.add_argument("--url", help="a running vLLM server (…/v1); else one is started with --vllm-bin")
    ap.add_argument("--vllm-bin", default="vllm", help="the `vllm` executable of vLLM's own environment")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=200704)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/reward_backends_gpu.json")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("check_reward_backends: needs a CUDA GPU (the CPU check is tests/test_rewards.py)")
    from rewards.backends.transformers_backend import TransformersBackend
    from rewards.backends.vllm_backend import VLLM_VERSION, VLLMBackend
    from rewards.downstream import logprob_reward

    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}/v1"
        cmd = [args.vllm_bin, "serve", args.model, "--port", str(args.port), "--logprobs-mode", "processed_logprobs",
               "--max-logprobs", "20", "--limit-mm-per-prompt", json.dumps({"image": max(args.k, 8)}),
               "--gpu-memory-utilization", "0.45", "--max-model-len", "32768"]
        print("starting:", " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd)
    try:
        _wait_for(url, proc, 1800)
        reqs, answers = build_requests(args.videos, args.k, args.max_pixels, args.seed)
        hf = TransformersBackend(args.model, device="cuda", dtype="bfloat16", batch_size=4)
        remote = VLLMBackend(url, args.model, timeout_s=300, concurrency=16)
        remote.option_logprobs(reqs[:2])  # warm-up (letters, CUDA graphs)
        hf.option_logprobs(reqs[:2])
        t0 = time.perf_counter()
        a = hf.option_logprobs(reqs)
        t_hf = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = remote.option_logprobs(reqs)
        t_vllm = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=120)

    dlp = [abs(x - y) for la, lb in zip(a, b) for x, y in zip(la, lb)]
    dr = [abs(logprob_reward(la, ans, 1.0) - logprob_reward(lb, ans, 1.0)) for la, lb, ans in zip(a, b, answers)]
    argmax = [max(range(len(la)), key=la.__getitem__) == max(range(len(lb)), key=lb.__getitem__) for la, lb in zip(a, b)]
    acc = lambda ls: sum(max(range(len(x)), key=x.__getitem__) == ans for x, ans in zip(ls, answers)) / len(ls)
    result = {
        "model": args.model, "vllm_written_for": VLLM_VERSION, "questions": len(reqs), "k": args.k,
        "max_abs_dlogp": max(dlp), "mean_abs_dlogp": sum(dlp) / len(dlp), "max_abs_dreward": max(dr),
        "argmax_agreement": sum(argmax) / len(argmax), "accuracy_transformers": acc(a), "accuracy_vllm": acc(b),
        "seconds_transformers": t_hf, "seconds_vllm": t_vllm, "speedup_vllm": t_hf / t_vllm,
        "gpu": torch.cuda.get_device_name(0),
    }
    result["pass"] = result["argmax_agreement"] >= 0.95 and result["max_abs_dreward"] <= 0.05
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| {'metric':<24} | {'value':>12} |\n|{'-' * 26}|{'-' * 14}|")
    for key, val in result.items():
        print(f"| {key:<24} | {val if not isinstance(val, float) else format(val, '.4g'):>12} |")
    return 0 if result["pass"] and not math.isnan(result["max_abs_dlogp"]) else 1


if __name__ == "__main__":
    sys.exit(main())
