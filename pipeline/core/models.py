"""A tiny Qwen2.5-VL built locally: real transformers classes, random weights, a tokenizer trained on the spot.

Tests and `make demo` must never download from a hub, yet they should exercise exactly the code paths a
real Qwen2.5-VL-3B takes (processor, chat template, vision tower, M-RoPE, generation). So we build the
real architecture at a few hundred thousand parameters, train a small byte-level BPE tokenizer that carries
Qwen's special tokens and chat template (with `{% generation %}` markers so TRL can mask everything but
the assistant's answer), and save both with `save_pretrained`. The result is cached by a hash of the
recipe, so it is built once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.io import file_digests, sha256_file, verify_digests
from pipeline.core.prompt import SELECTOR_INSTRUCTION, TASK_INSTRUCTIONS

# Qwen2-VL's chat template, with `{% generation %}` markers around the assistant's text so that
# `return_assistant_tokens_mask` (and TRL's assistant_only_loss) can find it.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Recipe of the tiny model. Changing it changes the cache key.
TINY_RECIPE: dict[str, object] = {
    "version": 3,
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vision_depth": 1,
    "vision_hidden_size": 32,
    "vision_intermediate_size": 64,
    "vision_num_heads": 2,
    "patch_size": 14,
    "min_pixels": 56 * 56,
    "max_pixels": 56 * 56,
    "seed": 0,
}


def _corpus(seed: int, n: int = 4000) -> list[str]:
    """Text the tokenizer is trained on: the selector's prompts and outputs, captions, questions."""
    rng = random.Random(seed)
    words = (
        "a the red green blue yellow white black orange purple scene shows person car dog cat ball tree house "
        "road street room kitchen man woman child runs walks sits holds opens closes picks up puts down drives "
        "rides bicycle near far left right top bottom first then after before while during beginning end video "
        "clip frame question answer option which what why how when where who does did is are was were key "
        "evidence secondary context relevant shows moment reason score relevance caption chapter summary "
        "square circle triangle colour color background moves appears disappears counter number"
    ).split()
    lines = [SELECTOR_INSTRUCTION]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            clips = []
            t = rng.uniform(0, 20)
            for _ in range(rng.randint(1, 3)):
                s = round(t, 1)
                e = round(s + rng.uniform(0.5, 15), 1)
                clips.append(
                    {"start": s, "end": e, "priority": rng.choice(["P1", "P2"]), "reason": " ".join(rng.sample(words, 4))}
                )
                t = e + rng.uniform(0.5, 10)
            lines.append(json.dumps(clips))
        elif kind < 0.7:
            lines.append(f"<t={rng.uniform(0, 600):.1f}s> " + " ".join(rng.sample(words, rng.randint(3, 10))))
        else:
            opts = " ".join(f"({chr(65 + i)}) {' '.join(rng.sample(words, 2))}" for i in range(rng.randint(2, 5)))
            lines.append(f"Question: {' '.join(rng.sample(words, 6))}? Options: {opts} Answer: {chr(65 + rng.randint(0, 4))}")
    return lines


# Words of the demo's generated world (data_builder.synthetic): its colours, shapes, captions and questions. The
# demo's tokenizer is trained on them too, so that each is one token the selector can look up.
DEMO_WORDS = (
    "red green blue yellow purple orange cyan gray white black circle square triangle star cross diamond "
    "shape shown background moving slowly caption mentions"
).split()


def _demo_corpus(seed: int, n: int = 3000) -> list[str]:
    """The demo world's text: captions, questions with options, clip lists with whole-second times, the task
    instructions; what the demo's selector reads and writes."""
    rng = random.Random(seed + 1)
    colours, shapes = DEMO_WORDS[:8], DEMO_WORDS[8:16]
    lines = list(TASK_INSTRUCTIONS.values())
    for _ in range(n):
        c, s, ink = rng.choice(colours), rng.choice(shapes), rng.choice(["white", "black"])
        start = rng.randint(0, 12)
        end = start + rng.randint(1, 4)
        opts = " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(rng.sample(shapes, 4)))
        lines += [
            f"A {ink} {s} on a {c} background, moving slowly.",
            f"Query: What shape is shown on the {c} background?\nOptions: {opts}",
            json.dumps([{"start": float(start), "end": float(end), "priority": "P1",
                         "reason": f"caption mentions {c}, background, {s}"}]),
            json.dumps({"start": float(start), "end": float(end)}),
            f"{start:.1f}s to {end:.1f}s <t={start + rng.choice([0, 0.5]):.1f}s> Video length: {end:.1f}s.",
        ]
    return lines


# GPT-2's pre-tokenisation pattern (what `ByteLevel(use_regex=True)` applies).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _build_tokenizer(recipe: dict[str, object]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    if recipe.get("number_tokens"):
        # a decimal number ("3.0", "12.5") stays one piece, with no space glued to it, so that BPE gives each time
        # value one token, the same in "<t=3.0s>", "3.0s to 6.0s" and '"start": 3.0'; the rest is split as GPT-2's
        # byte-level regex splits it
        split = Regex(rf"\d+\.\d+| (?=\d)|{_GPT2_SPLIT}")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(split, behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(recipe["vocab_size"]),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _corpus(int(recipe["seed"]))
    if recipe.get("corpus") == "demo":
        corpus += _demo_corpus(int(recipe["seed"]))
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build(recipe: dict[str, object], out_dir: Path) -> None:
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _build_tokenizer(recipe)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    hidden = int(recipe["hidden_size"])
    heads = int(recipe["num_attention_heads"])
    head_dim = hidden // heads
    # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": int(recipe["intermediate_size"]),
            "num_hidden_layers": int(recipe["num_hidden_layers"]),
            "num_attention_heads": heads,
            "num_key_value_heads": int(recipe["num_key_value_heads"]),
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": int(recipe["vision_depth"]),
            "hidden_size": int(recipe["vision_hidden_size"]),
            "intermediate_size": int(recipe["vision_intermediate_size"]),
            "num_heads": int(recipe["vision_num_heads"]),
            "out_hidden_size": hidden,
            "patch_size": int(recipe["patch_size"]),
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(int(recipe["seed"]))
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    image_processor = Qwen2VLImageProcessor(
        min_pixels=int(recipe["min_pixels"]),
        max_pixels=int(recipe["max_pixels"]),
        patch_size=int(recipe["patch_size"]),
        merge_size=2,
        temporal_patch_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=int(recipe["min_pixels"]),
        max_pixels=int(recipe["max_pixels"]),
        patch_size=int(recipe["patch_size"]),
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "kframes_tiny_recipe.json").write_text(json.dumps(recipe, indent=2))


# The demo's selector (configs/demo/*.yaml, `make demo`): the tiny model's architecture, scaled up to what a
# transformer needs to learn a lookup-and-copy (find the frames the query names, copy their timestamps) in minutes
# on a CPU: 4 layers of width 192, a vision tower of width 64, a tokenizer that also knows the demo world's words.
# Frames of 56x56 pixels give 4 tokens each after the 2x2 merge: enough to tell the scenes' colours apart.
DEMO_RECIPE: dict[str, object] = {
    **TINY_RECIPE,
    "version": 2,
    "corpus": "demo",
    "number_tokens": True,
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 6,
    "vision_depth": 1,
    "vision_hidden_size": 64,
    "vision_intermediate_size": 128,
    "vision_num_heads": 2,
}


def default_cache_dir() -> Path:
    env = os.environ.get("KFRAMES_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kframes"


def build_once(
    kind: str,
    recipe: dict[str, object],
    build: Callable[[Path], None],
    *,
    marker: str,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """`<cache>/<kind>-<hash of recipe>`, built by `build(folder)` the first time it is asked for.

    `build` writes into a temporary folder that is renamed into place only when it is complete, so a crash never
    leaves a half-built model that a later run would trust; when two processes build at once, the first rename
    wins and the other's copy is thrown away. `marker` is a file the finished folder always has.
    """
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"{kind}-{key}"
    if (out / marker).is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    if out.exists():  # our own folder, left without its marker (copied by hand, cut short): built again
        stale = Path(tempfile.mkdtemp(prefix=f".{kind}-stale-", dir=root))
        try:
            os.replace(out, stale / "old")
        except OSError:
            pass  # another process is replacing it right now
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
    try:
        build(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process built it first
            if not (out / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_model(cache_dir: str | os.PathLike[str] | None = None, recipe: dict[str, object] | None = None) -> Path:
    """Build (once) and return the folder of a tiny Qwen2.5-VL with its processor. No network."""
    recipe = dict(TINY_RECIPE if recipe is None else recipe)
    return build_once(
        "tiny-qwen2_5_vl", recipe, lambda folder: _build(recipe, folder),
        marker="kframes_tiny_recipe.json", cache_dir=cache_dir,
    )


def build_demo_model(cache_dir: str | os.PathLike[str] | None = None, recipe: dict[str, object] | None = None) -> Path:
    """Build (once) and return the folder of the demo's selector (`DEMO_RECIPE`, random weights). No network."""
    recipe = dict(DEMO_RECIPE if recipe is None else recipe)
    return build_once(
        "demo-qwen2_5_vl", recipe, lambda folder: _build(recipe, folder),
        marker="kframes_tiny_recipe.json", cache_dir=cache_dir,
    )


# A tiny CLIP, built locally (tests and the demo never download).
TINY_CLIP_RECIPE: dict[str, Any] = {"version": 1, "hidden": 32, "layers": 1, "heads": 2, "proj": 16, "image": 32, "patch": 8, "seed": 0}


def build_tiny_clip(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Build (once) a tiny random CLIP with the real transformers classes; returns its folder."""
    return build_once("tiny-clip", TINY_CLIP_RECIPE, _build_tiny_clip, marker="config.json", cache_dir=cache_dir)


def _build_tiny_clip(folder: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    r = TINY_CLIP_RECIPE
    tok = _build_tokenizer(TINY_RECIPE)  # the same locally trained BPE as the tiny Qwen
    text = {"vocab_size": len(tok), "hidden_size": r["hidden"], "intermediate_size": 2 * r["hidden"],
            "num_hidden_layers": r["layers"], "num_attention_heads": r["heads"], "max_position_embeddings": 64,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.pad_token_id}
    vision = {"hidden_size": r["hidden"], "intermediate_size": 2 * r["hidden"], "num_hidden_layers": r["layers"],
              "num_attention_heads": r["heads"], "image_size": r["image"], "patch_size": r["patch"]}
    torch.manual_seed(r["seed"])
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=r["proj"]))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": r["image"]}, crop_size={"height": r["image"], "width": r["image"]}).save_pretrained(folder)
    tok.save_pretrained(folder)



def resolve_model(name_or_path: str) -> str:
    """The one place a model name from a recipe or a flag becomes something `from_pretrained` loads.

    - 'tiny': the locally built tiny Qwen2.5-VL (built once); 'tiny-clip': the tiny CLIP; 'demo': the demo's larger
      selector (DEMO_RECIPE); 'tiny-real': a tiny Qwen2.5-VL with the real Qwen2.5-VL processor (tokenizer, published
      chat template, image processor, special-token ids) of `default_processor_dir()`. Every recipe field that
      names a model (selector, downstream, annotator, similarity scorer) accepts them, so tests and the demo run
      the same code as a GPU recipe naming a hub id.
    - a training stage's output folder (it holds `final/` and no `config.json`): its `final/` model.
    - anything else (a hub id, a model folder): unchanged.
    """
    if name_or_path == "tiny":
        return str(build_tiny_model())
    if name_or_path == "tiny-clip":
        return str(build_tiny_clip())
    if name_or_path == "demo":
        return str(build_demo_model())
    if name_or_path == "tiny-real":
        return str(build_tiny_model_from_processor())
    p = Path(name_or_path)
    if (p / "final").is_dir() and not (p / "config.json").is_file():
        return str(p / "final")
    return name_or_path


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A content hash of a model folder: what a resumable result computed with this model is keyed by.

    A folder retrained in place gets a new fingerprint even though its path is the same. A training stage's
    `final/stage.json` records the digests of every file it saved; when they are there and the sizes still match,
    they are used instead of hashing gigabytes again. Hub ids (no such folder) are keyed by their name.
    """
    p = Path(path)
    if not p.is_dir():
        return f"name:{p}"
    digests: dict[str, Any] | None = None
    manifest = p / "stage.json"
    if manifest.is_file():
        try:
            digests = json.loads(manifest.read_text(encoding="utf-8")).get("files") or None
        except (ValueError, AttributeError):
            digests = None
    if digests is None or verify_digests(p, digests, hashes=False):
        digests = file_digests(p, skip=("stage.json",))
    return hashlib.sha256(json.dumps({k: v["sha256"] for k, v in digests.items()}, sort_keys=True).encode()).hexdigest()


# A tiny Qwen2.5-VL around a REAL processor: the published tokenizer (151k tokens), chat template (no generation
# markers: TRL swaps in its own training copy) and image processor, the real special-token ids and generation
# config, with the layers and widths of the tiny model. What the on-the-spot tokenizer cannot show: the real
# template's rendering, TRL's template swap, real token counts, the checkpoint's own decoding defaults.
TINY_REAL_RECIPE: dict[str, Any] = {
    "version": 1,
    **{key: TINY_RECIPE[key] for key in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vision_depth", "vision_hidden_size", "vision_intermediate_size", "vision_num_heads", "seed",
    )},
}
PROCESSOR_FILES = ("chat_template.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.json",
                   "preprocessor_config.json", "config.json", "generation_config.json")
SHARED_PROCESSOR = Path(__file__).resolve().parents[3] / "shared" / "data" / "qwen2_5_vl_7b_instruct_processor"


def default_processor_dir() -> Path:
    """$KFRAMES_PROCESSOR_DIR, else the real Qwen2.5-VL processor files in ../shared/data beside the checkout."""
    env = os.environ.get("KFRAMES_PROCESSOR_DIR")
    return Path(env) if env else SHARED_PROCESSOR


def build_tiny_model_from_processor(
    processor_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    recipe: dict[str, Any] | None = None,
) -> Path:
    """Build (once) a random-weight Qwen2.5-VL with `processor_dir`'s processor and config, shrunk per `recipe`.

    Cached by the recipe and the content of the processor files, so another processor gets another model.
    """
    source = Path(processor_dir) if processor_dir is not None else default_processor_dir()
    if not (source / "config.json").is_file() or not (source / "preprocessor_config.json").is_file():
        raise ConfigError(
            f"{source}: not a processor folder (needs config.json, preprocessor_config.json and the tokenizer files); "
            "set KFRAMES_PROCESSOR_DIR or pass --processor DIR"
        )
    recipe = dict(TINY_REAL_RECIPE if recipe is None else recipe)
    digests = {name: sha256_file(source / name) for name in PROCESSOR_FILES if (source / name).is_file()}
    key = {**recipe, "processor_files": digests}
    return build_once("tiny-real-qwen2_5_vl", key, lambda folder: _build_from_processor(source, recipe, folder),
                      marker="kframes_tiny_recipe.json", cache_dir=cache_dir)


def _build_from_processor(source: Path, recipe: dict[str, Any], out_dir: Path) -> None:
    import torch
    from transformers import AutoProcessor, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(source)
    config = Qwen2_5_VLConfig.from_pretrained(source)
    hidden, heads = int(recipe["hidden_size"]), int(recipe["num_attention_heads"])
    half = hidden // heads // 2  # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width)
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = config.text_config
    text.hidden_size, text.intermediate_size = hidden, int(recipe["intermediate_size"])
    text.num_hidden_layers, text.num_attention_heads = int(recipe["num_hidden_layers"]), heads
    text.num_key_value_heads, text.max_window_layers = int(recipe["num_key_value_heads"]), int(recipe["num_hidden_layers"])
    text.layer_types = ["full_attention"] * text.num_hidden_layers
    rope = dict(getattr(text, "rope_parameters", None) or {})
    rope.update({"mrope_section": mrope, "rope_type": rope.get("rope_type", "default")})
    text.rope_parameters = rope
    vision = config.vision_config
    vision.depth, vision.hidden_size = int(recipe["vision_depth"]), int(recipe["vision_hidden_size"])
    vision.intermediate_size, vision.num_heads = int(recipe["vision_intermediate_size"]), int(recipe["vision_num_heads"])
    vision.out_hidden_size, vision.fullatt_block_indexes = hidden, [0]
    config.tie_word_embeddings = text.tie_word_embeddings = True  # as the 3B selector: one 151k x width matrix
    torch.manual_seed(int(recipe["seed"]))
    model = Qwen2_5_VLForConditionalGeneration(config)
    if (source / "generation_config.json").is_file():  # the checkpoint's own decoding defaults, as users get them
        model.generation_config = GenerationConfig.from_pretrained(source)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "kframes_tiny_recipe.json").write_text(json.dumps({**recipe, "processor": str(source)}, indent=2))
