"""The SFT benchmark on a GPU node, with the 3B selector recipe (configs/qwen2_5_vl_3b/sft2.yaml).

Same measurement as benchmarks/bench_sft.py (kframes recipe vs plain TRL SFTTrainer on the same data, tokens/s
and peak GPU memory, runs alternated, medians), with the paper's settings from the recipe: T=256 candidate frames
of up to 100,352 pixels, bf16, flash-attention 2, gradient checkpointing, frozen vision encoder. Synthetic videos
are written at 640x360 so decoding costs what a real video's does. Needs the Qwen2.5-VL-3B-Instruct weights in
the local Hugging Face cache (or `--set model.name_or_path=/path/to/weights`) and one CUDA GPU:

    python benchmarks/gpu/bench_sft_gpu.py [--steps 20 --repeats 3] [--set train.per_device_batch_size=2]
    # -> benchmarks/results/sft_gpu.json and a table
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_sft import main

if __name__ == "__main__":
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_sft_gpu: no CUDA GPU here; run benchmarks/bench_sft.py for the CPU version")
    sys.exit(main(default_config="configs/qwen2_5_vl_3b/sft2.yaml", default_out="benchmarks/results/sft_gpu.json",
                  default_videos=16, default_video_size="640x360"))
