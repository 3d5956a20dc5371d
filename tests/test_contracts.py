"""The data contracts: what a user's records must satisfy, and that files round-trip."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.core.contracts import (
    KeyClip,
    PeakClipsRecord,
    Query,
    QueryAnnotation,
    Scene,
    SceneScore,
    TrainingExample,
    VideoInfo,
)
from pipeline.core.io import atomic_write_jsonl, read_jsonl_models

VIDEO = VideoInfo(video_id="v1", path="/data/v1.mp4", fps=25.0, num_frames=250, duration_s=10.0, width=320, height=240)


def _record() -> PeakClipsRecord:
    return PeakClipsRecord(
        video=VIDEO,
        scenes=[
            Scene(index=0, start_frame=0, end_frame=100, start_s=0.0, end_s=4.0),
            Scene(index=1, start_frame=100, end_frame=250, start_s=4.0, end_s=10.0),
        ],
        queries=[
            QueryAnnotation(
                query=Query(query_id="q1", text="what is red?", options=["a ball", "a car"], answer=1),
                scores=[SceneScore(scene_index=1, llm_score=5, score=4.95, reason="red car")],
                clips=[KeyClip(start_s=4.0, end_s=10.0, priority="P1", reason="red car")],
            )
        ],
    )


def test_valid_record_round_trips_through_jsonl(tmp_path):
    rec = _record()
    path = tmp_path / "peakclips.jsonl"
    atomic_write_jsonl(path, [rec, rec])
    back = read_jsonl_models(path, PeakClipsRecord)
    assert back == [rec, rec]


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: Scene(index=0, start_frame=10, end_frame=5, start_s=0.4, end_s=0.2), "end_frame"),
        (lambda: KeyClip(start_s=5.0, end_s=5.0, priority="P1"), "end_s"),
        (lambda: KeyClip(start_s=1.0, end_s=2.0, priority="P3"), "priority"),
        (lambda: SceneScore(scene_index=0, llm_score=6, score=4), "llm_score"),
        (lambda: Query(query_id="q", text="x", options=["a", "b"], answer=2), "outside options"),
        (lambda: Query(query_id="q", text="x", answer=0), "no options"),
        (lambda: VideoInfo(video_id="v", path="p", fps=0, num_frames=1, duration_s=1, width=1, height=1), "fps"),
    ],
)
def test_invalid_records_are_rejected_with_the_field(build, fragment):
    with pytest.raises(ValidationError) as exc:
        build()
    assert fragment in str(exc.value)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        KeyClip.model_validate({"start_s": 0, "end_s": 1, "priority": "P1", "confidence": 0.9})


def test_scene_past_the_end_of_the_video_is_rejected():
    data = _record().model_dump()
    data["scenes"][1]["end_frame"] = 300
    with pytest.raises(ValidationError, match="past the video"):
        PeakClipsRecord.model_validate(data)


def test_clip_past_the_end_of_the_video_is_rejected():
    data = _record().model_dump()
    data["queries"][0]["clips"][0]["end_s"] = 12.0
    with pytest.raises(ValidationError, match="past the video"):
        PeakClipsRecord.model_validate(data)


def test_training_example_checks_frames_and_answer():
    base = {
        "id": "e1",
        "task": "grpo.mcq",
        "video": "v.mp4",
        "frame_indices": [0, 10],
        "timestamps_s": [0.0, 0.4],
        "messages": [{"role": "user", "content": "hi"}],
        "num_frames": 20,
        "question": "q?",
        "options": ["a", "b"],
        "answer": 1,
    }
    TrainingExample.model_validate(base)
    with pytest.raises(ValidationError, match="past the video"):
        TrainingExample.model_validate({**base, "frame_indices": [0, 25]})
    with pytest.raises(ValidationError, match="timestamps_s"):
        TrainingExample.model_validate({**base, "timestamps_s": [0.0]})
    with pytest.raises(ValidationError, match="unknown task"):
        TrainingExample.model_validate({**base, "task": "sft3.magic"})
    with pytest.raises(ValidationError, match="outside options"):
        TrainingExample.model_validate({**base, "answer": 5})
    json.dumps(TrainingExample.model_validate(base).model_dump(mode="json"))
