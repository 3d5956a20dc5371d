"""SFT stage 2: key-clip prediction (query -> JSON list of P1/P2 clips with reasons).

Starts from SFT1's `final/` when the recipe sets `init_from` (the curriculum), else from `model.name_or_path`
(the paper's "SFT2 only" ablation). The recipe is stages.sft's with this stage's task file (`sft2.*` tasks).

    kframes train sft2 --config configs/tiny/sft2.yaml
    accelerate launch --config_file configs/accelerate/zero2.yaml -m stages.sft2 --config configs/qwen2_5_vl_3b/sft2.yaml
"""

from __future__ import annotations

import sys

from stages.sft import train

__all__ = ["train"]

if __name__ == "__main__":
    from stages.launch import main

    sys.exit(main("sft2", train))
