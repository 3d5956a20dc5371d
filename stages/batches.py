"""From task files to trainer datasets whose frames are decoded when a batch is built.

A task file line (`pipeline.core.contracts.TrainingExample`) references frames by video path and indices; its
`messages` are already rendered by `pipeline.core.prompt.render_selector_messages` with one `{"type": "image"}`
placeholder per frame. Storing T=256 decoded frames per example on disk would take terabytes, so the dataset
keeps only the JSON of each example, and a `datasets` transform (`LazyFrames`) decodes the frames through
`data_builder.video.FrameCache` when the trainer's data loader asks for a batch. The rows it returns are what
TRL's trainers expect of a vision dataset (`images` + `messages` for SFT; a GRPO `row_fn` returns `prompt` and
the question instead), so TRL's own collators do the tokenising and the label masking.

Both SFT and GRPO use this module: the stage supplies a `row_fn(example, images) -> dict`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from data_builder.video import uniform_indices
from pipeline.core.contracts import ChatTurn, TrainingExample
from pipeline.core.errors import DataError
from pipeline.core.io import read_jsonl_models

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


def limit_frames(example: TrainingExample, num_candidates: int) -> TrainingExample:
    """Keep at most `num_candidates` (T) frames, chosen uniformly, with their timestamps and placeholders.

    Lets one task build serve recipes with different T (the tiny CPU recipe uses 16, the paper 256). The rendered
    user turn has each `{"type": "image"}` right after its `<t=...s>` text part (render_selector_messages); a
    dropped frame takes both with it, so the prompt stays exactly what the renderer would produce for the kept
    frames.
    """
    n = len(example.frame_indices)
    if n <= num_candidates:
        return example

    keep = set(uniform_indices(n, num_candidates))
    messages = []
    frame_pos = 0
    for turn in example.messages:
        if not isinstance(turn.content, list):
            messages.append(turn.model_dump())
            continue
        parts: list[dict[str, Any]] = []
        for part in turn.content:
            if part.get("type") == "image":
                if frame_pos in keep:
                    parts.append(part)
                elif parts and parts[-1].get("type") == "text" and parts[-1].get("text", "").startswith("<t="):
                    parts.pop()  # the dropped frame's timestamp
                frame_pos += 1
            else:
                parts.append(part)
        messages.append({"role": turn.role, "content": parts})
    kept = sorted(keep)
    return example.model_copy(
        update={
            "frame_indices": [example.frame_indices[i] for i in kept],
            "timestamps_s": [example.timestamps_s[i] for i in kept],
            "messages": [ChatTurn.model_validate(m) for m in messages],
        }
    )


def sft_row(example: TrainingExample, images: list[Any]) -> dict[str, Any]:
    """An SFT row for TRL: the conversation (with the assistant's answer) and its frames."""
    return {"messages": [m.model_dump() for m in example.messages], "images": images}


class LazyFrames:
    """A `datasets` transform: JSON-encoded examples in, rows with decoded frames out.

    One FrameCache per process (data loader workers each build their own on first use), so the frames of a video
    that several examples share (SFT1 has several tasks per video) are decoded once while it stays in the cache.
    """

    def __init__(self, row_fn: RowFn, *, max_pixels: int | None, cache_size: int) -> None:
        self.row_fn = row_fn
        self.max_pixels = max_pixels
        self.cache_size = cache_size
        self._cache = None

    def _frames(self, example: TrainingExample) -> list[Any]:
        if self._cache is None:
            from data_builder.video import FrameCache

            self._cache = FrameCache(max_videos=max(self.cache_size, 1))
        return self._cache.images(example.video, example.frame_indices, max_pixels=self.max_pixels)

    def __call__(self, batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        rows = []
        for raw in batch["example"]:
            example = TrainingExample.model_validate_json(raw)
            rows.append(self.row_fn(example, self._frames(example)))
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}

    def __getstate__(self) -> dict[str, Any]:  # workers start with an empty cache, not a copy of decoded frames
        return {**self.__dict__, "_cache": None}


def build_dataset(
    examples: Sequence[TrainingExample],
    row_fn: RowFn = sft_row,
    *,
    num_candidates: int | None = None,
    max_pixels: int | None = None,
    cache_size: int = 8,
):
    """A `datasets.Dataset` of the examples whose rows (`row_fn`'s keys) are built with decoded frames on access.

    Train with `remove_unused_columns=False`: the stored column (`example`) is not what the trainer reads.
    """
    from datasets import Dataset

    if num_candidates is not None:
        examples = [limit_frames(ex, num_candidates) for ex in examples]
    ds = Dataset.from_dict({"example": [ex.model_dump_json() for ex in examples]})
    return ds.with_transform(LazyFrames(row_fn, max_pixels=max_pixels, cache_size=cache_size))


def dataset_from_file(path: str, frames: Any, *, task_prefix: str, row_fn: RowFn = sft_row, require_answer: bool = True):
    """`load_examples` + `build_dataset` with a FramesSection's T, max_pixels and cache size."""
    examples = load_examples(path, task_prefix=task_prefix, require_answer=require_answer)
    return build_dataset(
        examples, row_fn, num_candidates=frames.num_candidates, max_pixels=frames.max_pixels, cache_size=frames.cache_size
    )
