"""Video I/O that keeps a GPU busy: keyframe-group decoding, idle readers, the frame store, the reward client's
encoding, and the data build's shared request pool.

The videos are H.264 with B-frames and a keyframe every 30-60 frames (data_builder.synthetic_long), so that decoding
order matters as it does for real footage; each frame carries its number in a barcode, so every test can check that
frame i is the picture written as frame i. Timings are the benchmark's business (benchmarks/bench_io.py); these tests
check behaviour: what is decoded, how often, what is sent, and that nothing changes in the results.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_builder.frame_store import FrameStore, store_beside
from data_builder.synthetic_long import read_frame_number, write_long_video
from data_builder.video import FrameCache, VideoReader, VideoTimeline, candidate_frames, target_size

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from standin import Standin  # noqa: E402

WIDTH = 160


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 30 fps, 160x96, a keyframe every 60 frames (10 groups of 60), B-frames."""
    return write_long_video(tmp_path_factory.mktemp("gop") / "gop.mp4", duration_s=20, fps=30, size=(WIDTH, 96),
                            gop=60, scene_s=5, seed=4)


def _numbers(frames: np.ndarray) -> list[int]:
    return [read_frame_number(f, WIDTH) for f in frames]


# ---------------------------------------------------------------------------------------------------
# Keyframe-group decoding
# ---------------------------------------------------------------------------------------------------


def test_frames_are_exact_and_each_needed_group_is_decoded_once_in_order(gop_video: Path) -> None:
    wanted = [599, 5, 130, 131, 125, 5, 400, 61]  # any order, duplicates, two in one group, a group's keyframe
    with VideoReader(gop_video) as reader:
        frames = reader.get_frames(wanted)
        dec = reader._decoder
        assert dec is not None  # the PyAV path served it (no fallback)
        assert _numbers(frames) == wanted
        # groups needed: [0,60) [60,120) [120,180) [360,420) [540,600), one seek each; 130 and 131 follow 125
        assert dec.seeks == 5
        floor = (5 + 1) + (61 - 60 + 1) + (131 - 120 + 1) + (400 - 360 + 1) + (599 - 540 + 1)
        assert dec.decoded == floor  # nothing decoded beyond the last wanted frame of each group
        # a later request further on continues the group it is in instead of seeking back to its keyframe
        seeks, decoded = dec.seeks, dec.decoded
        assert _numbers(reader.get_frames([0])) == [0] and dec.seeks == seeks + 1  # backwards: one seek
        assert _numbers(reader.get_frames([10, 20])) == [10, 20] and dec.seeks == seeks + 1
        assert dec.decoded == decoded + 1 + 20


def test_pixels_match_decords_and_resizing_and_rotation_agree(shared_data: Path, gop_video: Path) -> None:
    import decord

    for path in (gop_video, shared_data / "videos" / "goldeneye-vfr-drop3.mp4",
                 shared_data / "videos" / "issue-134-rotate.mp4", shared_data / "videos" / "issue-236-split-copy.mkv"):
        with VideoReader(path) as reader:
            n = len(reader)
            idx = sorted({0, n // 3, n // 2, n - 1})
            ours = reader.get_frames(idx)
            assert reader._decoder is not None, path.name
        vr = decord.VideoReader(str(path))
        ref = vr.get_batch(idx).asnumpy()
        vr.seek(0)
        assert ours.shape == ref.shape and np.array_equal(ours, ref), path.name  # the same frames, bit for bit
        if "rotate" in path.name:
            continue  # decord cannot scale this one at small sizes (tests/test_video.py checks its orientation)
        with VideoReader(path, max_pixels=240 * 136) as reader:  # (decord's scaler breaks on some tiny sizes)
            small = reader.get_frames(idx)
            w, h = reader.frame_size
        vr = decord.VideoReader(str(path), width=w, height=h)
        ref = vr.get_batch(idx).asnumpy().astype(int)
        vr.seek(0)
        assert small.shape == ref.shape and np.abs(small.astype(int) - ref).mean() < 3, path.name  # same scaler kind


def test_a_file_pyav_cannot_index_like_decord_falls_back_and_the_fallback_reader_stops(gop_video: Path) -> None:
    with VideoReader(gop_video) as reader:
        reader._decoder = None  # as after `_NoKeyframeDecoding`
        assert _numbers(reader.get_frames([300, 12])) == [300, 12]
        assert reader._decord is not None  # told to go back to the start after the call (the slow test measures it)


@pytest.mark.slow
def test_readers_are_idle_after_a_request(tmp_path: Path) -> None:
    """CPU and memory of the process in the 10 s after frames were asked for mid-video: nothing, for every cached
    reader (FrameCache, which the reward context and the selector use, and the decord fallback). A decord reader
    left as it was (no `seek(0)`) is measured the same way, so the test would see the problem if it came back."""
    import decord

    from pipeline.core.config import RewardSection
    from rewards.context import RewardContext

    video = write_long_video(tmp_path / "long.mp4", duration_s=90, fps=30, size=(320, 180), gop=250, scene_s=20)
    mid = list(range(900, 1400, 20))

    def after_request(window_s: float = 10.0) -> tuple[float, float]:
        import gc

        gc.collect()
        rss0 = int(Path("/proc/self/statm").read_text().split()[1])
        cpu0 = time.process_time()
        time.sleep(window_s)
        rss1 = int(Path("/proc/self/statm").read_text().split()[1])
        return time.process_time() - cpu0, (rss1 - rss0) * 4096 / 2**20

    raw = decord.VideoReader(str(video), num_threads=1)
    raw.get_batch(mid).asnumpy()
    raw_cpu, raw_mib = after_request(4.0)  # the hazard: usually seconds of CPU and GBs (how much varies by run)
    del raw

    cache = FrameCache()
    cache.images(video, mid, max_pixels=100_352)
    ctx = RewardContext(cfg=RewardSection())
    ctx.video(str(video))
    ctx.frames.images(str(video), mid[::2], max_pixels=200_704)
    fallback = VideoReader(video)
    fallback._decoder = None
    fallback.get_frames(mid)
    cpu, mib = after_request()
    assert cpu < 0.1 and mib < 20, {"ours": (cpu, mib), "a decord reader left as is": (raw_cpu, raw_mib)}
    fallback.close()


# ---------------------------------------------------------------------------------------------------
# The frame store and the data loader
# ---------------------------------------------------------------------------------------------------


def _example(video: Path, num_candidates: int) -> object:
    from pipeline.core.contracts import TrainingExample
    from pipeline.core.prompt import render_selector_messages

    tl = VideoTimeline.read(video)
    idx, ts = candidate_frames(tl, num_candidates)
    messages = render_selector_messages(ts, "when?", duration_s=tl.duration_s)
    messages.append({"role": "assistant", "content": "[]"})
    return TrainingExample(id="e", task="sft2.key_clips", video=str(video), frame_indices=idx, timestamps_s=ts,
                           messages=messages, num_frames=tl.num_frames, duration_s=tl.duration_s)


def test_frame_store_holds_the_candidates_and_the_loader_reads_them_without_decoding(gop_video: Path,
                                                                                   tmp_path: Path) -> None:
    from stages.batches import LazyFrames, sft_row

    video = tmp_path / "v.mp4"
    shutil.copy(gop_video, video)
    store = FrameStore(tmp_path / "frames")
    meta = store.write(video, 24, 64 * 48)
    stored = store.get(video, 24, 64 * 48)
    w, h = target_size(WIDTH, 96, max_pixels=64 * 48)
    assert stored is not None and stored.frames.shape == (24, h, w, 3) and meta["bytes"] == 24 * h * w * 3
    with VideoReader(video, max_pixels=64 * 48) as reader:
        idx, _ = candidate_frames(VideoTimeline.of(reader), 24)
        assert stored.indices == idx and np.array_equal(np.asarray(stored.frames), reader.get_frames(idx))
    assert store.get(video, 16, 64 * 48) is None and store.get(video, 24, 32 * 24) is None  # keyed by T and size

    # The data loader: the same row from the store as from decoding, and the store's row decodes nothing.
    example = _example(video, 40)  # the data stage's T; the recipe's is 24
    from_store = LazyFrames(sft_row, max_pixels=64 * 48, cache_size=1, num_candidates=24, store_dir=tmp_path / "frames")
    decoded = LazyFrames(sft_row, max_pixels=64 * 48, cache_size=1, num_candidates=24)
    a, b = from_store.row(example), decoded.row(example)
    assert a["messages"] == b["messages"] and len(a["images"]) == 24
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["images"], b["images"], strict=True))
    assert from_store.stats == {"store": 1, "decoded": 0} and from_store._cache is None  # no reader was opened

    # A changed video is not trusted: its entry is rewritten, not read.
    time.sleep(0.01)
    video.write_bytes(video.read_bytes())
    assert FrameStore(tmp_path / "frames").get(video, 24, 64 * 48) is None
    store.write(video, 24, 64 * 48)
    assert FrameStore(tmp_path / "frames").get(video, 24, 64 * 48) is not None


def test_the_data_build_writes_the_store_and_training_finds_it(tmp_path: Path) -> None:
    from data_builder.build import build_peakclips
    from pipeline.core.config import DataConfig, FramesSection
    from stages.batches import dataset_from_file

    videos = tmp_path / "videos"
    for i in range(3):
        write_long_video(videos / f"v{i}.mp4", duration_s=6, fps=10, size=(WIDTH, 96), gop=20, scene_s=10, seed=i)
    cfg = DataConfig.model_validate({
        "output_dir": str(tmp_path / "out"), "frames": {"num_candidates": 8, "max_pixels": 3136},
        "captions": {"import_file": str(_captions(videos, tmp_path))}, "queries": {"source": "user",
        "file": str(_queries(videos, tmp_path))}, "relevance": {"scorer": "lexical"}, "tasks": {"val_fraction": 0.3},
    })
    summary = build_peakclips(cfg, videos_dir=videos, out_dir=tmp_path / "out", progress=False)
    assert summary.complete and not summary.failed
    metas = sorted((tmp_path / "out" / "frames").glob("*.json"))
    w, h = target_size(WIDTH, 96, max_pixels=3136)
    assert len(metas) == 3 and all(json.loads(p.read_text())["bytes"] == 8 * w * h * 3 for p in metas)
    train = tmp_path / "out" / "tasks" / "sft2.train.jsonl"
    assert store_beside(train) == tmp_path / "out" / "frames"
    ds = dataset_from_file(str(train), FramesSection(num_candidates=8, max_pixels=3136, min_pixels=3136),
                           task_prefix="sft2.")
    row = ds[0]
    assert len(row["images"]) == 8 and row["images"][0].size == (w, h)
    lazy = ds._format_kwargs["transform"]  # the LazyFrames of this dataset
    assert lazy.store_dir == str(tmp_path / "out" / "frames") and lazy.stats == {"store": 1, "decoded": 0}


def _captions(videos: Path, tmp: Path) -> Path:
    caps = {p.stem: {"scenes": [{"start_s": 0.0, "end_s": 6.0, "text": "a red circle"}], "summary": "circles",
                     "chapters": [{"start_s": 0.0, "end_s": 6.0, "text": "circles"}]} for p in videos.glob("*.mp4")}
    (tmp / "captions.json").write_text(json.dumps(caps))
    return tmp / "captions.json"


def _queries(videos: Path, tmp: Path) -> Path:
    lines = [json.dumps({"video_id": p.stem, "text": "when is the red circle shown?", "options": ["a", "b"],
                         "answer": 0}) for p in sorted(videos.glob("*.mp4"))]
    (tmp / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "queries.jsonl"


# ---------------------------------------------------------------------------------------------------
# The reward client
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (48, 64)])
def test_png_is_lossless(shape: tuple[int, int]) -> None:
    from rewards.backends.vllm_backend import png_bytes

    rgb = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(rgb)))), rgb)


def test_a_group_encodes_each_distinct_frame_once_and_reads_video_facts_once(gop_video: Path, monkeypatch) -> None:
    from pipeline.core.config import DownstreamSection, RewardSection
    from pipeline.core.contracts import KeyClip
    from pipeline.core.prompt import format_clips
    from rewards.backends import vllm_backend
    from rewards.context import RewardContext
    from rewards.downstream import DownstreamLogprobReward

    encoded: list[int] = []
    real = vllm_backend.png_bytes
    monkeypatch.setattr(vllm_backend, "png_bytes", lambda rgb: (encoded.append(1), real(rgb))[1])
    opened: list[str] = []
    real_reader = VideoReader.__init__

    def counting_reader(self, path, **kw):
        opened.append(str(path))
        real_reader(self, path, **kw)

    monkeypatch.setattr(VideoReader, "__init__", counting_reader)
    with Standin("vllm") as server:
        cfg = RewardSection(k=8, downstream=DownstreamSection(backend="vllm", url=server.url, model="m",
                                                              max_pixels=64 * 48))
        backend = vllm_backend.VLLMBackend(server.url, "m", concurrency=4)
        ctx = RewardContext(cfg=cfg, backend=backend)
        reward = DownstreamLogprobReward(ctx)
        clips = [format_clips([KeyClip(start_s=2.0 + c, end_s=8.0 + c, priority="P1")]) for c in (0, 0, 1, 2)]
        kw = {"video": [str(gop_video)] * 4, "question": ["q"] * 4, "options": [["a", "b"]] * 4, "answer": [0] * 4}
        rewards = reward([None] * 4, clips, **kw)
        chosen = [reward.frame_indices(c, str(gop_video))[0] for c in clips]
        backend.close()
    assert len(rewards) == 4 and all(-1 < r < 1 for r in rewards)
    union = {i for idx in chosen for i in idx}
    assert len(encoded) == len(union) < sum(len(i) for i in chosen)  # shared frames encoded once per group
    assert rewards[0] == rewards[1]  # the same frames, the same answer
    assert opened == [str(Path(gop_video).resolve())]  # one reader for facts and frames, opened once
    assert ctx.video(str(gop_video)) is ctx.video(str(gop_video))


# ---------------------------------------------------------------------------------------------------
# The data build's request pool
# ---------------------------------------------------------------------------------------------------


def test_one_pool_refills_each_slot_as_its_answer_arrives(tmp_path: Path) -> None:
    """No per-chunk barrier: while the slowest request of the first batch_size is still out, later ones are sent."""
    from data_builder.llm import CachedBackend, LLMRequest, OpenAIBackend

    with Standin("llm", latency=(0.02, 0.6), seed=3) as server:
        backend = OpenAIBackend(base_url=server.url, model="m", batch_size=4, backoff_s=0.0)
        cached = CachedBackend(backend, tmp_path / "cache", {})
        sent: list[float] = []
        real_one = backend._one

        def timed(req):
            sent.append(time.perf_counter())
            return real_one(req)

        backend._one = timed
        answers = cached.generate([LLMRequest(prompt=f"You rate how relevant one scene {i}") for i in range(24)])
        stats = server.stats()
        backend.close()
    assert len(answers) == 24 and stats["requests"] == 24 and stats["max_in_flight"] == 4
    assert cached.misses == 24 and len(list((tmp_path / "cache").rglob("*.json"))) == 24
    # with barriers, requests 4..7 would all leave together after the slowest of 0..3 (within a few ms); refilled
    # slots leave as each answer arrives, spread over the latencies' range (0.02-0.6 s)
    later = sorted(sent)[4:8]
    assert later[-1] - later[0] > 0.05


def test_callers_asking_the_same_prompt_at_once_share_one_request(tmp_path: Path) -> None:
    from data_builder.llm import CachedBackend, LLMRequest, OpenAIBackend

    with Standin("llm", latency=(0.2, 0.2)) as server:
        backend = OpenAIBackend(base_url=server.url, model="m", batch_size=4)
        cached = CachedBackend(backend, tmp_path / "cache", {})
        reqs = [LLMRequest(prompt=f"Summarise the whole video {i}") for i in range(3)]
        out: list[list[str]] = []
        threads = [threading.Thread(target=lambda: out.append(cached.generate(reqs))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.stats()["requests"] == 3
        backend.close()
    assert out[0] == out[1] == out[2]


def test_pipelined_build_gives_the_sequential_builds_records(tmp_path: Path) -> None:
    """Several videos in flight against a server with latency jitter: the same PeakClips records (and the same
    number of questions asked) as one video at a time, and the pool full while it runs."""
    from data_builder.build import build_peakclips
    from pipeline.core.config import DataConfig

    videos = tmp_path / "videos"
    for i in range(5):
        write_long_video(videos / f"v{i}.mp4", duration_s=8, fps=10, size=(WIDTH, 96), gop=20, scene_s=2, seed=10 + i)

    def build(in_flight: int) -> tuple[str, dict[str, int]]:
        out = tmp_path / f"out{in_flight}"
        with Standin("llm", latency=(0.01, 0.12), seed=in_flight) as server:
            cfg = DataConfig.model_validate({
                "output_dir": str(out), "frames": {"num_candidates": 8, "max_pixels": 3136},
                "llm": {"backend": "openai", "model": "m", "base_url": server.url, "batch_size": 4,
                        "videos_in_flight": in_flight, "backoff_s": 0.0},
                "captions": {"frames_per_scene": 2}, "queries": {"source": "llm", "per_video": 2},
                "relevance": {"scorer": "llm"}, "tasks": {"val_fraction": 0.3},
            })
            summary = build_peakclips(cfg, videos_dir=videos, out_dir=out, progress=False)
            stats = server.stats()
        assert summary.complete and not summary.failed and summary.built == [f"v{i}" for i in range(5)]
        return (out / "peakclips.jsonl").read_text(), stats

    sequential, seq_stats = build(1)
    pipelined, stats = build(3)
    assert pipelined == sequential
    assert stats["requests"] == seq_stats["requests"] and stats["max_in_flight"] == 4
    assert all(json.loads(line)["queries"] for line in pipelined.splitlines())  # the records are not empty
