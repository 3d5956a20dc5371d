"""Training examples of the three stages from PeakClips records (SPEC section 3).

Every example shows the selector the same thing: the video's T candidate frames, each after its timestamp,
rendered by THE one function, `pipeline.core.prompt.render_selector_messages`; only the request and the target
differ by task.

- SFT1 (temporal grounding), mix configurable (`tasks.sft1_mix`):
  `caption_to_scene` (a scene caption -> `{"start", "end"}` of its scene), `scene_to_caption` (a span -> its
  caption), `relevance` (a query and a span -> `{"score", "reason"}` from the scene scores).
- SFT2: a query -> its key clips as the SPEC section 4 JSON (`pipeline.core.prompt.format_clips`); queries without
  any P1/P2 clip are skipped (an empty list is not a valid answer).
- GRPO: multiple-choice queries (question, options, answer); the reward asks the downstream model.

Train and validation are split BY VIDEO (the frames of a validation video are never trained on): videos are
ordered by a seeded hash of their id and the first `val_fraction` of them (at least one when there are two or
more) go to validation. The split is stable: the same ids and seed give the same split on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from data_builder.video import sample_candidates
from pipeline.core.contracts import PeakClipsRecord, TrainingExample
from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_write_jsonl
from pipeline.core.prompt import format_clips, render_selector_messages

STAGES = ("sft1", "sft2", "grpo")
SFT1_TASKS = ("caption_to_scene", "scene_to_caption", "relevance")

CandidatesFn = Callable[[str, int], tuple[list[int], list[float]]]


def default_candidates(path: str, num_candidates: int) -> tuple[list[int], list[float]]:
    idx, ts = sample_candidates(path, num_candidates)
    return [int(i) for i in idx], [round(float(t), 4) for t in ts]  # float32 stream times, to 0.1 ms


def split_videos(video_ids: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[set[str], set[str]]:
    """(train ids, val ids), split by video with a seeded hash order."""
    ids = sorted(set(video_ids), key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(1, n_val), len(ids) - 1)
    return set(ids[n_val:]), set(ids[:n_val])


def _score_json(score: float, reason: str) -> str:
    s = round(score, 1)
    return json.dumps({"score": int(s) if s == int(s) else s, "reason": reason}, ensure_ascii=False)


class _Builder:
    """Builds the examples of one video; the candidate frames are looked up once."""

    def __init__(self, rec: PeakClipsRecord, candidates: tuple[list[int], list[float]]) -> None:
        self.rec = rec
        self.indices, self.times = candidates
        self.vid = rec.video.video_id

    def example(self, ex_id: str, task: str, request: str, target: str | None, **extra: Any) -> TrainingExample:
        kind = task.split(".", 1)[1] if task.startswith("sft1.") else "key_clips"
        messages = render_selector_messages(
            self.times, request, task=kind, duration_s=self.rec.video.duration_s, options=extra.get("options")
        )
        if target is not None:
            messages.append({"role": "assistant", "content": target})
        return TrainingExample.model_validate(
            {
                "id": ex_id,
                "task": task,
                "video": self.rec.video.path,
                "frame_indices": self.indices,
                "timestamps_s": self.times,
                "messages": messages,
                "num_frames": self.rec.video.num_frames,
                "duration_s": self.rec.video.duration_s,
                **extra,
            }
        )

    def sft1(self) -> dict[str, list[TrainingExample]]:
        rec, out = self.rec, {t: [] for t in SFT1_TASKS}
        scenes = {s.index: s for s in rec.scenes}
        for cap in rec.captions:
            s = scenes[cap.scene_index]
            if not cap.text.strip():
                continue  # an empty caption teaches nothing
            span = json.dumps({"start": round(s.start_s, 1), "end": round(s.end_s, 1)})
            out["caption_to_scene"].append(
                self.example(f"{self.vid}:c2s:{s.index}", "sft1.caption_to_scene", cap.text, span)
            )
            out["scene_to_caption"].append(
                self.example(
                    f"{self.vid}:s2c:{s.index}", "sft1.scene_to_caption", f"{s.start_s:.1f}s to {s.end_s:.1f}s", cap.text
                )
            )
        for qa in rec.queries:
            for sc in qa.scores:
                s = scenes[sc.scene_index]
                request = f"{qa.query.text} Time span: {s.start_s:.1f}s to {s.end_s:.1f}s"
                out["relevance"].append(
                    self.example(
                        f"{self.vid}:rel:{qa.query.query_id}:{s.index}",
                        "sft1.relevance",
                        request,
                        _score_json(sc.score, sc.reason),
                    )
                )
        return out

    def sft2(self) -> list[TrainingExample]:
        return [
            self.example(
                f"{self.vid}:clips:{qa.query.query_id}",
                "sft2.key_clips",
                qa.query.text,
                format_clips(qa.clips),
                options=qa.query.options,
                target_clips=[c.model_dump() for c in qa.clips],
            )
            for qa in self.rec.queries
            if qa.clips
        ]

    def grpo(self) -> list[TrainingExample]:
        return [
            self.example(
                f"{self.vid}:mcq:{qa.query.query_id}",
                "grpo.mcq",
                qa.query.text,
                None,
                question=qa.query.text,
                options=qa.query.options,
                answer=qa.query.answer,
                target_clips=[c.model_dump() for c in qa.clips] or None,
            )
            for qa in self.rec.queries
            if qa.query.options and qa.query.answer is not None
        ]


def mix_sft1(
    pools: dict[str, list[TrainingExample]], mix: dict[str, float], *, max_examples: int | None, seed: int
) -> list[TrainingExample]:
    """Sample the SFT1 tasks in the proportions of `mix`, as many as the scarcest task allows.

    A task with weight 0 is left out; a task with no examples at all (e.g. `relevance` before any scoring) is
    left out and the others keep their relative proportions. Example order is shuffled (seeded).
    """
    unknown = set(mix) - set(SFT1_TASKS)
    if unknown:
        raise ConfigError(f"tasks.sft1_mix: unknown task(s) {sorted(unknown)}; expected {', '.join(SFT1_TASKS)}")
    weights = {t: w for t, w in mix.items() if w > 0 and pools.get(t)}
    if not weights:
        return []
    total_w = sum(weights.values())
    fracs = {t: w / total_w for t, w in weights.items()}
    n_total = min(len(pools[t]) / f for t, f in fracs.items())
    if max_examples is not None:
        n_total = min(n_total, max_examples)
    rng = random.Random(seed)
    out: list[TrainingExample] = []
    for t in SFT1_TASKS:
        if t in fracs:
            n = min(len(pools[t]), max(1, round(fracs[t] * n_total)))
            out.extend(rng.sample(pools[t], n))
    rng.shuffle(out)
    return out


def build_stage_examples(
    records: Iterable[PeakClipsRecord],
    stage: str,
    *,
    num_candidates: int,
    tasks_cfg: Any,
    candidates_fn: CandidatesFn = default_candidates,
) -> dict[str, list[TrainingExample]]:
    """{"train": [...], "val": [...]} for one stage."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    records = list(records)
    train_ids, val_ids = split_videos([r.video.video_id for r in records], tasks_cfg.val_fraction, tasks_cfg.seed)
    splits: dict[str, list[TrainingExample]] = {"train": [], "val": []}
    pools: dict[str, dict[str, list[TrainingExample]]] = {"train": {t: [] for t in SFT1_TASKS}, "val": {t: [] for t in SFT1_TASKS}}
    for rec in records:
        split = "val" if rec.video.video_id in val_ids else "train"
        b = _Builder(rec, candidates_fn(rec.video.path, num_candidates))
        if stage == "sft1":
            for t, exs in b.sft1().items():
                pools[split][t].extend(exs)
        elif stage == "sft2":
            splits[split].extend(b.sft2())
        else:
            splits[split].extend(b.grpo())
    if stage == "sft1":
        for i, split in enumerate(("train", "val")):
            cap = tasks_cfg.sft1_max_examples
            if cap is not None and split == "val":
                cap = max(1, round(cap * tasks_cfg.val_fraction))
            splits[split] = mix_sft1(pools[split], tasks_cfg.sft1_mix, max_examples=cap, seed=tasks_cfg.seed + i)
    return splits


def task_file(out_dir: str | os.PathLike[str], stage: str, split: str) -> Path:
    return Path(out_dir) / "tasks" / f"{stage}.{split}.jsonl"


def write_tasks(
    records: Sequence[PeakClipsRecord],
    out_dir: str | os.PathLike[str],
    stages: Sequence[str],
    *,
    num_candidates: int,
    tasks_cfg: Any,
    candidates_fn: CandidatesFn | None = None,
) -> dict[str, dict[str, int]]:
    """Write `<out_dir>/tasks/{stage}.{train,val}.jsonl` atomically; returns counts per stage and split (and
    per SFT1 task)."""
    cache: dict[str, tuple[list[int], list[float]]] = {}
    base = candidates_fn or default_candidates

    def cached(path: str, t: int) -> tuple[list[int], list[float]]:
        if path not in cache:
            cache[path] = base(path, t)
        return cache[path]

    counts: dict[str, dict[str, int]] = {}
    for stage in stages:
        splits = build_stage_examples(records, stage, num_candidates=num_candidates, tasks_cfg=tasks_cfg, candidates_fn=cached)
        counts[stage] = {}
        for split, exs in splits.items():
            counts[stage][split] = atomic_write_jsonl(task_file(out_dir, stage, split), exs)
            for ex in exs:
                key = f"{split}:{ex.task}"
                counts[stage][key] = counts[stage].get(key, 0) + 1
    return counts
