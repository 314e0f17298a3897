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

.PHONY: demo test lab test-gpu outputs bench lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gptcourse demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

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

lint: $(STAMP)
	$(VENV)/bin/ruff check gptcourse tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
