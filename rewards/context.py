"""What the rewards of one trainer share: the config, the downstream backend, decoded frames, video facts.

Built once per trainer (per process). The backend is created on first use, so building the reward functions is
cheap and a process that never scores (an eval-only run) never loads the downstream model. Video facts (frame
count, fps, per-frame timestamps) are read once per video; frames are decoded through one `FrameCache`, so the
completions of a GRPO group, which all share one video, cost one decode (rewards.downstream asks for the union
of their frames in a single call).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from data_builder.video import FrameCache, VideoTimeline
from pipeline.core.config import RewardSection


@dataclass
class RewardContext:
    cfg: RewardSection
    backend: Any | None = None  # a rewards.backends.DownstreamBackend; None: make_backend(cfg.downstream) on first use
    max_videos: int = 16
    _frames: Any | None = field(default=None, repr=False)
    _facts: OrderedDict[str, VideoTimeline] = field(default_factory=OrderedDict, repr=False)

    def get_backend(self) -> Any:
        if self.backend is None:
            from rewards.backends import make_backend

            self.backend = make_backend(self.cfg.downstream)
        return self.backend

    @property
    def frames(self) -> Any:
        """The shared `data_builder.video.FrameCache`."""
        if self._frames is None:
            self._frames = FrameCache(max_videos=self.max_videos)
        return self._frames

    def video(self, path: str) -> VideoTimeline:
        """Frame count, fps, duration and timestamps of a video (read once; LRU over `max_videos`)."""
        facts = self._facts.get(path)
        if facts is None:
            # the reader the frames come from: opened once per video
            facts = self.frames.timeline(path, max_pixels=self.cfg.downstream.max_pixels)
            self._facts[path] = facts
            while len(self._facts) > self.max_videos:
                self._facts.popitem(last=False)
        else:
            self._facts.move_to_end(path)
        return facts


def completion_text(completion: Any) -> str:
    """TRL hands completions as strings (plain prompts) or as message lists (conversational prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        texts = []
        for msg in completion:
            content = msg.get("content", "") if isinstance(msg, dict) else msg
            if isinstance(content, list):
                texts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
            else:
                texts.append(str(content or ""))
        return "".join(texts)
    if isinstance(completion, dict):
        return completion_text([completion])
    return str(completion or "")
