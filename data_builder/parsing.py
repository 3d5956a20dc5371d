"""Finding the JSON in an annotating LLM's answer (prose, code fences and all).

LLMs wrap JSON in explanations and ```json fences. `extract_json` returns the first balanced `{...}` or
`[...]` span (fenced blocks first) that parses as JSON of the wanted type, or None. Checking the content is
the caller's job (pydantic models in each module), so that a malformed answer is re-asked with the reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_PAIRS = {"{": "}", "[": "]"}


def _balanced_spans(text: str, opener: str) -> list[str]:
    closer = _PAIRS[opener]
    spans: list[str] = []
    depth, start, in_str, esc = 0, None, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == opener:
            if depth == 0:
                start = i
            depth += 1
        elif ch == closer and depth > 0:
            depth -= 1
            if depth == 0 and start is not None:
                spans.append(text[start : i + 1])
                start = None
    return spans


def extract_json(text: str, kind: type[Any] = dict) -> Any | None:
    """The first JSON value of type `kind` (dict or list) found in `text`, or None."""
    opener = "{" if kind is dict else "["
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text or "")] + _balanced_spans(text or "", opener)
    for cand in candidates:
        try:
            value = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(value, kind):
            return value
    return None
