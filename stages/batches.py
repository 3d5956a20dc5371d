"""From task files to trainer datasets whose frames are read (or decoded) when a batch is built.

A task file line (`pipeline.core.contracts.TrainingExample`) references frames by video path and indices; its
`messages` are already rendered by `pipeline.core.prompt.render_selector_messages` with one `{"type": "image"}`
placeholder per frame. The dataset keeps only the JSON of each example, and a `datasets` transform
(`LazyFrames`) supplies the frames when the trainer's data loader asks for a batch: from the data build's frame
store (`data_builder.frame_store`: each video's T candidates decoded once, read here without decoding) when it has
them at the recipe's T and max_pixels, else decoded through `data_builder.video.FrameCache`. The rows it returns
are what TRL's trainers expect of a vision dataset (`images` + `messages` for SFT; a GRPO `row_fn` returns
`prompt` and the question instead), so TRL's own collators do the tokenising and the label masking.

Both SFT and GRPO use this module: the stage supplies a `row_fn(example, images) -> dict`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_builder.frame_store import FrameStore, StoredFrames, store_beside
from data_builder.video import FrameCache, VideoTimeline, candidate_frames, uniform_indices
from pipeline.core.contracts import ChatTurn, TrainingExample
from pipeline.core.errors import DataError
from pipeline.core.io import read_jsonl_models
from pipeline.core.prompt import format_timestamp

RowFn = Callable[[TrainingExample, list[Any]], dict[str, Any]]


def load_examples(path: str | os.PathLike[str], *, task_prefix: str, require_answer: bool) -> list[TrainingExample]:
    """Read and check a stage's task file.

    Every line must be a valid TrainingExample (else DataError `FILE:LINE: problem`), of this stage's tasks
    (`task_prefix`, e.g. "sft2."; a config pointing at another stage's file is a common slip), and, when
    `require_answer`, end with the assistant's answer (the SFT target). The number of image placeholders must
    match the number of frames, or the processor fails later with a far less helpful message.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such task file (the data stage writes it: `kframes data build --config ...`)")
    examples: list[TrainingExample] = read_jsonl_models(path, TrainingExample)
    if not examples:
        raise DataError(f"{path}: no examples")
    for n, ex in enumerate(examples, start=1):
        where = f"{path}: example {n} ({ex.id})"
        if not ex.task.startswith(task_prefix):
            raise DataError(f"{where}: task {ex.task!r} is not a {task_prefix.rstrip('.')} task; wrong task file?")
        if require_answer and (not ex.messages or ex.messages[-1].role != "assistant"):
            raise DataError(f"{where}: the last message must be the assistant's answer (the training target)")
        placeholders = count_image_placeholders(ex)
        if placeholders != len(ex.frame_indices):
            raise DataError(
                f"{where}: {placeholders} image placeholders in messages but {len(ex.frame_indices)} frame_indices"
            )
    return examples


def count_image_placeholders(example: TrainingExample) -> int:
    return sum(
        1
        for turn in example.messages
        if isinstance(turn.content, list)
        for part in turn.content
        if part.get("type") == "image"
    )


def _frame_block(parts: list[dict[str, Any]]) -> tuple[int, int] | None:
    """[start, end) of the `<t=...s>` + image pairs in a rendered user turn (render_selector_messages)."""
    starts = [i for i in range(len(parts) - 1)
              if parts[i].get("type") == "text" and str(parts[i].get("text", "")).startswith("<t=")
              and parts[i + 1].get("type") == "image"]
    return (starts[0], starts[-1] + 2) if starts else None


def limit_frames(example: TrainingExample, num_candidates: int, timeline: VideoTimeline | None = None) -> TrainingExample:
    """The example over its video's T candidate frames (`candidate_frames`), with the prompt rendered for them.

    One task build serves recipes with different T (the tiny CPU recipe uses 16, the paper 256). With the video's
    `timeline`, the frames are exactly the ones inference shows for this T (the midpoints of T segments of the video,
    which are not a subset of the data stage's T), and each `<t=...s>` + image pair of the user turn is replaced,
    so the prompt is what the renderer produces for those frames. Without a timeline (token counting only), the
    example keeps T of its own frames, chosen uniformly: the same count, the same prompt length.
    """
    n = len(example.frame_indices)
    if not n or (timeline is None and n <= num_candidates):
        return example
    if timeline is not None:
        indices, times = candidate_frames(timeline, num_candidates)
    else:
        keep = uniform_indices(n, num_candidates)
        indices = [example.frame_indices[i] for i in keep]
        times = [example.timestamps_s[i] for i in keep]
    return over_frames(example, indices, times)


def over_frames(example: TrainingExample, indices: list[int], times: list[float]) -> TrainingExample:
    """The example with its frames replaced by `indices` (shown at `times`), the prompt's frame block re-rendered."""
    if list(indices) == list(example.frame_indices):
        return example
    messages = []
    for turn in example.messages:
        block = _frame_block(turn.content) if isinstance(turn.content, list) else None
        if block is None:
            messages.append(turn.model_dump())
            continue
        a, b = block
        frames = [p for t in times for p in ({"type": "text", "text": format_timestamp(t)}, {"type": "image"})]
        messages.append({"role": turn.role, "content": [*turn.content[:a], *frames, *turn.content[b:]]})
    return example.model_copy(
        update={
            "frame_indices": list(indices),
            "timestamps_s": [float(x) for x in times],
            "messages": [ChatTurn.model_validate(m) for m in messages],
        }
    )


def sft_row(example: TrainingExample, images: list[Any]) -> dict[str, Any]:
    """An SFT row for TRL: the conversation (with the assistant's answer) and its frames."""
    return {"messages": [m.model_dump() for m in example.messages], "images": images}


class LazyFrames:
    """A `datasets` transform: JSON-encoded examples in, rows with frames out.

    Frames come from the frame store when it holds the example's video at this T and max_pixels (a memory-mapped
    read: no decoding), else from one FrameCache per process (data loader workers each build their own on first
    use), so the frames of a video that several examples share are decoded once while it stays in the cache.
    `stats` counts examples served from the store and decoded, per process.
    """

    def __init__(
        self,
        row_fn: RowFn,
        *,
        max_pixels: int | None,
        cache_size: int,
        num_candidates: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.row_fn = row_fn
        self.max_pixels = max_pixels
        self.cache_size = cache_size
        self.num_candidates = num_candidates
        self.store_dir = str(store_dir) if store_dir is not None else None
        self._cache: FrameCache | None = None
        self._store: FrameStore | None = None
        self.stats = {"store": 0, "decoded": 0}

    @property
    def cache(self) -> FrameCache:
        if self._cache is None:
            self._cache = FrameCache(max_videos=max(self.cache_size, 1))
        return self._cache

    def _stored(self, example: TrainingExample) -> StoredFrames | None:
        if self.store_dir is None or self.max_pixels is None or not example.frame_indices:
            return None
        if self._store is None:
            self._store = FrameStore(self.store_dir)
        return self._store.get(example.video, self.num_candidates or len(example.frame_indices), self.max_pixels)

    def row(self, example: TrainingExample) -> dict[str, Any]:
        """The row of one example: over its video's T candidates, with their frames."""
        from PIL import Image

        stored = self._stored(example)
        if stored is not None:
            if self.num_candidates is not None:
                example = over_frames(example, stored.indices, stored.timestamps_s)  # the same candidate rule
            rows = stored.rows(list(example.frame_indices))
            if rows is not None:
                self.stats["store"] += 1
                return self.row_fn(example, [Image.fromarray(np.array(stored.frames[r])) for r in rows])
        if self.num_candidates is not None and example.frame_indices:
            timeline = self.cache.timeline(example.video, max_pixels=self.max_pixels)
            example = limit_frames(example, self.num_candidates, timeline)
        self.stats["decoded"] += 1
        return self.row_fn(example, self.cache.images(example.video, example.frame_indices, max_pixels=self.max_pixels))

    def __call__(self, batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        rows = [self.row(TrainingExample.model_validate_json(raw)) for raw in batch["example"]]
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}

    def __getstate__(self) -> dict[str, Any]:  # workers start with an empty cache, not a copy of decoded frames
        return {**self.__dict__, "_cache": None, "_store": None}


def build_dataset(
    examples: Sequence[TrainingExample],
    row_fn: RowFn = sft_row,
    *,
    num_candidates: int | None = None,
    max_pixels: int | None = None,
    cache_size: int = 8,
    store_dir: str | os.PathLike[str] | None = None,
):
    """A `datasets.Dataset` of the examples whose rows (`row_fn`'s keys) are built with their frames on access
    (from the frame store at `store_dir` where it has them, else decoded).

    Train with `remove_unused_columns=False`: the stored column (`example`) is not what the trainer reads.
    """
    from datasets import Dataset

    ds = Dataset.from_dict({"example": [ex.model_dump_json() for ex in examples]})
    return ds.with_transform(
        LazyFrames(row_fn, max_pixels=max_pixels, cache_size=cache_size, num_candidates=num_candidates,
                   store_dir=store_dir)
    )


def dataset_from_file(path: str, frames: Any, *, task_prefix: str, row_fn: RowFn = sft_row, require_answer: bool = True):
    """`load_examples` + `build_dataset` with a FramesSection's T, max_pixels and cache size, and the frame store
    of the data build that wrote the task file (`frames.store`; used where it has the videos at this T and size)."""
    examples = load_examples(path, task_prefix=task_prefix, require_answer=require_answer)
    return build_dataset(
        examples, row_fn, num_candidates=frames.num_candidates, max_pixels=frames.max_pixels,
        cache_size=frames.cache_size, store_dir=frame_store_for(path, frames),
    )


def frame_store_for(task_file: str | os.PathLike[str], frames: Any) -> Path | None:
    """The frame store beside `task_file` (written by the data build), or None if there is none or `frames.store`
    is off."""
    if not getattr(frames, "store", True):
        return None
    store = store_beside(task_file)
    return store if store.is_dir() else None
