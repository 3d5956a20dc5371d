"""`kframes run`'s decisions: wiring between stages, skipping, resuming after a kill, reruns after a change.

The stage bodies are replaced by quick ones that write the same kind of outputs the real stages write (a
training stage's `final/stage.json` through stages.manifest), so these tests check the orchestrator's own
rules in a second; tests/test_pipeline_e2e.py runs the real stages.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.orchestration import orchestrate
from pipeline.orchestration.orchestrate import decide, load_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _plan(tmp_path: Path, *extra: str):
    return load_pipeline(str(ROOT / "configs/pipeline/tiny.yaml"), [f"output_dir={tmp_path / 'run'}", *extra])


class FakeStages:
    """Stage bodies that write real-looking outputs and count their calls; `fail_in` raises inside a stage."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail_in: str | None = None
        monkeypatch.setattr(orchestrate, "_run_data", self.data)
        monkeypatch.setattr(orchestrate, "_run_train", self.train)
        monkeypatch.setattr(orchestrate, "_run_select", self.select)
        monkeypatch.setattr(orchestrate, "_run_eval", self.eval)

    def _enter(self, stage: str, fresh: bool) -> None:
        self.calls.append((stage, fresh))
        if self.fail_in == stage:
            raise KeyboardInterrupt(f"killed during {stage}")

    def data(self, plan, fresh):
        self._enter("data", fresh)
        d = plan.stage_dir("data")
        (d / "tasks").mkdir(parents=True, exist_ok=True)
        (d / "peakclips.jsonl").write_text("{}\n")
        for stage in ("sft1", "sft2", "grpo"):
            plan.tasks_file(stage, "train").write_text('{"id": "x"}\n')
        return {"peakclips": str(d / "peakclips.jsonl")}, {"videos": 4}

    def train(self, plan, stage, fresh):
        from stages.manifest import StageManifest, config_hash, write_manifest

        self._enter(stage, fresh)
        cfg = plan.configs[stage]
        final = plan.stage_dir(stage) / "final"
        final.mkdir(parents=True, exist_ok=True)
        config = cfg.model_dump(mode="json")
        write_manifest(final, StageManifest(stage=stage, started_from=str(cfg.init_from or "tiny"), base_model="tiny",
                                            init_from=cfg.init_from, config=config, config_hash=config_hash(config),
                                            data_fingerprint="x", global_step=cfg.train.max_steps))
        return {"final": str(final)}, {"global_step": cfg.train.max_steps}

    def select(self, plan, fresh):
        self._enter("select", fresh)
        d = plan.stage_dir("select")
        d.mkdir(parents=True, exist_ok=True)
        (d / "selections.jsonl").write_text("{}\n")
        plan.questions_file.write_text("{}\n")
        return {"selections": str(d / "selections.jsonl")}, {}

    def eval(self, plan, fresh):
        self._enter("eval", fresh)
        d = plan.stage_dir("eval")
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text("{}\n")
        return {"summary": str(d / "summary.json")}, {}

    def ran(self) -> list[str]:
        return [s for s, _ in self.calls]


def test_plan_wires_each_stage_to_the_previous_ones(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    run = tmp_path / "run"
    sft1, sft2, grpo = plan.configs["sft1"], plan.configs["sft2"], plan.configs["grpo"]
    assert sft1.output_dir == str(run / "sft1") and sft1.init_from is None
    assert sft2.init_from == str(run / "sft1") and grpo.init_from == str(run / "sft2")
    assert sft2.data.train_file == str(run / "data/tasks/sft2.train.jsonl")
    assert grpo.data.train_file == str(run / "data/tasks/grpo.train.jsonl")
    data = plan.configs["data"]
    assert data.output_dir == str(run / "data") and data.videos_dir == str(run / "samples/videos")
    assert data.queries.file == str(run / "samples/queries.jsonl")
    ev = plan.configs["eval"]
    assert ev.data == str(run / "select/questions.jsonl")
    assert [s.model for s in ev.selectors if s.name == "kframes"] == [str(run / "grpo")]
    # the pipeline file's per-stage overrides reach the recipes
    assert sft1.train.max_steps == 4 and grpo.grpo.num_generations == 2


def test_a_changed_recipe_changes_its_key_and_every_later_key(tmp_path: Path) -> None:
    a = _plan(tmp_path)
    b = _plan(tmp_path, "sft2:train.learning_rate=3e-4")
    same = [s for s in a.stages if a.keys[s] == b.keys[s]]
    assert same == ["data", "sft1"]
    assert b.configs["sft2"].train.learning_rate == 3e-4


def test_bad_stage_override_names_the_recipe_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"configs/tiny/sft1.yaml: train.no_such_key: unknown key"):
        _plan(tmp_path, "sft1:train.no_such_key=1")


def test_full_run_then_rerun_skips_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    plan = _plan(tmp_path)
    outcomes = run_pipeline(plan)
    assert [o.stage for o in outcomes] == ["data", "sft1", "sft2", "grpo", "select", "eval"]
    assert all(fresh for _, fresh in fake.calls)
    for stage in plan.stages:
        rec = plan.read_record(stage)
        assert rec.status == "done" and rec.key == plan.keys[stage] and rec.seconds is not None
    fake.calls.clear()
    outcomes = run_pipeline(_plan(tmp_path))
    assert fake.calls == [] and {o.action for o in outcomes} == {"skip"}


def test_killed_stage_resumes_and_finished_stages_are_not_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    fake.fail_in = "sft2"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_plan(tmp_path))
    plan = _plan(tmp_path)
    assert plan.read_record("sft2").status == "running"
    assert decide(plan, "sft2") == ("resume", "interrupted (attempt 1)")
    fake.fail_in = None
    fake.calls.clear()
    run_pipeline(plan)
    # sft2 resumes (fresh=False: the trainer continues from its newest complete checkpoint), the rest is new
    assert fake.calls == [("sft2", False), ("grpo", True), ("select", True), ("eval", True)]
    assert plan.read_record("sft2").attempts == 2


def test_change_reruns_that_stage_and_the_later_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    run_pipeline(_plan(tmp_path))
    fake.calls.clear()
    run_pipeline(_plan(tmp_path, "grpo:train.learning_rate=5e-6"))
    assert fake.ran() == ["grpo", "select", "eval"]
    assert all(fresh for _, fresh in fake.calls)


def test_missing_output_is_redone_even_if_the_record_says_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    plan = _plan(tmp_path)
    run_pipeline(plan)
    (plan.stage_dir("sft1") / "final" / "stage.json").unlink()
    fake.calls.clear()
    assert decide(plan, "sft1")[0] == "start"
    run_pipeline(plan, only=["sft1"])
    assert fake.ran() == ["sft1"]


def test_force_from_and_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    plan = _plan(tmp_path)
    with pytest.raises(ConfigError, match="data has not finished; run it first"):
        run_pipeline(plan, from_stage="sft2")
    run_pipeline(plan)
    fake.calls.clear()
    run_pipeline(plan, from_stage="grpo")  # everything done: nothing to do
    assert fake.calls == []
    run_pipeline(plan, from_stage="grpo", force=True)
    assert fake.ran() == ["grpo", "select", "eval"]
    fake.calls.clear()
    run_pipeline(plan, only=["select"], force=True)
    assert fake.ran() == ["select"]
    with pytest.raises(ConfigError, match="unknown stage"):
        run_pipeline(plan, only=["nope"])


def test_cli_status_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    assert main(["run", "--config", str(ROOT / "configs/pipeline/tiny.yaml"), "--set", f"output_dir={tmp_path}",
                 "--status"]) == 0
    out = capsys.readouterr().out
    assert "data" in out and "todo" in out and "no earlier run" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: pipeline\nstages: {data: nope.yaml, sft1: a, sft2: b, grpo: c}\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "stages.data: recipe nope.yaml not found" in capsys.readouterr().err


def test_stage_adapters_run_the_real_stage_code(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    """The data, select and eval adapters for real on the tiny pipeline (sample videos, the tiny model); the
    training adapter with the trainer replaced, checking what it hands to it and what it reports."""
    import shutil

    import stages.registry
    from stages.manifest import StageManifest, config_hash, write_manifest
    from stages.preemption import PreemptionCallback

    monkeypatch.setenv("KFRAMES_CACHE", str(tiny_model_dir.parent))
    plan = _plan(tmp_path)

    outputs, summary = orchestrate._run_data(plan, fresh=True)
    assert Path(outputs["peakclips"]).is_file() and summary["tasks/sft2.train"] > 0
    assert plan.tasks_file("grpo", "train").is_file()

    handed: list[tuple] = []

    def fake_train(stage, cfg, *, resume, callbacks):
        handed.append((stage, cfg.output_dir, resume, [type(c) for c in callbacks]))
        final = Path(cfg.output_dir) / "final"
        shutil.copytree(tiny_model_dir, final, dirs_exist_ok=True)
        config = cfg.model_dump(mode="json")
        config["reward"].update(mode="hybrid", background_share=0.5)  # what the select stage must take over
        write_manifest(final, StageManifest(stage=stage, started_from="tiny", base_model="tiny", config=config,
                                            config_hash=config_hash(config), data_fingerprint="x", global_step=3,
                                            metrics={"train_loss": 1.5, "eval_runtime": 2.0}))
        return final

    monkeypatch.setattr(stages.registry, "train_stage", fake_train)
    outputs, summary = orchestrate._run_train(plan, "grpo", fresh=True)
    assert handed == [("grpo", str(plan.stage_dir("grpo")), False, [PreemptionCallback])]
    assert outputs == {"final": str(plan.stage_dir("grpo") / "final")}
    assert summary == {"global_step": 3, "train_loss": 1.5}

    outputs, summary = orchestrate._run_select(plan, fresh=True)
    questions = [line for line in plan.questions_file.read_text().splitlines() if line.strip()]
    assert summary["questions"] == len(questions) > 0 and 0 <= summary["fallback_rate"] <= 1
    # what the reward optimised is what is selected with: the trained model's k and sampler settings
    assert summary["k"] == plan.configs["grpo"].reward.k and summary["sampler"]["mode"] == "hybrid"
    import json

    rec = json.loads(Path(outputs["selections"]).read_text().splitlines()[0])
    assert rec["sampler"]["background_share"] == 0.5 and rec["sampler"]["source"]["mode"] == "trained model"
    assert len(rec["indices"]) == plan.configs["grpo"].reward.k
    assert Path(outputs["selections"]).is_file()

    outputs, summary = orchestrate._run_eval(plan, fresh=True)
    assert Path(outputs["summary"]).is_file() and Path(outputs["report"]).is_file()
    # the eval stage also took the trained model's mode (hybrid), so its row is named after it
    assert set(summary) == {f"accuracy/{s}/k{k}" for s in ("uniform", "kframes-hybrid") for k in (2, 4)}


def test_a_recipe_in_another_stages_slot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sft2.yaml: stage: this file is for stage 'sft2', not 'sft1'"):
        _plan(tmp_path, "stages.sft1=configs/tiny/sft2.yaml")
