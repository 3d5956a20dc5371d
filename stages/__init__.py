"""The training curriculum, one module per stage: `sft1` (temporal grounding), `sft2` (key-clip
prediction) and `grpo` (reinforcement against the frozen downstream model's reward), plus what they share
(batch building from task files, model loading and freezing, checkpoints, resume and the stage manifest).
Each stage runs as `kframes train STAGE --config FILE` or `accelerate launch -m stages.STAGE --config FILE`.
"""
