"""The data, select and eval stages split over job array tasks, and merged: the same outputs as one process.

On CPU without Slurm: the shards run one after the other in this process (`kframes run --only STAGE --shard i/N`'s
code), the merge joins them, and the result is compared with a one-process run on the same inputs. The data stage
runs on the real shared videos with a loopback annotator over real HTTP (tests/annotator_loopback.py); eval and
select run the tiny local models. tests/test_slurm_local.py runs the same through real Slurm job arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
DATA_VIDEOS = ("bikes.mp4", "counter.mp4", "fades.mp4", "goldeneye-vfr-drop3.mp4", "delayed_start.mp4")
# what a result or selection record carries that depends on the machine's speed, not on the inputs
TIMING_KEYS = {"analysis_s", "choose_s", "selection_s", "decode_s", "downstream_s", "timings", "model_load_s"}


def strip_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timings(x) for x in obj]
    return obj


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def data_videos(shared: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in DATA_VIDEOS:
        os.symlink(shared / "videos" / name, folder / name)
    return folder


def data_queries(path: Path, marked: str | None = None) -> Path:
    """Two queries per video; the one of `marked` names a word the loopback can be told to refuse."""
    with path.open("w") as fh:
        for name in DATA_VIDEOS:
            vid = name.rsplit(".", 1)[0]
            word = "zeppelin" if vid == marked else "picture"
            fh.write(json.dumps({"video_id": vid, "text": f"When is the mostly red {word} shown?",
                                 "options": ["at the start", "in the middle", "at the end"], "answer": 0}) + "\n")
            fh.write(json.dumps({"video_id": vid, "text": "Which scene is the darkest?"}) + "\n")
    return path


def annotated_pipeline(tmp: Path, videos: Path, queries: Path, url: str, output_dir: Path) -> Path:
    """The tiny pipeline whose data stage asks an OpenAI-compatible annotator for captions, chapters, summaries
    and relevance scores (the paper's setting, with the loopback standing in for vLLM)."""
    pipe = yaml.safe_load((ROOT / "configs/pipeline/tiny.yaml").read_text())
    pipe.pop("samples")
    pipe["output_dir"] = str(output_dir)
    pipe["stages"] = {k: str(ROOT / v) for k, v in pipe["stages"].items()}
    pipe["overrides"]["data"] = [
        f"videos_dir={videos}", "llm.backend=openai", "llm.model=loopback-annotator", f"llm.base_url={url}",
        "llm.batch_size=8", "llm.max_retries=0", "llm.backoff_s=0", "captions.chapter_grouping=llm",
        "queries.source=user", f"queries.file={queries}", "relevance.scorer=llm", "tasks.val_fraction=0.4",
    ]
    path = tmp / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(pipe))
    return path


def test_data_shards_merge_to_the_one_process_build_and_a_failed_shard_redoes_only_its_videos(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from annotator_loopback import LoopbackAnnotator

    from pipeline.orchestration.arrays import merge_stage, run_shard
    from pipeline.orchestration.orchestrate import load_pipeline, run_pipeline

    fail_file = tmp_path / "refuse.txt"
    monkeypatch.setenv("KFRAMES_LOOPBACK_FAIL_FILE", str(fail_file))
    server = LoopbackAnnotator().start()
    try:
        videos = data_videos(shared_data, tmp_path / "videos")
        queries = data_queries(tmp_path / "queries.jsonl", marked="fades")
        one = load_pipeline(str(annotated_pipeline(tmp_path, videos, queries, server.url, tmp_path / "one")))
        run_pipeline(one, only=["data"])
        asked = server.requests

        sharded = load_pipeline(str(annotated_pipeline(tmp_path, videos, queries, server.url, tmp_path / "arr")))
        out = sharded.stage_dir("data")
        # shards of the sorted videos: 0/3 bikes and fades, 1/3 counter and goldeneye, 2/3 delayed_start
        fail_file.write_text("zeppelin")  # the annotator refuses every question about fades.mp4
        assert run_shard(sharded, "data", "1/3").action == "start"  # the first task starts the stage
        assert run_shard(sharded, "data", "2/3").action == "resume"
        with pytest.raises(DataError, match=r"shard 0/3: 1 video\(s\) failed because the annotating server did"):
            run_shard(sharded, "data", "0/3")
        assert sorted(p.stem for p in (out / "videos").glob("*.json")) == ["bikes", "counter", "delayed_start",
                                                                           "goldeneye-vfr-drop3"]
        with pytest.raises(DataError, match="not every video is settled"):
            merge_stage(sharded, "data", 3)  # a merge before the failed task is redone writes no task files
        assert not (out / "tasks").exists() and sharded.read_record("data").status == "running"

        fail_file.unlink()
        done_before = {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.json")}
        requests_before = server.requests
        outcome = run_shard(sharded, "data", "0/3")  # the requeued task: only its unfinished video
        assert outcome.action == "resume" and "'built': 1, 'resumed': 1" in outcome.reason
        assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.json") if p.name in done_before} \
            == done_before
        assert server.requests - requests_before < asked // 3  # its captions came from the answer cache
        merged = merge_stage(sharded, "data", 3)
        record = sharded.read_record("data")
        assert record.status == "done" and record.key == sharded.keys["data"] and record.summary["shards"] == 3
        assert merged.record.summary["videos"] == len(DATA_VIDEOS)

        # the merged stage is the one-process stage, byte for byte
        for rel in ["peakclips.jsonl", *sorted(p.relative_to(one.stage_dir("data")).as_posix()
                                              for p in (one.stage_dir("data") / "tasks").glob("*.jsonl"))]:
            assert (out / rel).read_bytes() == (one.stage_dir("data") / rel).read_bytes(), rel
        assert json.loads((out / "summary.json").read_text()) == json.loads(
            (one.stage_dir("data") / "summary.json").read_text())

        # rerunning the array skips the done stage without a request
        requests_before = server.requests
        assert run_shard(sharded, "data", "1/3").action == "skip" and merge_stage(sharded, "data", 3).action == "skip"
        assert server.requests == requests_before
    finally:
        server.close()


def test_a_changed_config_or_a_forced_submission_starts_the_array_over_once(
    shared_data: Path, tmp_path: Path
) -> None:
    """The first task to open a stage whose key changed (or with a new force token) clears it; the others resume."""
    from annotator_loopback import LoopbackAnnotator

    from pipeline.orchestration.arrays import open_stage
    from pipeline.orchestration.orchestrate import load_pipeline

    server = LoopbackAnnotator().start()
    try:
        videos = data_videos(shared_data, tmp_path / "videos")
        path = annotated_pipeline(tmp_path, videos, data_queries(tmp_path / "q.jsonl"), server.url, tmp_path / "run")
        plan = load_pipeline(str(path))
        assert open_stage(plan, "data") == ("start", "no earlier run")
        marker = plan.stage_dir("data") / "videos" / "bikes.json"
        marker.parent.mkdir()
        marker.write_text("{}")
        assert open_stage(plan, "data")[0] == "resume" and marker.exists()
        assert open_stage(plan, "data", force_token="t1")[0] == "start" and not marker.exists()
        marker.parent.mkdir()
        marker.write_text("{}")
        assert open_stage(plan, "data", force_token="t1")[0] == "resume" and marker.exists()  # t1's other tasks
        # the server's address is not part of the key: a task given another node's URL resumes
        moved = load_pipeline(str(path), ["data:llm.base_url=http://elsewhere:8000/v1"])
        assert moved.keys["data"] == plan.keys["data"] and open_stage(moved, "data")[0] == "resume"
        changed = load_pipeline(str(path), ["data:llm.max_new_tokens=99"])
        assert open_stage(changed, "data")[0] == "start" and not marker.exists()
        (plan.stage_dir("data") / "mine.txt").write_text("a user's file")
        with pytest.raises(ConfigError, match="holds files it did not write"):
            open_stage(plan, "data")  # never deletes what the stage did not write
    finally:
        server.close()


def test_shard_and_merge_flags_of_kframes_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    config = str(ROOT / "configs/pipeline/tiny.yaml")
    base = ["run", "--config", config, "--set", f"output_dir={tmp_path / 'run'}"]
    assert main([*base, "--only", "sft1", "--shard", "0/2"]) == 2
    assert "only data, select, eval run as job arrays" in capsys.readouterr().err
    assert main([*base, "--shard", "0/2"]) == 2
    assert "name one stage with --only" in capsys.readouterr().err
    assert main([*base, "--only", "data", "--shard", "2/2"]) == 2
    assert "need 0 <= i < N" in capsys.readouterr().err
    assert main([*base, "--only", "eval", "--merge-shards", "2"]) == 2  # nothing upstream has run
    assert "but grpo has not finished" in capsys.readouterr().err
    assert main([*base, "--only", "data", "--merge-shards", "2"]) == 2
    assert "no shard has run with its current config" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# select and eval: shards + merge == one process
# ----------------------------------------------------------------------------------------------------


def _eval_questions(shared: Path, path: Path) -> Path:
    """Six questions over four real videos (two videos with two questions each)."""
    from pipeline.core.contracts import EvalQuestion
    from pipeline.evaluation.benchmarks import write_questions_jsonl

    vids = shared / "videos"
    qs = [EvalQuestion(question_id=f"q{i}", video=str(vids / v), question=f"What is shown at moment {i}?",
                       options=["a", "b", "c"], answer=i % 3, task_type=("even", "odd")[i % 2])
          for i, v in enumerate(["bikes.mp4", "fades.mp4", "bikes.mp4", "counter.mp4", "fades.mp4", "bigbuckbunny.mp4"])]
    write_questions_jsonl(path, qs)
    return path


def eval_config(questions: Path, out: Path):
    from pipeline.core.config import EvalConfig

    return EvalConfig.model_validate({
        "benchmark": "jsonl", "data": str(questions), "k": [2, 4], "output_dir": str(out),
        "selectors": [{"name": "uniform"}, {"name": "bolt", "model": "tiny-clip", "num_candidates": 8}],
        "downstream": {"backend": "transformers", "model": "tiny", "max_pixels": 3136},
    })


def assert_same_eval(merged: Path, single: Path) -> None:
    """results.jsonl and analyses.jsonl record for record and in order, summary and report up to the timings, and
    the plot byte for byte."""
    for name in ("results.jsonl", "analyses.jsonl"):
        assert strip_timings(jsonl(merged / name)) == strip_timings(jsonl(single / name)), name
    assert strip_timings(json.loads((merged / "summary.json").read_text())) == strip_timings(
        json.loads((single / "summary.json").read_text()))
    m_head, m_cost = (merged / "report.md").read_text().split("## Cost per question")
    s_head, s_cost = (single / "report.md").read_text().split("## Cost per question")
    assert m_head == s_head
    rows = lambda text: [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ")]
    assert rows(m_cost) == rows(s_cost)  # the same selector and k rows; their seconds are each run's own
    assert (merged / "accuracy_vs_k.png").read_bytes() == (single / "accuracy_vs_k.png").read_bytes()


@pytest.mark.slow
def test_eval_shards_merge_to_the_one_process_run(shared_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.evaluation.shards import evaluate_shard, merge_eval_shards, shard_by_video, shard_dir

    questions = _eval_questions(shared_data, tmp_path / "questions.jsonl")
    single = evaluate(eval_config(questions, tmp_path / "single"), progress=False)
    cfg = eval_config(questions, tmp_path / "merged")
    with pytest.raises(DataError, match=r"answer\(s\) missing from the shards .*first: 0-of-2"):
        merge_eval_shards(cfg, 2)
    for i in range(2):
        evaluate_shard(cfg, i, 2, progress=False)
    # whole videos per shard, dealt in turn: bikes and counter to the first, fades and bigbuckbunny to the second
    for i, ids in enumerate((["q0", "q2", "q3"], ["q1", "q4", "q5"])):
        assert [q["question_id"] for q in shard_by_video(jsonl(questions), i, 2, video=lambda q: q["video"])] == ids
        assert {r["question_id"] for r in jsonl(shard_dir(cfg.output_dir, i, 2) / "results.jsonl")} == set(ids)
    merged = merge_eval_shards(cfg, 2)
    assert strip_timings(merged) == strip_timings(single)
    assert_same_eval(tmp_path / "merged", tmp_path / "single")
    assert merge_eval_shards(cfg, 2)["selectors"] == merged["selectors"]  # merging again changes nothing
    assert len(jsonl(tmp_path / "merged" / "results.jsonl")) == 6 * 2 * 2


def test_select_shards_merge_to_the_one_process_run(shared_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from pipeline.core.config import FramesSection, PipelineSelectSection
    from pipeline.evaluation.shards import shard_by_video, shard_dir
    from pipeline.orchestration.select_stage import merge_select_shards, run_select_stage

    questions = jsonl(_eval_questions(shared_data, tmp_path / "questions.jsonl"))[:4]
    sel = PipelineSelectSection(k=4, max_new_tokens=24)
    frames = FramesSection(num_candidates=8, max_pixels=3136, min_pixels=3136)
    single = tmp_path / "single"
    run_select_stage(sel, questions, out=single, questions_file=single / "questions.jsonl", model_dir=tiny_model_dir,
                     frames=frames)
    merged = tmp_path / "merged"
    for i in range(2):
        d = shard_dir(merged, i, 2)
        run_select_stage(sel, shard_by_video(questions, i, 2, video=lambda q: q["video"]), out=d,
                         questions_file=d / "questions.jsonl", model_dir=tiny_model_dir, frames=frames)
    outputs, summary = merge_select_shards(questions, out=merged, questions_file=merged / "questions.jsonl", shards=2)
    assert summary["questions"] == 4 and 0 <= summary["fallback_rate"] <= 1
    assert strip_timings(jsonl(merged / "selections.jsonl")) == strip_timings(jsonl(single / "selections.jsonl"))
    assert (merged / "questions.jsonl").read_bytes() == (single / "questions.jsonl").read_bytes()
