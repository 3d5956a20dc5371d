"""The data stage as a job array: videos per minute with 1, 2 and 4 shards, against the ideal.

Setting: a synthetic corpus (data_builder.synthetic: 60 videos of 3-5 coloured-shape scenes, 160x120 at 10 fps,
two multiple-choice queries each) annotated by a loopback stand-in for the vLLM server (tests/annotator_loopback.py)
that answers every request in 200 ms and serves at most 8 at once, as a server with a fixed batch would. Each video
asks it for a caption per scene, a chapter grouping, a summary and a relevance score per scene and query, in rounds
(each round one batch of up to `llm.batch_size` requests in flight), so one shard waits on the annotator most of the
time and more shards overlap their waits, until the annotator's concurrency is the limit.

Each shard count runs the real thing: on a local Slurm (tests/slurm/start_local_slurm.sh, when it can be started),
`kframes submit data` with `stages.data.array.tasks` = N, the array's tasks and its merge; otherwise N local
processes `kframes run --only data --shard i/N`, then `--merge-shards N`. Every run starts from an empty folder
(no LLM answer cached).

Reported per shard count: videos per minute while every shard works (the videos finished between the moment the
last shard finished its first video and the moment the first shard finished its last: what a long build sustains
once its tasks are up), the ideal (N x the one-shard rate, capped
by the annotator: concurrency / delay requests per second over the requests per video measured) and the scaling
efficiency (measured / ideal); and, end to end, videos per minute from the first task's start to the last video
written (Python's start-up and imports included, ~6 s per task here: a fixed cost that a 60-video corpus shows and
a 6,700-video one does not) and the wall time from submission to the merged outputs. The two cores of a small
machine are shared by the shards' decoding and Python.

    python benchmarks/bench_scale.py [--videos 60] [--shards 1,2,4] [--delay 0.2] [--concurrency 8]
                                     [--mode auto|slurm|local] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from annotator_loopback import LoopbackAnnotator  # noqa: E402

from data_builder.synthetic import make_sample_videos  # noqa: E402
from pipeline.core.io import atomic_write_json  # noqa: E402

START = ROOT / "tests/slurm/start_local_slurm.sh"
STOP = ROOT / "tests/slurm/stop_local_slurm.sh"
MODEL = "bench-annotator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_corpus(folder: Path, n: int) -> tuple[Path, Path, int]:
    videos = make_sample_videos(folder / "videos", n, seed=11, min_scenes=3, max_scenes=5)
    queries = folder / "queries.jsonl"
    with queries.open("w") as fh:
        for v in videos:
            for q in v.queries:
                fh.write(json.dumps({"video_id": v.video_id, "query_id": q.query_id, "text": q.text,
                                     "options": q.options, "answer": q.answer}) + "\n")
    return folder / "videos", queries, sum(len(v.scenes) for v in videos)


def write_pipeline(folder: Path, videos: Path, queries: Path, url: str, out: Path) -> Path:
    """The tiny pipeline whose data stage asks the annotator for everything (captions, chapters, summary, scores)."""
    pipe = yaml.safe_load((ROOT / "configs/pipeline/tiny.yaml").read_text())
    pipe.pop("samples")
    pipe["output_dir"] = str(out)
    pipe["stages"] = {k: str(ROOT / v) for k, v in pipe["stages"].items()}
    pipe["overrides"]["data"] = [
        f"videos_dir={videos}", "llm.backend=openai", f"llm.model={MODEL}", f"llm.base_url={url}",
        "llm.batch_size=8", "llm.max_image_pixels=3136", "captions.frames_per_scene=2",
        "captions.chapter_grouping=llm", "queries.source=user", f"queries.file={queries}", "relevance.scorer=llm",
    ]
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(pipe))
    return path


def steady_rate(finished: dict[str, float], shards: int) -> float | None:
    """Videos per second while all shards work: those finished after the last shard's first video and up to the
    first shard's last one, over that window (None when the shards never all worked at once)."""
    order = sorted(finished)  # the build's video order; shard i builds order[i::shards]
    per_shard = [sorted(finished[v] for v in order[i::shards]) for i in range(shards)]
    start = max(times[0] for times in per_shard)
    end = min(times[-1] for times in per_shard)
    inside = sum(1 for t in finished.values() if start < t <= end)
    return inside / (end - start) if end > start and inside else None


def start_slurm(state: Path) -> dict[str, str] | None:
    env = {**os.environ, "KFRAMES_SLURMCTLD_PORT": str(free_port()), "KFRAMES_SLURMD_PORT": str(free_port())}
    env.pop("OMP_NUM_THREADS", None)  # nproc honours it: the node would declare one CPU
    try:
        proc = subprocess.run(["bash", str(START), str(state)], env=env, capture_output=True, text=True, timeout=600,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"local Slurm: {exc}", file=sys.stderr)
        return None
    if proc.returncode != 0:
        print(f"local Slurm unavailable: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        subprocess.run(["bash", str(STOP), str(state)], capture_output=True, timeout=60, check=False)
        return None
    env["SLURM_CONF"] = proc.stdout.strip().splitlines()[-1]
    return env


def _job(job: str, env: dict[str, str]) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True,
                         check=False).stdout
    return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines()]


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def run_slurm(pipeline: Path, shards: int, folder: Path, env: dict[str, str]) -> float:
    """Submit the data stage as an array of `shards` tasks and its merge; return the first task's start."""
    profile = {
        "pipeline": str(pipeline), "partition": "debug", "time": "01:00:00", "nodes": 1, "gpus_per_node": 0,
        "mem": None, "exclusive": False, "python": sys.executable, "extra_sbatch": ["--oversubscribe"],
        "env": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        "stages": {"data": {"array": {"tasks": shards, "parallel": shards, "merge_cpus": 1, "merge_mem": None}}},
        "annotator": {"serve": False},
    }
    path = folder / f"profile-{shards}.yaml"
    path.write_text(yaml.safe_dump(profile))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "submit", "data", "--profile", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    ids = dict(re.findall(r"^(\S+)\s+job (\d+)", proc.stderr, flags=re.M))
    while True:
        merge = _job(ids["data-merge"], env)
        state = merge[0].get("JobState") if merge else "?"
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.5)
    tasks = _job(ids["data-array"], env)
    if state != "COMPLETED" or any(t.get("JobState") != "COMPLETED" for t in tasks):
        raise SystemExit(f"the {shards}-task array did not complete: merge {state}, tasks "
                         f"{[t.get('JobState') for t in tasks]} (logs in {folder})")
    return min(_epoch(t["StartTime"]) for t in tasks)


def run_local(pipeline: Path, shards: int) -> float:
    """`shards` processes `kframes run --only data --shard i/N`, then the merge; return when they started."""
    cmd = [sys.executable, "-m", "pipeline.cli.main", "run", "--config", str(pipeline), "--only", "data"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/{shards}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(shards)]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"a shard failed: {err[-2000:]}")
    subprocess.run([*cmd, "--merge-shards", str(shards)], cwd=ROOT, env=env, capture_output=True, timeout=600,
                   check=True)
    return t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--delay", type=float, default=0.2, help="the annotator's seconds per request")
    ap.add_argument("--concurrency", type=int, default=8, help="requests the annotator serves at once")
    ap.add_argument("--mode", choices=["auto", "slurm", "local"], default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scale.json"))
    args = ap.parse_args()
    counts = [int(x) for x in args.shards.split(",")]

    work = Path(tempfile.mkdtemp(prefix="kframes-bench-scale-"))
    server = LoopbackAnnotator(model=MODEL, delay_s=args.delay, concurrency=args.concurrency).start()
    env = start_slurm(work / "slurm") if args.mode in ("auto", "slurm") else None
    if args.mode == "slurm" and env is None:
        raise SystemExit("--mode slurm: the local Slurm could not be started")
    mode = "slurm" if env is not None else "local"
    try:
        t = time.perf_counter()
        videos, queries, scenes = write_corpus(work, args.videos)
        print(f"corpus: {args.videos} videos, {scenes} scenes ({time.perf_counter() - t:.1f}s); runs on {mode}",
              file=sys.stderr)
        rows: list[dict[str, Any]] = []
        for n in counts:
            out = work / f"run-{n}"
            pipeline = write_pipeline(work, videos, queries, server.url, out)
            asked, t_submit = server.requests, time.time()
            started = run_slurm(pipeline, n, work, env) if env is not None else run_local(pipeline, n)
            done = time.time()
            finished = {p.stem: p.stat().st_mtime for p in (out / "data" / "videos").glob("*.json")}
            if len(finished) != args.videos:
                raise SystemExit(f"{n} shard(s): {len(finished)} of {args.videos} videos built")
            build_s = max(finished.values()) - started
            steady = steady_rate(finished, n) or len(finished) / build_s
            rows.append({
                "shards": n,
                "videos": len(finished),
                "requests": server.requests - asked,
                "videos_per_min": round(60 * steady, 1),
                "end_to_end_videos_per_min": round(60 * len(finished) / build_s, 1),
                "build_s": round(build_s, 2),
                "wall_s": round(done - t_submit, 2),
            })
            print(f"{n} shard(s): {rows[-1]}", file=sys.stderr)
    finally:
        server.close()
        if env is not None:
            subprocess.run(["bash", str(STOP), str(work / "slurm")], capture_output=True, timeout=60, check=False)

    one = next(r for r in rows if r["shards"] == 1)["videos_per_min"] if 1 in counts else None
    per_video = sum(r["requests"] for r in rows) / sum(r["videos"] for r in rows)
    cap = args.concurrency / args.delay / per_video * 60  # videos per minute the annotator can serve at most
    for r in rows:
        ideal = min(r["shards"] * one, cap) if one else None
        r["ideal_videos_per_min"] = round(ideal, 1) if ideal else None
        r["efficiency"] = round(r["videos_per_min"] / ideal, 3) if ideal else None
    result = {
        "setting": {"videos": args.videos, "delay_s": args.delay, "concurrency": args.concurrency, "mode": mode,
                    "llm_batch_size": 8, "requests_per_video": round(per_video, 2),
                    "annotator_cap_videos_per_min": round(cap, 1), "machine": platform.platform(),
                    "cpus": os.cpu_count()},
        "runs": rows,
    }
    atomic_write_json(args.out, result)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nData build as a job array ({mode}): {args.videos} videos, annotator {args.delay * 1000:.0f} ms per "
          f"request, {args.concurrency} at once ({per_video:.1f} requests per video: at most {cap:.0f} videos/min)")
    print("| shards | videos/min | ideal | efficiency | end to end videos/min | build (s) | wall (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        eff = f"{100 * r['efficiency']:.0f}%" if r["efficiency"] is not None else "-"
        print(f"| {r['shards']} | {r['videos_per_min']:.1f} | {r['ideal_videos_per_min'] or '-'} | {eff} | "
              f"{r['end_to_end_videos_per_min']:.1f} | {r['build_s']:.1f} | {r['wall_s']:.1f} |")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
