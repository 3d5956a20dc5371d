"""Rewards for the GRPO stage: the downstream log-probability reward (the frozen MLLM's preference for the
right option over the frames a completion selects), the format reward, a registry that picks them by
name with weights from the recipe, and the downstream backends (in-process transformers, vLLM over HTTP).
"""
