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

from pipeline.orchestration.slurm import render_script, stage_resources, submit, wait_http

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
    return {s.stage: s.script.read_text() for s in subs if not s.skipped}


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


def test_per_stage_resources_and_cpu_stages(tmp_path: Path) -> None:
    scripts = _scripts(tmp_path, "all")
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


def test_all_chains_jobs_with_afterok(tmp_path: Path) -> None:
    """`submit all` against a stand-in sbatch that records its arguments and answers job ids."""
    log = tmp_path / "sbatch.log"
    fake = tmp_path / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {log}\necho $(( 100 + $(wc -l < {log}) ))\n')
    fake.chmod(0o755)
    subs = submit("all", str(_profile(tmp_path)), sbatch=str(fake))
    assert [s.job_id for s in subs] == ["101", "102", "103", "104", "105", "106"]
    calls = log.read_text().splitlines()
    assert "--dependency" not in calls[0]
    for i, call in enumerate(calls[1:], start=1):
        assert f"--dependency=afterok:{100 + i}" in call and "--kill-on-invalid-dep=yes" in call


def test_sbatch_refusal_is_one_clear_error(tmp_path: Path) -> None:
    from pipeline.orchestration.slurm import SubmitError

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
    assert out.count("#!/bin/bash") == 6 and "(dependency: afterok:<sft1>)" in out
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
