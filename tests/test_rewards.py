"""The GRPO reward (SPEC section 6) and its downstream backends.

Hand-made cases use the colour oracle (tests/oracle_downstream.py: a deterministic downstream that sees only the
frames it is given) on a synthetic video whose answer is visible in exactly one scene. Backend equality is checked
over real HTTP: a loopback server started here answers like `vllm serve`, with log-probs computed by the
transformers backend's tiny Qwen2.5-VL, and the vLLM backend must read back the in-process numbers.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_downstream import QUESTION, SHAPE_OPTIONS, ColourOracle, red_last_video
from PIL import Image
from vllm_loopback import LoopbackVLLM

from pipeline.core.config import DownstreamSection, RewardSection
from pipeline.core.errors import BackendError, ConfigError
from rewards.backends import MCQRequest, make_backend, render_mcq_messages
from rewards.downstream import logprob_reward
from rewards.registry import available_rewards, build_rewards

RED_CLIP = '[{"start": 4.0, "end": 6.0, "priority": "P1", "reason": "the red scene"}]'
GREEN_CLIP = '[{"start": 0.0, "end": 2.0, "priority": "P1", "reason": "the first scene"}]'
GARBAGE = [
    "",
    "I think the answer is B.",
    "[]",
    "[{'start': 1",
    '[{"start": 5, "end": 1, "priority": "P1"}]',
    '[{"start": 0, "end": 99, "priority": "P1"}]',
    '[{"start": 0, "end": 1, "priority": "P7"}]',
    '{"start": 0, "end": 1}',
    "```json\n[{\"start\": \"x\", \"end\": 2, \"priority\": \"P1\"}]\n```",
    "\u2603" * 50,
]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("rewards") / "red_last.mp4"
    return path, red_last_video(path, ("green", "blue"), ("square", "circle", "triangle"))


def _rewards(video, completions, **cfg_kw):
    path, answer = video
    cfg = RewardSection(weights={"downstream_logprob": 1.0, "format": 0.5}, k=4, mode="focused",
                        downstream=DownstreamSection(max_pixels=3136), **cfg_kw)
    oracle = ColourOracle({QUESTION: ((200, 30, 30), answer)})
    funcs, weights, _ = build_rewards(cfg, backend=oracle)
    n = len(completions)
    cols = dict(video=[str(path)] * n, question=[QUESTION] * n, options=[SHAPE_OPTIONS] * n, answer=[answer] * n)
    logged: dict[str, float] = {}
    per_func = {f.__name__: f([None] * n, completions, log_metric=logged.__setitem__, **cols) for f in funcs}
    return per_func, dict(zip(per_func, weights)), oracle, logged


# ---- the formula --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    lps=st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=8),
    data=st.data(),
    tau=st.floats(0.05, 10),
    shift=st.floats(-30, 30),
)
def test_logprob_reward_is_the_tanh_of_the_log_ratio_and_bounded(lps, data, tau, shift) -> None:
    ans = data.draw(st.integers(0, len(lps) - 1))
    r = logprob_reward(lps, ans, tau)
    assert -1.0 <= r <= 1.0
    wrong = [math.exp(x) for i, x in enumerate(lps) if i != ans]
    if min(lps) > -30:  # direct formula is exact enough away from underflow
        assert r == pytest.approx(math.tanh((lps[ans] - math.log(sum(wrong) / len(wrong))) / tau), abs=1e-9)
    # p normalised any way (a constant added to every log p) gives the same reward
    assert logprob_reward([x + shift for x in lps], ans, tau) == pytest.approx(r, abs=1e-9)


def test_logprob_reward_signs() -> None:
    assert logprob_reward([0.0, 0.0, 0.0], 1, 1.0) == 0.0
    assert logprob_reward([math.log(0.8), math.log(0.1), math.log(0.1)], 0, 1.0) == pytest.approx(math.tanh(math.log(8)))
    assert logprob_reward([math.log(0.8), math.log(0.1), math.log(0.1)], 1, 1.0) < 0
    assert logprob_reward([math.log(0.8), math.log(0.1), math.log(0.1)], 0, 4.0) < math.tanh(math.log(8))


def test_mcq_prompt_lists_frames_after_timestamps_then_lettered_options() -> None:
    (msg,) = render_mcq_messages([0.5, 12.25], "Which shape?", ["circle", "square"])
    parts = msg["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert parts[0]["text"] == "<t=0.5s>" and parts[2]["text"] == "<t=12.2s>"
    assert "Question: Which shape?\nOptions:\n(A) circle\n(B) square\nAnswer with the option's letter" in parts[-1]["text"]


# ---- the reward on hand-made completions --------------------------------------------------------------------


def test_right_clips_beat_wrong_clips_and_the_group_is_decoded_once(video) -> None:
    per_func, _, oracle, logged = _rewards(video, [RED_CLIP, GREEN_CLIP, RED_CLIP, GREEN_CLIP])
    down = per_func["downstream_logprob"]
    assert down[0] == pytest.approx(math.tanh(2.0)) and down[2] == down[0]
    assert down[1] == pytest.approx(0.0, abs=1e-9) and down[0] > down[1] + 0.9
    assert per_func["format"] == [1.0] * 4
    assert oracle.calls == 1 and oracle.frames_seen == [4] * 4  # one batched call; exactly k frames each
    assert logged["downstream/accuracy"] == 0.5 and logged["downstream/fallback_rate"] == 0.0


def test_conversational_completions_are_read_like_strings(video) -> None:
    per_func, _, _, _ = _rewards(video, [[{"role": "assistant", "content": RED_CLIP}]])
    assert per_func["downstream_logprob"][0] == pytest.approx(math.tanh(2.0))
    assert per_func["format"] == [1.0]


def test_garbage_gets_the_format_penalty_and_uniform_frames_never_a_crash(video) -> None:
    per_func, _, oracle, logged = _rewards(video, GARBAGE)
    assert per_func["format"] == [0.0] * len(GARBAGE)
    down = per_func["downstream_logprob"]
    # uniform frames over 0..6 s: 1 of 4 lands on the red scene -> tanh(2 * 1/4) for every garbage completion
    assert down == pytest.approx([math.tanh(0.5)] * len(GARBAGE))
    assert logged["downstream/fallback_rate"] == 1.0 and oracle.frames_seen == [4] * len(GARBAGE)


def test_garbage_gets_the_floor_without_asking_the_downstream_model(video) -> None:
    per_func, _, oracle, _ = _rewards(video, GARBAGE[:3] + [RED_CLIP], unparseable="floor", floor=-0.5)
    assert per_func["downstream_logprob"][:3] == [-0.5] * 3
    assert per_func["downstream_logprob"][3] == pytest.approx(math.tanh(2.0))
    assert oracle.frames_seen == [4]  # only the parseable completion was scored


def test_partly_valid_output_is_scored_on_its_valid_clips_but_loses_the_format_reward(video) -> None:
    text = '[{"start": 4.0, "end": 6.0, "priority": "P1"}, {"start": 9, "end": 3, "priority": "P2"}]'
    per_func, _, _, _ = _rewards(video, [text])
    assert per_func["format"] == [0.0]
    assert per_func["downstream_logprob"][0] == pytest.approx(math.tanh(2.0))


def test_registry_builds_rewards_in_the_order_and_with_the_weights_of_the_yaml() -> None:
    assert {"format", "downstream_logprob"} <= set(available_rewards())
    funcs, weights, _ = build_rewards(RewardSection(weights={"format": 0.25, "downstream_logprob": 1.0}))
    assert [f.__name__ for f in funcs] == ["format", "downstream_logprob"] and weights == [0.25, 1.0]
    with pytest.raises(ConfigError, match="unknown reward.*'accuracy'.*available: downstream_logprob, format"):
        build_rewards(RewardSection(weights={"accuracy": 1.0}))


# ---- the backends -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir: Path):
    return make_backend(DownstreamSection(backend="transformers", model=str(tiny_model_dir), device="cpu", batch_size=3))


def _requests() -> list[MCQRequest]:
    g = torch.Generator().manual_seed(0)

    def img(w: int, h: int) -> Image.Image:
        return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())

    return [
        MCQRequest([img(64, 48), img(64, 48)], [0.5, 1.5], "What shape is shown?", ["circle", "square", "star"]),
        MCQRequest([img(56, 56)], [3.0], "Which colour is the background?", ["red", "blue"]),
        MCQRequest([img(80, 40)] * 3, [0.0, 1.0, 2.0], "What happens first?", ["a", "b", "c", "d", "e"]),
        MCQRequest([img(64, 48), img(48, 64)], [7.1, 9.9], "Is it moving?", ["yes", "no", "maybe", "never"]),
    ]


def _questions(srv: LoopbackVLLM) -> list[dict]:
    """The chat requests that carried frames (the rest is the backend's one probe of the server)."""
    return [b for b in srv.requests if any(p["type"] == "image_url" for m in b["messages"] for p in m["content"])]


def _many_options(n: int) -> MCQRequest:
    g = torch.Generator().manual_seed(n)
    img = Image.fromarray(torch.randint(0, 256, (48, 64, 3), generator=g, dtype=torch.uint8).numpy())
    return MCQRequest([img], [1.0], "Which word names the scene?", [f"option {i}" for i in range(n)])


def test_vllm_backend_over_http_equals_the_transformers_backend(hf_backend) -> None:
    reqs = _requests()
    local = hf_backend.option_logprobs(reqs)
    with LoopbackVLLM(hf_backend) as srv:
        remote = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", concurrency=4))
        got = remote.option_logprobs(reqs)
        remote.option_logprobs(reqs[:1])  # a second call does not probe again
        probes = [b for b in srv.requests if b not in _questions(srv)]
        body = _questions(srv)[0]
    assert [len(x) for x in got] == [3, 2, 5, 4]
    for a, b in zip(local, got):
        assert b == pytest.approx(a, abs=1e-5)
        assert math.fsum(math.exp(x) for x in b) == pytest.approx(1.0)  # normalised over the option letters
    assert remote.logprobs_api == "logprob_token_ids" and len(probes) == 1
    letters = hf_backend.letter_token_ids(len(body["logprob_token_ids"]))
    assert body["logprob_token_ids"] == body["allowed_token_ids"] == letters
    assert body["max_completion_tokens"] == 1 and "max_tokens" not in body and "top_logprobs" not in body
    assert body["logprobs"] is True and body["return_tokens_as_token_ids"] is True
    assert body["top_k"] == 0 and body["temperature"] == 1.0 and body["repetition_penalty"] == 1.0
    urls = [p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url"]
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls)
    # the rewards built on either backend are therefore equal too
    for a, b in zip(local, got):
        assert logprob_reward(b, 0, 1.0) == pytest.approx(logprob_reward(a, 0, 1.0), abs=1e-5)


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_26_options_on_a_server_capped_at_20_logprobs(hf_backend, mode) -> None:
    """logprob_token_ids asks for exactly the letters, whatever their rank and whatever --max-logprobs says."""
    reqs = [_many_options(26), _many_options(21)]
    local = hf_backend.option_logprobs(reqs)
    with LoopbackVLLM(hf_backend, logprobs_mode=mode, max_logprobs=20) as srv:
        remote = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", concurrency=2))
        got = remote.option_logprobs(reqs)
    assert [len(x) for x in got] == [26, 21]
    for a, b in zip(local, got):
        assert b == pytest.approx(a, abs=1e-5)


def test_an_older_server_is_asked_for_top_logprobs(hf_backend) -> None:
    """A server without logprob_token_ids (it ignores the field): the probe finds out, top_logprobs is used."""
    reqs = _requests()
    local = hf_backend.option_logprobs(reqs)
    with LoopbackVLLM(hf_backend, logprob_token_ids=False) as srv:
        remote = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", concurrency=4))
        got = remote.option_logprobs(reqs)
        body = _questions(srv)[0]
        assert remote.logprobs_api == "top_logprobs"
        assert body["top_logprobs"] == 20 and "logprob_token_ids" not in body
        assert body["allowed_token_ids"] == hf_backend.letter_token_ids(len(body["allowed_token_ids"]))
        for a, b in zip(local, got):
            assert b == pytest.approx(a, abs=1e-5)
        # more options than the server's --max-logprobs: vLLM's 400, with what to change on the server
        with pytest.raises(BackendError, match=r"greater than max allowed: 20.*needs `--max-logprobs 26`"):
            remote.option_logprobs([_many_options(26)])


def test_an_older_raw_logprobs_server(hf_backend) -> None:
    """vLLM's default mode without logprob_token_ids: exact when every letter is in the top-k, else an error saying
    how to start the server."""
    reqs = _requests()[:1]
    local = hf_backend.option_logprobs(reqs)
    logits = hf_backend.next_token_logits(
        [render_mcq_messages(r.timestamps_s, r.question, r.options) for r in reqs], [r.images for r in reqs]
    )[0]
    ranks = torch.argsort(logits, descending=True).tolist()
    worst = max(ranks.index(i) for i in hf_backend.letter_token_ids(3))
    assert worst >= 3  # random weights: some letter is far down the vocabulary
    with LoopbackVLLM(hf_backend, logprobs_mode="raw_logprobs", logprob_token_ids=False, max_logprobs=worst + 2) as srv:
        # the list holds the sampled token first, then the top entries: one more than the worst rank is enough
        enough = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", top_logprobs=worst + 2))
        assert enough.option_logprobs(reqs)[0] == pytest.approx(local[0], abs=1e-5)
        too_few = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", top_logprobs=worst))
        with pytest.raises(BackendError, match=r"no log-prob for option.*--logprobs-mode processed_logprobs"):
            too_few.option_logprobs(reqs)


def test_the_loopback_refuses_what_vllm_refuses(hf_backend) -> None:
    """The stand-in's error bodies are vLLM's; the backend reports vLLM's message and parameter in one line."""
    with LoopbackVLLM(hf_backend) as srv:
        b = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", max_retries=0))
        bad = {"model": "tiny", "messages": [{"role": "user", "content": "A"}], "max_completion_tokens": 1,
               "logprob_token_ids": [1, 2]}
        with pytest.raises(BackendError, match=r"rejected .*chat/completions \(400\): when using `logprob_token_ids`, "
                           r"`logprobs` must be set to true. \(param logprob_token_ids\)"):
            b._post(f"{srv.url}/chat/completions", bad)
        with pytest.raises(BackendError, match=r"top_k must be 0 \(disable\), or at least 1, got -2"):
            b._post(f"{srv.url}/chat/completions", {**bad, "logprobs": True, "top_k": -2})


def test_vllm_backend_retries_a_busy_server(hf_backend) -> None:
    with LoopbackVLLM(hf_backend, fail_first=2) as srv:
        b = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", max_retries=3, concurrency=1))
        b.backoff_s = 0.01
        assert len(b.option_logprobs(_requests()[1:2])[0]) == 2
        assert len(srv.requests) == 4  # the probe: two 503s, then its answer; then the question
    with LoopbackVLLM(hf_backend, fail_first=5) as srv:
        b = make_backend(DownstreamSection(backend="vllm", url=srv.url, model="tiny", max_retries=1, concurrency=1))
        b.backoff_s = 0.01
        with pytest.raises(BackendError, match=r"answered 503: The engine is busy.*after 2 attempts"):
            b.option_logprobs(_requests()[1:2])


def test_server_down_is_an_error_naming_the_url() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    b = make_backend(DownstreamSection(backend="vllm", url=url, model="m", max_retries=1, timeout_s=2))
    b.backoff_s = 0.01
    with pytest.raises(BackendError, match=rf"vLLM server at {url}: not reachable.*vllm serve"):
        b.option_logprobs(_requests()[1:2])


def test_bad_backend_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="downstream.url"):
        make_backend(DownstreamSection(backend="vllm", url=None))
    with pytest.raises(ConfigError, match="downstream.url"):
        make_backend(DownstreamSection(backend="vllm", url="node:8000"))
    with pytest.raises(ValueError, match="2 images but 1 timestamps"):
        MCQRequest([Image.new("RGB", (8, 8))] * 2, [0.0], "q", ["a", "b"])
