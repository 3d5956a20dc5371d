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

CONFIG_SIZE ?= tiny
PROFILE ?= configs/cluster/slurm.yaml
PYTEST_ARGS ?=

.PHONY: help install demo test data sft1 sft2 grpo train select eval bench bench-scenes bench-sampler bench-sft lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install kframes into it (a no-op when nothing changed)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# scenedetect depends on opencv-python (GUI build, needs libGL); we keep opencv-python-headless as the
	# one cv2 in the environment, so scenedetect goes in without its dependencies (its others are in pyproject).
	$(PY) -m pip install -q --no-deps scenedetect==0.7.2
	$(PY) -c "import cv2, scenedetect, decord, torchvision, transformers, trl; print('kframes installed:', 'transformers', transformers.__version__, 'trl', trl.__version__)"
	touch $(STAMP)

demo: install ## the whole pipeline end to end on generated videos and a tiny local model (demo_out/report.md)
	$(VENV)/bin/kframes demo --out demo_out

test: install ## run the test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

data: install ## build PeakClips and the task files of every stage (CONFIG_SIZE=tiny|qwen2_5_vl_3b)
	$(VENV)/bin/kframes data build --config configs/$(CONFIG_SIZE)/data.yaml

sft1: install ## train SFT stage 1 (temporal grounding)
	$(VENV)/bin/kframes train sft1 --config configs/$(CONFIG_SIZE)/sft1.yaml

sft2: install ## train SFT stage 2 (key-clip prediction)
	$(VENV)/bin/kframes train sft2 --config configs/$(CONFIG_SIZE)/sft2.yaml

grpo: install ## train the GRPO stage against the downstream reward
	$(VENV)/bin/kframes train grpo --config configs/$(CONFIG_SIZE)/grpo.yaml

train: sft1 sft2 grpo ## all three training stages in order

select: install ## select frames for the demo's held-out queries with the trained selector
	$(VENV)/bin/kframes run --config configs/pipeline/$(CONFIG_SIZE).yaml --from select --only select

eval: install ## evaluate the selector against the baselines (accuracy per k, cost)
	$(VENV)/bin/kframes run --config configs/pipeline/$(CONFIG_SIZE).yaml --from eval --only eval

submit-%: install ## submit a stage (or `all`) to Slurm: make submit-sft1 PROFILE=configs/cluster/slurm.yaml
	$(VENV)/bin/kframes submit $* --profile $(PROFILE)

bench: bench-scenes bench-sampler bench-sft ## all benchmarks (JSON under benchmarks/results/)

bench-scenes: install ## scene segmentation: F1 and throughput against scenedetect's detectors
	$(PY) benchmarks/bench_scenes.py

bench-sampler: install ## any-k sampler latency per mode and k
	$(PY) benchmarks/bench_sampler.py

bench-sft: install ## SFT tokens/s and peak memory against plain TRL
	$(PY) benchmarks/bench_sft.py

lint: install ## ruff and a byte-compile of every package
	$(VENV)/bin/ruff check pipeline stages data_builder rewards tests benchmarks || $(PY) -m compileall -q pipeline stages data_builder rewards

clean: ## remove run outputs (keeps .venv)
	rm -rf runs demo_out .pytest_cache
