"""Image-text similarity with any transformers CLIP or SigLIP model: what the relevance scorer's refinement and the
similarity baselines of evaluation share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from data_builder.video import VideoReader
from pipeline.core.models import resolve_model


class ImageTextScorer:
    """Cosine similarity between a text and video frames with any transformers CLIP or SigLIP model.

    Loads the image processor and tokenizer separately (AutoImageProcessor/AutoTokenizer), so hub models
    and the locally built tiny CLIP load the same way. `tiny-clip` builds that tiny model (no downloads).
    """

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        path = resolve_model(model)
        self.model_name = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        cfg = self.model.config
        self.is_siglip = "siglip" in str(getattr(cfg, "model_type", ""))
        text_cfg = getattr(cfg, "text_config", cfg)
        self.max_text_len = int(getattr(text_cfg, "max_position_embeddings", 64))

    @staticmethod
    def _features(out: Any) -> Any:
        # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding.
        return out if hasattr(out, "norm") else out.pooler_output

    def text_embedding(self, text: str) -> Any:
        import torch

        enc = self.tokenizer(
            [text],
            padding="max_length" if self.is_siglip else True,
            truncation=True,
            max_length=self.max_text_len,
            return_tensors="pt",
        ).to(self.device)
        enc.pop("token_type_ids", None)
        with torch.inference_mode():
            emb = self._features(self.model.get_text_features(**enc))
        return torch.nn.functional.normalize(emb.float(), dim=-1)[0]

    def image_embeddings(self, frames: np.ndarray) -> Any:
        import torch

        pix = self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            emb = self._features(self.model.get_image_features(pixel_values=pix.to(self.model.dtype)))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def score_frames(self, video_path: str, indices: Sequence[int], text: str) -> list[float]:
        """Similarity of `text` to each frame in `indices` (decoded in batches, memory bounded by one batch)."""
        import torch

        text_emb = self.text_embedding(text)
        scores: list[float] = []
        with VideoReader(video_path, max_pixels=self.max_pixels) as reader:
            for _, frames in reader.iter_batches(list(indices), self.batch_size):
                img = self.image_embeddings(frames)
                scores.extend(torch.mv(img, text_emb).tolist())
        return scores
