"""Inference: `Selector`, `select_frames`, the contact sheet and the `kframes sample` / `kframes select` commands,
with the tiny local Qwen2.5-VL on CPU and real videos from ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.core.contracts import KeyClip

CLIP_ANSWER = 'Sure.\n```json\n[{"start": 2.0, "end": 4.0, "priority": "P1", "reason": "a bike"}]\n```'


@pytest.fixture(scope="module")
def selector(tiny_model_dir: Path):
    from pipeline.inference.selector import Selector

    return Selector.from_pretrained(tiny_model_dir, num_candidates=8)


@pytest.fixture
def bikes(shared_data: Path) -> Path:
    return shared_data / "videos" / "bikes.mp4"


def _script(selector, monkeypatch, answer: str) -> list[dict]:
    """Make the model 'generate' `answer` (tokenized by its own tokenizer); record what it was given."""
    import torch

    seen: list[dict] = []
    ids = selector.processor.tokenizer.encode(answer, add_special_tokens=False)

    def generate(**inputs):
        seen.append(inputs)
        return torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)

    monkeypatch.setattr(selector.model, "generate", generate)
    return seen


def test_predict_shows_the_model_t_frames_after_their_timestamps_and_parses_its_answer(
    selector, bikes, monkeypatch
) -> None:
    from pipeline.inference.selector import select_frames

    seen = _script(selector, monkeypatch, CLIP_ANSWER)
    res = select_frames(selector, bikes, "when does the bike pass?", 4, "focused", options=["early", "late"])
    # the prompt: 8 candidate images, each after its <t=...s> label, the query and the options
    tok = selector.processor.tokenizer
    prompt = tok.decode(seen[0]["input_ids"][0])
    assert prompt.count("<|vision_start|>") == 8 and prompt.count("<t=") == 8
    assert "Query: when does the bike pass?" in prompt and "(A) early (B) late" in prompt
    assert seen[0]["pixel_values"].shape[0] > 0
    # the answer: one P1 clip 2-4 s -> 4 frames at its midpoints (bikes.mp4 is 25 fps)
    assert [(c.start_s, c.end_s, c.priority) for c in res.clips] == [(2.0, 4.0, "P1")]
    assert not res.fallback and res.parse_error is None
    assert res.indices == [56, 68, 81, 93]
    assert all(2.0 <= t < 4.0 for t in res.timestamps_s)
    assert set(res.timings) == {"decode_s", "model_s", "sampling_s", "total_s"}
    assert res.timings["sampling_s"] < res.timings["total_s"]
    json.dumps(res.to_dict())


def test_unparseable_output_falls_back_to_uniform_frames_and_says_why(selector, bikes, monkeypatch) -> None:
    from pipeline.inference.selector import select_frames

    _script(selector, monkeypatch, "I am not sure what happens.")
    res = select_frames(selector, bikes, "what happens?", 6, "hybrid")
    assert res.fallback and res.clips == []
    assert res.fallback_reason.startswith("unparseable output: no JSON list")
    assert len(res.indices) == 6 and res.indices == sorted(set(res.indices))


def test_one_prediction_serves_every_k_and_mode(selector, bikes, monkeypatch) -> None:
    from pipeline.inference.selector import selection_from_prediction

    _script(selector, monkeypatch, CLIP_ANSWER)
    pred = selector.predict(bikes, "when does the bike pass?")
    for mode in ("focused", "hybrid", "auto", "set", "soft"):
        for k in (4, 32):
            res = selection_from_prediction(pred, str(bikes), "q", k, mode)
            assert len(res.indices) == k and res.indices == sorted(set(res.indices))
            assert (res.token_budget is not None) == (mode == "soft")


def test_real_tiny_model_generation_runs_end_to_end(selector, bikes) -> None:
    """No script: the random-weight model writes whatever it writes; the result must still be k valid frames."""
    from pipeline.inference.selector import select_frames

    res = select_frames(selector, bikes, "when does the bike pass?", 8, max_new_tokens=16)
    assert len(res.indices) == 8 and res.fallback == (not res.clips)
    assert res.timings["model_s"] > 0 and res.timings["decode_s"] > 0


def test_contact_sheet_draws_every_frame_with_its_priority(tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.inference.contact_sheet import COLOURS, render_contact_sheet, write_contact_sheet

    images = [Image.new("RGB", (64, 48), (0, 0, 255)) for _ in range(5)]
    clips = [KeyClip(start_s=1.0, end_s=2.0, priority="P1"), KeyClip(start_s=3.0, end_s=4.0, priority="P2")]
    times = [0.5, 1.5, 2.5, 3.5, 4.5]
    sheet = render_contact_sheet(images, [5, 15, 25, 35, 45], times, clips, title="q", columns=5)
    arr = np.asarray(sheet)
    cell_w = sheet.width // 5
    border_colours = [
        tuple(arr[arr.shape[0] - 30, j * cell_w + 1]) for j in range(5)
    ]  # left border of each tile
    assert border_colours == [COLOURS[None], COLOURS["P1"], COLOURS[None], COLOURS["P2"], COLOURS[None]]
    out = tmp_path / "sheet.png"
    write_contact_sheet(out, images, [5, 15, 25, 35, 45], times, clips)
    assert Image.open(out).size[0] > 0


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------


def test_kframes_sample_prints_the_samplers_result(capsys) -> None:
    clips = '[{"start": 10, "end": 20, "priority": "P1"}, {"start": 40, "end": 70, "priority": "P2"}]'
    assert (
        main(
            [
                "sample",
                "--clips",
                clips,
                "--num-frames",
                "1000",
                "--fps",
                "10",
                "--k",
                "8",
                "--mode",
                "focused",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["indices"] == [116, 150, 183, 430, 490, 550, 610, 670]
    assert out["timestamps_s"] == [11.6, 15.0, 18.3, 43.0, 49.0, 55.0, 61.0, 67.0]
    assert [a["allocated"] for a in out["allocations"]] == [3, 5] and out["fallback"] is False


def test_kframes_sample_reads_a_file_and_reports_unparseable_clips(tmp_path: Path, capsys) -> None:
    f = tmp_path / "clips.json"
    f.write_text('[{"start_s": 1.0, "end_s": 2.0, "priority": "P2"}]')
    assert (
        main(
            ["sample", "--clips", str(f), "--num-frames", "100", "--fps", "10", "--k", "3", "--mode", "soft"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (
        out["indices"] == [12, 17, 55] and len(out["token_budget"]) == 3
    )  # hybrid: 2 in the clip, 1 outside
    assert main(["sample", "--clips", "[oops]", "--num-frames", "100", "--fps", "10", "--k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fallback"] and "unparseable clips" in out["fallback_reason"] and out["indices"] == [25, 75]


def test_kframes_sample_bad_input_is_one_line_and_exit_2(capsys) -> None:
    assert main(["sample", "--clips", "missing.json", "--num-frames", "100", "--fps", "10", "--k", "2"]) == 2
    assert "--clips missing.json: no such file" in capsys.readouterr().err
    assert main(["sample", "--clips", "[]", "--num-frames", "100", "--fps", "10", "--k", "0"]) == 2
    assert "argument --k: '0' must be at least 1" in capsys.readouterr().err
    assert main(["sample", "--clips", "[]", "--num-frames", "100", "--fps", "inf", "--k", "2"]) == 2
    assert "argument --fps: 'inf' is not a finite number" in capsys.readouterr().err


def test_kframes_select_one_video_with_sheet(
    tiny_model_dir: Path, bikes: Path, tmp_path: Path, capsys
) -> None:
    from PIL import Image

    sheet, out = tmp_path / "sheet.png", tmp_path / "sel.json"
    argv = [
        "select",
        "--model",
        str(tiny_model_dir),
        "--video",
        str(bikes),
        "--query",
        "when does the bike pass?",
    ]
    argv += [
        "--k",
        "6",
        "--num-candidates",
        "8",
        "--max-new-tokens",
        "8",
        "--sheet",
        str(sheet),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert len(res["indices"]) == 6 and len(res["timestamps_s"]) == 6 and "fallback" in res
    assert set(res["timings"]) == {"decode_s", "model_s", "sampling_s", "total_s"}
    assert Image.open(sheet).size[0] > 0


def test_kframes_select_batch_is_resumable_and_keyed_by_its_settings(
    tiny_model_dir: Path, bikes: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import pipeline.cli.select as cs

    batch = tmp_path / "batch.jsonl"
    lines = [
        {"id": "a", "video": str(bikes), "query": "when does the bike pass?"},
        {
            "id": "b",
            "video": str(bikes),
            "query": "what colour is the car?",
            "options": ["red", "blue"],
            "k": 4,
            "mode": "set",
        },
    ]
    batch.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    calls = []
    real = cs._run_one
    monkeypatch.setattr(cs, "_run_one", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    argv = ["select", "--model", str(tiny_model_dir), "--batch", str(batch), "--out", str(out), "--k", "6"]
    argv += ["--num-candidates", "8", "--max-new-tokens", "8"]
    assert main(argv) == 0 and len(calls) == 2
    first = [json.loads(x) for x in out.read_text().splitlines()]

    # a run killed after "a": its journal holds "a" and a torn line; only "b" is computed again
    out.unlink()
    (tmp_path / "out.jsonl.partial").write_text(json.dumps(first[0]) + '\n{"id": "b", "ind')
    calls.clear()
    assert main(argv) == 0
    assert calls == ["what colour is the car?"]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    untimed = lambda rs: [{k: v for k, v in r.items() if k != "timings"} for r in rs]
    assert untimed(recs) == untimed(first)
    assert not (tmp_path / "out.jsonl.partial").exists()
    assert main(argv) == 0 and calls == ["what colour is the car?"]  # all done: nothing runs

    # another k (or mode, model, options...) is another result: computed, not served from the old run
    calls.clear()
    assert main([*argv[:-4], "--k", "3", *argv[-4:]]) == 0
    assert calls == ["when does the bike pass?"]  # "b" sets its own k=4 and mode in the batch file
    assert len(json.loads(out.read_text().splitlines()[0])["indices"]) == 3


def test_kframes_select_batch_never_overwrites_a_file_it_did_not_write(
    tiny_model_dir: Path, bikes: Path, tmp_path: Path, capsys
) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps({"id": "a", "video": str(bikes), "query": "q"}) + "\n")
    out = tmp_path / "notes.jsonl"
    out.write_text('{"id": "a", "note": "mine"}\n{"other": 1}\n')
    before = out.read_text()
    argv = ["select", "--model", str(tiny_model_dir), "--batch", str(batch), "--out", str(out), "--k", "2",
            "--num-candidates", "4", "--max-new-tokens", "4"]
    assert main(argv) == 2
    assert "not a `kframes select --batch` result" in capsys.readouterr().err
    assert out.read_text() == before


def test_kframes_select_batch_records_a_bad_video_and_goes_on(
    tiny_model_dir: Path, bikes: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(x) for x in [
        {"id": "bad", "video": str(bad), "query": "q"},
        {"id": "good", "video": str(bikes), "query": "q"},
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["select", "--model", str(tiny_model_dir), "--batch", str(batch), "--out", str(out), "--k", "2",
            "--num-candidates", "4", "--max-new-tokens", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "failed: bad: " in err and "bad.mp4" in err and "1 of 2 queries failed" in err
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["good"]


def test_kframes_select_bad_batch_names_the_line(tmp_path: Path, capsys) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"video": "v.mp4", "query": "q"}\n{"video": "v.mp4", "query": "q", "k": -1}\n')
    assert (
        main(
            [
                "select",
                "--model",
                "tiny",
                "--batch",
                str(batch),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--k",
                "8",
            ]
        )
        == 2
    )
    assert f"{batch}:2: k must be a positive integer" in capsys.readouterr().err
    assert main(["select", "--model", "tiny", "--k", "8"]) == 2
    assert "need --video and --query" in capsys.readouterr().err
