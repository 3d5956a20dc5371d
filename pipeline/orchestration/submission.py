"""`kframes submit`: the Slurm jobs of one stage or of the whole pipeline, chained with `--dependency`.

A stage is one job (pipeline.orchestration.slurm), or, with `stages.<stage>.array` in the profile, a job array and
its merge, plus the annotating server and the job that stops it for the data stage
(pipeline.orchestration.slurm_arrays). `all` chains the stages: each stage's first jobs depend (`afterok`) on the
previous stage's last job (its merge, for an array), so data (array + merge) -> sft1 -> sft2 -> grpo -> select
(array + merge) -> eval (array + merge). Every job carries `--kill-on-invalid-dep=yes`: a failed job cancels the
ones waiting for it. Scripts go to `<run_dir>/scripts/<job>.sbatch`; the dry run writes them and submits nothing.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import SlurmProfile
from pipeline.core.errors import ConfigError, KframesError
from pipeline.core.io import atomic_write_text
from pipeline.orchestration.orchestrate import Plan, decide, load_pipeline
from pipeline.orchestration.slurm import _abs, load_profile, render_script
from pipeline.orchestration.slurm_arrays import (
    array_section,
    render_annotator_script,
    render_annotator_stop_script,
    render_array_script,
    render_merge_script,
    serves_annotator,
)

PREVIOUS = "@previous"  # a dependency on the previous stage's last job (or on --after)


class SubmitError(KframesError):
    """sbatch is missing or refused a script."""


@dataclass
class Job:
    """One sbatch script of a stage, and the jobs it waits for (by name) or whose id it is given (export)."""

    name: str
    text: str
    depends: list[tuple[str, str]] = field(default_factory=list)  # (afterok | after | afterany, job name | PREVIOUS)
    export: dict[str, str] = field(default_factory=dict)  # environment variable -> job name


@dataclass
class Submission:
    stage: str
    script: Path
    job_id: str | None
    dependency: str | None
    skipped: str | None = None
    name: str = ""  # the job's name (its script's stem): data-annotator, data-array, data-merge, sft1, ...
    export: dict[str, str] = field(default_factory=dict)  # environment variables given to the job (another's id)

    def __post_init__(self) -> None:
        self.name = self.name or self.stage


def run_dir_of(plan: Plan, profile: SlurmProfile) -> Path:
    return Path(_abs(profile.run_dir)) if profile.run_dir else Path(_abs(plan.root)) / "slurm"


def stage_jobs(
    plan: Plan,
    profile: SlurmProfile,
    stage: str,
    *,
    pipeline_path: str,
    run_dir: Path,
    force: bool = False,
    force_token: str | None = None,
) -> list[Job]:
    """The jobs of one stage in submission order; the last is the one the next stage waits for."""
    array = array_section(profile, stage)
    if array is None:
        text = render_script(plan, profile, stage, pipeline_path=pipeline_path, run_dir=run_dir, force=force)
        return [Job(stage, text, [("afterok", PREVIOUS)])]
    kw = {"pipeline_path": pipeline_path, "run_dir": run_dir}
    array_name = f"{stage}-array"
    array_job = Job(array_name, render_array_script(plan, profile, stage, array, force_token=force_token, **kw),
                    [("afterok", PREVIOUS)])
    merge = Job(f"{stage}-merge", render_merge_script(plan, profile, stage, array, **kw), [("afterok", array_name)])
    if not serves_annotator(plan, profile, stage):
        return [array_job, merge]
    server = Job("data-annotator", render_annotator_script(plan, profile, **kw), [("afterok", PREVIOUS)])
    array_job.depends.append(("after", server.name))  # starts once the server job has started
    array_job.export["KFRAMES_SERVER_JOB"] = server.name
    stop = Job("data-annotator-stop", render_annotator_stop_script(profile, run_dir=run_dir),
               [("afterany", array_name)], {"KFRAMES_SERVER_JOB": server.name})
    return [server, array_job, stop, merge]


def submit(
    target: str,
    profile_path: str,
    *,
    pipeline_path: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    after: str | None = None,
    sbatch: str = "sbatch",
) -> list[Submission]:
    """Write (and unless `dry_run`, submit) the scripts of `target` (a stage or `all`). Returns what was done.

    Stages already done (same key, outputs in place) are left out unless `force`: resubmitting after a failure
    submits only what is unfinished (and starts no server for a finished data stage). Each submitted stage's first
    jobs depend on the previous submitted stage's last job (`afterok`), the first on `after` if given.
    """
    profile = load_profile(profile_path)
    pipeline_path = pipeline_path or profile.pipeline
    plan = load_pipeline(pipeline_path)
    if target == "all":
        stages = plan.stages
    elif target in plan.stages:
        stages = [target]
    else:
        raise ConfigError(f"unknown stage {target!r}; expected all or one of {', '.join(plan.stages)}")
    run_dir = run_dir_of(plan, profile)
    # an array's tasks start the stage over once for this submission, whichever task comes first
    force_token = uuid.uuid4().hex[:12] if force else None
    out: list[Submission] = []
    previous = after
    for stage in stages:
        action, reason = decide(plan, stage)
        if action == "skip" and not force:
            out.append(Submission(stage, run_dir / "scripts" / f"{stage}.sbatch", None, None, skipped=reason))
            continue
        ids: dict[str, str] = {}
        for job in stage_jobs(plan, profile, stage, pipeline_path=pipeline_path, run_dir=run_dir, force=force,
                              force_token=force_token):
            deps = [f"{kind}:{previous if ref == PREVIOUS else ids[ref]}" for kind, ref in job.depends
                    if ref != PREVIOUS or previous]
            dep = ",".join(deps) or None
            script = run_dir / "scripts" / f"{job.name}.sbatch"
            atomic_write_text(script, job.text)
            script.chmod(0o755)
            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
            job_id = None
            export = {v: ids[n] for v, n in job.export.items()}
            if not dry_run:
                job_id = sbatch_submit(script, dependency=dep, export=export, sbatch=sbatch)
            ids[job.name] = job_id or f"<{job.name}>"
            out.append(Submission(stage, script, job_id, dep, name=job.name, export=export))
        previous = ids[job.name]
    return out


def sbatch_submit(
    script: Path, *, dependency: str | None = None, export: dict[str, str] | None = None, sbatch: str = "sbatch"
) -> str:
    """Submit a script; returns the job id. `--kill-on-invalid-dep` drops a job whose predecessor failed; `export`
    adds environment variables to the job's (ALL: the submitting shell's environment as usual)."""
    cmd = [sbatch, "--parsable"]
    if dependency:
        cmd += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    if export:
        cmd.append("--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in export.items())]))
    cmd.append(str(script))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise SubmitError(f"{sbatch}: not found; run this on a Slurm login node (or use --dry-run)") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise SubmitError(f"sbatch {script} failed: {msg[-1] if msg else f'exit code {proc.returncode}'}")
    m = re.match(r"^(\d+)", proc.stdout.strip())
    if not m:
        raise SubmitError(f"sbatch {script}: unexpected answer {proc.stdout.strip()!r}")
    return m.group(1)
