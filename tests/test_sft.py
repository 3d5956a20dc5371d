"""SFT1 and SFT2 with the tiny local Qwen2.5-VL on CPU.

What a researcher needs to trust before spending GPU-days: the loss is only on the answer, the model can learn
the output grammar from our prompts (overfit), a killed run resumes exactly where its last complete checkpoint
was, two-process DeepSpeed ZeRO-2 runs, and SFT2 really starts from SFT1's final weights.
Task files are made here from real short videos (../shared/data) with the project's one prompt renderer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from pipeline.core.config import SFTConfig
from pipeline.core.contracts import KeyClip, TrainingExample
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import atomic_write_jsonl
from pipeline.core.prompt import format_clips, parse_clips, render_selector_messages

ROOT = Path(__file__).resolve().parents[1]
T = 8  # candidate frames per example: small, so a step takes a fraction of a second
PIXELS = 3136  # one 56x56 frame = 4 visual tokens in the tiny model

SFT2_SPECS = [  # (video, query, target clips)
    ("bikes.mp4", "When does the cyclist pass the camera?", [KeyClip(start_s=2.0, end_s=5.5, priority="P1", reason="cyclist passes")]),
    ("bikes.mp4", "What happens at the end?", [KeyClip(start_s=1.0, end_s=2.0, priority="P2", reason="road"),
                                              KeyClip(start_s=7.5, end_s=10.0, priority="P1", reason="the end")]),
    ("fades.mp4", "When does the picture fade to black?", [KeyClip(start_s=4.0, end_s=6.0, priority="P1", reason="fade out")]),
]
SFT1_SPECS = [  # (video, caption, scene span)
    ("bikes.mp4", "a cyclist rides along the road", (0.0, 5.0)),
    ("fades.mp4", "the scene fades out", (3.0, 6.5)),
    ("fades.mp4", "the first shot", (0.0, 3.0)),
]


def _example(video: Path, ex_id: str, task: str, request: str, target: str) -> TrainingExample:
    from data_builder.video import read_video_info, sample_candidates

    info = read_video_info(video)
    idx, ts = sample_candidates(video, T)
    kind = task.split(".", 1)[1] if task.startswith("sft1.") else "key_clips"
    messages = render_selector_messages(ts, request, task=kind, duration_s=info.duration_s)
    messages.append({"role": "assistant", "content": target})
    return TrainingExample.model_validate(
        {"id": ex_id, "task": task, "video": str(video), "frame_indices": idx, "timestamps_s": ts,
         "messages": messages, "num_frames": info.num_frames, "duration_s": info.duration_s}
    )


@pytest.fixture(scope="module")
def task_files(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tasks")
    videos = shared_data / "videos"
    sft2 = [
        _example(videos / v, f"sft2-{i}", "sft2.key_clips", q, format_clips(clips)).model_copy(update={"target_clips": clips})
        for i, (v, q, clips) in enumerate(SFT2_SPECS)
    ]
    sft1 = [
        _example(videos / v, f"sft1-{i}", "sft1.caption_to_scene", cap, json.dumps({"start": s, "end": e}))
        for i, (v, cap, (s, e)) in enumerate(SFT1_SPECS)
    ]
    files = {"sft1": out / "sft1.train.jsonl", "sft2": out / "sft2.train.jsonl"}
    atomic_write_jsonl(files["sft1"], sft1)
    atomic_write_jsonl(files["sft2"], sft2)
    return files


def _cfg(stage: str, out: Path, train_file: Path, *, init_from: Path | None = None, lora: bool = False,
         eval_file: Path | None = None, **train) -> SFTConfig:
    defaults = {"learning_rate": 3e-3, "per_device_batch_size": 3, "max_steps": 4, "save_steps": 2, "logging_steps": 1,
                "bf16": False, "gradient_checkpointing": False, "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    return SFTConfig.model_validate({
        "stage": stage,
        "output_dir": str(out),
        "init_from": str(init_from) if init_from else None,
        "model": {"name_or_path": "tiny", "dtype": "float32", "attn_implementation": "sdpa"},
        "lora": {"enabled": lora, "r": 8, "alpha": 16, "dropout": 0.0},
        "frames": {"num_candidates": T, "max_pixels": PIXELS, "min_pixels": PIXELS, "cache_size": 4},
        "data": {"train_file": str(train_file), "eval_file": str(eval_file) if eval_file else None},
        "train": {**defaults, **train},
    })


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a small shared CPU box the tiny model trains several times faster than with many."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _tiny_cache(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'tiny' in a recipe resolves to the session's tiny model (built once under $KFRAMES_CACHE)."""
    monkeypatch.setenv("KFRAMES_CACHE", str(tiny_model_dir.parent))


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ------------------------------------------------------------------------------------------------------------
# Batches: frames decoded at batch time, loss only on the answer
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "real-processor"])
def test_trainer_batches_mask_everything_but_the_answer(task_files, tmp_path, model, request):
    """The collator the SFT trainer actually uses labels exactly the assistant's answer (+ its end token): with the
    on-the-spot tokenizer's template (generation markers), and with the real Qwen2.5-VL processor's published
    template, which has none and which TRL swaps for its own training copy."""
    from stages.batches import dataset_from_file
    from stages.common import load_model_and_processor
    from stages.sft import build_trainer

    cfg = _cfg("sft2", tmp_path / "out", task_files["sft2"])
    if model == "real-processor":
        cfg.model.name_or_path = str(request.getfixturevalue("real_processor_model_dir"))
    ds = dataset_from_file(cfg.data.train_file, cfg.frames, task_prefix="sft2.")
    assert ds.column_names == ["example"]  # only JSON is stored; frames appear on access
    model, processor = load_model_and_processor(cfg)
    if model == "real-processor":
        assert "{% generation %}" not in processor.chat_template  # the published template, as shipped
    trainer = build_trainer(cfg, model, processor, ds, None, [])
    rows = [ds[i] for i in range(len(ds))]
    assert all(len(r["images"]) == T for r in rows)
    batch = trainer.data_collator(rows)
    assert batch["image_grid_thw"].shape[0] == T * len(rows)
    for row, labels, ids in zip(rows, batch["labels"], batch["input_ids"]):
        answer = row["messages"][-1]["content"]
        kept = labels[labels != -100]
        # TRL's training copy of the published template also labels the newline after the end token
        assert processor.tokenizer.decode(kept) in (answer + "<|im_end|>", answer + "<|im_end|>\n")
        # the kept labels are the input tokens at the same positions (no shift or offset mistakes)
        assert torch.equal(ids[labels != -100], kept)
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not (batch["labels"] == image_token).any()


def test_each_timestamp_stands_before_its_own_frames_vision_tokens(real_processor_model_dir):
    """With the real processor, `<t=...s>` i is followed by frame i's vision tokens, and no other frame's: frames of
    different sizes give different token counts, so a shift would show."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(real_processor_model_dir)
    sizes = [(56, 56), (112, 56), (56, 168), (224, 112)]  # 4, 8, 12 and 32 visual tokens after the 2x2 merge
    times = [0.0, 1.5, 3.0, 12.4]
    messages = render_selector_messages(times, "what happens?", duration_s=20.0)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[Image.new("RGB", s) for s in sizes], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    tok = processor.tokenizer
    start, pad, end = (tok.convert_tokens_to_ids(x) for x in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"))
    per_frame = [int(g.prod()) // 4 for g in enc["image_grid_thw"]]
    assert per_frame == [4, 8, 12, 32]
    pos = 0
    for t, n in zip(times, per_frame, strict=True):
        begin = ids.index(start, pos)
        assert tok.decode(ids[pos:begin]).endswith(f"<t={t:.1f}s>")  # the text right before the frame is its time
        assert ids[begin + 1 : begin + 1 + n] == [pad] * n and ids[begin + 1 + n] == end
        pos = begin + n + 2


def test_training_prompt_over_fewer_frames_is_the_inference_prompt(task_files, tiny_model_dir):
    """A recipe with a smaller T than the data stage's trains on the video's own T candidates (the rule inference
    uses), not on a thinned subset of the data stage's frames: the two prompts are identical."""
    from data_builder.video import VideoTimeline
    from pipeline.inference.selector import Selector
    from stages.batches import count_image_placeholders, limit_frames, load_examples

    ex = load_examples(task_files["sft2"], task_prefix="sft2.", require_answer=True)[0]
    timeline = VideoTimeline.read(ex.video)
    small = limit_frames(ex, 3, timeline)
    assert len(small.frame_indices) == len(small.timestamps_s) == count_image_placeholders(small) == 3
    request = SFT2_SPECS[0][1]
    expected = render_selector_messages(small.timestamps_s, request, duration_s=ex.duration_s)[0]["content"]
    assert small.messages[0].content == expected
    assert small.messages[-1] == ex.messages[-1]
    selector = Selector(model=None, processor=None, num_candidates=3, max_pixels=3136)
    frames, inference = selector.messages(timeline, request)
    assert frames == small.frame_indices and inference == [m.model_dump() for m in small.messages[:-1]]
    assert limit_frames(ex, T, timeline) is ex  # the data stage's own T: unchanged
    # without a timeline (token counting), the same number of frames and the same prompt shape
    counted = limit_frames(ex, 3)
    assert count_image_placeholders(counted) == 3 and set(counted.frame_indices) <= set(ex.frame_indices)


def test_task_file_problems_are_named(task_files, tmp_path):
    from stages.batches import load_examples

    with pytest.raises(DataError, match=r"sft1\.caption_to_scene.*not a sft2 task"):
        load_examples(task_files["sft1"], task_prefix="sft2.", require_answer=True)
    ex = load_examples(task_files["sft2"], task_prefix="sft2.", require_answer=True)[0]
    no_answer = tmp_path / "no_answer.jsonl"
    atomic_write_jsonl(no_answer, [ex.model_copy(update={"messages": ex.messages[:-1]})])
    with pytest.raises(DataError, match="assistant's answer"):
        load_examples(no_answer, task_prefix="sft2.", require_answer=True)


# ------------------------------------------------------------------------------------------------------------
# Model: frozen vision encoder, trained projector and LLM, LoRA only on the language model
# ------------------------------------------------------------------------------------------------------------


def test_vision_frozen_projector_and_llm_trained(task_files, tmp_path):
    from stages.common import load_model_and_processor

    model, processor = load_model_and_processor(_cfg("sft2", tmp_path, task_files["sft2"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all(n.startswith("model.visual.merger.") for n in trainable if n.startswith("model.visual."))
    assert any(n.startswith("model.visual.merger.") for n in trainable)
    assert any(n.startswith("model.language_model.layers.") for n in trainable)
    assert not any(n.startswith("model.visual.blocks.") for n in trainable)
    assert processor.image_processor.size["longest_edge"] == PIXELS

    lora_model, _ = load_model_and_processor(_cfg("sft2", tmp_path, task_files["sft2"], lora=True))
    names = {n for n, p in lora_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "language_model" in n for n in names)
    assert not any("lora_" in n and "visual" in n for n in names)  # vision MLP names match, but it is frozen
    assert any("merger" in n for n in names)  # projector fully trained (modules_to_save)
    assert all("lora_" in n or "merger" in n for n in names)


# ------------------------------------------------------------------------------------------------------------
# (a) SFT2 learns the grammar: greedy output parses and equals the target clips
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft2_overfits_until_greedy_output_is_the_target(task_files, tmp_path):
    from data_builder.video import FrameCache
    from stages.common import read_manifest
    from stages.modeling import load_pretrained, load_processor
    from stages.registry import train_stage

    cfg = _cfg("sft2", tmp_path / "sft2", task_files["sft2"], max_steps=200, save_steps=1000, logging_steps=50)
    final = train_stage("sft2", cfg)
    manifest = read_manifest(final)
    assert manifest.stage == "sft2" and manifest.global_step == 200
    assert manifest.metrics["last_mean_token_accuracy"] > 0.9

    model, processor = load_pretrained(str(final)), load_processor(str(final))
    model.eval()
    cache = FrameCache()
    from stages.batches import load_examples

    for ex in load_examples(task_files["sft2"], task_prefix="sft2.", require_answer=True):
        prompt = processor.apply_chat_template([m.model_dump() for m in ex.messages[:-1]], add_generation_prompt=True)
        images = cache.images(ex.video, ex.frame_indices, max_pixels=PIXELS)
        inputs = processor(text=[prompt], images=images, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=96, do_sample=False)
        text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        parsed = parse_clips(text, ex.duration_s)
        assert parsed.ok, f"{ex.id}: {parsed.error}: {text!r}"
        assert parsed.clips == sorted(ex.target_clips, key=lambda c: c.start_s), text


# ------------------------------------------------------------------------------------------------------------
# (b) Killed after its first checkpoint, restarted: same end as an uninterrupted run
# ------------------------------------------------------------------------------------------------------------


class _Killed(RuntimeError):
    pass


class _KillAfterFirstSave(TrainerCallback):
    """Stands in for a job killed right after its first checkpoint (runs after the completeness marker)."""

    def on_save(self, args, state, control, **kwargs):
        raise _Killed(f"killed after saving step {state.global_step}")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_killed_run_resumes_from_newest_complete_checkpoint(task_files, tmp_path, lora):
    from stages.checkpoints import COMPLETE_MARKER, find_resume_checkpoint
    from stages.common import read_manifest
    from stages.registry import train_stage

    out = tmp_path / "run"
    cfg = _cfg("sft2", out, task_files["sft2"], lora=lora, per_device_batch_size=1, max_steps=6, save_steps=2)
    with pytest.raises(_Killed):
        train_stage("sft2", cfg, callbacks=[_KillAfterFirstSave()])
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file()  # marked before the kill
    assert not (out / "final").exists()
    # a save that was cut short: files present, marker absent; it must never be resumed from
    half = out / "checkpoint-4"
    half.mkdir()
    (half / ("adapter_model.safetensors" if lora else "model.safetensors")).write_bytes(b"truncated")
    (half / "trainer_state.json").write_text('{"global_step": 4')
    assert find_resume_checkpoint(out) == str(out / "checkpoint-2")
    # another recipe into the same folder does not continue this run's checkpoint as if it were its own
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 2 * cfg.train.learning_rate})})
    with pytest.raises(ConfigError, match=r"checkpoint-2 was saved by a run with another config.*--no-resume"):
        train_stage("sft2", changed)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # nothing removed

    final = train_stage("sft2", cfg)
    resumed = read_manifest(final)
    assert resumed.resumed_from == str(out / "checkpoint-2")
    assert resumed.global_step == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all((p / COMPLETE_MARKER).is_file() for p in out.glob("checkpoint-*"))

    ref_out = tmp_path / "reference"
    ref = read_manifest(train_stage("sft2", _cfg("sft2", ref_out, task_files["sft2"], lora=lora,
                                                  per_device_batch_size=1, max_steps=6, save_steps=2)))
    for field in ("stage", "started_from", "base_model", "data_fingerprint", "global_step", "num_train_examples", "lora"):
        assert getattr(resumed, field) == getattr(ref, field), field
    assert {k: v for k, v in resumed.config.items() if k != "output_dir"} == \
        {k: v for k, v in ref.config.items() if k != "output_dir"}
    assert set(resumed.metrics) == set(ref.metrics)
    # same data order, optimizer and RNG state after the restart: the same weights as the uninterrupted run
    a, b = _state(final), _state(ref_out / "final")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)

    # a finished stage with the same recipe and data is not trained again
    assert train_stage("sft2", cfg) == final and read_manifest(final).finished_at == resumed.finished_at
    # ... unless its final/ no longer holds what was saved (a truncated copy): then it is trained again
    from stages.manifest import verify_final

    weights = final / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert train_stage("sft2", cfg) == final
    again = read_manifest(final)
    assert again.finished_at != resumed.finished_at and verify_final(final, again) == []
    # --no-resume starts over: earlier checkpoints (even complete ones) are not resumed from
    stale = out / "checkpoint-100"
    stale.mkdir()
    (stale / COMPLETE_MARKER).write_text("{}")
    restarted = read_manifest(train_stage("sft2", cfg, resume=False))
    assert restarted.resumed_from is None and restarted.global_step == 6 and not stale.exists()


def test_a_damaged_complete_checkpoint_is_passed_over_for_the_one_before(tmp_path):
    import json

    from stages.checkpoints import COMPLETE_MARKER, find_resume_checkpoint

    for step in (2, 4):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 1000)
        (d / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": {"model.safetensors": {"size": 1000}}}))
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"x" * 10)  # cut short after it was marked
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_a_loss_that_is_not_a_number_stops_training_before_anything_is_saved():
    from types import SimpleNamespace

    from stages.guards import FiniteLossCallback, TrainingDiverged

    args, state = SimpleNamespace(output_dir="runs/x", learning_rate=1e3), SimpleNamespace(global_step=7)
    FiniteLossCallback().on_log(args, state, None, logs={"loss": 1.25, "grad_norm": 3.0})
    with pytest.raises(TrainingDiverged, match=r"step 7: loss is nan.*learning_rate, now 1000"):
        FiniteLossCallback().on_log(args, state, None, logs={"loss": float("nan")})


def test_resume_point_is_the_newest_complete_checkpoint(tmp_path):
    from stages.checkpoints import COMPLETE_MARKER, discard_incomplete_checkpoints, find_resume_checkpoint

    for step, complete in ((2, True), (4, True), (10, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert discard_incomplete_checkpoints(tmp_path) == [tmp_path / "checkpoint-10"]
    assert find_resume_checkpoint(tmp_path / "missing") is None


def test_checkpoints_of_another_run_are_told_apart_by_their_run_key(tmp_path):
    from types import SimpleNamespace

    from stages.checkpoints import CompleteCheckpointCallback, checkpoint_run_key, foreign_checkpoints

    for step, key in ((2, "run-a"), (4, "run-b"), (6, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=step, is_world_process_zero=True)
        CompleteCheckpointCallback(key).on_save(args, state, None)
    assert [checkpoint_run_key(tmp_path / f"checkpoint-{s}") for s in (2, 4, 6)] == ["run-a", "run-b", None]
    assert foreign_checkpoints(tmp_path, "run-a") == [tmp_path / "checkpoint-4"]  # no key: written before keys


def test_run_key_follows_config_data_and_starting_model_but_not_length_or_server_addresses():
    from stages.common import run_key
    from stages.manifest import StageManifest

    config = {"train": {"learning_rate": 1e-3}, "reward": {"downstream": {"url": "http://node-a:8000/v1"}},
              "grpo": {"vllm_server_url": None}}
    base = run_key(config, "data-1", None)
    moved = {**config, "reward": {"downstream": {"url": "http://node-b:9000/v1"}}, "grpo": {"vllm_server_url": "x"}}
    assert run_key(moved, "data-1", None) == base  # a requeue on another node resumes
    longer = {**config, "train": {"learning_rate": 1e-3, "max_steps": 500, "save_steps": 50}, "output_dir": "moved"}
    assert run_key(longer, "data-1", None) == base  # training for longer continues the run
    assert run_key({**config, "train": {"learning_rate": 2e-3}}, "data-1", None) != base
    assert run_key(config, "data-2", None) != base
    sft1 = StageManifest(stage="sft1", started_from="demo", base_model="demo", config={}, config_hash="c",
                         data_fingerprint="d", global_step=10)
    assert run_key(config, "data-1", sft1) != base
    assert run_key(config, "data-1", sft1.model_copy(update={"global_step": 20})) != run_key(config, "data-1", sft1)


# ------------------------------------------------------------------------------------------------------------
# (d) SFT1 -> SFT2 handoff (SFT1 with LoRA, merged into its final model)
# ------------------------------------------------------------------------------------------------------------


class _StartWeights(TrainerCallback):
    """Keeps a copy of the model's weights when training begins."""

    state: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_sft1_to_sft2_handoff(task_files, tmp_path, tiny_model_dir):
    from stages.common import read_manifest, resolve_model_path
    from stages.modeling import load_pretrained
    from stages.registry import train_stage

    sft1_out, sft2_out = tmp_path / "sft1", tmp_path / "sft2"
    sft2_cfg = _cfg("sft2", sft2_out, task_files["sft2"], init_from=sft1_out, max_steps=2, save_steps=2)
    with pytest.raises(ConfigError, match="run the previous stage first"):
        train_stage("sft2", sft2_cfg)

    sft1_cfg = _cfg("sft1", sft1_out, task_files["sft1"], lora=True, eval_file=task_files["sft1"], max_steps=3)
    sft1_final = train_stage("sft1", sft1_cfg)
    m1 = read_manifest(sft1_out)
    assert m1.lora == "merged" and not (sft1_final / "adapter_config.json").exists()
    assert m1.metrics["eval_loss"] > 0 and m1.data_files == {"train": str(task_files["sft1"]),
                                                             "eval": str(task_files["sft1"])}
    base, tuned = _state(tiny_model_dir), _state(sft1_final)
    assert base.keys() == tuned.keys()  # a plain model: the adapter is merged away
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    # (saved with the hub's key names: `model.layers.*` is the LLM, `visual.*` the vision tower)
    assert any(k.startswith("model.layers.") and "proj" in k for k in changed)  # LoRA merged into the LLM
    assert any(k.startswith("visual.merger.") for k in changed)  # projector trained
    assert not any(k.startswith(("visual.blocks.", "visual.patch_embed.")) for k in changed)  # vision frozen

    assert resolve_model_path("tiny", str(sft1_out)) == str(sft1_final)
    start = _StartWeights()
    sft2_final = train_stage("sft2", sft2_cfg, callbacks=[start])
    m2 = read_manifest(sft2_final)
    assert m2.started_from == str(sft1_final) and m2.init_from == str(sft1_out)
    assert m2.base_model == "tiny" and m2.global_step == 2
    # the weights SFT2's first step saw are SFT1's final weights, not the base model's
    sft1_model = load_pretrained(str(sft1_final)).state_dict()
    assert start.state.keys() == sft1_model.keys()
    for key, value in sft1_model.items():
        assert torch.equal(start.state[key], value), key
    # SFT2 then trained: the frozen vision tower is still SFT1's, the LLM moved on
    sft2_state = _state(sft2_final)
    assert torch.equal(sft2_state["visual.blocks.0.attn.qkv.weight"], tuned["visual.blocks.0.attn.qkv.weight"])
    assert not torch.equal(sft2_state["model.layers.0.mlp.up_proj.weight"], tuned["model.layers.0.mlp.up_proj.weight"])


# ------------------------------------------------------------------------------------------------------------
# (c) Two processes, DeepSpeed ZeRO-2 over gloo, through `accelerate launch`
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("zero", "lora", "port"),
    [("zero2", False, 29517), ("zero3", True, 29518)],  # ZeRO-3 + LoRA: the adapter merge runs on rank 0 alone
    ids=["zero2", "zero3-lora"],
)
def test_two_process_deepspeed_over_gloo(task_files, tmp_path, tiny_model_dir, zero, lora, port):
    import yaml

    out = tmp_path / zero
    cfg = _cfg("sft2", out, task_files["sft2"], lora=lora, per_device_batch_size=1, max_steps=3, save_steps=2)
    recipe = tmp_path / "sft2.yaml"
    recipe.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "KFRAMES_CACHE": str(tiny_model_dir.parent), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{zero}.yaml",
           "--num_processes", "2", "--main_process_port", str(port), "-m", "stages.sft2", "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)  # a loaded 2-core box is slow
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    manifest = json.loads((out / "final" / "stage.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == 3
    assert manifest["lora"] == ("merged" if lora else "none")
    ckpt = out / "checkpoint-2"
    assert (ckpt / "kframes_complete.json").is_file()
    shards = sorted(p.name for p in (ckpt / "global_step2").glob("*_optim_states.pt"))
    assert len(shards) == 2 and "rank_0" in shards[0] and "rank_1" in shards[1]  # optimizer state sharded over 2
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    # the final model is a complete plain model (gathered from the shards, adapter merged)
    final, base = _state(out / "final"), _state(tiny_model_dir)
    assert set(base) <= set(final)  # (a DeepSpeed save may also write the tied lm_head)
    if "lm_head.weight" in final:
        assert torch.equal(final["lm_head.weight"], final["model.embed_tokens.weight"])
    assert not any(torch.equal(final[k], base[k]) for k in base if k.startswith("model.layers.0.mlp"))


# ------------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------------


def test_cli_errors_are_one_line(tmp_path, capsys):
    from pipeline.cli.main import main

    assert main(["train", "sft2", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and err.count("\n") == 1

    bad = tmp_path / "sft1.yaml"
    bad.write_text("stage: sft1\noutput_dir: x\ndata: {train_file: t.jsonl}\n")
    assert main(["train", "sft2", "--config", str(bad)]) == 2
    assert "not 'sft2'" in capsys.readouterr().err
