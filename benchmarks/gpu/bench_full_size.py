"""SFT and GRPO steps of the full-size models at the paper's settings, with random weights: no download needed.

A GPU machine without a model hub can still tell whether the recipes fit and how fast they run: the models are
built from the real `config.json` (the 7B downstream model from ../shared/data's Qwen2.5-VL-7B config; the 3B
selector from the same file with the 3B's published widths) with random bf16 weights, and the inputs are rendered
with the real processor exactly as training renders them (T=256 frames of a 16:9 video at max_pixels 100,352 after
their timestamps, the query, a 3-clip answer). Speed and memory do not depend on the weights' values.

- SFT step: forward and backward of one example (batch 1), vision tower frozen, gradient checkpointing, AdamW under
  DeepSpeed ZeRO-2 through accelerate (one process), loss on the answer only.
- GRPO step: G=8 completions of up to 256 tokens sampled from the prompt, the policy's forward and backward over
  the group, the reference model's forward (KL, beta 0.01), and the reward: the 7B downstream model scores each
  completion's k=32 frames (one forward per completion, option-letter log-probs).

Reported per step kind: step time (median of `--steps` after `--warmup`), tokens/s, peak GPU memory, and MFU (model
FLOPs utilisation: 6 x trainable-or-forward parameters x tokens, plus the attention term, over the GPU's bf16 dense
peak). `--tiny` shrinks both models and the inputs to run the same code on a CPU in seconds (what the test does).

    python benchmarks/gpu/bench_full_size.py                 # -> benchmarks/results/full_size_gpu.json and a table
    python benchmarks/gpu/bench_full_size.py --only sft --steps 5

The machine needs torch with CUDA and these wheels (carried, `make gpu-wheels` downloads them into .whl/):
transformers, accelerate, deepspeed, peft, safetensors, tokenizers, huggingface_hub, pydantic, pyyaml, numpy, pillow;
then `pip install --no-index --find-links .whl -e . --no-deps` and `pip install --no-index --find-links .whl <them>`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.core.io import atomic_write_json  # noqa: E402
from pipeline.core.models import default_processor_dir  # noqa: E402
from pipeline.core.prompt import format_clips, render_selector_messages  # noqa: E402

# Qwen2.5-VL-3B-Instruct's text and merger widths (its published config.json); the vision tower is the 7B's.
QWEN_3B = {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "tie_word_embeddings": True}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": True}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build_model(processor_dir: Path, widths: dict[str, Any], *, tiny: bool, dtype: Any, device: str) -> Any:
    """A random-weight Qwen2.5-VL from the real config.json with `widths` applied to its language model."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig.from_pretrained(processor_dir)
    text = config.text_config
    for key, value in widths.items():
        setattr(text, key, value)
    config.tie_word_embeddings = bool(widths.get("tie_word_embeddings", config.tie_word_embeddings))
    heads = text.num_attention_heads
    half = text.hidden_size // heads // 2
    rope = dict(getattr(text, "rope_parameters", None) or {})
    rope["mrope_section"] = [half - 2 * (half // 3), half // 3, half // 3]
    text.rope_parameters = rope
    text.layer_types = ["full_attention"] * text.num_hidden_layers
    text.max_window_layers = text.num_hidden_layers
    vision = config.vision_config
    vision.out_hidden_size = text.hidden_size
    if tiny:
        vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads = 1, 32, 64, 2
        vision.fullatt_block_indexes = [0]
    attn = "flash_attention_2" if device.startswith("cuda") and _has_flash_attn() else "sdpa"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    return model


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def render_example(processor: Any, T: int, max_pixels: int, *, with_answer: bool, duration_s: float = 3600.0,
                   options: list[str] | None = None) -> tuple[dict[str, Any], int]:
    """The selector's input for a 16:9 video of `duration_s` (and the answer's token count when `with_answer`)."""
    from PIL import Image

    from data_builder.video import target_size, uniform_indices
    from pipeline.core.contracts import KeyClip

    fps = 30.0
    idx = uniform_indices(int(duration_s * fps), T)
    times = [i / fps for i in idx]
    query = "What does the person in the red jacket pick up from the kitchen table after the phone rings?"
    messages = render_selector_messages(times, query, duration_s=duration_s, options=options)
    answer_tokens = 0
    if with_answer:
        clips = [KeyClip(start_s=duration_s * a, end_s=duration_s * b, priority=p, reason="reaches for the table")
                 for a, b, p in ((0.12, 0.15, "P1"), (0.40, 0.43, "P2"), (0.71, 0.73, "P1"))]
        answer = format_clips(clips, duration_s=duration_s)
        messages = [*messages, {"role": "assistant", "content": answer}]
        answer_tokens = len(processor.tokenizer(answer)["input_ids"]) + 1
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=not with_answer)
    w, h = target_size(1920, 1080, max_pixels=max_pixels)
    enc = processor(text=[text], images=[Image.new("RGB", (w, h), (90, 120, 150))] * T, return_tensors="pt")
    return dict(enc), answer_tokens


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, steps: int, warmup: int, device: str) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _peak_gb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _mfu(params: int, tokens: int, layers: int, hidden: int, seconds: float, factor: int, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: (factor x params + attention) x tokens per second over the bf16 peak (factor 6 for
    forward + backward, 2 for forward only)."""
    if not peak_tflops:
        return None
    attn = factor * 2 * layers * hidden * tokens  # 2 x L x d x seq per token per pass, forward + backward scaled
    flops = (factor * params + attn) * tokens
    return flops / seconds / (peak_tflops * 1e12)


def _accelerator_zero2() -> Any:
    from accelerate import Accelerator, DeepSpeedPlugin

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29561"}.items():
        os.environ.setdefault(key, value)
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1, gradient_clipping=1.0)
    return Accelerator(deepspeed_plugin=plugin, mixed_precision="bf16")


def sft_step_bench(args: argparse.Namespace, processor: Any, device: str, dtype: Any) -> dict[str, Any]:
    import torch

    model = build_model(args.processor, TINY if args.tiny else QWEN_3B, tiny=args.tiny, dtype=dtype, device=device)
    model.model.visual.requires_grad_(False)  # the paper freezes the vision encoder; the merger trains
    model.model.visual.merger.requires_grad_(True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    batch, answer_tokens = render_example(processor, args.T, args.max_pixels, with_answer=True)
    labels = batch["input_ids"].clone()
    labels[:, : labels.shape[1] - answer_tokens] = -100
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["labels"] = labels.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    if device.startswith("cuda") and not args.no_deepspeed:
        accelerator = _accelerator_zero2()
        model, optimizer = accelerator.prepare(model, optimizer)
        backward = accelerator.backward
    else:
        backward = lambda loss: loss.backward()  # noqa: E731

    def step() -> None:
        loss = model(**batch).loss
        backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = _timed(step, args.steps, args.warmup, device)
    tokens = int(batch["input_ids"].shape[1])
    median = statistics.median(times)
    trainable = sum(p.numel() for p in params)
    text = model.config.text_config if hasattr(model, "config") else None
    out = {
        "kind": "sft", "tokens_per_example": tokens, "visual_tokens": int((batch["input_ids"] == processor.image_token_id).sum()),
        "step_s": median, "tokens_per_s": tokens / median, "peak_gpu_gb": _peak_gb(device),
        "trainable_params": trainable, "params": sum(p.numel() for p in model.parameters()),
        "mfu": _mfu(trainable, tokens, text.num_hidden_layers, text.hidden_size, median, 6, args.peak_tflops) if text else None,
        "step_times_s": times,
    }
    return out


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def grpo_step_bench(args: argparse.Namespace, processor: Any, device: str, dtype: Any) -> dict[str, Any]:
    """Generation of the group, the policy's forward+backward over it, the reference forward, the downstream reward."""
    import torch
    from PIL import Image

    from rewards.backends.prompt import render_mcq_messages  # the reward's own question rendering

    options = ["A set of car keys", "A coffee mug", "A folded newspaper", "A mobile phone charger"]
    policy = build_model(args.processor, TINY if args.tiny else QWEN_3B, tiny=args.tiny, dtype=dtype, device=device)
    reference = build_model(args.processor, TINY if args.tiny else QWEN_3B, tiny=args.tiny, dtype=dtype, device=device)
    reference.requires_grad_(False)
    downstream = build_model(args.processor, TINY if args.tiny else {}, tiny=args.tiny, dtype=dtype, device=device)
    downstream.requires_grad_(False)
    policy.model.visual.requires_grad_(False)
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prompt, _ = render_example(processor, args.T, args.max_pixels, with_answer=False, options=options)
    prompt = {k: v.to(device) for k, v in prompt.items()}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    G, k = args.generations, args.k
    from data_builder.video import target_size

    w, h = target_size(1920, 1080, max_pixels=args.downstream_max_pixels)
    images = [Image.new("RGB", (w, h), (90, 120, 150))] * k
    question = render_mcq_messages([float(i) for i in range(k)], "What is picked up?", options)
    q_text = processor.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    q_batch = {key: v.to(device) for key, v in processor(text=[q_text], images=images, return_tensors="pt").items()}
    parts: dict[str, list[float]] = {"generate_s": [], "policy_s": [], "reference_s": [], "reward_s": []}
    seq_tokens: list[int] = []

    def step() -> None:
        t0 = time.perf_counter()
        policy.gradient_checkpointing_disable()  # generation with the KV cache, as TRL generates
        policy.config.use_cache = True
        with torch.no_grad():
            out = policy.generate(**prompt, do_sample=True, temperature=1.0, max_new_tokens=args.completion_tokens,
                                  min_new_tokens=args.completion_tokens, num_return_sequences=G)
        _sync(device)
        t1 = time.perf_counter()
        policy.config.use_cache = False
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        group = {"input_ids": out, "attention_mask": torch.ones_like(out),
                 "pixel_values": prompt["pixel_values"].repeat(G, 1), "image_grid_thw": prompt["image_grid_thw"].repeat(G, 1)}
        labels = out.clone()
        labels[:, : prompt["input_ids"].shape[1]] = -100
        loss = policy(**group, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            reference(**group)
        _sync(device)
        t3 = time.perf_counter()
        with torch.no_grad():
            for _ in range(G):  # one question per completion: its k frames
                downstream(**q_batch)
        _sync(device)
        t4 = time.perf_counter()
        for key, (a, b) in zip(parts, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
            parts[key].append(b - a)
        seq_tokens.append(int(out.shape[0] * out.shape[1]))

    times = _timed(step, args.steps, args.warmup, device)
    median = statistics.median(times)
    tokens = seq_tokens[-1]
    text = policy.config.text_config
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    out = {
        "kind": "grpo", "group": G, "prompt_tokens": int(prompt["input_ids"].shape[1]),
        "completion_tokens": args.completion_tokens, "downstream_tokens": int(q_batch["input_ids"].shape[1]),
        "step_s": median, "tokens_per_s": tokens / median, "peak_gpu_gb": _peak_gb(device),
        "breakdown_s": {key: statistics.median(v[args.warmup:]) for key, v in parts.items()},
        "mfu_policy_update": _mfu(trainable, tokens, text.num_hidden_layers, text.hidden_size,
                                  statistics.median(parts["policy_s"][args.warmup:]), 6, args.peak_tflops),
        "step_times_s": times,
    }
    return out


def render_table(results: list[dict[str, Any]]) -> str:
    rows = ["| step | tokens | step (s) | tokens/s | peak GPU (GB) | MFU |", "|---|---|---|---|---|---|"]
    for r in results:
        tokens = r.get("tokens_per_example") or r["group"] * (r["prompt_tokens"] + r["completion_tokens"])
        mfu = r.get("mfu") if r["kind"] == "sft" else r.get("mfu_policy_update")
        peak = "-" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.1f}"
        util = "-" if mfu is None else f"{100 * mfu:.1f}%"
        rows.append(f"| {r['kind']} | {tokens:,} | {r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | {peak} | {util} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processor", type=Path, default=default_processor_dir())
    p.add_argument("--only", choices=["sft", "grpo"], default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--max-pixels", type=int, default=100352)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion-tokens", type=int, default=256)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--downstream-max-pixels", type=int, default=200704)
    p.add_argument("--no-deepspeed", action="store_true", help="plain AdamW without ZeRO-2")
    p.add_argument("--tiny", action="store_true", help="shrunk models and inputs: the same code on a CPU in seconds")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "full_size_gpu.json")
    args = p.parse_args(argv)
    if args.tiny:
        args.T, args.max_pixels, args.k, args.generations = min(args.T, 4), 3136, min(args.k, 2), min(args.generations, 2)
        args.completion_tokens, args.downstream_max_pixels = min(args.completion_tokens, 4), 3136
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        sys.exit("bench_full_size: no CUDA GPU here; --tiny runs the same code shrunk on a CPU")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    args.peak_tflops = next((v for key, v in PEAK_BF16_TFLOPS.items() if key in name), None)

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(args.processor)
    processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": args.max_pixels}
    results = []
    if args.only in (None, "sft"):
        results.append(sft_step_bench(args, processor, device, dtype))
        _free(device)  # the SFT models are gone once the function returned
    if args.only in (None, "grpo"):
        results.append(grpo_step_bench(args, processor, device, dtype))
    report = {"device": name, "tiny": args.tiny, "T": args.T, "max_pixels": args.max_pixels, "results": results,
              "torch": torch.__version__}
    atomic_write_json(args.out, report)
    print(f"{name}: T={args.T}, max_pixels={args.max_pixels:,}{' (tiny)' if args.tiny else ''}")
    print(render_table(results))
    return 0 if all(math.isfinite(r["step_s"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
