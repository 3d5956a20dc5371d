"""A contact sheet: the chosen frames in a grid, each labelled with its index, timestamp and clip priority.

The quickest way to see whether a prediction makes sense is to look at what the downstream model will see.
Frames inside a P1 clip get a red border, P2 orange, background frames grey; the header shows the query,
the predicted clips and whether the sampler fell back to uniform frames.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from io import BytesIO
from typing import TYPE_CHECKING

from pipeline.core.contracts import KeyClip
from pipeline.core.io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

COLOURS = {"P1": (220, 40, 40), "P2": (240, 150, 20), None: (150, 150, 150)}
TILE_WIDTH = 240
LABEL_HEIGHT = 22
BORDER = 4


def frame_priority(t: float, clips: Sequence[KeyClip]) -> str | None:
    """The priority of the clip that holds time t (the higher one if several), else None (background)."""
    best = None
    for c in clips:
        if c.start_s <= t < c.end_s and (best is None or c.priority < best):
            best = c.priority  # "P1" < "P2"
    return best


def render_contact_sheet(
    images: Sequence[Image.Image],
    indices: Sequence[int],
    timestamps_s: Sequence[float],
    clips: Sequence[KeyClip],
    *,
    title: str = "",
    columns: int | None = None,
    priorities: Sequence[str | None] | None = None,
) -> Image.Image:
    """The sheet as a PIL image (tiles in time order, `columns` per row; default about square).

    `priorities` (one per frame, None for background) overrides the lookup by time, e.g. with the sampler's
    frame ranges (`priorities_from_allocations`), which also place a clip shorter than a frame."""
    from PIL import Image, ImageDraw, ImageFont

    if not (len(images) == len(indices) == len(timestamps_s)):
        raise ValueError(
            f"{len(images)} images, {len(indices)} indices and {len(timestamps_s)} timestamps differ"
        )
    n = len(images)
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    aspect = images[0].height / images[0].width if n else 0.75
    tile_h = max(1, round(TILE_WIDTH * aspect))
    cell_w, cell_h = TILE_WIDTH + 2 * BORDER, tile_h + 2 * BORDER + LABEL_HEIGHT
    font = ImageFont.load_default(size=13)
    header = textwrap.wrap(title, width=max(20, cols * cell_w // 8)) if title else []
    header_h = 18 * len(header) + (8 if header else 0)
    sheet = Image.new("RGB", (cols * cell_w, header_h + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((6, 4 + 18 * i), line, fill=(0, 0, 0), font=font)
    for j, (img, idx, t) in enumerate(zip(images, indices, timestamps_s)):
        x, y = (j % cols) * cell_w, header_h + (j // cols) * cell_h
        pri = priorities[j] if priorities is not None else frame_priority(float(t), clips)
        draw.rectangle([x, y, x + cell_w - 1, y + tile_h + 2 * BORDER - 1], fill=COLOURS[pri])
        sheet.paste(img.convert("RGB").resize((TILE_WIDTH, tile_h)), (x + BORDER, y + BORDER))
        label = f"#{idx}  t={float(t):.1f}s  {pri or 'bg'}"
        draw.text((x + BORDER, y + tile_h + 2 * BORDER + 3), label, fill=(0, 0, 0), font=font)
    return sheet


def priorities_from_allocations(indices: Sequence[int], allocations: Sequence[dict]) -> list[str | None]:
    """Each frame's clip priority from the sampler's per-clip frame ranges (None: background)."""
    out: list[str | None] = []
    for i in indices:
        hit = [a["priority"] for a in allocations if a["first_frame"] <= i < a["end_frame"]]
        out.append(min(hit) if hit else None)
    return out


def clips_summary(clips: Sequence[KeyClip]) -> str:
    return ", ".join(f"{c.priority} {c.start_s:.1f}-{c.end_s:.1f}s" for c in clips) or "none"


def write_contact_sheet(
    path: str | os.PathLike[str],
    images: Sequence[Image.Image],
    indices: Sequence[int],
    timestamps_s: Sequence[float],
    clips: Sequence[KeyClip],
    *,
    title: str = "",
    columns: int | None = None,
    priorities: Sequence[str | None] | None = None,
) -> None:
    """Render and write the sheet as PNG (atomically)."""
    buf = BytesIO()
    sheet = render_contact_sheet(
        images, indices, timestamps_s, clips, title=title, columns=columns, priorities=priorities
    )
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
