"""What a careless or hostile user does: foreign files in an output folder, two writers, inf in a config, an odd
video, a damaged cache, records that break training, bytes that are not UTF-8. Each gives one clear error naming
the input (exit 2), or the right result; none loses data or returns a stale result as new."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.core.errors import DataError, VideoError
from pipeline.core.io import LockedError, OutputLock, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TINY_PIPELINE = str(ROOT / "configs/pipeline/tiny.yaml")


def _odd_video(path: Path, width: int = 4096, height: int = 16) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for i in range(20):
        writer.write(np.full((height, width, 3), i * 10, np.uint8))
    writer.release()
    return path


# ----------------------------------------------------------------------------------------------------
# Files the project did not write are never deleted or rewritten
# ----------------------------------------------------------------------------------------------------


def test_run_refuses_a_stage_folder_holding_files_it_did_not_write(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "X" / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "annotations.csv").write_text("precious\n")
    rc = main(["run", "--config", TINY_PIPELINE, "--set", f"output_dir={tmp_path / 'X'}", "--only", "data"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "holds files it did not write (raw)" in err and err.count("\n") == 1
    assert (raw / "annotations.csv").read_text() == "precious\n"


def test_outputs_are_created_with_the_umask_not_0600(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "out.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~mask


# ----------------------------------------------------------------------------------------------------
# One writer per output folder
# ----------------------------------------------------------------------------------------------------


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from pipeline.core.io import OutputLock\n"
        f"with OutputLock({str(folder)!r}):\n    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(LockedError, match=rf"{run}: another kframes process is writing here .*\"pid\": {holder.pid}"):
            with OutputLock(run):
                pass
        rc = main(["run", "--config", TINY_PIPELINE, "--set", f"output_dir={run}", "--status"])
        assert rc == 0  # reading the status takes no lock
        rc = main(["run", "--config", TINY_PIPELINE, "--set", f"output_dir={run}", "--only", "data"])
        assert rc == 2 and "another kframes process is writing here" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with OutputLock(run):  # the holder died (kill -9): its lock went with it
        pass


# ----------------------------------------------------------------------------------------------------
# Every float finite
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e999", ".inf", "nan"])
def test_non_finite_numbers_in_a_recipe_are_config_errors(value: str, capsys) -> None:
    rc = main(["config", "show", "sft1", "--config", "configs/tiny/sft1.yaml", "--set", f"train.learning_rate={value}"])
    assert rc == 2
    assert "train.learning_rate: Input should be a finite number" in capsys.readouterr().err


def test_an_infinite_sampler_weight_is_an_error_not_an_assertion() -> None:
    from pipeline.core.contracts import KeyClip
    from pipeline.core.sampler import SamplerError, sample_frames

    clips = [KeyClip(start_s=1.0, end_s=2.0, priority="P1")]
    with pytest.raises(SamplerError, match="weights must be positive"):
        sample_frames(clips, 100, 10.0, 4, "focused", weights={"P1": math.inf})


# ----------------------------------------------------------------------------------------------------
# One odd video does not end a whole run
# ----------------------------------------------------------------------------------------------------


def test_a_video_the_image_processor_cannot_take_is_refused_where_it_is_read(tmp_path: Path) -> None:
    from data_builder.video import read_video_info

    odd = _odd_video(tmp_path / "odd.mp4")
    with pytest.raises(VideoError, match=r"odd.mp4: 4096x16 frames: an aspect ratio beyond 200:1"):
        read_video_info(odd)


def test_scenes_over_a_folder_reports_the_odd_video_and_writes_the_others(shared_data: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    _odd_video(folder / "odd.mp4")
    (folder / "bikes.mp4").symlink_to(shared_data / "videos" / "bikes.mp4")
    out = tmp_path / "scenes.jsonl"
    assert main(["scenes", str(folder), "--out", str(out), "--no-progress"]) == 2
    assert "odd.mp4: 4096x16 frames" in capsys.readouterr().err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["video"]["path"]).name for x in lines] == ["bikes.mp4"]


def _die_on_b(path: str, cfg_json: str) -> tuple[str, str, str]:
    if path.endswith("b.mp4"):
        os._exit(9)  # what the OOM killer does to a worker
    return path, "ok", json.dumps({"video": {"path": path}})


def test_a_scenes_worker_that_dies_fails_its_own_video_only(monkeypatch) -> None:
    import pipeline.cli.scenes as scenes_cli

    monkeypatch.setattr(scenes_cli, "_segment_one", _die_on_b)
    results = {p: status for p, status, _ in scenes_cli._run(["a.mp4", "b.mp4", "c.mp4", "d.mp4"], "{}", workers=2)}
    assert results == {"a.mp4": "ok", "b.mp4": "error", "c.mp4": "ok", "d.mp4": "ok"}


# ----------------------------------------------------------------------------------------------------
# Content errors are recorded, not tracebacks
# ----------------------------------------------------------------------------------------------------


def test_a_null_caption_is_an_error_naming_the_file_and_video(tmp_path: Path) -> None:
    from data_builder.captions import import_captions

    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"v1": {"scenes": [{"scene_index": 0, "text": "ok"}],
                                       "chapters": [{"start_s": 0, "end_s": 5, "text": None}]}}))
    with pytest.raises(DataError, match=r"captions.json: v1: chapters\[0\]: text: expected a non-empty string, got None"):
        import_captions(path)
    path.write_bytes(b'{"v1": "\xff\xfe"}')
    with pytest.raises(DataError, match="captions.json: not UTF-8 text"):
        import_captions(path)


def test_a_damaged_llm_cache_entry_is_asked_again(tmp_path: Path) -> None:
    from data_builder.llm import CachedBackend, LLMRequest

    class Echo:
        batch_size = 4
        identity = "echo"
        calls = 0

        def generate(self, requests):
            Echo.calls += len(requests)
            return [f"answer to {r.prompt}" for r in requests]

    llm = CachedBackend(Echo(), tmp_path, {"temperature": 0.0})
    req = LLMRequest(prompt="p1")
    assert llm.generate([req]) == ["answer to p1"]
    entry = next(tmp_path.rglob("*.json"))
    for damaged in ('{"text": null}', "[1, 2]", "\xff not json"):
        entry.write_text(damaged, encoding="latin-1")
        assert llm.generate([req]) == ["answer to p1"]
    assert Echo.calls == 4


# ----------------------------------------------------------------------------------------------------
# `kframes validate` refuses what would break training
# ----------------------------------------------------------------------------------------------------


def _example(**changes):
    ex = {"id": "e1", "task": "sft2.key_clips", "video": "v.mp4", "frame_indices": [0, 10], "timestamps_s": [0.0, 1.0],
          "num_frames": 100, "duration_s": 10.0,
          "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "[]"}]}
    ex.update(changes)
    return ex


def _scenes(scenes, duration=10.0):
    return {"video": {"video_id": "v", "path": "v.mp4", "fps": 10.0, "num_frames": 100, "duration_s": duration,
                      "width": 64, "height": 64}, "scenes": scenes}


def _scene(i, a, b):
    return {"index": i, "start_frame": a, "end_frame": b, "start_s": a / 10, "end_s": b / 10}


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (_example(timestamps_s=[0.0, float("nan")]), "finite number"),
        (_example(timestamps_s=[-1.0, 1.0]), "timestamps_s must be >= 0"),
        (_example(duration_s=float("inf")), "finite number"),
        (_example(timestamps_s=[0.0, 50.0]), "past the video"),
        (_example(target_clips=[{"start_s": 1.0, "end_s": 90.0, "priority": "P1"}]), "target clip ends at 90.0s"),
        (_example(frame_indices=[10, 0]), "frame_indices must increase"),
        (_scenes([_scene(0, 0, 50), _scene(1, 40, 100)]), "scenes overlap or are out of order"),
        (_scenes([_scene(1, 50, 100), _scene(0, 0, 50)]), "must be numbered 0, 1, 2"),
        (_scenes([{**_scene(0, 0, 100), "end_s": 99.0}]), "scene 0 ends at 99.0s, past the video"),
    ],
)
def test_validate_rejects_records_that_break_training(tmp_path: Path, record, problem: str, capsys) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert main(["validate", str(path)]) == 1
    assert problem in capsys.readouterr().out


def test_validate_rejects_an_empty_file_and_bytes_that_are_not_utf8(tmp_path: Path, capsys) -> None:
    empty, latin = tmp_path / "empty.jsonl", tmp_path / "latin.jsonl"
    empty.write_text("\n")
    latin.write_bytes(b'{"video_id": "caf\xe9"}\n')
    assert main(["validate", str(empty), str(latin)]) == 1
    out = capsys.readouterr().out
    assert "empty.jsonl: (file): no records" in out and "latin.jsonl: (file): not UTF-8 text" in out


# ----------------------------------------------------------------------------------------------------
# Command-line values are taken as given
# ----------------------------------------------------------------------------------------------------


def test_queries_and_captions_paths_are_not_read_as_yaml(tmp_path: Path) -> None:
    from pipeline.cli.data import _load_cfg
    from pipeline.cli.main import build_parser

    args = build_parser().parse_args(
        ["data", "build", "--config", "configs/tiny/data.yaml", "--queries", "my queries #1.jsonl",
         "--captions", "caps: v2.json"]
    )
    cfg = _load_cfg(args)
    assert cfg.queries.file == "my queries #1.jsonl" and cfg.captions.import_file == "caps: v2.json"


def test_a_torn_multibyte_last_line_of_a_journal_is_recomputed(tmp_path: Path) -> None:
    from pipeline.core.io import Journal

    path = tmp_path / "j.jsonl"
    Journal(path, ("id",)).add({"id": "a", "text": "café"})
    with path.open("ab") as fh:
        fh.write(b'{"id": "b", "text": "caf' + "é".encode()[:1])  # killed inside a two-byte character
    journal = Journal(path, ("id",))
    assert list(journal.records) == [("a",)]
    journal.add({"id": "b", "text": "x"})
    assert [json.loads(x)["id"] for x in path.read_text(encoding="utf-8").splitlines()] == ["a", "b"]


def test_lock_file_names_its_holder(tmp_path: Path) -> None:
    with OutputLock(tmp_path):
        holder = json.loads((tmp_path / ".kframes.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] and time.strptime(holder["since"], "%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize("status", [400, 500, 200])
def test_a_vllm_server_echoing_the_api_key_never_gets_it_into_an_error(status: int, monkeypatch, caplog) -> None:
    import httpx
    from PIL import Image

    from pipeline.core.errors import BackendError
    from pipeline.core.logs import setup_logging
    from rewards.backends import MCQRequest
    from rewards.backends.vllm_backend import VLLMBackend

    secret = "vllm-key-0123456789-do-not-log"
    monkeypatch.setenv("KFRAMES_TEST_VLLM_KEY", secret)
    backend = VLLMBackend("http://127.0.0.1:9/v1", "served", api_key_env="KFRAMES_TEST_VLLM_KEY", max_retries=1,
                          backoff_s=0.0)

    def echo(request: httpx.Request) -> httpx.Response:  # a gateway that quotes the request's headers back
        body = f'{{"error": {{"message": "denied for {request.headers.get("authorization")}"}}}}'
        return httpx.Response(status, text=body if status != 200 else f"<html>{request.headers.get('authorization')}")

    backend._client = httpx.Client(transport=httpx.MockTransport(echo), headers=backend._client.headers)
    setup_logging()
    request = MCQRequest(images=[Image.new("RGB", (28, 28))], timestamps_s=[0.0], question="q?", options=["a", "b"])
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as err:
        backend.option_logprobs([request])
    assert secret not in str(err.value) and secret not in caplog.text
