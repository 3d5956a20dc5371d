"""`kframes submit`: the sbatch scripts (dry run), job chaining, the vLLM readiness probe and checkpoint-on-preemption.

A real single-node Slurm runs the scripts in tests/test_slurm_local.py; here the content is checked, with
`bash -n` for syntax, and the preemption path with a real transformers Trainer.
"""

from __future__ import annotations

import http.server
import json
import shlex
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from pipeline.orchestration.slurm import render_script, stage_resources, wait_http
from pipeline.orchestration.submission import submit

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "configs/cluster/slurm.yaml").read_text())
    raw["run_dir"] = str(tmp_path / "slurm")
    raw["pipeline"] = str(ROOT / "configs/pipeline/qwen2_5_vl_3b.yaml")
    raw.update(changes)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _scripts(tmp_path: Path, target: str = "all", **changes) -> dict[str, str]:
    subs = submit(target, str(_profile(tmp_path, **changes)), dry_run=True)
    return {s.name: s.script.read_text() for s in subs if not s.skipped}


def test_training_script_has_resources_launch_requeue_and_signal(tmp_path: Path) -> None:
    text = _scripts(tmp_path, "sft1", account="proj42", qos="high")["sft1"]
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --time=24:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --qos=high",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={tmp_path}/slurm/logs/sft1-%j.out",
    ):
        assert line in text, line
    # one accelerate launcher per node, 16 processes over 2 machines, rank from Slurm, DeepSpeed config
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1" in text
    assert "-m accelerate.commands.launch --config_file " + str(ROOT / "configs/accelerate/zero2.yaml") in text
    assert "--num_machines 2 --num_processes 16" in text and '--machine_rank "$SLURM_NODEID"' in text
    assert '--main_process_ip "$MAIN_NODE"' in text
    assert "-m pipeline.cli.main run --config " + str(ROOT / "configs/pipeline/qwen2_5_vl_3b.yaml") + " --only sft1" in text
    # preemption: trap -> request file -> wait for the step -> requeue
    assert "trap 'on_signal USR1' USR1" in text and "trap 'on_signal TERM' TERM" in text
    assert 'touch "$KFRAMES_PREEMPT_FILE"' in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "vllm" not in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def _profile_stages(**changes: dict) -> dict:
    """The shipped profile's `stages:` with some stages' sections replaced."""
    stages = yaml.safe_load((ROOT / "configs/cluster/slurm.yaml").read_text())["stages"]
    return {**stages, **changes}


def test_per_stage_resources_and_cpu_stages(tmp_path: Path) -> None:
    """Without `array` sections, data, select and eval are one job each, as before."""
    stages = _profile_stages(
        data={"nodes": 1, "gpus_per_node": 0, "cpus_per_node": 32, "time": "48:00:00"},
        select={"nodes": 1, "gpus_per_node": 1, "time": "04:00:00"},
        eval={"nodes": 1, "gpus_per_node": 1, "time": "12:00:00"},
    )
    scripts = _scripts(tmp_path, "all", stages=stages)
    assert list(scripts) == ["data", "sft1", "sft2", "grpo", "select", "eval"]
    data = scripts["data"]
    assert "#SBATCH --nodes=1" in data and "--gres" not in data and "accelerate" not in data
    assert "#SBATCH --time=48:00:00" in data and "#SBATCH --cpus-per-task=32" in data
    assert "-m pipeline.cli.main run --config" in data and "--only data" in data
    assert "#SBATCH --gres=gpu:1" in scripts["eval"]
    for text in scripts.values():
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_grpo_gets_a_vllm_server_on_its_own_node(tmp_path: Path) -> None:
    text = _scripts(tmp_path, "grpo")["grpo"]
    assert "#SBATCH --nodes=2" in text  # 1 training node (stages.grpo.nodes) + 1 for vLLM
    assert "VLLM_NODE=${NODES[1]}" in text
    serve = next(line for line in text.splitlines() if "vllm serve" in line)
    assert serve.startswith('srun --nodes=1 --ntasks=1 -w "$VLLM_NODE" --gres=gpu:2')
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in serve and "--tensor-parallel-size 2" in serve and serve.endswith("&")
    wait = text.index('wait-http "$VLLM_URL/models"')
    assert wait < text.index("accelerate.commands.launch")  # the trainer starts only once the server answers
    assert '--set "grpo:reward.downstream.url=$VLLM_URL"' in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_vllm_as_a_job_step_shares_the_node(tmp_path: Path) -> None:
    text = _scripts(tmp_path, "grpo", vllm={"placement": "step", "gpus": 2})["grpo"]
    assert "#SBATCH --nodes=1" in text and "VLLM_NODE=$MAIN_NODE" in text
    assert "--num_processes 6" in text and "--gres=gpu:6 bash -c" in text


def _vllm_pipeline(tmp_path: Path, *grpo_overrides: str) -> str:
    """The GPU pipeline with GRPO generating on vLLM (`--set`-style changes to its grpo recipe)."""
    raw = yaml.safe_load((ROOT / "configs/pipeline/qwen2_5_vl_3b.yaml").read_text())
    raw["stages"] = {k: str(ROOT / v) for k, v in raw["stages"].items()}
    raw["output_dir"] = str(tmp_path / "run")
    raw["overrides"] = {"grpo": list(grpo_overrides)}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


SERVER_MODE = ("grpo.use_vllm=true", "grpo.vllm_mode=server")


def _serve_command(text: str, marker: str) -> list[str]:
    """The words of the `bash -c '...'` of the srun line holding `marker`."""
    line = next(line for line in text.splitlines() if marker in line and line.startswith("srun"))
    words = shlex.split(line.rstrip("&"))
    return shlex.split(words[words.index("-c") + 1])


def test_grpo_server_mode_starts_the_generation_server_beside_the_trainer(tmp_path: Path) -> None:
    stages = yaml.safe_load((ROOT / "configs/cluster/slurm.yaml").read_text())["stages"]
    stages["grpo"]["python"] = ".venv-gpu/bin/python"  # the environment of requirements/gpu-vllm.txt
    text = _scripts(tmp_path, "grpo", pipeline=_vllm_pipeline(tmp_path, *SERVER_MODE), stages=stages)["grpo"]
    assert "#SBATCH --nodes=2" in text  # the trainer's node (with the generation server) + the reward's node
    assert "GEN_NODE=$MAIN_NODE" in text and 'GEN_URL="http://$GEN_NODE:8001"' in text
    gen = next(line for line in text.splitlines() if "-generation-%j.out" in line)
    assert gen.startswith('srun --nodes=1 --ntasks=1 -w "$GEN_NODE" --gres=gpu:1 --exact')
    words = _serve_command(text, "-generation-%j.out")
    # TRL 1.16's launcher, as `trl vllm-serve` would run it, serving SFT2's final model from the kframes env
    assert words[:4] == ["export", "VLLM_SERVER_DEV_MODE=1;", "exec", ".venv-gpu/bin/python"]
    serve = words[words.index("serve"):]
    assert serve[1] == str(tmp_path / "run" / "sft2" / "final")
    for flag, value in (("--port", "8001"), ("--tensor-parallel-size", "1"), ("--logprobs-mode", "processed_logprobs"),
                        ("--max-logprobs", "-1"), ("--weight-transfer-config", '{"backend": "nccl"}')):
        assert serve[serve.index(flag) + 1] == value, flag
    assert "--enable-scale-out" in serve
    # the trainer: the node's other 7 GPUs, started once both servers answer, given both URLs
    assert "--num_processes 7" in text and "--gres=gpu:7 bash -c" in text
    assert ".venv-gpu/bin/python -m accelerate.commands.launch" in text
    launch = text.index("accelerate.commands.launch")
    assert text.index('wait-http "$GEN_URL/health"') < launch and text.index('wait-http "$VLLM_URL/models"') < launch
    assert '--set "grpo:grpo.vllm_server_url=$GEN_URL"' in text and "export GEN_URL" in text
    assert 'kill "$GEN_PID" 2>/dev/null; wait "$GEN_PID"' in text and 'kill "$VLLM_PID" 2>/dev/null' in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_generation_server_shares_the_reward_node(tmp_path: Path) -> None:
    text = _scripts(tmp_path, "grpo", pipeline=_vllm_pipeline(tmp_path, *SERVER_MODE),
                    vllm_generation={"placement": "reward_node", "gpus": 2})["grpo"]
    assert "#SBATCH --nodes=2" in text and "GEN_NODE=$VLLM_NODE" in text
    reward = next(line for line in text.splitlines() if "-vllm-%j.out" in line)
    gen = next(line for line in text.splitlines() if "-generation-%j.out" in line)
    assert "--gres=gpu:2 --exact" in reward and "--gres=gpu:2 --exact" in gen  # each step only its own GPUs
    assert text.index("VLLM_NODE=") < text.index("GEN_NODE=$VLLM_NODE")
    assert "--num_processes 8" in text  # the training node keeps all of its GPUs
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_generation_server_on_its_own_node(tmp_path: Path) -> None:
    text = _scripts(tmp_path, "grpo", pipeline=_vllm_pipeline(tmp_path, *SERVER_MODE),
                    vllm_generation={"placement": "node", "gpus": 4})["grpo"]
    assert "#SBATCH --nodes=3" in text and "VLLM_NODE=${NODES[1]}" in text and "GEN_NODE=${NODES[2]}" in text
    assert "--tensor-parallel-size 4" in " ".join(_serve_command(text, "-generation-%j.out"))
    assert "--num_processes 8" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_colocate_needs_no_generation_server(tmp_path: Path) -> None:
    text = _scripts(tmp_path, "grpo", pipeline=_vllm_pipeline(tmp_path, "grpo.use_vllm=true"))["grpo"]
    assert "GEN_" not in text and "#SBATCH --nodes=2" in text and "--num_processes 8" in text


def test_generation_placements_that_cannot_fit(tmp_path: Path) -> None:
    from pipeline.core.errors import ConfigError

    pipeline = _vllm_pipeline(tmp_path, *SERVER_MODE)
    with pytest.raises(ConfigError, match=r"reward_node needs the reward's vLLM server on its own node"):
        _scripts(tmp_path, "grpo", pipeline=pipeline, vllm={"placement": "step", "gpus": 2},
                 vllm_generation={"placement": "reward_node"})
    with pytest.raises(ConfigError, match=r"2 \+ 7 GPUs do not fit on one node of 8"):
        _scripts(tmp_path, "grpo", pipeline=pipeline, vllm_generation={"placement": "reward_node", "gpus": 7})
    with pytest.raises(ConfigError, match=r"vllm.placement=step and vllm_generation.placement=step.*\(8\) leave none"):
        _scripts(tmp_path, "grpo", pipeline=pipeline, vllm={"placement": "step", "gpus": 4},
                 vllm_generation={"placement": "step", "gpus": 4})


def _readme_command(start: str) -> list[str]:
    """The README's shell command that begins with `start` (continuation lines joined), as words."""
    text = (ROOT / "README.md").read_text()
    i = text.index(start)
    lines = []
    for line in text[i:].splitlines():
        lines.append(line.strip().rstrip("\\").rstrip("&").strip())
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(lines))


def _flags(words: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out[w] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_the_readme_serve_lines_are_what_submit_runs(tmp_path: Path) -> None:
    """The `vllm serve` lines a user copies from the README carry the flags the Slurm jobs use."""
    reward = _flags(_readme_command("~/venvs/vllm/bin/vllm serve Qwen/Qwen2.5-VL-7B-Instruct"))
    profile = yaml.safe_load((ROOT / "configs/cluster/slurm.yaml").read_text())
    assert {k: v for k, v in reward.items() if k != "--port"} == _flags(profile["vllm"]["extra_args"])
    text = _scripts(tmp_path, "grpo", pipeline=_vllm_pipeline(tmp_path, *SERVER_MODE))["grpo"]
    job = _serve_command(text, "-generation-%j.out")
    readme = _readme_command("CUDA_VISIBLE_DEVICES=7 VLLM_SERVER_DEV_MODE=1")
    assert readme[readme.index("serve") + 1] == "runs/qwen2_5_vl_3b/sft2/final"
    assert _flags(readme) == _flags(job[job.index("serve"):])


def _fake_sbatch(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in sbatch that records its arguments and answers job ids 101, 102, ..."""
    log = tmp_path / "sbatch.log"
    fake = tmp_path / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {log}\necho $(( 100 + $(wc -l < {log}) ))\n')
    fake.chmod(0o755)
    return fake, log


def test_all_chains_jobs_with_afterok(tmp_path: Path) -> None:
    """`submit all` chains data (annotator, array, its stop job, merge) -> sft1 -> sft2 -> grpo -> select (array,
    merge) -> eval (array, merge): each stage's first jobs wait for the previous stage's last job."""
    fake, log = _fake_sbatch(tmp_path)
    subs = submit("all", str(_profile(tmp_path)), sbatch=str(fake))
    names = ["data-annotator", "data-array", "data-annotator-stop", "data-merge", "sft1", "sft2", "grpo",
             "select-array", "select-merge", "eval-array", "eval-merge"]
    assert [s.name for s in subs] == names
    ids = {s.name: s.job_id for s in subs}
    assert list(ids.values()) == [str(101 + i) for i in range(len(names))]
    calls = dict(zip(names, log.read_text().splitlines(), strict=True))
    want = {
        "data-annotator": None,
        "data-array": f"after:{ids['data-annotator']}",  # starts once the server job has started
        "data-annotator-stop": f"afterany:{ids['data-array']}",  # whatever became of the tasks
        "data-merge": f"afterok:{ids['data-array']}",
        "sft1": f"afterok:{ids['data-merge']}",
        "sft2": f"afterok:{ids['sft1']}",
        "grpo": f"afterok:{ids['sft2']}",
        "select-array": f"afterok:{ids['grpo']}",
        "select-merge": f"afterok:{ids['select-array']}",
        "eval-array": f"afterok:{ids['select-merge']}",
        "eval-merge": f"afterok:{ids['eval-array']}",
    }
    for name, dep in want.items():
        words = calls[name].split()
        if dep is None:
            assert not any(w.startswith("--dependency") for w in words), name
        else:
            assert f"--dependency={dep}" in words and "--kill-on-invalid-dep=yes" in words, (name, words)
    # the array and the stop job are told which job is the annotating server
    for name in ("data-array", "data-annotator-stop"):
        assert f"--export=ALL,KFRAMES_SERVER_JOB={ids['data-annotator']}" in calls[name].split(), name
    assert calls["data-array"].split()[-1].endswith("scripts/data-array.sbatch")
    # --after: the first jobs of the first stage wait for it
    (tmp_path / "again").mkdir()
    fake2, log2 = _fake_sbatch(tmp_path / "again")
    submit("data", str(_profile(tmp_path)), sbatch=str(fake2), after="77")
    first = log2.read_text().splitlines()
    assert "--dependency=afterok:77" in first[0].split()
    assert "--dependency=afterok:77,after:101" in first[1].split()


def test_sbatch_refusal_is_one_clear_error(tmp_path: Path) -> None:
    from pipeline.orchestration.submission import SubmitError

    fake = tmp_path / "sbatch"
    fake.write_text('#!/bin/bash\necho "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    fake.chmod(0o755)
    with pytest.raises(SubmitError, match="invalid partition specified: gpu"):
        submit("sft1", str(_profile(tmp_path)), sbatch=str(fake))
    with pytest.raises(SubmitError, match="not found; run this on a Slurm login node"):
        submit("sft1", str(_profile(tmp_path)), sbatch=str(tmp_path / "no-sbatch"))


def test_step_placement_needs_gpus_left_for_the_trainer(tmp_path: Path) -> None:
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="leave none of the node's 8"):
        _scripts(tmp_path, "grpo", vllm={"placement": "step", "gpus": 8})


def test_resources_fall_back_to_the_profile(tmp_path: Path) -> None:
    from pipeline.orchestration.slurm import load_profile

    profile = load_profile(str(_profile(tmp_path)))
    assert stage_resources(profile, "sft2").nodes == 2 and stage_resources(profile, "grpo").nodes == 1
    assert stage_resources(profile, "select").gpus_per_node == 1


class _Ready(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        code = 200 if type(self).hits >= 3 else 503  # "loading the model" twice, then up
        self.send_response(code)
        self.end_headers()
        self.wfile.write(json.dumps({"data": []}).encode())

    def log_message(self, *args) -> None:
        pass


def test_wait_http_waits_until_the_server_answers() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/models"
        assert wait_http(url, timeout_s=20, interval_s=0.05)
        assert _Ready.hits == 3
    finally:
        server.shutdown()
    assert not wait_http(url, timeout_s=0.3, interval_s=0.05)  # nobody there any more


def test_wait_http_gives_up_when_the_server_process_is_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not wait_http("http://127.0.0.1:9/v1/models", timeout_s=30, pid=proc.pid, interval_s=0.05)


def test_preemption_request_saves_a_complete_checkpoint_then_resume_finishes(tmp_path: Path) -> None:
    """A real Trainer: the request file appears during step 3 (as the batch script's trap would create it); the
    trainer saves checkpoint-3 with its completeness marker and exits with 75; a restart resumes there."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from stages.checkpoints import CompleteCheckpointCallback, find_resume_checkpoint
    from stages.preemption import EXIT_PREEMPTED, Preempted, PreemptionCallback

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(4, 1)

        def forward(self, x, y):
            return {"loss": torch.nn.functional.mse_loss(self.w(x).squeeze(-1), y)}

    data = [{"x": torch.randn(4), "y": torch.tensor(1.0)} for _ in range(64)]
    request = tmp_path / "job.preempt"

    class Trap(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                request.touch()

    def trainer(callbacks):
        args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, save_steps=100, per_device_train_batch_size=2,
                                 report_to="none", use_cpu=True, logging_steps=100, save_strategy="steps",
                                 disable_tqdm=True)
        torch.manual_seed(0)
        return Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=callbacks)

    cb = PreemptionCallback(request, handle_signals=False)
    with pytest.raises(Preempted) as exc:
        trainer([CompleteCheckpointCallback(), Trap(), cb]).train()
    assert exc.value.code == EXIT_PREEMPTED
    assert find_resume_checkpoint(tmp_path / "out") == str(tmp_path / "out" / "checkpoint-3")
    saved = json.loads((tmp_path / "job.preempt.saved").read_text())
    assert saved["step"] == 3

    request.unlink()  # the requeued job's script removes it before starting
    t = trainer([CompleteCheckpointCallback(), PreemptionCallback(request, handle_signals=False)])
    t.train(resume_from_checkpoint=find_resume_checkpoint(tmp_path / "out"))
    assert t.state.global_step == 6


def test_signal_sets_the_request(tmp_path: Path) -> None:
    import os
    import signal

    from stages.preemption import PreemptionCallback

    old = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        cb = PreemptionCallback(tmp_path / "none", handle_signals=True)
        assert not cb.requested_here()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert cb.requested_here()
    finally:
        signal.signal(signal.SIGUSR1, old[0])
        signal.signal(signal.SIGTERM, old[1])


def test_dry_run_cli_prints_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    assert main(["submit", "all", "--profile", str(_profile(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 11 and "(dependency: afterok:<sft1>)" in out
    assert "data-merge.sbatch (dependency: afterok:<data-array>)" in out
    assert "data-array.sbatch (dependency: after:<data-annotator>; --export=KFRAMES_SERVER_JOB=<data-annotator>)" in out
    assert "sft1.sbatch (dependency: afterok:<data-merge>)" in out
    assert main(["submit", "sft1", "--profile", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_render_is_deterministic_apart_from_the_date(tmp_path: Path) -> None:
    from pipeline.orchestration.orchestrate import load_pipeline
    from pipeline.orchestration.slurm import load_profile

    profile = load_profile(str(_profile(tmp_path)))
    plan = load_pipeline(profile.pipeline)
    a = render_script(plan, profile, "sft2", pipeline_path=profile.pipeline, run_dir=tmp_path)
    b = render_script(plan, profile, "sft2", pipeline_path=profile.pipeline, run_dir=tmp_path)
    strip = lambda s: [line for line in s.splitlines() if "written by" not in line]
    assert strip(a) == strip(b)


# ----------------------------------------------------------------------------------------------------
# Job arrays: data (with its annotating server), select and eval
# ----------------------------------------------------------------------------------------------------


def _pipeline_with(tmp_path: Path, **overrides: list[str]) -> str:
    """The GPU pipeline with `--set`-style changes to some stages' recipes."""
    raw = yaml.safe_load((ROOT / "configs/pipeline/qwen2_5_vl_3b.yaml").read_text())
    raw["stages"] = {k: str(ROOT / v) for k, v in raw["stages"].items()}
    raw["output_dir"] = str(tmp_path / "run")
    raw["overrides"] = overrides
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_the_data_array_its_annotating_server_its_stop_job_and_its_merge(tmp_path: Path) -> None:
    scripts = _scripts(tmp_path, "data")
    assert list(scripts) == ["data-annotator", "data-array", "data-annotator-stop", "data-merge"]
    for text in scripts.values():
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)

    array = scripts["data-array"]
    for line in ("#SBATCH --array=0-31%16", "#SBATCH --partition=cpu", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32G", "#SBATCH --time=24:00:00", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 f"#SBATCH --output={tmp_path}/slurm/logs/data-%A_%a.out", 'export SHARD="$SLURM_ARRAY_TASK_ID/32"'):
        assert line in array, line
    assert "--gres" not in array and "--exclusive" not in array  # CPU tasks, packed onto the partition's nodes
    task = _serve_command(array, "--shard")
    assert task[:8] == [".venv/bin/python", "-m", "pipeline.cli.main", "run", "--config",
                        str(ROOT / "configs/pipeline/qwen2_5_vl_3b.yaml"), "--only", "data"]
    assert task[8:] == ["--shard", "$SHARD", "--set", "data:llm.base_url=$ANNOTATOR_URL"]
    # every task waits until the annotating server's job has written its address and it answers
    wait = array.index("-m pipeline.orchestration.slurm wait-server")
    assert wait < array.index("srun --nodes=1 --ntasks=1 bash -c")
    assert f'wait-server {tmp_path}/slurm/state/data-annotator-"$KFRAMES_SERVER_JOB.url" --job "$KFRAMES_SERVER_JOB"' \
        in array and "--timeout 3600" in array
    assert "trap 'on_signal USR1' USR1" in array and 'scontrol requeue "$SLURM_JOB_ID"' in array

    server = scripts["data-annotator"]
    for line in ("#SBATCH --gres=gpu:8", "#SBATCH --partition=gpu", "#SBATCH --time=48:00:00",
                 "#SBATCH --job-name=kframes-data-annotator", "#SBATCH --exclusive"):
        assert line in server, line
    serve = _serve_command(server, "vllm serve")
    assert serve[:3] == ["source", "$HOME/venvs/vllm/bin/activate;", "exec"]
    words = serve[serve.index("serve"):]
    assert words[1] == "Qwen/Qwen2.5-VL-72B-Instruct"  # the data recipe's llm.model, also the served name
    for flag, value in (("--port", "8000"), ("--tensor-parallel-size", "8"), ("--host", "0.0.0.0")):
        assert words[words.index(flag) + 1] == value, flag
    probe = server.index('wait-http "$URL/models" --timeout 3600 --pid "$SERVER_PID"')
    assert probe < server.index('mv "$URL_FILE.tmp" "$URL_FILE"')  # the address is published once it answers
    assert 'URL_FILE=' + f"{tmp_path}/slurm/state/data-annotator-$SLURM_JOB_ID.url" in server
    assert "trap 'on_stop USR2' USR2" in server

    stop = scripts["data-annotator-stop"]
    assert 'scancel --batch --signal=USR2 "$SERVER"' in stop and "#SBATCH --time=00:10:00" in stop
    assert "--gres" not in stop and "--requeue" not in stop

    merge = scripts["data-merge"]
    assert "--only data --merge-shards 32" in merge
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --mem=32G", "#SBATCH --time=02:00:00",
                 "#SBATCH --partition=cpu", "#SBATCH --requeue"):
        assert line in merge, line
    assert "--gres" not in merge and "--signal" not in merge


def test_select_and_eval_arrays_run_on_gpus(tmp_path: Path) -> None:
    scripts = _scripts(tmp_path, "all")
    for stage, tasks in (("select", 4), ("eval", 8)):
        array = scripts[f"{stage}-array"]
        assert f"#SBATCH --array=0-{tasks - 1}" in array and "#SBATCH --gres=gpu:1" in array
        assert "--exclusive" not in array  # one GPU per task: tasks share nodes
        assert _serve_command(array, "--shard")[-2:] == ["--shard", "$SHARD"]
        assert f"--only {stage} --merge-shards {tasks}" in scripts[f"{stage}-merge"]
        assert "--gres" not in scripts[f"{stage}-merge"]


def test_an_eval_task_serves_its_own_downstream_model(tmp_path: Path) -> None:
    pipeline = _pipeline_with(tmp_path, eval=["downstream.backend=vllm"])
    stages = _profile_stages(eval={"gpus_per_node": 2, "time": "12:00:00", "array": {"tasks": 4}})
    text = _scripts(tmp_path, "eval", pipeline=pipeline, stages=stages, vllm={"gpus": 1, "port": 8100})["eval-array"]
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    assert "export DOWNSTREAM_PORT=$(( 8100 + SLURM_ARRAY_TASK_ID % 1000 ))" in text
    serve = next(line for line in text.splitlines() if "vllm serve" in line)
    assert serve.startswith("srun --nodes=1 --ntasks=1 --gres=gpu:1 --exact")
    words = _serve_command(text, "vllm serve")
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in words and "127.0.0.1" in words and '"$DOWNSTREAM_PORT"' not in words
    launch = next(line for line in text.splitlines() if "--shard" in line)
    assert launch.startswith("srun --nodes=1 --ntasks=1 --gres=gpu:1 --exact")  # the selectors' GPU
    assert text.index('wait-http "$DOWNSTREAM_URL/models"') < text.index(launch)
    assert _serve_command(text, "--shard")[-2:] == ["--set", "eval:downstream.url=$DOWNSTREAM_URL"]
    assert 'kill "$VLLM_PID" 2>/dev/null; wait "$VLLM_PID"' in text
    from pipeline.core.errors import ConfigError

    stages["eval"]["gpus_per_node"] = 1
    with pytest.raises(ConfigError, match="needs at least one more for the selectors"):
        _scripts(tmp_path, "eval", pipeline=pipeline, stages=stages, vllm={"gpus": 1})


def test_force_starts_each_array_over_once_per_submission(tmp_path: Path) -> None:
    import re

    subs = submit("all", str(_profile(tmp_path)), dry_run=True, force=True)
    scripts = {s.name: s.script.read_text() for s in subs}
    tokens = {name: re.findall(r"--force-token ([0-9a-f]{12})", text) for name, text in scripts.items()}
    arrays = [n for n in scripts if n.endswith("-array")]
    assert all(len(tokens[n]) == 1 for n in arrays) and len({tokens[n][0] for n in arrays}) == 1
    assert "FORCE_FLAG=--force" in scripts["sft1"] and not tokens["data-merge"]
    again = submit("data", str(_profile(tmp_path)), dry_run=True, force=True)
    assert re.findall(r"--force-token ([0-9a-f]{12})", again[1].script.read_text()) != tokens["data-array"]


def test_array_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stages.sft1.array: only data, select, eval run as job arrays"):
        _scripts(tmp_path, "sft1", stages=_profile_stages(sft1={"array": {"tasks": 2}}))
    with pytest.raises(ConfigError, match="greater than 0"):
        _scripts(tmp_path, "data", stages=_profile_stages(data={"array": {"tasks": 0}}))


def test_annotator_on_cpu_or_not_served(tmp_path: Path) -> None:
    scripts = _scripts(tmp_path, "data", annotator={"gpus": 0, "partition": "cpu"})
    server = scripts["data-annotator"]
    assert "--gres" not in server and "--tensor-parallel-size" not in server and "#SBATCH --partition=cpu" in server
    scripts = _scripts(tmp_path, "data", annotator={"serve": False})
    assert list(scripts) == ["data-array", "data-merge"]
    assert "wait-server" not in scripts["data-array"] and "base_url" not in scripts["data-array"]
    # a local model annotates in each task: no server either
    pipeline = _pipeline_with(tmp_path, data=["llm.backend=transformers", "llm.model=tiny"])
    assert list(_scripts(tmp_path, "data", pipeline=pipeline)) == ["data-array", "data-merge"]


def test_wait_server_waits_for_the_address_then_for_an_answer(tmp_path: Path) -> None:
    from pipeline.orchestration.slurm import wait_server

    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/bash\necho RUNNING\n")
    squeue.chmod(0o755)
    _Ready.hits = 0
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url_file = tmp_path / "annotator-7.url"
    writer = threading.Timer(0.3, lambda: url_file.write_text(f"http://127.0.0.1:{server.server_port}/v1\n"))
    writer.start()
    try:
        url = wait_server(url_file, job="7", timeout_s=30, interval_s=0.05, squeue=str(squeue))
        assert url == f"http://127.0.0.1:{server.server_port}/v1" and _Ready.hits == 3
    finally:
        writer.cancel()
        server.shutdown()
    squeue.write_text("#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    url_file.unlink()
    assert wait_server(url_file, job="7", timeout_s=30, interval_s=0.05, squeue=str(squeue)) is None  # it ended
    squeue.write_text("#!/bin/bash\necho COMPLETED\n")
    assert wait_server(url_file, job="7", timeout_s=30, interval_s=0.05, squeue=str(squeue)) is None


def test_a_done_stage_is_not_submitted_again_unless_forced(tmp_path: Path) -> None:
    from pipeline.orchestration.orchestrate import StageRecord, load_pipeline

    pipeline = _pipeline_with(tmp_path)
    plan = load_pipeline(pipeline)
    out = plan.stage_dir("data")
    (out / "tasks").mkdir(parents=True)
    (out / "peakclips.jsonl").write_text("{}\n")
    plan.tasks_file("sft1", "train").write_text("{}\n")
    plan.write_record(StageRecord(stage="data", key=plan.keys["data"], status="done", finished_at="yesterday"))
    fake, log = _fake_sbatch(tmp_path)
    subs = submit("data", str(_profile(tmp_path, pipeline=pipeline)), sbatch=str(fake))
    assert [s.skipped for s in subs] == ["done yesterday"] and not log.exists()  # no 8-GPU server for nothing
    subs = submit("data", str(_profile(tmp_path, pipeline=pipeline)), sbatch=str(fake), force=True)
    assert [s.name for s in subs] == ["data-annotator", "data-array", "data-annotator-stop", "data-merge"]
