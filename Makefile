# UrbanCross compendium. `make reproduce` regenerates results/<profile>/ and figures/<profile>/; `make test` runs the tests.
#   make reproduce PROFILE=paper ARGS="--set data_root=/data/uc --set sam_checkpoint=/ckpt/sam_vit_h_4b8939.pth"
#   make paper-dryrun      the paper profile's code path on fixture data and tiny models (CPU, minutes)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= smoke
ARGS ?=
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Every target below is a subcommand of the one command line, `python -m urbancross --help`.
# The model hubs are offline for the smoke profile (it needs nothing from them) or when you say OFFLINE=1;
# the paper profile may fetch open_clip / InstructBLIP weights on first use.
ifeq ($(PROFILE),smoke)
OFFLINE ?= 1
endif
ifeq ($(OFFLINE),1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
endif
export PYTHONUNBUFFERED := 1

.PHONY: install reproduce reproduce-all reproduce-plan paper-dryrun gpu-check test export clean-nbs check-sync lab docs docs-check

$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools<81" wheel
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

CORES ?= $(shell nproc)
# The workflow (Snakemake, workflow/Snakefile): resumes, skips what is up to date, reruns what a change affects.
reproduce: install
	$(BIN)/python -m urbancross reproduce --profile $(PROFILE) --cores $(CORES) $(ARGS)

# The plain papermill run-all, every notebook in order in one process each, nothing skipped.
reproduce-all: install
	$(BIN)/python -m urbancross run-all --profile $(PROFILE) $(ARGS)

# What the paper profile's workflow would run (no data or GPU needed to plan it).
reproduce-plan: install
	$(BIN)/python -m urbancross reproduce --profile paper --dry-run

paper-dryrun: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m urbancross dryrun

# On one GPU, offline, under 8 minutes: the paper profile's training samples/s and peak memory (ViT-L-14, bf16,
# checkpointing on/off, batch 40/100), SAM vit_b masks/s, the one-pass metrics at 50k x 250k, the loader's
# GPU idle share; one JSON of figures (benchmarks/gpu_check.py; `--device cpu --tiny` is its CI run).
GPU_CHECK_OUT ?= benchmarks/gpu_check.json
gpu-check: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

# The checks' scratch files (checkpoints, fixtures, caches: hundreds of MB) go to one folder that is removed when
# the tests end, pass or fail, so repeated runs do not fill the disk.
test: install
	export TMPDIR="$$(mktemp -d -t urbancross-test.XXXXXX)"; trap 'rm -rf "$$TMPDIR"' EXIT; \
	$(BIN)/nbdev_test --n_workers 2 && $(BIN)/python -m pytest -q tests && $(MAKE) paper-dryrun

export: install
	$(BIN)/nbdev_export

clean-nbs: install
	$(BIN)/nbdev_clean

check-sync: install
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	git status --porcelain -- urbancross nbs | grep . && { echo "nbdev_export/nbdev_clean changed files: notebooks and modules are out of sync"; git status --porcelain -- urbancross nbs; exit 1; } || echo "export and notebooks in sync"

lab: install
	$(BIN)/jupyter lab nbs

# The documentation site (Sphinx + myst-nb, offline, executes nothing): docs/_build/html/index.html.
# Experiment pages show the executed notebooks in results/$(DOCS_PROFILE)/notebooks/ (DOCS_NOTEBOOKS=dir reads
# them from elsewhere); a missing one is shown without outputs, with a warning on its page.
DOCS_PROFILE ?= smoke
docs: install
	$(BIN)/python docs/build.py --profile $(DOCS_PROFILE)

# From scratch, Sphinx warnings are errors; then every local link, image and anchor must resolve, every
# notebook must have a page reachable from the front page, and README.md must be what nbs/index.ipynb renders to.
docs-check: install
	$(BIN)/python docs/build.py --profile $(DOCS_PROFILE) --clean --strict
	$(BIN)/python docs/check_links.py docs/_build/html --notebooks nbs
	$(BIN)/python docs/make_readme.py --check
