"""Benchmark loaders on the published annotation files in ../shared/data (read whole, checked against the raw
records), on a sample of LVBench's documented format (its file is not in ../shared/data), and on the malformed
records users meet: skipped and reported as FILE:LINE: field: problem, an error with --strict, and an error
naming the expected layout when most of a file is unreadable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.evaluation.benchmarks import (
    LoadResult,
    answer_index,
    load_benchmark,
    load_questions,
    strip_letter,
    write_questions_jsonl,
)

MLVU_TASKS = {"1_plotQA": 539, "2_needle": 355, "3_ego": 352, "4_count": 206, "5_order": 259, "6_anomaly_reco": 200,
              "7_topic_reasoning": 264}


@pytest.fixture(scope="module")
def benchmarks(shared_data: Path) -> Path:
    return shared_data / "benchmarks"


def _raw_mlvu(benchmarks: Path) -> dict[str, list[dict]]:
    return {stem: json.loads((benchmarks / "mlvu" / "json" / f"{stem}.json").read_text()) for stem in MLVU_TASKS}


# ----------------------------------------------------------------------------------------------------
# The published files, whole
# ----------------------------------------------------------------------------------------------------


def test_mlvu_published_json_folder(benchmarks: Path) -> None:
    folder = benchmarks / "mlvu" / "json"
    r = load_benchmark("mlvu", folder)
    assert {name: (c.records, c.questions, c.skipped) for name, c in r.files.items()} == {
        f"{stem}.json": (n, n - {"2_needle": 2, "7_topic_reasoning": 1}.get(stem, 0), {"2_needle": 2,
                                                                                       "7_topic_reasoning": 1}.get(stem, 0))
        for stem, n in MLVU_TASKS.items()
    }
    assert len(r.questions) == 2172 and r.skipped_line() == "3 of 2,175 questions skipped"
    # The three malformed records as published: two needle answers that are not candidates, one empty record.
    assert [str(s) for s in r.skipped] == [
        f"{folder}/2_needle.json:444: answer: 'Catching a flying drone quadcopter' is not one of the candidates "
        "(MLVU gives the answer as a candidate's text)",
        f"{folder}/2_needle.json:4396: answer: 'Catching a flying drone quadcopter' is not one of the candidates "
        "(MLVU gives the answer as a candidate's text)",
        f"{folder}/7_topic_reasoning.json:340: question: empty",
    ]
    assert any("8_sub_scene.json, 9_summary.json" in n for n in r.notes)  # open-ended tasks: said, not loaded

    # Every loaded question against its raw record: options, gold text, task type, duration, id, video path.
    raw = _raw_mlvu(benchmarks)
    for q in r.questions:
        stem, _, i = q.question_id.partition("/")
        rec = raw[stem][int(i)]
        assert q.options == [c.strip() for c in rec["candidates"]]
        assert q.options[q.answer] == rec["answer"].strip()
        assert q.task_types == [rec["question_type"]] and q.duration_s == pytest.approx(rec["duration"])
        assert q.video == str(benchmarks / "mlvu" / "video" / stem / rec["video"])
    by_id = {q.question_id: q for q in r.questions}
    # Numeric options are text, never indices: '5' is the first candidate, '2' the second, '7' the first.
    assert (by_id["4_count/2"].options, by_id["4_count/2"].answer) == (["5", "3", "1", "0"], 0)
    assert (by_id["4_count/1"].options, by_id["4_count/1"].answer) == (["3", "2", "1", "6"], 1)
    assert (by_id["1_plotQA/106"].options, by_id["1_plotQA/106"].answer) == (["7", "6", "3", "9"], 0)
    # A gold text that is two candidates: the last is gold, as MLVU's scoring has it, and the notes say so.
    assert (by_id["1_plotQA/335"].options, by_id["1_plotQA/335"].answer) == (["Six", "Three", "Three", "Eight"], 2)
    assert sum("the last is gold" in n for n in r.notes) == 5
    assert f"{folder}/1_plotQA.json:4357: answer: 'Three' is candidates B, C" in " ".join(r.notes)


def test_mlvu_one_task_file_and_the_open_ended_ones(benchmarks: Path) -> None:
    r = load_benchmark("mlvu", benchmarks / "mlvu" / "json" / "4_count.json", video_root="/v")
    assert len(r.questions) == 206 and not r.skipped
    assert r.questions[0].video == "/v/4_count/count_126.mp4"
    with pytest.raises(DataError, match=r"9_summary\.json: an open-ended MLVU task"):
        load_benchmark("mlvu", benchmarks / "mlvu" / "json" / "9_summary.json")


def test_videomme_published_parquet(benchmarks: Path) -> None:
    import pyarrow.parquet as pq

    path = benchmarks / "videomme" / "test-00000-of-00001.parquet"
    r = load_benchmark("videomme", path)
    rows = pq.read_table(path).to_pylist()
    assert len(r.questions) == len(rows) == 2700 and not r.skipped
    s = r.summary()
    assert s["duration_groups"] == {"short": 900, "medium": 900, "long": 900}
    assert len(s["task_types"]) == 12 and s["task_types"]["Counting Problem"] == 268
    for q, row in zip(r.questions, rows, strict=True):
        assert q.question_id == row["question_id"] and q.duration_group == row["duration"]
        assert q.options == [o[3:] for o in row["options"]]  # "A. Apples." -> "Apples."
        assert "ABCD"[q.answer] == row["answer"] and q.task_types == [row["task_type"]]
        assert q.video == str(benchmarks / "data" / f"{row['videoID']}.mp4") and q.duration_s is None
    first = r.questions[0]
    assert (first.question_id, first.options[first.answer]) == ("001-1", "Berries.")


def test_longvideobench_published_val(benchmarks: Path) -> None:
    path = benchmarks / "longvideobench" / "lvb_val.json"
    r = load_benchmark("longvideobench", path)
    raw = json.loads(path.read_text())
    assert len(r.questions) == len(raw) == 1337 and not r.skipped
    assert r.summary()["duration_groups"] == {"8-15s": 189, "15-60s": 172, "180-600s": 412, "900-3600s": 564}
    for q, rec in zip(r.questions, raw, strict=True):
        assert q.question_id == rec["id"] and q.answer == rec["correct_choice"]
        assert q.options == [c.strip() for c in rec["candidates"]] and q.task_types == [rec["question_category"]]
        assert q.duration_s == pytest.approx(rec["duration"])
        assert q.video == str(path.parent / "videos" / rec["video_path"])
    assert len(r.summary()["task_types"]) == 17 and {len(q.options) for q in r.questions} == {3, 4, 5}


def test_nextqa_published_val_with_the_map_beside_it(shared_data: Path) -> None:
    path = shared_data / "nextqa" / "val.csv"
    mapping = json.loads((shared_data / "nextqa" / "map_vid_vidorID.json").read_text())
    r = load_benchmark("nextqa", path, video_root="/videos")
    rows = list(csv.DictReader(path.open()))
    assert len(r.questions) == len(rows) == 4996 and not r.skipped and not r.notes
    for q, row in zip(r.questions, rows, strict=True):
        assert q.question_id == f"{row['video']}_{row['qid']}" and q.answer == int(row["answer"])
        assert q.options == [row[f"a{i}"].strip() for i in range(5)] and q.task_types == [row["type"]]
        assert q.video == f"/videos/{mapping[row['video']]}.mp4"
    first = r.questions[0]
    assert first.question == "how do the two man play the instrument" and first.options[first.answer] == "roll the handle"
    assert first.video == "/videos/1106/4010069381.mp4"
    assert r.summary()["task_types"] == {"CH": 683, "CW": 1924, "DC": 177, "DL": 295, "DO": 305, "TC": 663, "TN": 895,
                                         "TP": 54}


def test_nextqa_without_the_map_says_so(tmp_path: Path) -> None:
    csv_file = tmp_path / "val.csv"
    csv_file.write_text("video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
                        "4010069381,369,640,480,how,1,6,CH,a,b,c,d,e\n")
    r = load_benchmark("nextqa", csv_file)
    assert r.questions[0].video == str(tmp_path / "NExTVideo" / "4010069381.mp4")
    assert "map_vid_vidorID.json not found" in r.notes[0]


# ----------------------------------------------------------------------------------------------------
# LVBench: a sample in the format of video_info.meta.jsonl (THUDM/LVBench, data/README.md; the fields as its
# scripts read them: key, type, video_info {duration_minutes, fps, resolution}, qa [{uid, question with the
# options inline, answer letter, question_type list, time_reference}]). The published file is not in ../shared/data.
# ----------------------------------------------------------------------------------------------------

LVBENCH_LINES = [
    {"key": "sampleKey01", "type": "sport",
     "qa": [{"uid": 1, "question": "What year appears in the opening caption of the video?\n(A) 1636\n(B) 1366\n(C) 1363\n(D) 1633",
             "answer": "D", "question_type": ["key information retrieval"], "time_reference": "00:15-00:19"},
            {"uid": 2, "question": "Why does the referee stop the game (A) second time?\n(A) A foul\n(B) A timeout\n(C) Rain\n(D) An injury",
             "answer": "B", "question_type": ["reasoning", "event understanding"], "time_reference": "41:02-41:30"}],
     "video_info": {"duration_minutes": 118.5, "fps": 25.0, "resolution": {"width": 1280, "height": 720}}},
    {"key": "sampleKey02", "type": "tv",
     "qa": [{"uid": 3, "question": "Who enters first?\n(A) The host\n(B) A guest\n(C) The band\n(D) Nobody",
             "answer": "E", "question_type": ["entity recognition"], "time_reference": "00:01-00:05"},
            {"uid": 4, "question": "When is the trophy shown?\n(A) 00:10\n(B) 10:00\n(C) 20:00\n(D) 30:00",
             "answer": "C", "question_type": ["temporal grounding", "key information retrieval"], "time_reference": ""}],
     "video_info": {"duration_minutes": 62.0, "fps": 29.97, "resolution": {"width": 1920, "height": 1080}}},
]


def test_lvbench_keeps_every_question_type_and_the_duration(tmp_path: Path) -> None:
    f = tmp_path / "video_info.meta.jsonl"
    f.write_text("\n".join(json.dumps(line) for line in LVBENCH_LINES) + "\n")
    r = load_benchmark("lvbench", f, video_root="/lv", max_skipped_share=0.5)
    q1, q2, q4 = r.questions
    assert q1.question == "What year appears in the opening caption of the video?"
    assert q1.options == ["1636", "1366", "1363", "1633"] and q1.answer == 3 and q1.question_id == "1"
    assert q1.video == "/lv/sampleKey01.mp4" and q1.duration_s == pytest.approx(118.5 * 60)
    assert q2.question == "Why does the referee stop the game (A) second time?" and q2.answer == 1
    assert q2.task_types == ["reasoning", "event understanding"] and q2.task_type == "reasoning"
    assert q4.task_types == ["temporal grounding", "key information retrieval"] and q4.duration_s == 62 * 60
    assert [str(s) for s in r.skipped] == [f"{f}:2: qa.0.answer: answer 'E' is outside the 4 options"]
    assert r.summary()["task_types"]["key information retrieval"] == 2  # counted in each of its types


def test_lvbench_bad_lines_are_reported_by_line(tmp_path: Path) -> None:
    f = tmp_path / "video_info.meta.jsonl"
    no_options = json.loads(json.dumps(LVBENCH_LINES[0]))
    no_options["qa"][0]["question"] = "No options here"
    f.write_text("\n".join([json.dumps(no_options), "{not json", json.dumps({**LVBENCH_LINES[1], "key": ""})]) + "\n")
    r = load_benchmark("lvbench", f, max_skipped_share=1.0)
    assert [str(s) for s in r.skipped] == [
        f"{f}:1: qa.0.question: no inline options '(A) ...' found",
        f"{f}:2: (line): not valid JSON (Expecting property name enclosed in double quotes)",
        f"{f}:3: key: empty", f"{f}:3: key: empty",  # each question of that video
    ]
    assert [q.question_id for q in r.questions] == ["2"]


# ----------------------------------------------------------------------------------------------------
# Malformed records: skipped and reported, --strict, the share that means a wrong file
# ----------------------------------------------------------------------------------------------------

MLVU_NEEDLE = [
    {"video": "needle_32.mp4", "duration": 467.98, "question": "What does the hand coming out of the toilet have?",
     "candidates": ["Hairbrush", "Comb", "Toothbrush", "Shovel"], "answer": "Comb", "question_type": "findNeedle"},
]


def test_malformed_records_are_skipped_strict_makes_them_errors(tmp_path: Path) -> None:
    good = [{**MLVU_NEEDLE[0], "video": f"needle_{i}.mp4"} for i in range(20)]
    bad = {**MLVU_NEEDLE[0], "answer": "green"}
    f = tmp_path / "2_needle.json"
    text = json.dumps(good[:10] + [bad] + good[10:], indent=4)
    f.write_text(text)
    line = 1 + 10 * 13 + 1  # "[" then ten 13-line records: the bad one starts on line 132
    assert text.splitlines()[line - 1] == "    {"
    r = load_benchmark("mlvu", f)
    assert len(r.questions) == 20 and r.skipped_line() == "1 of 21 questions skipped"
    assert [str(s) for s in r.skipped] == [f"{f}:{line}: answer: 'green' is not one of the candidates (MLVU gives "
                                           "the answer as a candidate's text)"]
    assert [q.question_id for q in r.questions][10] == "2_needle/11"  # ids keep their place in the file
    with pytest.raises(DataError, match=rf"2_needle\.json:{line}: answer: 'green' .*--strict"):
        load_benchmark("mlvu", f, strict=True)
    # --limit counts loaded questions: the malformed record does not stop the first ones
    assert [q.question_id for q in load_questions("mlvu", f, limit=11)][-1] == "2_needle/11"


def test_a_wrong_file_or_layout_is_an_error_naming_the_layout(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"val\.csv: 4,996 of 4,996 questions skipped \(100%\), first .*val\.csv:2: "
                                        r"options: missing; this is not the videomme layout: expected Video-MME"):
        load_benchmark("videomme", shared_data / "nextqa" / "val.csv")
    with pytest.raises(DataError, match=r"expected MLVU dev: the json/ folder"):
        load_benchmark("mlvu", shared_data / "benchmarks" / "longvideobench" / "lvb_val.json")
    f = tmp_path / "qs.jsonl"
    f.write_text("\n".join(json.dumps({"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": a})
                           for a in (0, 5, 5, 5, 1)) + "\n")  # most answers are outside the options
    with pytest.raises(DataError, match=r"3 of 5 questions skipped \(60%\).*qs\.jsonl:2: answer: answer 5 is outside"):
        load_benchmark("jsonl", f)
    assert len(load_benchmark("jsonl", f, max_skipped_share=0.6).questions) == 2
    f.write_text("\n".join(f.read_text().splitlines()[:3]) + "\n")  # 2 of 3: a small file may have a couple
    assert len(load_benchmark("jsonl", f).questions) == 1


def test_videomme_bad_row_is_reported_by_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
           "url": "u", "videoID": "fFjv93ACGo8", "question_id": "001-1", "task_type": "Counting Problem",
           "question": "How many?", "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": "C"}
    rows = [{**row, "question_id": f"001-{i}"} for i in range(12)]
    rows[1]["answer"] = "F"
    rows[2]["duration"] = "very long"
    rows[3]["question_id"] = "001-0"
    f = tmp_path / "v.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    r = load_benchmark("video-mme", f, max_skipped_share=0.3)
    assert [str(s) for s in r.skipped] == [
        f"{f}:2: answer: answer 'F' is outside the 4 options",
        f"{f}:3: duration: 'very long' is not one of short, medium, long",
        f"{f}:4: question_id: '001-0' appears twice (first at {f}:1)",
    ]
    assert len(r.questions) == 9 and r.files == {"v.parquet": r.files["v.parquet"]} and r.files["v.parquet"].skipped == 3


def test_plain_jsonl_roundtrip_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "qs.jsonl"
    f.write_text(
        json.dumps({"video": "a.mp4", "question": "Which colour?", "options": ["red", "blue"], "answer": "B"}) + "\n"
        + json.dumps({"video": "/abs/b.mp4", "question": "Which shape?", "options": ["circle", "square"],
                      "answer": "circle", "question_id": "q2", "task_types": ["shape", "geometry"],
                      "duration_s": 12.5, "duration_group": "short"}) + "\n"
    )
    q1, q2 = load_questions("jsonl", f)
    assert q1.question_id == "qs:1" and q1.answer == 1 and q1.video == str(tmp_path / "a.mp4")
    assert q2.video == "/abs/b.mp4" and q2.answer == 0 and q2.task_types == ["shape", "geometry"]
    assert q2.task_type == "shape" and q2.duration_s == 12.5 and q2.duration_group == "short"
    out = tmp_path / "out.jsonl"
    write_questions_jsonl(out, [q1, q2])
    assert load_questions("jsonl", out) == [q1, q2]

    for rec, message in [
        ({"video": "a.mp4", "options": ["x", "y"], "answer": 0}, r"qs\.jsonl:1: question: missing"),
        ({"video": "a.mp4", "question": "q", "options": ["x"], "answer": 0}, r"qs\.jsonl:1: options: needs at least 2"),
        ({"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": 0, "duration_s": -3},
         r"qs\.jsonl:1: duration_s: expected a positive number of seconds"),
    ]:
        f.write_text(json.dumps(rec) + "\n")
        with pytest.raises(DataError, match=message):
            load_benchmark("jsonl", f, strict=True)
    f.write_text("{not json\n")
    with pytest.raises(DataError, match=r"qs\.jsonl:1: \(line\): not valid JSON"):
        load_benchmark("jsonl", f, strict=True)


def test_missing_videos_and_unknown_benchmark(tmp_path: Path) -> None:
    f = tmp_path / "qs.jsonl"
    f.write_text(json.dumps({"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": 0}) + "\n")
    with pytest.raises(DataError, match=r"1 of 1 videos not found, first '.*a\.mp4'"):
        load_questions("jsonl", f, check_videos=True)
    with pytest.raises(DataError, match="unknown benchmark 'egoschema'"):
        load_questions("egoschema", f)
    with pytest.raises(DataError, match=r"is a folder; expected Video-MME"):
        load_benchmark("videomme", tmp_path)


def test_answer_forms() -> None:
    opts = ["red", "blue", "green"]
    assert [answer_index(v, opts) for v in (2, "C", "(c)", "B.", "blue", 1.0)] == [2, 2, 2, 1, 1, 1]
    numeric = ["3", "2", "1", "6"]
    assert [answer_index(v, numeric) for v in ("2", "1", "6", 2, "B")] == [1, 2, 3, 2, 1]  # text first, ints index
    with pytest.raises(ValueError, match="neither one of the options nor a letter"):
        answer_index("7", numeric)
    with pytest.raises(ValueError, match="ambiguous"):
        answer_index("a", ["a", "a", "b"])
    assert strip_letter("A. Blue.") == "Blue." and strip_letter("(B) x") == "x" and strip_letter("plain") == "plain"
    with pytest.raises(ValueError):
        answer_index(True, opts)


def test_summary_counts_what_was_loaded(benchmarks: Path) -> None:
    r: LoadResult = load_benchmark("longvideobench", benchmarks / "longvideobench" / "lvb_val.json")
    s = r.summary(r.questions[:10])
    assert s["questions"] == 10 and s["records"] == 1337 and s["skipped"] == 0
    assert sum(s["task_types"].values()) == 10 and sum(s["duration_groups"].values()) == 10
    assert s["duration_s"]["known"] == 10 and s["duration_s"]["min"] <= s["duration_s"]["median"] <= s["duration_s"]["max"]
