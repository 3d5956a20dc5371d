"""The lmms-eval plugin, against lmms-eval itself where it is installed.

lmms-eval 0.7.3 lives in its own environment (`make test-lmms` builds `.venv-lmms` and runs this file there).
The registry and end-to-end tests use lmms-eval from this interpreter when it has it, else from `.venv-lmms`
(a subprocess), and are skipped when neither exists. The model's own request handling runs here on the tiny
local Qwen2.5-VL either way; under lmms-eval the requests are lmms-eval's `Instance` objects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LMMS_VENV_PYTHON = ROOT / ".venv-lmms" / "bin" / "python"
HAVE_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None


def lmms_python() -> str:
    """An interpreter with lmms-eval: this one, or `.venv-lmms`'s; skips with the way to get one."""
    if HAVE_LMMS_EVAL:
        return sys.executable
    if LMMS_VENV_PYTHON.is_file():
        return str(LMMS_VENV_PYTHON)
    pytest.skip("lmms-eval is not installed here and .venv-lmms does not exist (`make test-lmms` builds it)")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), TOKENIZERS_PARALLELISM="false",
               KFRAMES_CACHE=os.environ.get("KFRAMES_CACHE") or str(ROOT / ".cache" / "kframes"))
    return env


def test_lmms_eval_registry_finds_the_plugin(tmp_path: Path) -> None:
    """lmms-eval's own registry (entry points of the installed kframes) resolves the model to our class."""
    code = (
        "import json\n"
        "from lmms_eval.api.model import lmms\n"
        "from lmms_eval.models import get_model, get_model_manifest, list_available_models\n"
        "m = get_model_manifest('kframes_qwen2_5_vl')\n"
        "cls = get_model('kframes_qwen2_5_vl')\n"
        "print(json.dumps({'listed': 'kframes_qwen2_5_vl' in list_available_models(), 'simple': m.simple_class_path,\n"
        "                  'chat': m.chat_class_path, 'cls': f'{cls.__module__}.{cls.__qualname__}',\n"
        "                  'is_lmms': issubclass(cls, lmms), 'is_simple': cls.is_simple}))\n"
    )
    out = subprocess.run([lmms_python(), "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"listed": True, "simple": "pipeline.inference.lmms_eval_model.KFramesQwen2_5_VL", "chat": None,
                   "cls": "pipeline.inference.lmms_eval_model.KFramesQwen2_5_VL", "is_lmms": True, "is_simple": True}


def _instance(*args: Any) -> Any:
    """A request as lmms-eval builds it (its `Instance` where it is installed)."""
    if HAVE_LMMS_EVAL:
        from lmms_eval.api.instance import Instance

        kind = "generate_until" if isinstance(args[1], dict) else "loglikelihood"
        return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": args[4], "doc_id": args[3],
                                                                            "repeats": 1, "split": args[5]})

    class _Request:  # lmms-eval's models read only `.args`
        def __init__(self) -> None:
            self.args = args

    return _Request()


@pytest.mark.parametrize("model", ["tiny", "real-processor"])
@pytest.mark.parametrize(("selector", "frames", "stamp"), [
    ("lmms_uniform", [0, 83, 166, 249], "<t=10.0s>"),  # np.linspace(0, 249, 4): first and last frame included
    ("uniform", [31, 93, 156, 218], "<t=1.2s>"),  # midpoints of 4 equal segments of 250 frames at 25 fps
])
def test_generate_and_loglikelihood_on_a_real_video(shared_data: Path, selector: str, frames: list[int], stamp: str,
                                                    model: str, request: pytest.FixtureRequest) -> None:
    from pipeline.inference.frame_selectors import VideoTimeline
    from pipeline.inference.lmms_eval_model import SAMPLINGS, KFramesQwen2_5_VL

    model_dir = request.getfixturevalue("tiny_model_dir" if model == "tiny" else "real_processor_model_dir")
    lm = KFramesQwen2_5_VL(pretrained=str(model_dir), selector=selector, k=4, device="cpu", dtype="float32",
                           max_new_tokens=3)
    assert lm.sampling == SAMPLINGS[selector]
    video = str(shared_data / "videos" / "bikes.mp4")
    assert lm.selector.select(VideoTimeline.read(video), "q", None, 4).indices == frames
    docs = [{"video": video, "q": "What is shown?\nA. bikes\nB. cars\nAnswer with the option's letter.", "a": "A"}]
    lm.task_dict = {"mlvu_dev": {"test": docs}}

    def to_visual(doc: dict[str, Any]) -> list[str]:
        return [doc["video"]]

    inputs, prompt_len = lm.build_inputs(docs[0]["q"], [video])
    text = lm.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|image_pad|>") > 0 and text.count("<t=") == 4  # k frames, each after its timestamp
    assert stamp in text
    (answer,) = lm.generate_until([_instance(docs[0]["q"], {"until": ["\n"], "max_new_tokens": 3}, to_visual, 0,
                                             "mlvu_dev", "test")])
    assert isinstance(answer, str) and "\n" not in answer
    (ll_a, greedy_a), (ll_ab, _) = lm.loglikelihood([
        _instance(docs[0]["q"], lambda d: d["a"], to_visual, 0, "mlvu_dev", "test"),
        _instance(docs[0]["q"], " A and B", to_visual, 0, "mlvu_dev", "test"),  # multiple_choice passes text
    ])
    assert ll_a < 0 and ll_ab < ll_a and isinstance(greedy_a, bool)  # a longer continuation is less likely


def test_lmms_uniform_is_lmms_evals_own_sampling() -> None:
    from pipeline.inference.lmms_eval_model import lmms_uniform_indices

    for n, k in [(250, 4), (250, 32), (7, 7), (7, 3), (3, 8), (1, 1), (10_000, 64)]:
        expected = [int(i) for i in np.unique(np.linspace(0, n - 1, min(k, n), dtype=int))]
        if HAVE_LMMS_EVAL:  # the function lmms-eval's video loaders call
            from lmms_eval.models.model_utils.load_video import _compute_uniform_indices

            expected = [int(i) for i in _compute_uniform_indices(n, min(k, n))]
        got = lmms_uniform_indices(n, k)
        assert got == expected and len(got) == min(k, n) and got[0] == 0 and got[-1] == n - 1
    assert lmms_uniform_indices(0, 4) == []


def test_unknown_model_args_are_rejected(tiny_model_dir: Path) -> None:
    from pipeline.inference.lmms_eval_model import KFramesQwen2_5_VL

    with pytest.raises(ValueError, match=r"unknown model_args \['max_frames'\]"):
        KFramesQwen2_5_VL(pretrained=str(tiny_model_dir), device="cpu", max_frames=8)


@pytest.mark.slow
@pytest.mark.parametrize(("model_args", "sampling"), [
    ("k=4", "lmms-eval's uniform sampling"),
    ("k=4,selector=tiny,num_candidates=8,max_new_tokens=8", "K-frames selector tiny"),
])
def test_lmms_eval_runs_the_plugin_on_a_local_task(shared_data: Path, tiny_model_dir: Path, tmp_path: Path,
                                                   model_args: str, sampling: str) -> None:
    """`lmms-eval --model kframes_qwen2_5_vl` on tests/lmms_task (4 questions over the shared videos): lmms-eval
    loads the task, calls the plugin for every question and scores the answers."""
    python = lmms_python()
    cmd = [python, "-m", "lmms_eval", "--model", "kframes_qwen2_5_vl",
           "--model_args", f"pretrained={tiny_model_dir},device=cpu,dtype=float32,{model_args}",
           "--tasks", "kframes_local", "--include_path", "tests/lmms_task", "--batch_size", "1",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    env = {**_env(tmp_path), "KFRAMES_SHARED_DATA": str(shared_data)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "Error during evaluation" not in log, log[-4000:]  # lmms-eval exits 0 on errors
    assert re.search(rf"kframes_qwen2_5_vl: k=4 frames per video by {re.escape(sampling)}", log), log[-4000:]
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["kframes_local"] == {"original": 4, "effective": 4}
    assert 0.0 <= results["results"]["kframes_local"]["accuracy,none"] <= 1.0
    (samples_file,) = (tmp_path / "out").rglob("*_samples_kframes_local.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert [s["target"] for s in samples] == ["A", "B", "C", "D"]
    assert all(isinstance(s["resps"], str) and s["accuracy"] in (0.0, 1.0) for s in samples)
    assert "What moves through the scene?" in samples[0]["input"]
