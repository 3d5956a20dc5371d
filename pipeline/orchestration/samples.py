"""Sample videos for the pipeline's data stage (demo, tests): videos, their captions and their queries as files.

`data_builder.synthetic` makes videos whose content is known (one coloured shape per scene) with a caption per
scene and multiple-choice queries answerable in exactly one scene. Here they become what the data stage reads
from a real dataset, so that the rest of the pipeline cannot tell them apart:

    <samples>/videos/*.mp4        training videos (PeakClips, the training tasks)
    <samples>/captions.json       their captions as time spans, with chapters and a summary (imported by the
                                  data stage: the tiny random model cannot caption)
    <samples>/queries.jsonl       their queries (the data stage's user queries)
    <samples>/heldout/*.mp4       videos never shown to training
    <samples>/heldout.jsonl       their queries as held-out questions, each with the answer scene's time span
    <samples>/samples.json        what was generated (written last: its presence means "complete")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_builder.synthetic import make_sample_videos
from pipeline.core.config import SamplesSection
from pipeline.core.io import atomic_write_json, atomic_write_jsonl

MANIFEST = "samples.json"


def _captions_entry(video: Any) -> dict[str, Any]:
    scenes = [{"start_s": s.start_s, "end_s": s.end_s, "text": c} for s, c in zip(video.scenes, video.captions)]
    chapters = []
    for i in range(0, len(video.scenes), 2):  # chapters of two scenes, so the data stage needs no LLM for them
        group = video.scenes[i : i + 2]
        chapters.append({"start_s": group[0].start_s, "end_s": group[-1].end_s,
                         "text": " Then ".join(s.label for s in group) + "."})
    summary = "A video of " + ", then ".join(s.label for s in video.scenes) + "."
    return {"scenes": scenes, "chapters": chapters, "summary": summary}


def write_samples(out_dir: str | Path, cfg: SamplesSection) -> dict[str, Any]:
    """Generate the sample videos and their files (once: a complete folder with the same settings is kept)."""
    out = Path(out_dir).resolve()  # absolute video paths: the files are read from other folders and jobs
    manifest_path = out / MANIFEST
    settings = cfg.model_dump(mode="json")
    if manifest_path.is_file():
        done = json.loads(manifest_path.read_text())
        if done.get("settings") == settings:
            return done
    common = {
        "min_scenes": cfg.min_scenes, "max_scenes": cfg.max_scenes, "fps": cfg.fps, "size": (cfg.width, cfg.height),
        "min_scene_s": cfg.min_scene_s, "max_scene_s": cfg.max_scene_s, "whole_seconds": cfg.whole_seconds,
        "queries": cfg.queries, "barcode": cfg.barcode, "video_s": cfg.video_s, "landmark_color": cfg.landmark_color,
    }
    train = make_sample_videos(out / "videos", cfg.train_videos, seed=cfg.seed, **common)
    heldout = make_sample_videos(out / "heldout", cfg.heldout_videos, seed=cfg.seed + 7919, **common)

    atomic_write_json(out / "captions.json", {v.video_id: _captions_entry(v) for v in train})
    atomic_write_jsonl(
        out / "queries.jsonl",
        [{"video_id": v.video_id, "query_id": q.query_id, "text": q.text, "options": q.options, "answer": q.answer}
         for v in train for q in v.queries],
    )
    atomic_write_jsonl(
        out / "heldout.jsonl",
        [
            {
                "question_id": f"heldout_{q.query_id}",
                "video": str(v.path),
                "question": q.text,
                "options": q.options,
                "answer": q.answer,
                "task_type": "synthetic",
                "answer_span_s": [q.start_s, q.end_s],
                "num_frames": v.num_frames,
                "fps": v.fps,
            }
            for v in heldout
            for q in v.queries
        ],
    )
    manifest = {
        "settings": settings,
        "train_videos": [str(v.path) for v in train],
        "heldout_videos": [str(v.path) for v in heldout],
        "scenes": sum(len(v.scenes) for v in train + heldout),
        "queries": sum(len(v.queries) for v in train),
        "heldout_questions": sum(len(v.queries) for v in heldout),
    }
    atomic_write_json(manifest_path, manifest)
    return manifest
