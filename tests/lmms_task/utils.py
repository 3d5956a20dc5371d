"""The local lmms-eval tasks' functions: videos from ../shared/data (or $KFRAMES_SHARED_DATA), an MCQ prompt,
and scoring by the answer letter."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

SHARED_DATA = Path(os.environ.get("KFRAMES_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
LETTERS = "ABCDEFGH"


def doc_to_visual(doc: dict[str, Any]) -> list[str]:
    path = SHARED_DATA / doc["video"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shared test video is missing (set KFRAMES_SHARED_DATA)")
    return [str(path)]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(doc["options"]))
    return f"{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    m = re.search(r"\b([A-H])\b", results[0] or "")
    return {"accuracy": float(bool(m) and m.group(1) == doc["answer"])}
