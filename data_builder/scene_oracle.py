"""A downstream "model" for the generated videos of data_builder.synthetic: it answers their questions by looking.

The demo needs a frozen downstream model whose answers depend on the frames it is shown, and only on them: the
GRPO reward is computed from its option log-probabilities, and the demo's downstream accuracy compares the
selector's frames with uniform ones. A locally built tiny MLLM has random weights and answers at random, so the
demo uses this reader instead. It knows nothing about a video beyond the frames it receives:

- per frame it reads the background colour (the median pixel, matched to the nearest colour of
  `data_builder.synthetic.COLORS`) and the shape (the largest blob that differs from the background, compared with
  a drawing of every shape in `SHAPES`);
- "What shape is shown on the red background?": each frame whose background is red votes for the shape it shows;
  "What is the background colour when the circle is shown?": each frame showing a circle votes for its colour;
- option i gets the logit `strength * votes_i / frames`, normalised over the options (a log-softmax). A frame
  without the evidence votes for nothing, so with no evidence every option is equally likely; ties count as wrong
  in `accuracy`.

The interface is that of `rewards.backends.DownstreamBackend` (`option_logprobs(requests)`, each request with
`images`, `question` and `options`), so it plugs into the reward and the evaluation as any backend does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from data_builder.synthetic import BARCODE_ROWS, COLORS, SHAPES, _draw_shape

_SHAPE_Q = re.compile(r"what shape is shown on the (\w+) background", re.IGNORECASE)
_COLOUR_Q = re.compile(r"what is the background colou?r when the (\w+) is shown", re.IGNORECASE)
_GRID = 16  # blobs and templates are compared on a GRID x GRID raster of their bounding box


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    """Each shape drawn as `write_scene_video` draws it, cropped to its bounding box, on the comparison raster."""
    out = {}
    for shape in SHAPES:
        img = np.zeros((96, 96, 3), dtype=np.uint8)
        _draw_shape(img, shape, (48, 48), 32, (255, 255, 255))
        out[shape] = _raster(img[..., 0] > 127)
    return out


def _raster(mask: np.ndarray) -> np.ndarray:
    import cv2

    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    return cv2.resize(crop, (_GRID, _GRID), interpolation=cv2.INTER_AREA) > 0.5


def _log_softmax(values: Sequence[float]) -> list[float]:
    m = max(values)
    lse = m + math.log(sum(math.exp(v - m) for v in values))
    return [float(v - lse) for v in values]


class SceneOracle:
    """Answers the generated videos' multiple-choice questions from the frames it is given (see the module doc)."""

    def __init__(self, *, strength: float = 4.0, colour_tol: float = 48.0, ink_diff: float = 60.0) -> None:
        self.strength = strength
        self.colour_tol = colour_tol
        self.ink_diff = ink_diff
        self.calls = 0

    def read(self, image: Any) -> tuple[str | None, str | None]:
        """(background colour name, shape name) of one frame; None where it cannot tell."""
        import cv2

        px = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
        bg = np.median(px.reshape(-1, 3), axis=0)
        name, dist = min(((n, float(np.abs(bg - np.array(c)).max())) for n, c in COLORS.items()), key=lambda x: x[1])
        colour = name if dist <= self.colour_tol else None
        ink = (np.abs(px - bg).max(axis=2) > self.ink_diff).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
        strip = math.ceil(ink.shape[0] * (BARCODE_ROWS + 1) / 120)  # where a frame-number barcode may be drawn
        best, best_area = None, 0
        for i in range(1, count):
            _, y, _, bh, area = stats[i]
            if y + bh <= strip:  # a barcode cell, not the shape
                continue
            if area > best_area:
                best, best_area = i, area
        if best is None or best_area < 12:
            return colour, None
        blob = _raster(labels == best)
        scores = {s: float((blob & t).sum() / max((blob | t).sum(), 1)) for s, t in _templates().items()}
        return colour, max(scores, key=scores.__getitem__)

    def votes(self, images: Sequence[Any], question: str, options: Sequence[str]) -> list[int]:
        """How many of the frames show each option as the answer."""
        shape_q, colour_q = _SHAPE_Q.search(question), _COLOUR_Q.search(question)
        wanted = [o.strip().lower() for o in options]
        votes = [0] * len(options)
        if not (shape_q or colour_q):
            return votes
        for image in images:
            colour, shape = self.read(image)
            if shape_q and colour == shape_q.group(1).lower():
                answer = shape
            elif colour_q and shape == colour_q.group(1).lower():
                answer = colour
            else:
                continue
            if answer in wanted:
                votes[wanted.index(answer)] += 1
        return votes

    def option_logprobs(self, requests: Sequence[Any]) -> list[list[float]]:
        """log p of each option of each request (`images`, `question`, `options`), normalised over the options."""
        self.calls += 1
        out = []
        for r in requests:
            votes = self.votes(r.images, r.question, r.options)
            n = max(len(r.images), 1)
            out.append(_log_softmax([self.strength * v / n for v in votes]))
        return out


def answered_correctly(logprobs: Sequence[float], answer: int) -> bool:
    """The answer is the one most likely option (a tie with another option counts as wrong)."""
    top = max(logprobs)
    return logprobs[answer] == top and sum(1 for lp in logprobs if lp == top) == 1
