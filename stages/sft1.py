"""SFT stage 1: temporal grounding (caption -> scene span, scene span -> caption, span relevance).

Teaches the selector to read the timestamped frames before it learns to pick key clips (SFT2). The recipe is
stages.sft's with this stage's task file (`sft1.*` tasks).

    kframes train sft1 --config configs/tiny/sft1.yaml
    accelerate launch --config_file configs/accelerate/zero2.yaml -m stages.sft1 --config configs/qwen2_5_vl_3b/sft1.yaml
"""

from __future__ import annotations

import sys

from stages.sft import train

__all__ = ["train"]

if __name__ == "__main__":
    from stages.launch import main

    sys.exit(main("sft1", train))
