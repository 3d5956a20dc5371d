"""The PeakClips builder: relevance parsing and failures, P1/P2 clips, the sparsity filter, task files, and whole
builds (synthetic videos with known answers; two real videos from ../shared/data with the tiny model, with an
interrupted run resumed)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from data_builder.captions import build_chapters, parse_chapters
from data_builder.clips import clips_from_scores, is_sparse_enough, keyframe_sparsity
from data_builder.llm import LLMRequest
from data_builder.relevance import LexicalScorer, LLMScorer, VideoContext, bm25, fuse, parse_score
from data_builder.tasks import split_videos
from pipeline.cli.basic import validate_file
from pipeline.core.config import DataConfig
from pipeline.core.contracts import Chapter, PeakClipsRecord, Query, Scene, SceneCaption, SceneScore, TrainingExample
from pipeline.core.io import read_jsonl, read_jsonl_models
from pipeline.core.prompt import format_clips, parse_clips


def _scenes(bounds: Sequence[float], fps: float = 10.0) -> list[Scene]:
    return [
        Scene(index=i, start_frame=round(a * fps), end_frame=round(b * fps), start_s=a, end_s=b)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def _score(i: int, s: float, reason: str = "") -> SceneScore:
    return SceneScore(scene_index=i, llm_score=s, score=s, reason=reason or f"r{i}")


class ScriptedLLM:
    """A backend whose answers are given by a function of the prompt; records every prompt it saw."""

    identity = "scripted"

    def __init__(self, answer) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def generate(self, requests: Sequence[LLMRequest]) -> list[str]:
        self.prompts.extend(r.prompt for r in requests)
        return [self.answer(r.prompt) for r in requests]


# ----------------------------------------------------------------------------------------------------
# Clips and sparsity
# ----------------------------------------------------------------------------------------------------


def test_clips_thresholds_merging_and_reasons():
    scenes = _scenes([0, 2, 4, 6, 8, 10, 12])
    scores = [_score(0, 2), _score(1, 5, "ball"), _score(2, 4.95, "kick"), _score(3, 4.5, "crowd"), _score(5, 4.9)]
    clips = clips_from_scores(scenes, scores)  # scene 4 has no score: it breaks runs and gets no clip
    assert [(c.start_s, c.end_s, c.priority) for c in clips] == [(2, 6, "P1"), (6, 8, "P2"), (10, 12, "P1")]
    assert clips[0].reason == "ball; kick"
    unmerged = clips_from_scores(scenes, scores, merge_adjacent=False)
    assert [(c.start_s, c.end_s) for c in unmerged][:2] == [(2, 4), (4, 6)]
    # thresholds are configurable, and the clips round-trip through the selector's output grammar
    assert [c.priority for c in clips_from_scores(scenes, scores, p1=5.0, p2=4.0)] == ["P1", "P2", "P2"]
    parsed = parse_clips(format_clips(clips), duration_s=12.0)
    assert parsed.ok and [(c.start_s, c.end_s, c.priority) for c in parsed.clips] == [
        (c.start_s, c.end_s, c.priority) for c in clips
    ]


def test_sparsity_filter_keeps_peaked_and_drops_flat_relevance():
    scenes = _scenes([0, 5, 50, 100])
    peaked = [_score(0, 5), _score(1, 1), _score(2, 1)]
    flat = [_score(0, 5), _score(1, 5), _score(2, 4.5)]
    s_peaked = keyframe_sparsity(scenes, peaked, 100.0, points=64)
    s_flat = keyframe_sparsity(scenes, flat, 100.0, points=64)
    assert s_peaked > 10 and is_sparse_enough(s_peaked, 1.5)
    assert 1.0 <= s_flat < 1.5 and not is_sparse_enough(s_flat, 1.5)
    assert keyframe_sparsity(scenes, [], 100.0) == pytest.approx(1.0)  # nothing scored: flat


# ----------------------------------------------------------------------------------------------------
# Relevance
# ----------------------------------------------------------------------------------------------------


def _ctx(n: int = 3) -> VideoContext:
    scenes = _scenes([float(2 * i) for i in range(n + 1)])
    return VideoContext(
        video_path="v.mp4", scenes=scenes, captions={s.index: f"caption {s.index}" for s in scenes},
        chapters=[Chapter(scene_start=0, scene_end=n - 1, text="the chapter")], summary="the summary",
    )


def test_parse_score_accepts_prose_and_rejects_out_of_range():
    assert parse_score('Sure! ```json\n{"score": 4, "reason": "shows the ball"}\n```').score == 4
    with pytest.raises(ValueError, match="score"):
        parse_score('{"score": 7, "reason": "x"}')
    with pytest.raises(ValueError, match="no JSON"):
        parse_score("I think it is a 4.")


def test_llm_scorer_reasks_with_the_reason_then_records_failures():
    def answer(prompt: str) -> str:
        if "Scene (0.0s" in prompt:  # scene 0: always garbage
            return "no idea"
        if "Scene (2.0s" in prompt and "previous answer" not in prompt:  # scene 1: fixed on re-ask
            return '{"score": 9}'
        return '{"score": 5, "reason": "key"}'

    llm = ScriptedLLM(answer)
    q = Query(query_id="q", text="Where is the ball?", options=["red", "blue"], answer=1)
    [res] = LLMScorer(llm, max_reasks=2).score(_ctx(), [q])
    assert [s.scene_index for s in res.scores] == [1, 2] and all(s.score == 5 for s in res.scores)
    assert len(res.failures) == 1 and res.failures[0].startswith("scene 0: no JSON object found")
    assert len(llm.prompts) == 3 + 2 + 1  # everything, then scenes 0 and 1, then scene 0 again: bounded
    reask = next(p for p in llm.prompts if "Scene (2.0s" in p and "previous answer" in p)
    assert "'{\"score\": 9}'" in reask and "less than or equal to 5" in reask
    first = llm.prompts[0]  # the caption hierarchy, the options and the known answer are in the prompt
    assert all(s in first for s in ("the summary", "the chapter", "caption 0", "(B) blue", "Correct answer: blue"))


def test_lexical_scorer_prefers_the_distinctive_words():
    ranked = bm25("red circle", ["a white circle on a red background", "a black square on a red background",
                                 "a white star on a blue background"])
    assert ranked[0][0] > ranked[1][0] > ranked[2][0] == 0 and ranked[0][1] == ["red", "circle"]
    ctx = _ctx()
    ctx.captions = {0: "a dog runs", 1: "a red ball rolls", 2: "nothing here"}
    [res] = LexicalScorer().score(ctx, [Query(query_id="q", text="Which balls are red?")])
    assert [s.score for s in res.scores] == [1.0, 5.0, 1.0] and "ball" in res.scores[1].reason


def test_similarity_fusion_formula():
    assert fuse(5, 1.0, 0.5) == 5 and fuse(5, 0.4, 0.5) == pytest.approx(4.9) and fuse(5, 0.3, 0.5) < 4.9
    assert fuse(4, 1.0, 0.5) == 4.5 and fuse(4, 0.8, 0.5) == pytest.approx(4.3) and fuse(1, 0.0, 0.5) == 1


def test_similarity_refiner_with_a_tiny_clip(tmp_path):
    from data_builder.relevance import ScoringResult, SimilarityRefiner
    from data_builder.synthetic import make_sample_videos
    from data_builder.video import FrameCache

    video = make_sample_videos(tmp_path, 1, seed=3, min_scenes=3, max_scenes=3)[0]
    scenes = video.true_scenes()
    ctx = VideoContext(str(video.path), scenes, dict(enumerate(video.captions)), frame_cache=FrameCache(2))
    refiner = SimilarityRefiner("tiny-clip", weight=0.5, frames_per_scene=2)
    base = ScoringResult([_score(s.index, 4.0) for s in scenes])
    out = refiner.refine(ctx, video.queries[0].to_query(), base)
    sims = [s.sim for s in out.scores]
    assert all(-1 <= s <= 1 for s in sims) and len(set(sims)) == 3
    lo, hi = min(sims), max(sims)
    for s in out.scores:  # the documented formula, end to end
        assert s.score == pytest.approx(fuse(4.0, (s.sim - lo) / (hi - lo), 0.5), abs=1e-3)
    assert max(s.score for s in out.scores) == pytest.approx(4.5)


# ----------------------------------------------------------------------------------------------------
# Chapters, split
# ----------------------------------------------------------------------------------------------------


def test_chapters_must_partition_the_scenes_else_fixed_fallback():
    ids = [0, 1, 2, 3]
    good = '[{"start_scene": 0, "end_scene": 1, "text": "a"}, {"start_scene": 2, "end_scene": 3, "text": "b"}]'
    assert [(c.scene_start, c.scene_end) for c in parse_chapters(good, ids)] == [(0, 1), (2, 3)]
    with pytest.raises(ValueError, match="in no chapter"):
        parse_chapters('[{"start_scene": 0, "end_scene": 1}]', ids)
    with pytest.raises(ValueError, match="does not continue"):
        parse_chapters('[{"start_scene": 0, "end_scene": 1}, {"start_scene": 3, "end_scene": 3}]', ids)
    scenes = _scenes([0, 1, 2, 3, 4, 5])
    caps = [SceneCaption(scene_index=s.index, text=f"c{s.index}") for s in scenes]
    llm = ScriptedLLM(lambda p: "not json" if "Group" in p else "described")
    res = build_chapters(llm, scenes, caps, grouping="llm", chapter_size=2, max_reasks=1)
    assert [(c.scene_start, c.scene_end, c.text) for c in res.chapters] == [(0, 1, "described"), (2, 3, "described"), (4, 4, "described")]
    assert res.method.startswith("fixed (llm grouping failed") and len(res.problems) == 2


def test_split_is_by_video_stable_and_never_empty():
    ids = [f"v{i}" for i in range(20)]
    train, val = split_videos(ids, 0.1, seed=0)
    assert len(val) == 2 and not train & val and train | val == set(ids)
    assert split_videos(list(reversed(ids)), 0.1, seed=0) == (train, val)
    assert len(split_videos(["a", "b"], 0.1)[1]) == 1 and split_videos(["a"], 0.1)[1] == set()


# ----------------------------------------------------------------------------------------------------
# Whole builds
# ----------------------------------------------------------------------------------------------------


def _data_cfg(tmp_path: Path, **sections) -> DataConfig:
    raw = {
        "output_dir": str(tmp_path / "out"),
        "scenes": {"min_scene_len_s": 0.5, "max_scene_len_s": 30.0},
        "llm": {"backend": "transformers", "model": "tiny", "max_new_tokens": 8, "batch_size": 8,
                "max_image_pixels": 3136, "backoff_s": 0.0},
        "frames": {"num_candidates": 8},
        "captions": {"frames_per_scene": 2, "chapter_size": 3},
        "tasks": {"val_fraction": 0.3},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return DataConfig.model_validate(raw)


def _assert_valid_files(out: Path) -> None:
    # a stage may have no example of a split (the tiny model writes no usable SFT1 captions): an empty task file is
    # the build's honest output, which `kframes validate` reports as such; every record written must validate
    tasks = [p for p in sorted((out / "tasks").glob("*.jsonl")) if p.read_text().strip()]
    for path in [out / "peakclips.jsonl", *tasks]:
        assert validate_file(str(path)) == [], path


def _split_ids(out: Path, stage: str) -> tuple[set[str], set[str]]:
    return tuple(  # type: ignore[return-value]
        {ex["video"] for ex in read_jsonl(out / "tasks" / f"{stage}.{split}.jsonl")} for split in ("train", "val")
    )


def test_synthetic_build_puts_p1_on_the_answer_scene(tmp_path):
    """Imported captions + user queries + the lexical scorer: no model is loaded, and every query's P1 clip
    is the scene that shows its answer."""
    from data_builder.build import build_peakclips
    from data_builder.synthetic import make_sample_videos

    videos = make_sample_videos(tmp_path / "videos", 4, seed=1, min_scenes=3, max_scenes=5)
    captions = {
        v.video_id: {
            "scenes": [{"start_s": s.start_s, "end_s": s.end_s, "text": c} for s, c in zip(v.scenes, v.captions, strict=True)],
            "chapters": [{"start_s": 0.0, "end_s": v.duration_s, "text": "shapes on coloured backgrounds"}],
            "summary": "A sequence of shapes on coloured backgrounds.",
        }
        for v in videos
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with (tmp_path / "queries.jsonl").open("w") as fh:
        for v in videos:
            for q in v.queries:
                fh.write(json.dumps({"video_id": v.video_id, **q.to_query().model_dump(exclude_none=True)}) + "\n")
    cfg = _data_cfg(
        tmp_path,
        captions={"import_file": str(tmp_path / "captions.json")},
        queries={"source": "user", "file": str(tmp_path / "queries.jsonl")},
        relevance={"scorer": "lexical"},
        clips={"sparsity_filter": True},
    )
    summary = build_peakclips(cfg, videos_dir=tmp_path / "videos", out_dir=tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert summary.complete and not summary.failed and summary.totals["videos"] == 4
    assert summary.totals["p1_clips"] == 8 and summary.totals["dropped_sparse"] == 0

    records = {r.video.video_id: r for r in read_jsonl_models(out / "peakclips.jsonl", PeakClipsRecord)}
    for v in videos:
        rec = records[v.video_id]
        assert len(rec.scenes) == len(v.scenes) and [c.text for c in rec.captions] == v.captions
        by_id = {qa.query.query_id: qa for qa in rec.queries}
        for q in v.queries:
            p1 = [c for c in by_id[q.query_id].clips if c.priority == "P1"]
            assert len(p1) == 1, (q.text, by_id[q.query_id].clips)
            overlap = min(p1[0].end_s, q.end_s) - max(p1[0].start_s, q.start_s)
            assert overlap >= 0.9 * (q.end_s - q.start_s) and overlap >= 0.9 * (p1[0].end_s - p1[0].start_s)

    _assert_valid_files(out)
    sft2 = read_jsonl_models(out / "tasks" / "sft2.train.jsonl", TrainingExample)
    assert sft2 and all(ex.messages[-1].content == format_clips(ex.target_clips) for ex in sft2)
    first_user = sft2[0].messages[0].content
    assert sum(1 for part in first_user if part.get("type") == "image") == len(sft2[0].frame_indices) == 8
    for stage in ("sft1", "sft2", "grpo"):
        train, val = _split_ids(out, stage)
        assert train and val and not train & val  # split by video
    sft1_tasks = {ex["task"] for ex in read_jsonl(out / "tasks" / "sft1.train.jsonl")}
    assert sft1_tasks == {"sft1.caption_to_scene", "sft1.scene_to_caption", "sft1.relevance"}
    grpo = read_jsonl_models(out / "tasks" / "grpo.train.jsonl", TrainingExample)
    assert all(ex.question and ex.options and ex.answer is not None for ex in grpo)
    # every SFT2 target is what the one parser reads back, inside its video
    from pipeline.core.prompt import parse_clips

    for split in ("train", "val"):
        for ex in read_jsonl_models(out / "tasks" / f"sft2.{split}.jsonl", TrainingExample):
            parsed = parse_clips(ex.messages[-1].content, ex.duration_s, strict=True)
            assert parsed.ok and not parsed.dropped, (ex.id, parsed.error)
            assert parsed.clips == ex.target_clips
            assert all(0 <= c.start_s < c.end_s <= ex.duration_s for c in parsed.clips)


@pytest.fixture()
def two_real_videos(shared_data, tmp_path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("bikes.mp4", "testvideo.mp4"):
        os.symlink(shared_data / "videos" / name, folder / name)
    with (tmp_path / "queries.jsonl").open("w") as fh:
        for vid in ("bikes", "testvideo"):
            fh.write(json.dumps({"video_id": vid, "text": f"What happens first in {vid}?",
                                 "options": ["a cut", "a fade", "nothing"], "answer": 0}) + "\n")
            fh.write(json.dumps({"video_id": vid, "text": "Where is the camera?"}) + "\n")
    return folder


def test_build_on_real_videos_with_the_tiny_model_resumes_after_an_interrupt(
    two_real_videos, tmp_path, tiny_model_dir, monkeypatch
):
    from data_builder import build as build_mod

    cfg = _data_cfg(
        tmp_path,
        llm={"model": str(tiny_model_dir)},
        queries={"source": "user", "file": str(tmp_path / "queries.jsonl")},
        relevance={"scorer": "llm", "max_reasks": 1},
    )
    out = tmp_path / "out"
    real_score = LLMScorer.score

    def interrupt_in_second_video(self, ctx, queries):
        # Ctrl-C while scoring the second video, after its captions, chapters and summary were generated
        if ctx.video_path.endswith("testvideo.mp4"):
            raise KeyboardInterrupt
        return real_score(self, ctx, queries)

    monkeypatch.setattr(LLMScorer, "score", interrupt_in_second_video)
    with pytest.raises(KeyboardInterrupt):
        build_mod.build_peakclips(cfg, videos_dir=two_real_videos, out_dir=out, progress=False)
    done = sorted(p.name for p in (out / "videos").glob("*.json"))
    assert done == ["bikes.json"] and not list(out.rglob("*.tmp"))
    first_bytes = (out / "videos" / "bikes.json").read_bytes()
    cached_before = len(list((out / "llm_cache").rglob("*.json")))

    misses: list[int] = []
    real_annotate = build_mod.VideoAnnotator.annotate

    def counting_annotate(self, video_id, path):
        result = real_annotate(self, video_id, path)
        misses.append(self.llm.backend.misses)
        return result

    monkeypatch.setattr(LLMScorer, "score", real_score)
    monkeypatch.setattr(build_mod.VideoAnnotator, "annotate", counting_annotate)
    summary = build_mod.build_peakclips(cfg, videos_dir=two_real_videos, out_dir=out, progress=False)
    assert summary.skipped == ["bikes"] and summary.built == ["testvideo"] and summary.complete
    assert (out / "videos" / "bikes.json").read_bytes() == first_bytes  # not redone
    assert summary.totals["videos"] == 2

    lines = read_jsonl(out / "peakclips.jsonl")
    assert [rec["video"]["video_id"] for rec in lines] == ["bikes", "testvideo"]  # nothing lost or duplicated
    _assert_valid_files(out)
    records = read_jsonl_models(out / "peakclips.jsonl", PeakClipsRecord)
    for rec in records:
        assert len(rec.scenes) >= 2 and [c.scene_index for c in rec.captions] == [s.index for s in rec.scenes]
        covered = sorted(i for ch in rec.chapters for i in range(ch.scene_start, ch.scene_end + 1))
        assert covered == [s.index for s in rec.scenes] and rec.summary is not None
        assert len(rec.queries) == 2
        for qa in rec.queries:  # every scene is scored or its failure is recorded; nothing is guessed
            assert len(qa.scores) + len(qa.failures) == len(rec.scenes)
            assert all(f.endswith("(after 2 tries)") for f in qa.failures)
    # the random tiny model cannot answer in JSON: the failures are counted in the summary table
    table = json.loads((out / "summary.json").read_text())["totals"]
    assert table["scenes"] == sum(len(r.scenes) for r in records) and table["failures"] == 2 * table["scenes"]
    # the second run only paid for what the interrupted one had not cached: the scoring of the second video
    scenes2 = len(records[1].scenes)
    assert misses == [2 * 2 * scenes2]  # 2 queries x its scenes x 2 tries; no caption, chapter or summary
    assert len(list((out / "llm_cache").rglob("*.json"))) == cached_before + misses[0]
    grpo_train, grpo_val = _split_ids(out, "grpo")
    assert len(grpo_train) == 1 and len(grpo_val) == 1 and not grpo_train & grpo_val


def test_cli_data_tasks_and_bad_inputs(tmp_path, capsys):
    from pipeline.cli.main import main

    rec = PeakClipsRecord.model_validate(
        {
            "video": {"video_id": "v", "path": "/nonexistent/v.mp4", "fps": 10, "num_frames": 100, "duration_s": 10.0,
                      "width": 64, "height": 48},
            "scenes": [s.model_dump() for s in _scenes([0, 5, 10])],
            "captions": [{"scene_index": 0, "text": "a dog"}, {"scene_index": 1, "text": "a cat"}],
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "peakclips.jsonl").write_text(rec.model_dump_json() + "\n")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"stage: data\noutput_dir: {out}\nframes:\n  num_candidates: 4\n")
    # the video file is gone: a one-line error naming it, exit 2
    assert main(["data", "tasks", "--config", str(cfg), "--stage", "sft1"]) == 2
    assert "v.mp4" in capsys.readouterr().err
    assert main(["data", "build", "--config", str(cfg), "--videos", str(tmp_path / "none")]) == 2
    assert "videos folder not found" in capsys.readouterr().err
    assert main(["data", "build", "--config", str(cfg), "--videos", str(tmp_path), "--shard", "3/2"]) == 2
    assert "0 <= i < N" in capsys.readouterr().err


def test_embedding_scorer_with_a_tiny_local_sentence_transformer(tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    from data_builder.relevance import EmbeddingScorer
    from pipeline.core.models import TINY_RECIPE, _build_tokenizer

    tok = _build_tokenizer(TINY_RECIPE)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    SentenceTransformer(modules=[Transformer(str(tmp_path / "bert")), Pooling(32, "mean")]).save(str(tmp_path / "st"))

    ctx = _ctx()
    ctx.captions = {0: "a blue car drives", 1: "a red ball rolls", 2: "two dogs sit near a tree"}
    [res] = EmbeddingScorer(str(tmp_path / "st")).score(ctx, [Query(query_id="q", text="a red ball rolls")])
    # the caption identical to the query has cosine 1: it is the video's best scene, score 5
    assert res.scores[1].score == 5.0 and res.scores[1].reason == "caption similarity 1.000"
    assert all(1.0 <= s.score < 5.0 for i, s in enumerate(res.scores) if i != 1)


def test_user_queries_and_imported_captions_errors_name_the_line(tmp_path):
    from data_builder.captions import apply_imported, import_captions
    from data_builder.queries import load_user_queries
    from pipeline.core.errors import DataError

    qf = tmp_path / "q.jsonl"
    qf.write_text('{"video_id": "v", "text": "Who runs?"}\n\n{"video_id": "v", "text": "Which?", "options": ["a", "b"], "answer": 2}\n')
    with pytest.raises(DataError, match=r"q.jsonl:3: .*answer 2 is outside options"):
        load_user_queries(qf)
    qf.write_text('{"video_id": "v", "text": "Who runs?"}\n{"video_id": "w", "text": "Which?", "options": ["a", "b"], "answer": 1}\n')
    got = load_user_queries(qf)
    assert [q.query_id for q in got["v"]] == ["v-u1"] and got["w"][0].answer == 1

    cf = tmp_path / "c.json"
    cf.write_text(json.dumps({"v": {"scenes": [{"start_s": 3, "end_s": 1, "text": "x"}]}}))
    with pytest.raises(DataError, match=r"v: scenes\[0\]: end_s"):
        import_captions(cf)
    cf.write_text(json.dumps({"v": {"scenes": [{"start_s": 0.2, "end_s": 1.8, "text": "a dog"},
                                               {"start_s": 1.9, "end_s": 2.8, "text": "it jumps"},
                                               {"scene_index": 2, "text": "a cat"}],
                                    "chapters": [{"start_s": 0, "end_s": 6, "text": "pets"}], "summary": "Pets."}}))
    caps, chapters, summary = apply_imported(import_captions(cf)["v"], _scenes([0, 2, 4, 6]))
    assert caps == {0: "a dog", 1: "it jumps", 2: "a cat"}  # spans go to the scene they overlap most
    assert [(c.scene_start, c.scene_end) for c in chapters] == [(0, 2)] and summary.text == "Pets."
