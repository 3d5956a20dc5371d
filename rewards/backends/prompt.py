"""THE downstream prompt: one renderer of the multiple-choice question, shared by every backend and by eval.

Both backends send exactly these messages (the transformers backend through the processor's chat template, the
vLLM backend as OpenAI messages that the server renders with the same model's chat template), so the tokens the
downstream model sees do not depend on the backend. Frames come in time order, each after its timestamp in the
same `<t=12.4s>` form as the selector's prompt (pipeline.core.prompt.format_timestamp), then the question, the
lettered options and the usual instruction to answer with the letter, as in lmms-eval's MLVU/Video-MME prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.core.prompt import format_timestamp
from rewards.backends.base import option_letters

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def render_mcq_messages(timestamps_s: Sequence[float], question: str, options: Sequence[str]) -> list[dict[str, Any]]:
    """The user turn: `<t=..s>` + image placeholder per frame, then question, options and instruction."""
    content: list[dict[str, Any]] = []
    for t in timestamps_s:
        content.append({"type": "text", "text": format_timestamp(float(t))})
        content.append({"type": "image"})
    lines = [f"\nQuestion: {question.strip()}", "Options:"]
    lines += [f"({letter}) {str(opt).strip()}" for letter, opt in zip(option_letters(len(options)), options)]
    lines.append(ANSWER_INSTRUCTION)
    content.append({"type": "text", "text": "\n".join(lines)})
    return [{"role": "user", "content": content}]
