# Two commands on a fresh machine: `make demo` (install + main job) and `make test`.
# Every install goes through constraints.txt, which pins PyTorch's CPU build here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: install demo test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/dtray demo --address local

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
