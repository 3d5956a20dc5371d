"""The lmms-eval plugin: its entry point resolves the way lmms-eval 0.7 resolves it, and the model answers
lmms-eval "simple" requests on a real video with the tiny local Qwen2.5-VL (lmms-eval itself is not installed)."""

from __future__ import annotations

import importlib
import sys
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class _ModelManifest:  # the fields of lmms_eval.models.registry_v2.ModelManifest (0.7.3)
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None
    aliases: tuple[str, ...] = ()


def test_entry_point_yields_a_manifest_naming_a_simple_model(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("lmms_eval") is None:
        for name in ("lmms_eval", "lmms_eval.models"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        reg = types.ModuleType("lmms_eval.models.registry_v2")
        reg.ModelManifest = _ModelManifest
        monkeypatch.setitem(sys.modules, "lmms_eval.models.registry_v2", reg)
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    module, _, attr = eps["kframes_qwen2_5_vl"].partition(":")
    payload = getattr(importlib.import_module(module), attr)
    # registry_v2._coerce_payload_to_manifests: a callable payload is called, and must give a ModelManifest.
    manifest = payload() if callable(payload) else payload
    assert manifest.model_id == "kframes_qwen2_5_vl" and manifest.chat_class_path is None
    mod, _, cls_name = manifest.simple_class_path.rpartition(".")
    cls = getattr(importlib.import_module(mod), cls_name)
    assert cls.is_simple is True and callable(cls.generate_until) and callable(cls.loglikelihood)


class _Instance:
    def __init__(self, *args: Any) -> None:
        self.args = args


def test_generate_and_loglikelihood_on_a_real_video(shared_data: Path, tiny_model_dir: Path) -> None:
    from pipeline.inference.lmms_eval_model import KFramesQwen2_5_VL

    lm = KFramesQwen2_5_VL(pretrained=str(tiny_model_dir), selector="uniform", k=4, device="cpu", dtype="float32",
                           max_new_tokens=3)
    video = str(shared_data / "videos" / "bikes.mp4")
    docs = [{"video": video, "q": "What is shown?\nA. bikes\nB. cars\nAnswer with the option's letter.", "a": "A"}]
    lm.task_dict = {"mlvu_dev": {"test": docs}}

    def to_visual(doc: dict[str, Any]) -> list[str]:
        return [doc["video"]]

    inputs, prompt_len = lm.build_inputs(docs[0]["q"], [video])
    text = lm.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|image_pad|>") > 0 and text.count("<t=") == 4  # k frames, each after its timestamp
    assert "<t=1.2s>" in text  # uniform frame 31 of 250 at 25 fps
    (answer,) = lm.generate_until([_Instance(docs[0]["q"], {"until": ["\n"], "max_new_tokens": 3}, to_visual, 0,
                                              "mlvu_dev", "test")])
    assert isinstance(answer, str) and "\n" not in answer
    (ll_a, greedy_a), (ll_ab, _) = lm.loglikelihood([
        _Instance(docs[0]["q"], lambda d: d["a"], to_visual, 0, "mlvu_dev", "test"),
        _Instance(docs[0]["q"], lambda d: d["a"] + " and B", to_visual, 0, "mlvu_dev", "test"),
    ])
    assert ll_a < 0 and ll_ab < ll_a and isinstance(greedy_a, bool)  # a longer continuation is less likely


def test_unknown_model_args_are_rejected(tiny_model_dir: Path) -> None:
    from pipeline.inference.lmms_eval_model import KFramesQwen2_5_VL

    with pytest.raises(ValueError, match=r"unknown model_args \['max_frames'\]"):
        KFramesQwen2_5_VL(pretrained=str(tiny_model_dir), device="cpu", max_frames=8)
