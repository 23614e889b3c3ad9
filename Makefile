# `make test` on a fresh machine needs only python3 (>= 3.10) with pip, and make.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Reinstalled when pyproject.toml changes; `make -B install` forces it.
STAMP := $(VENV)/.installed

.PHONY: install demo test lint benchmark

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/python -m tools.demo

test: install
	$(BIN)/python -m pytest -n 2 -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

benchmark: install
	$(BIN)/python -m tools.benchmark train
