"""`kframes eval` machinery on real videos from ../shared/data: selectors, the resumable loop, reports.

The numbers from tiny random models are meaningless; what is tested is that every selector returns
exactly k valid frames, that answers are scored against the right question, that a rerun computes
nothing twice, that a torn journal line is recovered, and that the reports hold what they claim. One
test uses a scripted downstream model that answers right exactly when it is shown the evidence, so the
evaluation must rank a selector that finds the evidence above uniform sampling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.config import EvalConfig, SelectorSection
from pipeline.core.contracts import EvalQuestion
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import Journal
from pipeline.evaluation.benchmarks import load_questions, write_questions_jsonl
from pipeline.evaluation.evaluate import VisualTokenCounter, evaluate
from pipeline.evaluation.report import render_markdown
from pipeline.inference.frame_selectors import (
    FrameSelector,
    Selection,
    UniformSelector,
    VideoTimeline,
    inverse_transform_sample,
    make_selector,
    uniform_fill,
)

VIDEOS = ("bikes.mp4", "fades.mp4", "bigbuckbunny.mp4", "counter.mp4")


class EvidenceBackend:
    """A scripted downstream model: right exactly when a frame inside the question's evidence span is shown.

    The span is written in the question ("... [evidence 1.20-1.60s] answer 0"); without the evidence it
    always answers option 1, so it is right by luck on the questions whose answer is 1.
    """

    def __init__(self) -> None:
        self.calls = 0

    def option_logprobs(self, requests: list[Any]) -> list[list[float]]:
        out = []
        for r in requests:
            self.calls += 1
            m = re.search(r"\[evidence ([\d.]+)-([\d.]+)s\] answer (\d)", r.question)
            assert m, r.question
            lo, hi, ans = float(m.group(1)), float(m.group(2)), int(m.group(3))
            seen = any(lo <= t <= hi for t in r.timestamps_s)
            assert len(r.images) == len(r.timestamps_s)
            pick = ans if seen else 1
            out.append([0.0 if i == pick else -5.0 for i in range(len(r.options))])
        return out


class OracleSelector(FrameSelector):
    """Knows the evidence span from the question: the 'perfect keyframe selector' upper bound."""

    name = "oracle"

    def analyze(self, video: VideoTimeline, question: str, options: Sequence[str] | None = None) -> dict[str, Any]:
        m = re.search(r"\[evidence ([\d.]+)-([\d.]+)s\]", question)
        lo, hi = float(m.group(1)), float(m.group(2))
        return {"inside": [i for i, t in enumerate(video.timestamps_s) if lo <= t <= hi]}

    def choose(self, analysis: dict[str, Any], video: VideoTimeline, k: int) -> Selection:
        inside = analysis["inside"]
        pick = [inside[int((j + 0.5) * len(inside) / min(k, len(inside)))] for j in range(min(k, len(inside)))]
        idx = uniform_fill(pick, video.num_frames, k)
        return Selection(idx, video.times(idx))


def _questions(shared: Path, out: Path) -> Path:
    """A small JSONL set on the real shared videos; evidence spans are short (a few frames)."""
    vids = shared / "videos"
    spans = {"bikes.mp4": (3.05, 3.2), "fades.mp4": (7.05, 7.2), "bigbuckbunny.mp4": (2.05, 2.2), "counter.mp4": (1.45, 1.6)}
    qs = []
    for n, v in enumerate(VIDEOS):
        lo, hi = spans[v]
        qs.append(EvalQuestion(
            question_id=f"q{n}", video=str(vids / v), question=f"What happens? [evidence {lo}-{hi}s] answer {n % 2}",
            options=["first", "second", "third"], answer=n % 2, task_type="even" if n % 2 == 0 else "odd",
        ))
    path = out / "questions.jsonl"
    write_questions_jsonl(path, qs)
    return path


# ----------------------------------------------------------------------------------------------------
# Selectors
# ----------------------------------------------------------------------------------------------------


def test_inverse_transform_sampling_follows_the_scores() -> None:
    scores = [0.1] * 50 + [0.9] * 10 + [0.1] * 40  # a relevant stretch at 50..59
    pos = inverse_transform_sample(scores, 8, alpha=2.5)
    assert pos == sorted(set(pos)) and all(0 <= p < 100 for p in pos)
    assert sum(50 <= p < 60 for p in pos) >= 6  # dense where relevant
    flat = inverse_transform_sample([0.5] * 100, 4, alpha=2.5)
    assert flat == [12, 37, 62, 87]  # flat scores: uniform quantiles


def test_uniform_fill_tops_up_to_exactly_k() -> None:
    assert uniform_fill([5, 5, 7], 100, 6) == sorted(set(uniform_fill([5, 5, 7], 100, 6)))
    out = uniform_fill([5, 7], 100, 6)
    assert len(out) == 6 and {5, 7} <= set(out)
    assert uniform_fill([], 3, 8) == [0, 1, 2]  # k past the video: every frame once


@pytest.mark.parametrize("name", ["uniform", "similarity", "bolt"])
def test_baseline_selectors_on_real_video(shared_data: Path, tiny_model_dir: Path, name: str) -> None:
    video = VideoTimeline.read(shared_data / "videos" / "bikes.mp4")
    assert video.num_frames == 250
    sel = make_selector(SelectorSection(name=name, model=None if name == "uniform" else "tiny-clip", num_candidates=32))
    analysis = sel.analyze(video, "a person rides a bicycle", ["yes", "no"])
    json.dumps(analysis)  # cacheable
    if name != "uniform":
        assert len(analysis["candidates"]) == 32 and len(analysis["scores"]) == 32
        assert all(-1.0 <= s <= 1.0 for s in analysis["scores"])
    for k in (1, 8, 32, 64, 400):
        s = sel.choose(analysis, video, k)
        assert len(s.indices) == min(k, 250) and s.indices == sorted(set(s.indices))
        assert all(0 <= i < 250 for i in s.indices)
        assert s.timestamps_s == [video.timestamps_s[i] for i in s.indices]
    if name == "similarity":  # top-k is the k best-scored candidates
        best = {analysis["candidates"][i] for i in np.argsort(analysis["scores"])[-8:]}
        assert set(sel.choose(analysis, video, 8).indices) == best


def test_make_selector_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="similarity.*needs model"):
        make_selector(SelectorSection(name="similarity"))
    with pytest.raises(ConfigError, match="kframes.*needs model"):
        make_selector(SelectorSection(name="kframes"))


def test_kframes_selector_every_mode(shared_data: Path, tiny_model_dir: Path) -> None:
    video = VideoTimeline.read(shared_data / "videos" / "bikes.mp4")
    sel = make_selector(SelectorSection(name="kframes", model=str(tiny_model_dir), num_candidates=8, max_new_tokens=32))
    analysis = sel.analyze(video, "when does the bike pass?", ["early", "late"])
    json.dumps(analysis)
    for mode in ("focused", "hybrid", "auto", "set", "soft"):
        s2 = make_selector(SelectorSection(name="kframes", model=str(tiny_model_dir), mode=mode))
        for k in (8, 32):
            s = s2.choose(analysis, video, k)
            assert len(s.indices) == k and s.indices == sorted(set(s.indices))
            # random weights rarely produce valid clips: then the sampler falls back to uniform and says so
            assert s.fallback == (not analysis["clips"])


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


def test_eval_ranks_the_evidence_finder_above_uniform_and_resumes(shared_data: Path, tmp_path: Path) -> None:
    data = _questions(shared_data, tmp_path)
    out = tmp_path / "run"
    cfg = EvalConfig(benchmark="jsonl", data=str(data), k=[2, 4], output_dir=str(out))
    backend = EvidenceBackend()
    selectors = [UniformSelector(), OracleSelector()]
    summary = evaluate(cfg, backend=backend, selectors=selectors, progress=False)
    assert backend.calls == 2 * 2 * len(VIDEOS)
    acc = {s: {k: summary["selectors"][s][str(k)]["accuracy"] for k in (2, 4)} for s in ("uniform", "oracle")}
    assert acc["oracle"] == {2: 1.0, 4: 1.0}
    assert acc["uniform"] == {2: 0.5, 4: 0.5}  # uniform frames miss the short spans: right only by luck
    assert summary["selectors"]["oracle"]["2"]["per_task"] == {"even": 1.0, "odd": 1.0}
    assert summary["selectors"]["uniform"]["2"]["per_task"] == {"even": 0.0, "odd": 1.0}
    cost = summary["selectors"]["oracle"]["4"]["cost"]
    assert cost["frames"] == 4 and cost["visual_tokens"] > 0 and cost["selection_s"] >= 0 and cost["downstream_s"] >= 0

    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 16
    rec = json.loads(lines[0])
    assert {"question_id", "selector", "k", "pred", "correct", "option_logprobs", "frame_indices", "timestamps_s",
            "selection_s", "downstream_s", "frames", "visual_tokens"} <= set(rec)
    report = (out / "report.md").read_text()
    assert "| oracle | 100.0 (n=4) | 100.0 (n=4) |" in report and "| uniform | 50.0 (n=4)" in report
    assert (out / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun computes nothing; a kill mid-write (torn last line) is recomputed, only that record.
    evaluate(cfg, backend=backend, selectors=selectors, progress=False)
    assert backend.calls == 16
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[: len(text) - 25])
    evaluate(cfg, backend=backend, selectors=selectors, progress=False)
    assert backend.calls == 17
    assert len((out / "results.jsonl").read_text().splitlines()) == 16
    # More k later: only the new k is computed; the oracle's analyses come from the cache.
    cfg2 = cfg.model_copy(update={"k": [2, 4, 8]})
    evaluate(cfg2, backend=backend, selectors=selectors, progress=False)
    assert backend.calls == 17 + 2 * len(VIDEOS)


def test_eval_refuses_a_folder_made_with_another_downstream(shared_data: Path, tmp_path: Path) -> None:
    data = _questions(shared_data, tmp_path)
    cfg = EvalConfig(benchmark="jsonl", data=str(data), k=[2], output_dir=str(tmp_path / "run"))
    evaluate(cfg, backend=EvidenceBackend(), selectors=[UniformSelector()], progress=False)
    other = cfg.model_copy(update={"downstream": cfg.downstream.model_copy(update={"model": "Qwen/Qwen2.5-VL-7B-Instruct"})})
    with pytest.raises(DataError, match="different downstream"):
        evaluate(other, backend=EvidenceBackend(), selectors=[UniformSelector()], progress=False)


def test_journal_rejects_corruption_in_the_middle(tmp_path: Path) -> None:
    p = tmp_path / "j.jsonl"
    p.write_text('{"a": 1}\n{broken\n{"a": 2}\n')
    with pytest.raises(DataError, match=r"j\.jsonl:2: corrupt record"):
        Journal(p, ("a",))


def test_visual_tokens_follow_qwen_resizing(tiny_model_dir: Path) -> None:
    from PIL import Image

    from pipeline.core.config import DownstreamSection

    c = VisualTokenCounter(DownstreamSection(model="Qwen/not-available-offline", max_pixels=256 * 28 * 28))
    assert c.tokens(448, 448) == 256  # 16 x 16 blocks of 28 px
    assert c.tokens(1920, 1080) <= 256
    assert c([Image.new("RGB", (448, 448))] * 3) == 768
    # The count agrees with what the downstream model's own processor produces (grid t*h*w / merge^2).
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(tiny_model_dir)
    tiny = VisualTokenCounter(DownstreamSection(model="tiny"))
    for size in ((640, 480), (1920, 1080), (160, 120), (480, 640)):
        grid = proc(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
        assert tiny.tokens(*size) == int(grid.prod()) // proc.merge_size**2, size


def test_markdown_lists_every_selector_and_k() -> None:
    row = {"n": 2, "correct": 1, "accuracy": 0.5, "errors": 0, "fallback_rate": 0.0, "per_task": {"a": 0.5},
           "cost": {"selection_s": 0.1, "decode_s": 0.01, "downstream_s": 0.2, "frames": 8.0, "visual_tokens": 512.0}}
    md = render_markdown({"benchmark": "mlvu", "downstream": "transformers:tiny", "ks": [8],
                          "selectors": {"uniform": {"8": row}, "kframes-auto": {"8": row}}})
    assert "| uniform | 50.0 (n=2) |" in md and "| kframes-auto | 8 | 0.100 | 0.010 | 0.200 | 8.0 | 512 | 0.0% |" in md


def test_cli_eval_end_to_end_with_tiny_models(shared_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    import rewards.backends as backends
    if not hasattr(backends, "make_backend"):
        pytest.skip("rewards.backends.make_backend is not in the tree yet")
    from pipeline.cli.main import main

    data = _questions(shared_data, tmp_path)
    out = tmp_path / "cli"
    rc = main(["eval", "--benchmark", "jsonl", "--data", str(data), "--selector", "uniform,bolt", "--clip-model",
               "tiny-clip", "--num-candidates", "16", "--k", "2,4", "--downstream", "transformers:tiny",
               "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["selectors"]) == {"uniform", "bolt"} and summary["downstream"] == "transformers:tiny"
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * 2 * len(VIDEOS)
    assert all(len(r["option_logprobs"]) == 3 and r["pred"] == int(np.argmax(r["option_logprobs"])) for r in recs)
    assert load_questions("jsonl", data)[0].question_id == "q0"


def test_another_model_in_the_same_folder_gets_its_own_results(shared_data: Path, tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    """Results are keyed by the selector's model content and settings: evaluating model B into model A's folder,
    or model A again after it was retrained in place, computes new rows instead of reporting the old ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    from pipeline.cli.main import main

    data = _questions(shared_data, tmp_path)
    model = tmp_path / "selector"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "eval"
    argv = ["eval", "--benchmark", "jsonl", "--data", str(data), "--selector", "kframes", "--selector-model",
            str(model), "--num-candidates", "4", "--k", "2", "--downstream", "transformers:tiny", "--out", str(out),
            "--quiet", "--limit", "1"]

    def rows() -> list[dict]:
        return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]

    assert main(argv) == 0
    first = rows()
    assert len(first) == 1
    assert main(argv) == 0 and rows() == first  # same model, same settings: nothing recomputed
    # retrained in place: same path, other weights
    weights = load_file(str(model / "model.safetensors"))
    name = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    weights[name] = weights[name] + 1.0
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert main(argv) == 0
    again = rows()
    assert len(again) == 2 and again[1]["result_id"] != first[0]["result_id"]
    assert again[1]["selector"] == first[0]["selector"]  # the same row of the table, recomputed
    analyses = [json.loads(x) for x in (out / "analyses.jsonl").read_text().splitlines()]
    assert len({a["selector_id"] for a in analyses}) == 2


def test_cli_eval_bad_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    assert main(["eval", "--benchmark", "jsonl", "--data", str(tmp_path / "none.jsonl"), "--selector", "uniform",
                 "--downstream", "openai:gpt"]) == 2
    assert "expected transformers:MODEL or vllm:URL" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "jsonl", "--data", str(tmp_path / "none.jsonl"), "--selector", "uniform",
                 "--k", "8,x", "--out", str(tmp_path / "o")]) == 2
    assert "--k '8,x'" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "jsonl", "--data", str(tmp_path / "none.jsonl"), "--selector", "uniform",
                 "--out", str(tmp_path / "o")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err


def test_gpu_recipe_is_the_papers_setting() -> None:
    from pipeline.core.config import load_stage_config

    cfg = load_stage_config("eval", Path(__file__).resolve().parents[1] / "configs" / "eval" / "qwen2_5_vl_7b.yaml")
    assert cfg.k == [8, 32, 64] and cfg.downstream.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert [s.name for s in cfg.selectors][:2] == ["uniform", "kframes"]
    assert cfg.selectors[1].num_candidates == 256 and cfg.selectors[1].mode == "auto"
    assert len({make_selector(s).label for s in cfg.selectors}) == len(cfg.selectors)  # distinct table rows


# ----------------------------------------------------------------------------------------------------
# Breakdowns as each benchmark reports them; skipped records in the summary; the dry run
# ----------------------------------------------------------------------------------------------------


def _rec(qid: str, correct: bool, types: list[str], group: str | None = None) -> dict:
    return {"selector": "uniform", "k": 8, "question_id": qid, "task_type": types[0], "task_types": types,
            "duration_group": group, "correct": correct}


def _breakdown(benchmark: str, records: list[dict]) -> dict:
    from pipeline.core.config import DownstreamSection
    from pipeline.evaluation.report import summarize

    s = summarize(records, benchmark=benchmark, downstream=DownstreamSection(), selectors=["uniform"], ks=[8])
    return s["selectors"]["uniform"]["8"]["breakdown"]


def test_breakdowns_follow_each_benchmarks_own_reporting() -> None:
    vm = [_rec("1", True, ["OCR Problems"], "long"), _rec("2", False, ["OCR Problems"], "long"),
          _rec("3", True, ["Counting Problem"], "short")]
    assert _breakdown("videomme", vm) == {"short": 1.0, "long": 0.5}
    assert list(_breakdown("videomme", vm + [_rec("4", True, ["x"], "medium")])) == ["short", "medium", "long"]
    lvb = [_rec("1", True, ["TOS"], "900-3600s"), _rec("2", False, ["TOS"], "8-15s"), _rec("3", True, ["SSS"], "8-15s")]
    assert list(_breakdown("longvideobench", lvb).items()) == [("8-15s", 0.5), ("900-3600s", 1.0)]
    # LVBench: a question with two categories counts in both (LVBench's compute_accuracy).
    lv = [_rec("1", True, ["reasoning", "event understanding"]), _rec("2", False, ["reasoning"]),
          _rec("3", False, ["key information retrieval", "temporal grounding"])]
    assert _breakdown("lvbench", lv) == {"EU": 1.0, "KIR": 0.0, "TG": 0.0, "Rea": 0.5}
    # MLVU: M-Avg is the mean of the task accuracies, not the accuracy over all questions.
    mlvu = [_rec("1", True, ["plotQA"]), _rec("2", True, ["plotQA"]), _rec("3", True, ["plotQA"]),
            _rec("4", False, ["count"])]
    assert _breakdown("mlvu", mlvu) == {"plotQA": 1.0, "count": 0.0, "M-Avg": 0.5}
    # NExT-QA: causal CW+CH, temporal TN+TC+TP (its scorer folds TP into TN), descriptive DC+DL+DO.
    nq = [_rec("1", True, ["CW"]), _rec("2", False, ["CH"]), _rec("3", True, ["TP"]), _rec("4", True, ["DO"])]
    assert _breakdown("nextqa", nq) == {"causal": 0.5, "temporal": 1.0, "descriptive": 1.0}
    assert _breakdown("jsonl", nq) == {}


def test_eval_summary_and_report_count_skipped_records(shared_data: Path, tmp_path: Path) -> None:
    data = _questions(shared_data, tmp_path)
    lines = data.read_text().splitlines()
    broken = json.loads(lines[0]) | {"question_id": "broken", "answer": 7}
    data.write_text("\n".join(lines + [json.dumps(broken)]) + "\n")
    cfg = EvalConfig(benchmark="jsonl", data=str(data), k=[2], output_dir=str(tmp_path / "run"))
    summary = evaluate(cfg, backend=EvidenceBackend(), selectors=[UniformSelector()], progress=False)
    d = summary["data"]
    assert (d["questions"], d["skipped"], d["records"]) == (4, 1, 5)
    assert d["skipped_records"] == [f"{data}:5: answer: answer 7 is outside the 3 options"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Questions: 4 loaded from" in report and "1 of 5 questions skipped" in report
    strict = cfg.model_copy(update={"strict": True, "output_dir": str(tmp_path / "strict")})
    with pytest.raises(DataError, match=r"questions\.jsonl:5: answer: .*--strict"):
        evaluate(strict, backend=EvidenceBackend(), selectors=[UniformSelector()], progress=False)


def test_cli_dry_run_on_the_published_mlvu(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    folder = shared_data / "benchmarks" / "mlvu" / "json"
    out = tmp_path / "dry"
    assert main(["eval", "--benchmark", "mlvu", "--data", str(folder), "--dry-run", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)  # one JSON document on stdout
    assert (summary["questions"], summary["skipped"], summary["skipped_line"]) == (2172, 3, "3 of 2,175 questions skipped")
    assert len(summary["skipped_records"]) == 3 and summary["skipped_records"][2].endswith("7_topic_reasoning.json:340: question: empty")
    assert summary["task_types"]["count"] == 206 and summary["files"]["2_needle.json"] == {"records": 355, "questions": 353, "skipped": 2}
    videos = summary["videos"]
    assert videos["missing"] == videos["distinct"] == len(videos["missing_list"]) > 1000  # listed, not an error
    assert videos["missing_list"][0] == str(shared_data / "benchmarks" / "mlvu" / "video" / "1_plotQA" / "movie101_66.mp4")
    written = load_questions("jsonl", out / "questions.jsonl")
    assert len(written) == 2172 and written[0].question_id == "1_plotQA/0" and written[0].benchmark == "mlvu"
    assert written[0].duration_s == 246.0 and written[0].task_types == ["plotQA"]

    # --limit, a rerun into the same folder, and a folder whose questions.jsonl it did not write
    assert main(["eval", "--benchmark", "videomme", "--data", str(shared_data / "benchmarks" / "videomme" /
                 "test-00000-of-00001.parquet"), "--dry-run", "--limit", "5", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["questions"] == 5 and summary["duration_groups"] == {"short": 5} and summary["records"] == 2700
    assert len(load_questions("jsonl", out / "questions.jsonl")) == 5
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "questions.jsonl").write_text("{}\n")
    assert main(["eval", "--benchmark", "mlvu", "--data", str(folder), "--dry-run", "--out", str(foreign)]) == 2
    assert "was not written by `kframes eval --dry-run`" in capsys.readouterr().err
    assert (foreign / "questions.jsonl").read_text() == "{}\n"
    assert main(["eval", "--benchmark", "mlvu", "--data", str(folder), "--dry-run", "--strict"]) == 2
    assert "2_needle.json:444: answer:" in capsys.readouterr().err


def test_a_jsonl_of_one_benchmarks_questions_is_reported_as_that_benchmark() -> None:
    from pipeline.evaluation.evaluate import reported_benchmark

    def q(i: int, bench: str) -> EvalQuestion:
        return EvalQuestion(question_id=str(i), video="v.mp4", question="q", options=["a", "b"], answer=0, benchmark=bench)

    assert reported_benchmark("jsonl", [q(1, "mlvu"), q(2, "mlvu")]) == "mlvu"  # e.g. a dry run's questions.jsonl
    assert reported_benchmark("jsonl", [q(1, "mlvu"), q(2, "nextqa")]) == "jsonl"
    assert reported_benchmark("jsonl", [q(1, "jsonl")]) == "jsonl"
    assert reported_benchmark("videomme", [q(1, "mlvu")]) == "videomme"
