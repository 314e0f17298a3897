# gptcourse -- the two commands of the quick start are `make demo` and `make test`.
# Both create (or reuse) .venv and install what they need the first time.
#
#   make demo       prepare the `stories` corpus, train a small GPT on the CPU (~3 min), sample,
#                   and print how far its loss is above the corpus's entropy floor
#   make test       the whole test suite: library tests + every lesson and solution notebook
#   make lab        JupyterLab on notebooks/
#   make test-gpu   the notebook suite at full size (GPTCOURSE_PROFILE=gpu)
#   make outputs    re-run lessons and solutions (cpu profile) and save their outputs
#   make bench      every benchmark in bench/ (~10 min on 2 cores; results in bench/README.md)
#
# TORCH is what pip installs for PyTorch before the package; e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gptcourse-installed
# A ../shared/data folder beside the clone (as on the course's CI machines) is a read-only
# data cache; on a normal machine it does not exist and files are downloaded on first use.
ifneq ($(wildcard ../shared/data/.),)
export GPTCOURSE_DATA_DIR ?= $(abspath ../shared/data)
endif
ifneq ($(wildcard ../shared/tiktoken-cache/.),)
export TIKTOKEN_CACHE_DIR ?= $(abspath ../shared/tiktoken-cache)
endif
PYTEST_ARGS ?= -n 2 --dist loadscope
# pip shows its download progress, except on CI (CI=true there), whose logs stay short
PIP_PROGRESS ?= $(if $(CI),--quiet,--progress-bar on)
# Jupyter refuses to start as root (as in a container) without --allow-root; more options with
#   make lab LAB_ARGS="--ip 0.0.0.0 --no-browser"   (a container's JupyterLab seen from the host)
LAB_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
LAB_ARGS ?=

.PHONY: demo test lab test-gpu outputs bench lint install clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing PyTorch ($(TORCH)): several hundred MB, a few minutes the first time"
	$(PY) -m pip install $(PIP_PROGRESS) $(TORCH)
	@echo "installing gptcourse and its tools (JupyterLab, pytest, ...): a minute or two"
	$(PY) -m pip install $(PIP_PROGRESS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gptcourse demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS) notebooks/

test-gpu: $(STAMP)
	GPTCOURSE_PROFILE=gpu $(PY) -m pytest -p no:xdist notebooks solutions

outputs: $(STAMP)
	GPTCOURSE_PROFILE=cpu $(PY) -m gptcourse.notebooks execute notebooks solutions

bench: $(STAMP)
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_model.py
	$(PY) bench/bench_prepare.py
	$(PY) bench/bench_train.py overhead --steps 200 --rounds 5
	$(PY) bench/bench_train.py shakespeare-char --quiet
	$(PY) bench/bench_serve.py

# gpu-check: one CUDA GPU, no internet, <= 8 min (bench/README.md, "GPU check"). Installs the
# wheels in $(GPU_DIR)/wheels made by `bench/gpu_wheels.sh download` and uses its data caches.
# On a machine without a CUDA GPU it says so and exits non-zero.
GPU_DIR ?= .gpu
GPU_CHECK_ARGS ?=
GPU_PYTHON := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHON=$(GPU_PYTHON) bench/gpu_wheels.sh install $(GPU_DIR)
	d=$(GPU_DIR); [ -d $$d/data ] && export GPTCOURSE_DATA_DIR=$$(cd $$d/data && pwd); \
	[ -d $$d/tiktoken-cache ] && export TIKTOKEN_CACHE_DIR=$$(cd $$d/tiktoken-cache && pwd); \
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check gptcourse tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
