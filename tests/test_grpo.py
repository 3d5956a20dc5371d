"""The GRPO stage learns from the downstream reward: a CPU learning check on a synthetic task, and resume.

The task: three synthetic videos (data_builder.synthetic) of three 2 s scenes; the question "What shape is shown on
the red background?" is answerable only in the red scene, which is the last one (4-6 s). The selector starts from a
"SFT2" model that already writes the clip format but, as a model that has not learnt where the evidence is, is
split evenly between two answers: the red scene `[4.0, 6.0]` and the first scene `[0.0, 2.0]`.

What stands in for the downstream model: the colour oracle of tests/oracle_downstream.py, a deterministic function
of the frames it is given (it favours the right option in proportion to how many of the k frames show the red
background). A real frozen MLLM is what the reward is designed for, but the tiny Qwen2.5-VL the tests can build has
random weights, so its answers carry no information about the frames and no policy could improve on them; the
oracle keeps the reward informative while still depending only on the frames the sampler picked from the clips.

Pass condition: within 12 GRPO steps (group of 4, one prompt per step) the policy's probability of the red-scene
answer and its mean reward (sampled completions scored by the same reward functions) both go up by a clear margin.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from oracle_downstream import QUESTION, SHAPE_OPTIONS, ColourOracle, red_last_video

from pipeline.core.config import (
    DownstreamSection,
    FramesSection,
    GRPOConfig,
    GRPOSection,
    ModelSection,
    RewardSection,
    TaskFilesSection,
    TrainSection,
)
from pipeline.core.contracts import TrainingExample
from pipeline.core.io import atomic_write_jsonl
from pipeline.core.prompt import render_selector_messages

pytestmark = pytest.mark.slow

GOOD = '[{"start": 4.0, "end": 6.0, "priority": "P1"}]'
BAD = '[{"start": 0.0, "end": 2.0, "priority": "P1"}]'
# The red (last) scene always shows the triangle, the others vary: one answer for the one question.
VIDEOS = [(("green", "blue"), ("square", "circle", "triangle")),
          (("yellow", "purple"), ("circle", "square", "triangle")),
          (("cyan", "orange"), ("square", "circle", "triangle"))]
T = 4  # candidate frames the selector sees
WARMUP_VERSION = 4  # bump when the warm-up recipe changes (its result is cached)
PIX = 56 * 56


class _Task:
    def __init__(self, root: Path) -> None:
        from data_builder.video import sample_candidates

        self.root = root
        self.examples: list[TrainingExample] = []
        self.answers: dict[str, int] = {}
        for i, (colours, shapes) in enumerate(VIDEOS):
            path = root / f"v{i}.mp4"
            answer = red_last_video(path, colours, shapes, seed=i)
            self.answers[str(path)] = answer
            idx, ts = sample_candidates(path, T)
            self.examples.append(TrainingExample(
                id=f"v{i}:mcq", task="grpo.mcq", video=str(path), frame_indices=idx, timestamps_s=ts,
                messages=render_selector_messages(ts, QUESTION, duration_s=6.0, options=SHAPE_OPTIONS),
                question=QUESTION, options=SHAPE_OPTIONS, answer=answer, num_frames=60, duration_s=6.0))
        self.train_file = root / "grpo.train.jsonl"
        atomic_write_jsonl(self.train_file, self.examples)

    def oracle(self) -> ColourOracle:
        answers = set(self.answers.values())
        assert len(answers) == 1  # the red scene shows the same shape in every video: one answer per question
        return ColourOracle({QUESTION: ((200, 30, 30), answers.pop())})


def _encode(processor, example: TrainingExample, images, target: str | None):
    prompt = [m.model_dump() for m in example.messages]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    n_prompt = len(processor(text=[text], images=images, return_tensors="pt")["input_ids"][0])
    full = text + (target + "<|im_end|>" if target is not None else "")
    enc = processor(text=[full], images=images, return_tensors="pt")
    return enc, n_prompt


def _target_logprob(model, processor, example, images, target) -> float:
    enc, n_prompt = _encode(processor, example, images, target)
    with torch.no_grad():
        logits = model(**enc).logits[0, n_prompt - 1 : -1]
    ids = enc["input_ids"][0, n_prompt:]
    return float(torch.log_softmax(logits.float(), -1).gather(1, ids[:, None]).sum())


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> _Task:
    return _Task(tmp_path_factory.mktemp("grpo_task"))


@pytest.fixture(scope="module")
def sft2_dir(task: _Task, tiny_model_dir: Path) -> Path:
    """A finished "SFT2" stage: the tiny model taught to answer GOOD or BAD with equal odds (teacher forcing)."""
    from transformers import AutoModelForImageTextToText

    from data_builder.video import FrameCache
    from stages.manifest import StageManifest, read_manifest, write_manifest
    from stages.modeling import load_processor

    # Deterministic given the recipe below, so it is built once per machine (like the tiny model itself).
    key = hashlib.sha256(json.dumps([tiny_model_dir.name, GOOD, BAD, VIDEOS, T, PIX, WARMUP_VERSION]).encode()).hexdigest()[:12]
    out = Path(os.environ.get("KFRAMES_CACHE") or tiny_model_dir.parent) / f"test-grpo-sft2-{key}"
    if read_manifest(out) is not None:
        return out
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    processor = load_processor(str(tiny_model_dir), FramesSection(num_candidates=T, max_pixels=PIX, min_pixels=PIX))
    cache = FrameCache()
    texts, images, n_prompts = [], [], []
    for ex in task.examples:
        imgs = cache.images(ex.video, ex.frame_indices, max_pixels=PIX)
        for target in (GOOD, BAD):
            enc, n_prompt = _encode(processor, ex, imgs, target)
            texts.append(processor.apply_chat_template([m.model_dump() for m in ex.messages], add_generation_prompt=True,
                                                       tokenize=False) + target + "<|im_end|>")
            images.extend(imgs)
            n_prompts.append(n_prompt)
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, n_prompt in enumerate(n_prompts):
        labels[row, :n_prompt] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(600):  # noqa: B007 -- one batch of all (prompt, target) pairs; stops early, typically within ~300 steps
        opt.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        if loss.item() < math.log(2) / 24 + 0.003:  # only the GOOD/BAD choice left uncertain
            break
    print(f"warm-up: {step + 1} steps, loss {loss.item():.4f}")
    model.eval()
    final = out / "final"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(final)
    processor.save_pretrained(final)
    write_manifest(final, StageManifest(stage="sft2", started_from=str(tiny_model_dir), base_model="tiny",
                                        config={}, config_hash="test", data_fingerprint="test"))
    return out


def _cfg(task: _Task, sft2_dir: Path, out: Path, **train_kw) -> GRPOConfig:
    train = dict(learning_rate=5e-4, per_device_batch_size=4, max_steps=12, save_steps=100, logging_steps=1,
                 bf16=False, gradient_checkpointing=False, warmup_ratio=0.0, lr_scheduler="constant", seed=0)
    train.update(train_kw)
    return GRPOConfig(
        output_dir=str(out),
        init_from=str(sft2_dir),
        model=ModelSection(name_or_path="tiny", dtype="float32"),
        frames=FramesSection(num_candidates=T, max_pixels=PIX, min_pixels=PIX),
        data=TaskFilesSection(train_file=str(task.train_file)),
        train=TrainSection(**train),
        grpo=GRPOSection(num_generations=4, beta=0.01, max_completion_length=32, temperature=1.0),
        reward=RewardSection(weights={"downstream_logprob": 1.0, "format": 0.5}, k=4, mode="focused",
                             downstream=DownstreamSection(max_pixels=PIX)),
    )


class _LogRecorder:
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def __call__(self):
        from transformers import TrainerCallback

        rec = self

        class CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "rewards/downstream_logprob/mean" in logs:
                    rec.logs.append(dict(logs))

        return CB()


def _sampled_mean_reward(model_dir: Path, task: _Task, n: int = 16) -> tuple[float, float]:
    """(mean total reward, p of the GOOD answer) of a policy: n sampled completions per prompt, scored like GRPO."""
    from data_builder.video import FrameCache
    from rewards.registry import build_rewards
    from stages.modeling import load_pretrained, load_processor

    torch.manual_seed(1)
    model = load_pretrained(str(model_dir)).eval()
    proc = load_processor(str(model_dir))
    cfg = _cfg(task, model_dir, model_dir).reward
    funcs, weights, _ = build_rewards(cfg, backend=task.oracle())
    frames = FrameCache()
    totals, p_good = [], []
    for ex in task.examples:
        imgs = frames.images(ex.video, ex.frame_indices, max_pixels=PIX)
        enc, n_prompt = _encode(proc, ex, imgs, None)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=32,
                                 num_return_sequences=n)
        texts = proc.batch_decode(out[:, n_prompt:], skip_special_tokens=True)
        cols = dict(video=[ex.video] * n, question=[ex.question] * n, options=[ex.options] * n, answer=[ex.answer] * n)
        per_func = [f([None] * n, texts, **cols) for f in funcs]
        totals += [sum(w * r[i] for w, r in zip(weights, per_func)) for i in range(n)]
        p_good.append(math.exp(_target_logprob(model, proc, ex, imgs, GOOD)))
    return sum(totals) / len(totals), sum(p_good) / len(p_good)


def test_grpo_raises_the_mean_reward_on_the_synthetic_task(task: _Task, sft2_dir: Path, tmp_path: Path) -> None:
    from stages.grpo import train
    from stages.manifest import read_manifest

    reward_before, p_before = _sampled_mean_reward(sft2_dir / "final", task)
    assert 0.3 < p_before < 0.7, f"warm-up should leave GOOD/BAD near even odds, got p(GOOD)={p_before:.2f}"

    rec = _LogRecorder()
    final = train(_cfg(task, sft2_dir, tmp_path / "grpo"), backend=task.oracle(), callbacks=[rec()])

    reward_after, p_after = _sampled_mean_reward(final, task)
    logged = [round(entry["rewards/downstream_logprob/mean"], 2) for entry in rec.logs]
    print(f"p(GOOD) {p_before:.3f} -> {p_after:.3f}; mean reward {reward_before:.3f} -> {reward_after:.3f}; "
          f"logged per step {logged}")
    assert p_after > p_before + 0.2, f"p(GOOD) {p_before:.2f} -> {p_after:.2f}"
    assert reward_after > reward_before + 0.15, f"mean reward {reward_before:.2f} -> {reward_after:.2f} in 12 steps"
    # every step logged each reward component's mean and the downstream reward's own metrics
    assert len(logged) == 12
    assert {"rewards/format/mean", "downstream/p_answer", "downstream/fallback_rate", "kl"} <= set(rec.logs[-1])
    manifest = read_manifest(final)
    assert manifest is not None and manifest.stage == "grpo" and manifest.started_from == str(sft2_dir / "final")
    assert manifest.global_step == 12 and manifest.config["grpo"]["beta"] == 0.01


def test_grpo_resumes_from_its_last_complete_checkpoint(task: _Task, sft2_dir: Path, tmp_path: Path) -> None:
    from stages.grpo import train
    from stages.manifest import read_manifest

    out = tmp_path / "grpo"
    train(_cfg(task, sft2_dir, out, max_steps=2, save_steps=2), backend=task.oracle())
    assert (out / "checkpoint-2").is_dir()
    final = train(_cfg(task, sft2_dir, out, max_steps=3, save_steps=2), backend=task.oracle())
    manifest = read_manifest(final)
    assert manifest.global_step == 3 and manifest.resumed_from == str(out / "checkpoint-2")
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_grpo_task_file_and_recipe_errors_are_clear(task: _Task, tmp_path: Path) -> None:
    from pipeline.core.config import load_stage_config
    from pipeline.core.errors import ConfigError, DataError
    from stages.grpo import grpo_args, load_grpo_examples

    bad = task.examples[0].model_copy(update={"options": ["triangle"], "answer": 0})
    atomic_write_jsonl(tmp_path / "bad.jsonl", [bad])
    with pytest.raises(DataError, match=r"bad.jsonl: example 1 \(v0:mcq\): the reward needs at least two options"):
        load_grpo_examples(str(tmp_path / "bad.jsonl"))
    cfg = load_stage_config("grpo", "configs/tiny/grpo.yaml", ["train.per_device_batch_size=3"])
    with pytest.raises(ConfigError, match="divisible by num_generations"):
        grpo_args(cfg, [1.0, 0.5])
    for size in ("tiny", "qwen2_5_vl_3b"):
        cfg = load_stage_config("grpo", f"configs/{size}/grpo.yaml", ["train.bf16=false"])  # CPU here
        args = grpo_args(cfg, [1.0, 0.5])
        assert args.beta == 0.01 and args.num_generations == cfg.grpo.num_generations
