"""Video I/O against its floors: decoding for training, idle readers, the reward client, the data build's LLM pipeline.

All four in one run, each against its physical floor and against the alternative it replaces, on generated H.264
video (data_builder.synthetic_long: 640x360, 30 fps, a keyframe every 250 frames, B-frames; `--minutes`, default
10: a 60-minute video takes about 10 minutes to generate here, and the ratios do not depend on the length once
T candidates fall in distinct keyframe groups, which T=64 on 10 minutes shows as T=256 does on an hour). Videos are
generated once into $KFRAMES_CACHE/bench-io. CPU figures are process CPU seconds (all threads), which stay
comparable on a shared machine; medians of `--repeats`.

1. **Training frames** (T=256 and T=64 candidates at the recipe's 100,352 pixels): the floor decodes each needed
   keyframe group once, in order, converting only the wanted frames (a minimal PyAV loop); against it, decord's
   `get_batch` (the reader before) and `VideoReader` (now). Then a data loader worker's cost per example at T=256:
   decoding the example's frames (`LazyFrames` without a store) against reading them from the data stage's frame
   store (`data_builder.frame_store`, written once per video: its cost, amortised over the video's examples, is
   reported too), and what the step can be with 4 workers at one example per step. The Qwen2.5-VL image processor
   (TRL's collator, which also runs in the worker) is timed beside it, for scale.
2. **Idle after a request**: CPU seconds and memory growth of the process in the `--idle-seconds` after frames were
   asked for in the middle of the video, for a decord reader left as it was (the reader before) and `VideoReader`.
   Floor: zero.
3. **Reward client** (one GRPO group: 8 completions x 32 frames at the downstream's 200,704 pixels, against a
   stand-in vLLM server with no latency, in another process): CPU per group of the reward function end to end,
   against the floor of decoding the union of the group's frames once, and against what it did before (decord's
   `get_batch` of the union, then PNG at PIL's default level for every frame of every request). PNG (lowest
   compression) and JPEG (quality 95) are compared by CPU, bytes and pixel error.
4. **Data build** against a stand-in annotating server answering in 50-350 ms (mean 200 ms), at `llm.batch_size`
   8 and 32, on the long video and on `--short-videos` PeakClips-shaped short videos (16 scenes, 3 queries, about
   67 requests each): requests/s against the ideal `batch_size / 0.2 s`, for the build now (several videos in
   flight, one shared pool, no per-chunk barrier), for one video at a time, and for a plain client that only sends
   requests (this machine's ceiling). The records of both builds must be identical.

    python benchmarks/bench_io.py [--minutes 10] [--repeats 3] [--out benchmarks/results/io.json]
"""

from __future__ import annotations

import argparse
import bisect
import gc
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_builder.synthetic_long import write_long_video  # noqa: E402
from data_builder.video import VideoReader, VideoTimeline, candidate_frames, target_size  # noqa: E402
from pipeline.core.io import atomic_write_json  # noqa: E402
from standin import Standin  # noqa: E402

TRAIN_PIXELS = 100_352  # configs/qwen2_5_vl_3b: frames.max_pixels
REWARD_PIXELS = 200_704  # configs/qwen2_5_vl_3b/grpo.yaml: reward.downstream.max_pixels
LATENCY = (0.05, 0.35)  # the stand-in annotator's jitter; mean 0.2 s
LONG = {"fps": 30, "size": (640, 360), "gop": 250, "scene_s": 20.0}
SHORT = {"duration_s": 24.0, "fps": 30, "size": (320, 180), "gop": 60, "scene_s": 1.5}  # 16 scenes


def cache_dir() -> Path:
    return Path(os.environ.get("KFRAMES_CACHE", ROOT / ".cache" / "kframes")) / "bench-io"


def long_video(minutes: float) -> Path:
    p = cache_dir() / f"long_{minutes:g}min_640x360_gop250.mp4"
    if not p.is_file():
        print(f"generating a {minutes:g}-minute video (once): {p}", flush=True)
        write_long_video(p, duration_s=60 * minutes, **LONG)
    return p


def short_videos(n: int) -> Path:
    folder = cache_dir() / "short"
    for i in range(n):
        p = folder / f"short_{i:03d}.mp4"
        if not p.is_file():
            write_long_video(p, seed=1000 + i, **SHORT)
    out = cache_dir() / f"short_{n}"  # a folder of exactly n videos (links), for the data build
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = out / f"short_{i:03d}.mp4"
        if not link.exists():
            link.symlink_to(folder / f"short_{i:03d}.mp4")
    return out


def cpu_of(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    gc.collect()
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c, time.perf_counter() - w, out


def median_cpu(fn: Callable[[], Any], repeats: int) -> float:
    return statistics.median(cpu_of(fn)[0] for _ in range(repeats))


# ----------------------------------------------------------------------------------------------------------
# Floors
# ----------------------------------------------------------------------------------------------------------


def floor_decode(path: Path, indices: list[int], size: tuple[int, int]) -> list[np.ndarray]:
    """The floor for exact frames: every needed keyframe group decoded once, in order, from its keyframe to the last
    frame wanted from it; only wanted frames converted (RGB at `size`). A minimal loop, nothing else."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in c.demux(s) if p.size]
    pts = sorted(t for t, _ in packets)
    pos = {t: i for i, t in enumerate(pts)}
    keys = sorted(pos[t] for t, k in packets if k)
    wanted = sorted(set(indices))
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        j, it, last = 0, None, -1
        while j < len(wanted):
            g = keys[bisect.bisect_right(keys, wanted[j]) - 1]
            if it is None or not (g - 1 <= last < wanted[j]):
                c.seek(pts[g], stream=s, backward=True)
                it = c.decode(s)
            for f in it:
                last = pos[f.pts]
                if last == wanted[j]:
                    out.append(f.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="BILINEAR"))
                    j += 1
                    if j == len(wanted) or keys[bisect.bisect_right(keys, wanted[j]) - 1] > last + 1:
                        break
    return out


def decord_decode(path: Path, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    """The reader before: decord at the output size, `get_batch`, then `seek(0)` (else it keeps decoding)."""
    import decord

    vr = decord.VideoReader(str(path), width=size[0], height=size[1], num_threads=1)
    frames = vr.get_batch(sorted(set(indices))).asnumpy()
    vr.seek(0)
    return frames


def reader_decode(path: Path, indices: list[int], max_pixels: int) -> np.ndarray:
    with VideoReader(path, max_pixels=max_pixels) as r:
        return r.get_frames(indices)


# ----------------------------------------------------------------------------------------------------------
# 1. Training frames
# ----------------------------------------------------------------------------------------------------------


def training_examples(path: Path, count: int, num_candidates: int) -> list[Any]:
    from pipeline.core.contracts import KeyClip, TrainingExample
    from pipeline.core.prompt import format_clips, render_selector_messages

    tl = VideoTimeline.read(path)
    idx, ts = candidate_frames(tl, num_candidates)
    out = []
    for q in range(count):
        clip = KeyClip(start_s=30.0 * (q + 1), end_s=30.0 * (q + 1) + 12.0, priority="P1")
        messages = render_selector_messages(ts, f"question {q}", duration_s=tl.duration_s)
        messages.append({"role": "assistant", "content": format_clips([clip])})
        out.append(TrainingExample(id=f"q{q}", task="sft2.key_clips", video=str(path), frame_indices=idx,
                                   timestamps_s=ts, messages=messages, num_frames=tl.num_frames,
                                   duration_s=tl.duration_s))
    return out


def bench_training(path: Path, repeats: int, work: Path) -> dict[str, Any]:
    from data_builder.frame_store import FrameStore
    from stages.batches import LazyFrames, sft_row

    n = VideoTimeline.read(path).num_frames
    w, h = target_size(*LONG["size"], max_pixels=TRAIN_PIXELS)
    out: dict[str, Any] = {"frame_size": [w, h]}
    for T in (256, 64):
        idx = candidate_frames(VideoTimeline.read(path), T)[0]
        floor = median_cpu(lambda idx=idx: floor_decode(path, idx, (w, h)), repeats)
        before = median_cpu(lambda idx=idx: decord_decode(path, idx, (w, h)), repeats)
        now = median_cpu(lambda idx=idx: reader_decode(path, idx, TRAIN_PIXELS), repeats)
        out[f"T{T}"] = {"frames": len(idx), "video_frames": n, "floor_cpu_s": floor, "decord_cpu_s": before,
                        "reader_cpu_s": now, "decord_vs_floor": before / floor, "reader_vs_floor": now / floor}
        print(f"  T={T}: floor {floor:.2f} CPU-s, decord {before:.2f} ({before / floor:.2f}x), "
              f"VideoReader {now:.2f} ({now / floor:.2f}x)", flush=True)

    # A data loader worker's cost per example at T=256 (one example per call, as TRL's loader asks).
    examples = training_examples(path, 3, 256)
    decoded = []
    for ex in examples[:2]:  # a fresh worker cache each time: the next example is usually another video's
        lazy = LazyFrames(sft_row, max_pixels=TRAIN_PIXELS, cache_size=1, num_candidates=256)
        decoded.append(cpu_of(lambda ex=ex, lazy=lazy: lazy.row(ex)))
    store = FrameStore(work / "frames")
    write_cpu, write_wall, meta = cpu_of(lambda: store.write(path, 256, TRAIN_PIXELS))
    lazy = LazyFrames(sft_row, max_pixels=TRAIN_PIXELS, cache_size=1, num_candidates=256, store_dir=work / "frames")
    stored = [cpu_of(lambda ex=ex: lazy.row(ex)) for ex in examples for _ in range(max(1, repeats))]
    assert lazy.stats["decoded"] == 0, "the store was not used"
    dec_cpu = statistics.median(c for c, _, _ in decoded)
    read_cpu, read_wall = statistics.median(c for c, _, _ in stored), statistics.median(w for _, w, _ in stored)
    row = stored[0][2]
    proc_cpu = processor_cpu(row["images"], repeats)
    per_worker = {"decode": 1 / dec_cpu, "store": 1 / max(read_cpu, 1e-9)}
    out["worker"] = {
        "decode_cpu_s_per_example": dec_cpu,
        "store_read_cpu_s_per_example": read_cpu,
        "store_read_wall_s_per_example": read_wall,
        "store_write_cpu_s_per_video": write_cpu,
        "store_bytes_per_video": meta["bytes"],
        "examples_per_s_per_worker": per_worker,
        "step_s_fed_by_4_workers": {k: 1 / (4 * v) for k, v in per_worker.items()},
        "processor_cpu_s_per_example": proc_cpu,
        "step_s_fed_by_4_workers_with_processor": {
            "decode": (dec_cpu + (proc_cpu or 0)) / 4, "store": (read_cpu + (proc_cpu or 0)) / 4},
        "decode_vs_floor_per_example": dec_cpu / out["T256"]["floor_cpu_s"],
    }
    print(f"  worker, T=256: decode {dec_cpu:.2f} CPU-s/example ({1 / dec_cpu:.2f}/s), store read {read_cpu:.3f} "
          f"({1 / max(read_cpu, 1e-9):.1f}/s); store write {write_cpu:.2f} CPU-s and {meta['bytes'] / 2**20:.0f} MiB "
          f"per video; processor {proc_cpu if proc_cpu is None else round(proc_cpu, 2)} CPU-s/example", flush=True)
    return out


def processor_cpu(images: list[Any], repeats: int) -> float | None:
    """CPU of the real Qwen2.5-VL image processor on one example's frames (what TRL's collator adds per example)."""
    folder = ROOT.parent / "shared" / "data" / "qwen2_5_vl_7b_instruct_processor"
    if not folder.is_dir():
        return None
    from transformers import AutoImageProcessor

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a data loader worker (PyTorch sets one thread there)
    try:
        proc = AutoImageProcessor.from_pretrained(folder)
        proc.size = {"shortest_edge": 4 * 28 * 28, "longest_edge": TRAIN_PIXELS}
        proc(images=images, return_tensors="pt")  # warm up (first calls allocate and initialise)
        return median_cpu(lambda: proc(images=images, return_tensors="pt"), repeats)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# 2. Idle after a request
# ----------------------------------------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_idle(path: Path, seconds: float) -> dict[str, Any]:
    import decord

    n = VideoTimeline.read(path).num_frames
    idx = list(range(n // 3, n // 2, max(1, n // 6 // 32)))[:32]  # mid-video, as a reward group asks
    out = {}
    for name in ("decord", "VideoReader"):
        if name == "decord":
            reader: Any = decord.VideoReader(str(path), num_threads=1)
            reader.get_batch(idx).asnumpy()
        else:
            reader = VideoReader(path)
            reader.get_frames(idx)
        gc.collect()
        c0, m0 = time.process_time(), rss_mib()
        time.sleep(seconds)
        out[name] = {"cpu_s": time.process_time() - c0, "rss_growth_mib": rss_mib() - m0}
        del reader
        gc.collect()
        print(f"  {name}: {out[name]['cpu_s']:.2f} CPU-s and +{out[name]['rss_growth_mib']:.0f} MiB in the "
              f"{seconds:g} s after the request", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------
# 3. Reward client
# ----------------------------------------------------------------------------------------------------------


def group_completions(duration_s: float, seed: int, n: int = 8) -> list[str]:
    from pipeline.core.contracts import KeyClip
    from pipeline.core.prompt import format_clips

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # the completions of a group agree roughly on where to look: clips near shared centres
        clips = []
        for c, prio in ((0.3, "P1"), (0.7, "P2")):
            centre = duration_s * (c + rng.normal(0, 0.05))
            span = float(rng.uniform(10, 40))
            clips.append(KeyClip(start_s=max(0.0, centre - span / 2), end_s=min(duration_s, centre + span / 2),
                                 priority=prio))
        out.append(format_clips(clips))
    return out


def bench_reward(path: Path, repeats: int) -> dict[str, Any]:
    import io

    from PIL import Image

    from pipeline.core.config import DownstreamSection, RewardSection
    from rewards.backends.vllm_backend import VLLMBackend, image_data_url
    from rewards.context import RewardContext
    from rewards.downstream import DownstreamLogprobReward

    tl = VideoTimeline.read(path)
    size = target_size(*LONG["size"], max_pixels=REWARD_PIXELS)
    rows = []
    with Standin("vllm") as server:
        cfg = RewardSection(k=32, downstream=DownstreamSection(backend="vllm", url=server.url, model="standin",
                                                               max_pixels=REWARD_PIXELS))
        backend = VLLMBackend(server.url, "standin", concurrency=8)
        backend.resolved_logprobs_api()  # letters and the probe, once per trainer: not per group
        kw0 = {"video": [str(path)] * 8, "question": ["q?"] * 8, "options": [["a", "b", "c", "d"]] * 8, "answer": [0] * 8}
        DownstreamLogprobReward(RewardContext(cfg=cfg, backend=backend))([None] * 8, group_completions(  # warm-up
            tl.duration_s, seed=-1 % 2**32), **kw0)
        for g in range(repeats):
            completions = group_completions(tl.duration_s, seed=g)
            kw = {"video": [str(path)] * 8, "question": ["q?"] * 8, "options": [["a", "b", "c", "d"]] * 8,
                  "answer": [0] * 8}
            ctx = RewardContext(cfg=cfg, backend=backend)  # cold: a group's video is usually new to the cache
            reward = DownstreamLogprobReward(ctx)
            now_cpu, now_wall, _ = cpu_of(lambda r=reward, c=completions, kw=kw: r([None] * 8, c, **kw))
            chosen = [reward.frame_indices(c, str(path))[0] for c in completions]
            union = sorted({i for idx in chosen for i in idx})
            floor = cpu_of(lambda union=union: floor_decode(path, union, size))[0]
            # before: decord get_batch of the union, PIL images, PNG (PIL default) for every frame of every request
            def before(union: list[int] = union, chosen: list[list[int]] = chosen) -> int:
                frames = decord_decode(path, union, size)
                images = {i: Image.fromarray(f) for i, f in zip(union, frames, strict=True)}
                sent = 0
                for idx in chosen:
                    for i in idx:
                        buf = io.BytesIO()
                        images[i].save(buf, format="PNG")
                        sent += len(buf.getvalue())
                return sent
            before_cpu, _, before_bytes = cpu_of(before)
            images = [Image.fromarray(f) for f in floor_decode(path, union[:16], size)]
            enc = {}
            for fmt in ("png", "jpeg"):
                c, _, urls = cpu_of(lambda fmt=fmt, ims=images: [image_data_url(im, fmt) for im in ims])
                enc[fmt] = {"cpu_s_per_frame": c / len(images), "bytes_per_frame": statistics.mean(len(u) for u in urls)}
            jpeg = [np.asarray(Image.open(io.BytesIO(_data(image_data_url(im, "jpeg"))))).astype(np.int16)
                    for im in images]
            err = np.concatenate([np.abs(j - np.asarray(im, dtype=np.int16)).ravel() for j, im in zip(jpeg, images)])
            mse = float(np.mean(err.astype(np.float64) ** 2))
            rows.append({"union_frames": len(union), "requested_frames": sum(len(i) for i in chosen),
                         "now_cpu_s": now_cpu, "now_wall_s": now_wall, "floor_cpu_s": floor,
                         "before_cpu_s": before_cpu, "before_png_bytes": before_bytes,
                         "now_png_bytes": len(union) * enc["png"]["bytes_per_frame"] * 3 / 4,
                         "encode": enc, "jpeg_psnr_db": 10 * np.log10(255**2 / mse), "jpeg_max_abs_error": int(err.max())})
            print(f"  group {g}: union {len(union)} of {rows[-1]['requested_frames']} frames; now {now_cpu:.2f} CPU-s, "
                  f"floor {floor:.2f}, before {before_cpu:.2f}", flush=True)
        backend.close()
    med = {k: statistics.median(r[k] for r in rows) for k in ("now_cpu_s", "floor_cpu_s", "before_cpu_s",
                                                              "union_frames", "before_png_bytes", "now_png_bytes")}
    enc = {fmt: {k: statistics.median(r["encode"][fmt][k] for r in rows) for k in ("cpu_s_per_frame", "bytes_per_frame")}
           for fmt in ("png", "jpeg")}
    return {**med, "now_vs_floor": med["now_cpu_s"] / med["floor_cpu_s"],
            "before_vs_floor": med["before_cpu_s"] / med["floor_cpu_s"], "encode": enc,
            "jpeg_psnr_db": statistics.median(r["jpeg_psnr_db"] for r in rows),
            "jpeg_max_abs_error": max(r["jpeg_max_abs_error"] for r in rows), "groups": rows}


def _data(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


# ----------------------------------------------------------------------------------------------------------
# 4. Data build
# ----------------------------------------------------------------------------------------------------------


def data_config(out: Path, url: str, batch: int, in_flight: int | None) -> Any:
    from pipeline.core.config import DataConfig

    return DataConfig.model_validate({
        "output_dir": str(out),
        "llm": {"backend": "openai", "model": "standin", "base_url": url, "batch_size": batch,
                "videos_in_flight": in_flight, "backoff_s": 0.1},
        "frames": {"store": False},  # the LLM pipeline alone, as before the frame store existed
        "captions": {"frames_per_scene": 4, "chapter_grouping": "llm"},
        "queries": {"source": "llm", "per_video": 3},
        "relevance": {"scorer": "llm"},
    })


def run_build(videos: Path, work: Path, batch: int, in_flight: int | None) -> dict[str, Any]:
    from data_builder.build import build_peakclips

    out = work / f"build-{videos.name}-{batch}-{in_flight}"
    shutil.rmtree(out, ignore_errors=True)
    with Standin("llm", latency=LATENCY) as server:
        cfg = data_config(out, server.url, batch, in_flight)
        cpu, wall, summary = cpu_of(lambda: build_peakclips(cfg, videos_dir=videos, out_dir=out, progress=False,
                                                            write_task_files=False))
        stats = server.stats()
    if summary.failed:
        raise SystemExit(f"data build failed: {summary.failed}")
    records = (out / "peakclips.jsonl").read_text()
    rate = stats["requests"] / wall
    return {"requests": stats["requests"], "wall_s": wall, "cpu_s": cpu, "requests_per_s": rate,
            "vs_ideal": rate / (batch / 0.2), "max_in_flight": stats["max_in_flight"], "records": records}


def plain_client(batch: int, requests: int) -> float:
    """What a client that only sends requests gets from the stand-in here: the machine's ceiling, as a ratio."""
    from data_builder.llm import LLMRequest, OpenAIBackend

    with Standin("llm", latency=LATENCY) as server:
        backend = OpenAIBackend(base_url=server.url, model="standin", batch_size=batch)
        reqs = [LLMRequest(prompt=f"You rate how relevant one scene of a video is {i}") for i in range(requests)]
        _, wall, _ = cpu_of(lambda: backend.generate(reqs))
        backend.close()
    return requests / wall / (batch / 0.2)


def bench_build(long_path: Path, shorts: Path, work: Path) -> dict[str, Any]:
    single = work / "long"
    single.mkdir(exist_ok=True)
    if not (single / long_path.name).exists():
        (single / long_path.name).symlink_to(long_path)
    from data_builder.scenes import segment_video
    from pipeline.core.config.data import ScenesSection

    # One video's build cannot start asking before its scenes are known, and its chapters, summary and queries are
    # three questions in a row: the best any scheduler can do is detection + 3 latencies + the rest at full rate.
    _, detect_wall, _ = cpu_of(lambda: segment_video(long_path, ScenesSection()))
    out: dict[str, Any] = {"long_video_scene_detection_wall_s": detect_wall}
    for name, videos in (("one long video", single), ("short videos", shorts)):
        for batch in (8, 32):
            now = run_build(videos, work, batch, None)
            seq = run_build(videos, work, batch, 1)
            plain = plain_client(batch, max(10 * batch, 200))
            same = now.pop("records") == seq.pop("records")
            row = {"now": now, "one_video_at_a_time": seq, "plain_client_vs_ideal": plain, "records_identical": same}
            if name == "one long video":
                bound = detect_wall + 3 * 0.2 + (now["requests"] - 3) * 0.2 / batch
                row["bound_vs_ideal"] = now["requests"] / bound / (batch / 0.2)
            out[f"{name}, batch {batch}"] = row
            print(f"  {name}, batch {batch}: {now['requests']} requests; now {now['vs_ideal']:.0%} of ideal "
                  f"({now['requests_per_s']:.1f}/s), one video at a time {seq['vs_ideal']:.0%}, plain client "
                  f"{plain:.0%}" + (f", dependency bound {row['bound_vs_ideal']:.0%}" if "bound_vs_ideal" in row else "")
                  + f"; records identical: {same}", flush=True)
            if not same:
                raise SystemExit("the pipelined build's records differ from the sequential build's")
    return out


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------


def table(res: dict[str, Any]) -> str:
    t, wk, rw = res["training"], res["training"]["worker"], res["reward"]
    lines = ["| measure | floor | before | now | before / floor | now / floor |", "|---|---|---|---|---|---|"]
    for T in (256, 64):
        r = t[f"T{T}"]
        lines.append(f"| decode T={T} candidates (CPU-s) | {r['floor_cpu_s']:.2f} | {r['decord_cpu_s']:.2f} | "
                     f"{r['reader_cpu_s']:.2f} | {r['decord_vs_floor']:.2f} | {r['reader_vs_floor']:.2f} |")
    lines.append(f"| reward group, client (CPU-s) | {rw['floor_cpu_s']:.2f} | {rw['before_cpu_s']:.2f} | "
                 f"{rw['now_cpu_s']:.2f} | {rw['before_vs_floor']:.2f} | {rw['now_vs_floor']:.2f} |")
    idle = res["idle"]
    lines.append(f"| after a request, {res['idle_seconds']:g} s idle (CPU-s, MiB) | 0, 0 | "
                 f"{idle['decord']['cpu_s']:.2f}, +{idle['decord']['rss_growth_mib']:.0f} | "
                 f"{idle['VideoReader']['cpu_s']:.2f}, +{idle['VideoReader']['rss_growth_mib']:.0f} | | |")
    lines += ["", "| data loader worker, T=256 | CPU-s / example | examples/s / worker | step fed by 4 workers (s) |",
              "|---|---|---|---|"]
    for k, label in (("decode", "decode the example's frames"), ("store", "read them from the frame store")):
        cpu = wk["decode_cpu_s_per_example"] if k == "decode" else wk["store_read_cpu_s_per_example"]
        lines.append(f"| {label} | {cpu:.3f} | {wk['examples_per_s_per_worker'][k]:.2f} | "
                     f"{wk['step_s_fed_by_4_workers'][k]:.3f} |")
    if wk["processor_cpu_s_per_example"] is not None:
        lines.append(f"| + Qwen2.5-VL image processor (collator) | +{wk['processor_cpu_s_per_example']:.2f} | | "
                     f"{wk['step_s_fed_by_4_workers_with_processor']['store']:.3f} (store) |")
    lines += ["", "| data build, stand-in server 50-350 ms | requests | now / ideal | one video at a time / ideal | "
              "plain client / ideal | dependency bound / ideal | records identical |", "|---|---|---|---|---|---|---|"]
    for key, r in res["build"].items():
        if not isinstance(r, dict):
            continue
        bound = f"{r['bound_vs_ideal']:.2f}" if "bound_vs_ideal" in r else ""
        lines.append(f"| {key} | {r['now']['requests']} | {r['now']['vs_ideal']:.2f} | "
                     f"{r['one_video_at_a_time']['vs_ideal']:.2f} | {r['plain_client_vs_ideal']:.2f} | {bound} | "
                     f"{'yes' if r['records_identical'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the generated long video")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--short-videos", type=int, default=24)
    p.add_argument("--only", action="append", choices=("training", "idle", "reward", "build"))
    p.add_argument("--out", default="benchmarks/results/io.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = args.only or ["training", "idle", "reward", "build"]
    path = long_video(args.minutes)
    res: dict[str, Any] = {"benchmark": "io", "video": {"path": path.name, "minutes": args.minutes, **LONG},
                           "repeats": args.repeats, "idle_seconds": args.idle_seconds}
    with tempfile.TemporaryDirectory(prefix="bench-io-") as tmp:
        work = Path(tmp)
        if "training" in parts:
            print("1. training frames", flush=True)
            res["training"] = bench_training(path, args.repeats, work)
        if "idle" in parts:
            print("2. idle after a request", flush=True)
            res["idle"] = bench_idle(path, args.idle_seconds)
        if "reward" in parts:
            print("3. reward client", flush=True)
            res["reward"] = bench_reward(path, args.repeats)
        if "build" in parts:
            print("4. data build", flush=True)
            res["build"] = bench_build(path, short_videos(args.short_videos), work)
    import av
    import decord

    res["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                      "load_avg_1min_at_end": os.getloadavg()[0], "pyav": av.__version__, "decord": decord.__version__}
    if len(parts) == 4:
        res["table"] = table(res)
        print(res["table"])
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    atomic_write_json(out, res)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
