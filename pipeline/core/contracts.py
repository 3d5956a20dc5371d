"""The data contracts of SPEC section 3, as pydantic v2 models.

Every record that crosses a module or a file boundary is one of these. They reject unknown fields
(a typo in a hand-written file should fail loudly, not be dropped), and they check what a user would
otherwise only discover hours into a training run: spans that end before they start, frames outside
the video, scores out of range, an answer index outside the options.

Times are seconds (float); frames are 0-based indices into the decoded stream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Priority = Literal["P1", "P2"]
PRIORITY_RANK: dict[str, int] = {"P1": 2, "P2": 1}

TASK_NAMES = (
    "sft1.caption_to_scene",
    "sft1.scene_to_caption",
    "sft1.relevance",
    "sft2.key_clips",
    "grpo.mcq",
)


class Record(BaseModel):
    """Base of every contract: strict about unknown fields, validated on assignment, every float finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _check_scene_list(scenes: list[Scene], video: VideoInfo) -> None:
    """Scenes in order, numbered 0.., not overlapping, and inside the video (in frames and in seconds)."""
    slack_s = 1.0 / video.fps + 1e-3
    for i, scene in enumerate(scenes):
        if scene.index != i:
            raise ValueError(f"scene {scene.index} is at position {i}: scenes must be numbered 0, 1, 2, ... in order")
        if scene.end_frame > video.num_frames:
            raise ValueError(f"scene {scene.index} ends at frame {scene.end_frame}, past the video ({video.num_frames} frames)")
        if scene.end_s > video.duration_s + slack_s:
            raise ValueError(f"scene {scene.index} ends at {scene.end_s}s, past the video ({video.duration_s}s)")
        if i and scene.start_frame < scenes[i - 1].end_frame:
            raise ValueError(
                f"scene {scene.index} starts at frame {scene.start_frame}, before scene {i - 1} ends "
                f"({scenes[i - 1].end_frame}): scenes overlap or are out of order"
            )


class VideoInfo(Record):
    video_id: str = Field(min_length=1)
    path: str = Field(min_length=1)
    fps: float = Field(gt=0)
    num_frames: int = Field(gt=0)
    duration_s: float = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    rotation: int = 0
    vfr: bool = False


class Scene(Record):
    index: int = Field(ge=0)
    start_frame: int = Field(ge=0)
    end_frame: int = Field(gt=0, description="exclusive")
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    boundary: Literal["start", "cut", "gradual", "split"] | None = Field(
        None, description="how the scene begins: video start, hard cut, fade/dissolve, or an even split of a long scene"
    )
    found_by: Literal["histogram", "transnetv2"] | None = Field(
        None, description="the detector that found the boundary the scene begins with (None: video start or split)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Scene:
        if self.end_frame <= self.start_frame:
            raise ValueError(f"end_frame ({self.end_frame}) must be after start_frame ({self.start_frame})")
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


class SceneCaption(Record):
    scene_index: int = Field(ge=0)
    text: str


class Chapter(Record):
    scene_start: int = Field(ge=0)
    scene_end: int = Field(ge=0, description="inclusive")
    text: str

    @model_validator(mode="after")
    def _ordered(self) -> Chapter:
        if self.scene_end < self.scene_start:
            raise ValueError(f"scene_end ({self.scene_end}) is before scene_start ({self.scene_start})")
        return self


class VideoSummary(Record):
    text: str


class Query(Record):
    query_id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    options: list[str] | None = None
    answer: int | None = None
    video_id: str | None = None
    task_type: str | None = None

    @model_validator(mode="after")
    def _answer_in_options(self) -> Query:
        if self.answer is not None:
            if not self.options:
                raise ValueError("answer is set but there are no options")
            if not 0 <= self.answer < len(self.options):
                raise ValueError(f"answer {self.answer} is outside options (0..{len(self.options) - 1})")
        if self.options is not None and len(self.options) < 2:
            raise ValueError(f"a multiple-choice query needs at least 2 options, got {len(self.options)}")
        return self


class SceneScore(Record):
    scene_index: int = Field(ge=0)
    llm_score: float = Field(ge=1, le=5)
    sim: float | None = Field(default=None, ge=-1, le=1)
    score: float = Field(ge=1, le=5, description="final score after optional similarity fusion")
    reason: str = ""


class KeyClip(Record):
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    priority: Priority
    reason: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> KeyClip:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class QueryAnnotation(Record):
    """One query of a video with its per-scene scores and the resulting key clips."""

    query: Query
    scores: list[SceneScore] = Field(default_factory=list)
    clips: list[KeyClip] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list, description="scenes whose score could not be parsed")


class VideoScenes(Record):
    """One line of `kframes scenes` output: a video and its scenes."""

    video: VideoInfo
    scenes: list[Scene]

    @model_validator(mode="after")
    def _inside_video(self) -> VideoScenes:
        _check_scene_list(self.scenes, self.video)
        return self


class PeakClipsRecord(Record):
    video: VideoInfo
    scenes: list[Scene]
    captions: list[SceneCaption] = Field(default_factory=list)
    chapters: list[Chapter] = Field(default_factory=list)
    summary: VideoSummary | None = None
    queries: list[QueryAnnotation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _inside_video(self) -> PeakClipsRecord:
        _check_scene_list(self.scenes, self.video)
        scene_ids = {s.index for s in self.scenes}
        for cap in self.captions:
            if cap.scene_index not in scene_ids:
                raise ValueError(f"caption for unknown scene {cap.scene_index}")
        for ch in self.chapters:
            if ch.scene_end not in scene_ids or ch.scene_start not in scene_ids:
                raise ValueError(f"chapter {ch.scene_start}-{ch.scene_end} names an unknown scene")
        for qa in self.queries:
            for sc in qa.scores:
                if sc.scene_index not in scene_ids:
                    raise ValueError(f"query {qa.query.query_id}: score for unknown scene {sc.scene_index}")
            for clip in qa.clips:
                if clip.end_s > self.video.duration_s + 1e-3:
                    raise ValueError(
                        f"query {qa.query.query_id}: clip ends at {clip.end_s}s, past the video ({self.video.duration_s}s)"
                    )
        return self


class ChatTurn(Record):
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]


class TrainingExample(Record):
    """One line of a stage's task file. Frames are referenced, never stored: they are decoded at batch time."""

    id: str = Field(min_length=1)
    task: str
    video: str = Field(min_length=1)
    frame_indices: list[int]
    timestamps_s: list[float]
    messages: list[ChatTurn]
    num_frames: int | None = Field(default=None, gt=0, description="frames in the video, for range checks")
    duration_s: float | None = Field(default=None, gt=0)
    question: str | None = None
    options: list[str] | None = None
    answer: int | None = None
    target_clips: list[KeyClip] | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASK_NAMES:
            raise ValueError(f"unknown task {v!r}; expected one of {', '.join(TASK_NAMES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainingExample:
        if len(self.frame_indices) != len(self.timestamps_s):
            raise ValueError(
                f"{len(self.frame_indices)} frame_indices but {len(self.timestamps_s)} timestamps_s"
            )
        if any(f < 0 for f in self.frame_indices):
            raise ValueError("frame_indices must be >= 0")
        if any(t < 0 for t in self.timestamps_s):
            raise ValueError("timestamps_s must be >= 0")
        if any(b <= a for a, b in zip(self.frame_indices, self.frame_indices[1:])) or any(
            b < a for a, b in zip(self.timestamps_s, self.timestamps_s[1:])
        ):
            raise ValueError("frame_indices must increase and timestamps_s must not decrease")
        if self.duration_s is not None:
            if any(t > self.duration_s for t in self.timestamps_s):
                raise ValueError(f"a timestamp is past the video ({self.duration_s}s)")
            for clip in self.target_clips or []:
                if clip.end_s > self.duration_s + 1e-3:
                    raise ValueError(f"target clip ends at {clip.end_s}s, past the video ({self.duration_s}s)")
        if self.num_frames is not None and any(f >= self.num_frames for f in self.frame_indices):
            raise ValueError(f"a frame index is past the video ({self.num_frames} frames)")
        if self.task == "grpo.mcq":
            if self.question is None or not self.options or self.answer is None:
                raise ValueError("a grpo.mcq example needs question, options and answer")
        if self.answer is not None:
            if not self.options or not 0 <= self.answer < len(self.options):
                raise ValueError(f"answer {self.answer} is outside options")
        return self


class EvalQuestion(Record):
    """One benchmark question, whatever benchmark it came from (the loaders' common type).

    `task_types` holds every type the benchmark gives (an LVBench question can have several, and counts in
    each); `task_type` is the first, kept for one-type consumers. Either may be given: the other follows.
    `duration_s` is the video's length where the annotation states it; `duration_group` is the benchmark's
    own length bucket (Video-MME short/medium/long, LongVideoBench 8-15s ... 900-3600s), which is how those
    benchmarks report accuracy.
    """

    question_id: str = Field(min_length=1)
    video: str = Field(min_length=1)
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    answer: int
    task_type: str = Field("default", min_length=1)
    task_types: list[str] = Field(default_factory=list)
    duration_s: float | None = Field(None, gt=0)
    duration_group: str | None = Field(None, min_length=1)
    benchmark: str = "jsonl"

    @model_validator(mode="before")
    @classmethod
    def _types_agree(cls, data: Any) -> Any:
        if isinstance(data, dict):
            types = data.get("task_types") or []
            if not types:
                data = {**data, "task_types": [data.get("task_type") or "default"]}
            elif data.get("task_type") in (None, "default"):
                data = {**data, "task_type": types[0]}
        return data

    @model_validator(mode="after")
    def _answer_in_options(self) -> EvalQuestion:
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is outside options (0..{len(self.options) - 1})")
        if self.task_type not in self.task_types:
            raise ValueError(f"task_type {self.task_type!r} is not one of task_types {self.task_types}")
        if len(set(self.task_types)) != len(self.task_types) or not all(t.strip() for t in self.task_types):
            raise ValueError(f"task_types {self.task_types} must be distinct, non-empty names")
        return self


# Models that `kframes validate` can check, by name. The file's records are matched by their fields.
CONTRACTS: dict[str, type[Record]] = {
    "VideoInfo": VideoInfo,
    "Scene": Scene,
    "Query": Query,
    "SceneScore": SceneScore,
    "KeyClip": KeyClip,
    "VideoScenes": VideoScenes,
    "PeakClipsRecord": PeakClipsRecord,
    "TrainingExample": TrainingExample,
    "EvalQuestion": EvalQuestion,
}
