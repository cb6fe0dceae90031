# UrbanCross compendium. `make reproduce` regenerates results/ and figures/; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= smoke
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install reproduce test export clean-nbs check-sync lab

$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools<81" wheel
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(BIN)/python -m urbancross.experiment --profile $(PROFILE)

test: install
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests

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
