"""A deterministic stand-in for the downstream MLLM, for the reward and GRPO tests.

Why a stand-in: the tiny Qwen2.5-VL the tests can build has random weights, so its option log-probs carry no
information about the frames, and a reward computed from them would be noise (nothing to learn, nothing to
assert). The oracle is honest in the way that matters for the reward: it sees ONLY the frames it is given, and
it prefers the right answer in proportion to how many of those frames show the evidence. It knows, for each
question, which background colour the answer is visible on (in the synthetic videos of data_builder.synthetic
exactly one scene has it) and which option is right; a frame "shows the evidence" when its median colour is
within `tol` of that colour. log-odds of the answer over each wrong option = `strength` * (evidence frames /
frames). So clips on the answer scene earn tanh(strength / tau), clips elsewhere earn 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_builder.synthetic import COLORS, SyntheticScene, write_scene_video
from rewards.backends import MCQRequest, normalise_over_options


@dataclass
class ColourOracle:
    evidence: dict[str, tuple[tuple[int, int, int], int]]  # question -> (evidence colour RGB, answer index)
    strength: float = 2.0
    tol: float = 40.0
    calls: int = 0
    frames_seen: list[int] = field(default_factory=list)

    def shows(self, image, colour: tuple[int, int, int]) -> bool:
        px = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
        return float(np.abs(np.median(px, axis=0) - np.array(colour)).max()) <= self.tol

    def option_logprobs(self, requests: list[MCQRequest]) -> list[list[float]]:
        self.calls += 1
        out = []
        for r in requests:
            colour, ans = self.evidence[r.question]
            frac = sum(self.shows(im, colour) for im in r.images) / max(len(r.images), 1)
            logits = [0.0] * len(r.options)
            logits[ans] = self.strength * frac
            self.frames_seen.append(len(r.images))
            out.append(normalise_over_options(logits))
        return out


SCENE_S = 2.0
QUESTION = "What shape is shown on the red background?"
SHAPE_OPTIONS = ["circle", "square", "triangle"]


def red_last_video(path: Path, others: tuple[str, str], shapes: tuple[str, str, str], seed: int = 0) -> int:
    """Three 2 s scenes at 10 fps: `others[0]`, `others[1]`, then red (4-6 s). Returns the answer index."""
    names = [*others, "red"]
    scenes = [SyntheticScene(label=f"a {s} on {c}", color=COLORS[c], shape=s, duration_s=SCENE_S, color_name=c)
              for c, s in zip(names, shapes)]
    write_scene_video(path, scenes, fps=10, size=(160, 120), seed=seed)
    return SHAPE_OPTIONS.index(shapes[2])
