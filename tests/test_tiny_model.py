"""The tiny local Qwen2.5-VL loads with the Auto classes and runs on two images, with no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.core.prompt import render_selector_messages


def test_tiny_model_loads_and_runs_forward_with_two_images(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 2_000_000

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)) for _ in range(2)]
    messages = render_selector_messages([0.0, 2.5], "where is the dog?", duration_s=5.0)
    messages.append({"role": "assistant", "content": [{"type": "text", "text": '[{"start": 0.0, "end": 2.0, "priority": "P1"}]'}]})
    batch = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, images=images, return_tensors="pt"
    )
    assert batch["image_grid_thw"].shape[0] == 2
    # The {% generation %} markers let the loss see only the assistant's answer.
    mask = batch["assistant_masks"][0].bool()
    answer = processor.tokenizer.decode(batch["input_ids"][0][mask])
    assert answer.startswith('[{"start": 0.0') and answer.endswith("<|im_end|>")

    batch.pop("assistant_masks")
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()


def test_tokenizer_round_trips_arbitrary_text(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = 'Ünïcode 🎬 [{"start": 12.5, "end": 18.0}] <t=3.0s>'
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.convert_tokens_to_ids("<|image_pad|>") != tok.unk_token_id


def test_a_cache_folder_left_without_its_marker_is_built_again(tmp_path: Path) -> None:
    from pipeline.core.models import TINY_CLIP_RECIPE, build_once, build_tiny_clip

    first = build_tiny_clip(tmp_path)
    (first / "config.json").unlink()  # e.g. a copy cut short: no marker
    (first / "junk.txt").write_text("left over")
    again = build_tiny_clip(tmp_path)
    assert again == first and (again / "config.json").is_file() and not (again / "junk.txt").exists()
    assert build_once("tiny-clip", TINY_CLIP_RECIPE, lambda _: None, marker="config.json", cache_dir=tmp_path) == first
