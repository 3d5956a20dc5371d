"""Benchmark loaders: the real NExT-QA file, and small files written in each benchmark's published format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.evaluation.benchmarks import answer_index, load_questions, strip_letter, write_questions_jsonl


def test_nextqa_real_val_csv(shared_data: Path) -> None:
    qs = load_questions("nextqa", shared_data / "nextqa" / "val.csv", video_root="/videos")
    assert len(qs) == 4996
    first = qs[0]
    # First data row of val.csv: video 4010069381, qid 6, answer 0 ("roll the handle"), type CH.
    assert first.question_id == "4010069381_6"
    assert first.video == "/videos/4010069381.mp4"
    assert first.question == "how do the two man play the instrument"
    assert first.options[first.answer] == "roll the handle"
    assert len(first.options) == 5 and first.task_type == "CH" and first.benchmark == "nextqa"
    assert {q.task_type for q in qs} >= {"CW", "CH", "TN", "TC", "DC", "DL", "DO"}


def test_nextqa_uses_the_published_video_map(tmp_path: Path) -> None:
    csv = tmp_path / "val.csv"
    csv.write_text("video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
                   "4010069381,369,640,480,how,1,6,CH,a,b,c,d,e\n")
    root = tmp_path / "NExTVideo"
    root.mkdir()
    (root / "map_vid_vidorID.json").write_text(json.dumps({"4010069381": "1164/4010069381"}))
    (q,) = load_questions("nextqa", csv)
    assert q.video == str(root / "1164" / "4010069381.mp4") and q.answer == 1


def test_nextqa_bad_answer_names_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "val.csv"
    csv.write_text("video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
                   "1,1,1,1,q,0,1,CH,a,b,c,d,e\n"
                   "2,1,1,1,q,7,1,CH,a,b,c,d,e\n")
    with pytest.raises(DataError, match=r"val\.csv:3: answer: .*outside the 5 options"):
        load_questions("nextqa", csv)


MLVU_NEEDLE = [
    {"video": "needle_32.mp4", "duration": 467.98, "question": "What does the hand coming out of the toilet have?",
     "candidates": ["Hairbrush", "Comb", "Toothbrush", "Shovel"], "answer": "Comb", "question_type": "findNeedle"},
    {"video": "needle_33.mp4", "duration": 300.0, "question": "What colour is the car?",
     "candidates": ["red", "blue"], "answer": "blue", "question_type": "findNeedle"},
]


def test_mlvu_dev_json_and_folder(tmp_path: Path) -> None:
    jdir = tmp_path / "MLVU" / "json"
    jdir.mkdir(parents=True)
    (jdir / "2_needle.json").write_text(json.dumps(MLVU_NEEDLE, indent=4))
    (jdir / "1_plotQA.json").write_text(json.dumps([{**MLVU_NEEDLE[0], "video": "movie.mp4", "question_type": "plotQA"}]))
    (jdir / "9_summary.json").write_text(json.dumps([{"video": "s.mp4", "question": "Summarise", "answer": "..."}]))
    qs = load_questions("mlvu", jdir)  # the folder: every multiple-choice task, open-ended ones skipped
    assert [q.question_id for q in qs] == ["1_plotQA/0", "2_needle/0", "2_needle/1"]
    needle = qs[1]
    assert needle.video == str(tmp_path / "MLVU" / "video" / "2_needle" / "needle_32.mp4")
    assert needle.options[needle.answer] == "Comb" and needle.task_type == "findNeedle"
    assert qs[0].video.endswith("video/1_plotQA/movie.mp4")


def test_mlvu_answer_not_in_candidates_reports_line(tmp_path: Path) -> None:
    bad = [MLVU_NEEDLE[0], {**MLVU_NEEDLE[1], "answer": "green"}]
    f = tmp_path / "2_needle.json"
    text = json.dumps(bad, indent=4)
    f.write_text(text)
    second = text.splitlines().index("    {", 2) + 1  # the line the second object starts on (15)
    with pytest.raises(DataError, match=rf"2_needle\.json:{second}: answer: answer 'green' is neither a letter nor one of the options"):
        load_questions("mlvu", f)


VIDEOMME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "When demonstrating the Germany modern Christmas tree, how many colours?",
     "options": ["A. Blue.", "B. Red.", "C. Orange.", "D. White."], "answer": "C"},
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-2",
     "task_type": "Information Synopsis", "question": "What is the genre of this video?",
     "options": ["A. News.", "B. Documentary.", "C. Vlog.", "D. Sport."], "answer": "B"},
]


def test_videomme_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "Video-MME" / "videomme"
    d.mkdir(parents=True)
    f = d / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(VIDEOMME_ROWS), f)
    qs = load_questions("videomme", f)
    assert [q.question_id for q in qs] == ["001-1", "001-2"]
    assert qs[0].options == ["Blue.", "Red.", "Orange.", "White."] and qs[0].answer == 2
    assert qs[0].video == str(tmp_path / "Video-MME" / "data" / "fFjv93ACGo8.mp4")
    assert qs[1].task_type == "Information Synopsis"


def test_videomme_bad_row_is_reported_by_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [VIDEOMME_ROWS[0], {**VIDEOMME_ROWS[1], "answer": "F"}]
    f = tmp_path / "v.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    with pytest.raises(DataError, match=r"v\.parquet:2: answer: .*outside the 4 options"):
        load_questions("video-mme", f)


def test_longvideobench_val_json(tmp_path: Path) -> None:
    rows = [{"video_id": "86CxyhFV9MI", "question": "In the video, which subtitles appear at the same time as the man?",
             "question_wo_referring_query": "which subtitles", "candidates": ["a", "b", "c", "d"],
             "correct_choice": 3, "position": [1, 2], "topic_category": "NP-News-Programs",
             "question_category": "TOS", "level": "L2-Relation", "id": "86CxyhFV9MI_0",
             "video_path": "86CxyhFV9MI.mp4", "subtitle_path": "86CxyhFV9MI_en.json",
             "duration_group": 600, "starting_timestamp_for_subtitles": 0, "duration": 527.5}]
    f = tmp_path / "lvb_val.json"
    f.write_text(json.dumps(rows))
    (q,) = load_questions("longvideobench", f)
    assert q.question_id == "86CxyhFV9MI_0" and q.answer == 3 and q.task_type == "TOS"
    assert q.video == str(tmp_path / "videos" / "86CxyhFV9MI.mp4")
    f.write_text(json.dumps([{k: v for k, v in rows[0].items() if k != "candidates"}]))
    with pytest.raises(DataError, match=r"lvb_val\.json:1: candidates: missing"):
        load_questions("longvideobench", f)


def test_lvbench_meta_jsonl(tmp_path: Path) -> None:
    line = {"key": "XzYM3PfTM4w", "type": "entertainment",
            "qa": [{"uid": "1", "question": "What year appears in the opening caption of the video?\n(A) 1636\n(B) 1366\n(C) 1363\n(D) 1633",
                    "answer": "D", "question_type": ["key information retrieval"], "time_reference": "00:15-00:19"},
                   {"uid": "2", "question": "Why (A) this?\n(A) x\n(B) y", "answer": "B",
                    "question_type": ["reasoning"], "time_reference": ""}],
            "video_info": {"duration_minutes": 73.2, "fps": 30.0}}
    f = tmp_path / "video_info.meta.jsonl"
    f.write_text(json.dumps(line) + "\n")
    q1, q2 = load_questions("lvbench", f, video_root="/lv")
    assert q1.question == "What year appears in the opening caption of the video?"
    assert q1.options == ["1636", "1366", "1363", "1633"] and q1.answer == 3
    assert q1.video == "/lv/XzYM3PfTM4w.mp4" and q1.task_type == "key information retrieval"
    assert q2.question == "Why (A) this?" and q2.options == ["x", "y"] and q2.answer == 1
    line["qa"][0]["question"] = "No options here"
    f.write_text("\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=r"video_info\.meta\.jsonl:2: question: no inline options"):
        load_questions("lvbench", f)


def test_plain_jsonl_roundtrip_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "qs.jsonl"
    f.write_text(
        json.dumps({"video": "a.mp4", "question": "Which colour?", "options": ["red", "blue"], "answer": "B"}) + "\n"
        + json.dumps({"video": "/abs/b.mp4", "question": "Which shape?", "options": ["circle", "square"],
                      "answer": "circle", "question_id": "q2", "task_type": "shape"}) + "\n"
    )
    q1, q2 = load_questions("jsonl", f)
    assert q1.question_id == "qs:1" and q1.answer == 1 and q1.video == str(tmp_path / "a.mp4")
    assert q2.video == "/abs/b.mp4" and q2.answer == 0 and q2.task_type == "shape"
    out = tmp_path / "out.jsonl"
    write_questions_jsonl(out, [q1, q2])
    assert load_questions("jsonl", out) == [q1, q2]

    f.write_text(json.dumps({"video": "a.mp4", "options": ["x", "y"], "answer": 0}) + "\n")
    with pytest.raises(DataError, match=r"qs\.jsonl:1: question: missing"):
        load_questions("jsonl", f)
    f.write_text(json.dumps({"video": "a.mp4", "question": "q", "options": ["x"], "answer": 0}) + "\n")
    with pytest.raises(DataError, match=r"qs\.jsonl:1: options: needs at least 2 options"):
        load_questions("jsonl", f)
    f.write_text("{not json\n")
    with pytest.raises(DataError, match=r"qs\.jsonl:1: not valid JSON"):
        load_questions("jsonl", f)


def test_duplicates_missing_videos_and_unknown_benchmark(tmp_path: Path) -> None:
    f = tmp_path / "qs.jsonl"
    rec = {"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": 0, "question_id": "same"}
    f.write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match="appears twice"):
        load_questions("jsonl", f)
    f.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"1 of 1 videos not found, first '.*a\.mp4'"):
        load_questions("jsonl", f, check_videos=True)
    with pytest.raises(DataError, match="unknown benchmark 'egoschema'"):
        load_questions("egoschema", f)


def test_answer_forms() -> None:
    opts = ["red", "blue", "green"]
    assert [answer_index(v, opts) for v in (2, "2", "C", "(c)", "B.", "Blue", 1.0)] == [2, 2, 2, 2, 1, 1, 1]
    assert strip_letter("A. Blue.") == "Blue." and strip_letter("(B) x") == "x" and strip_letter("plain") == "plain"
    with pytest.raises(ValueError):
        answer_index(True, opts)
