# The README's two commands: `make quickstart` and `make test`. Both start from nothing.
PYTHON ?= python3
VENV ?= .venv
# A pinned torch release: on machines that hold its CPU wheel locally pip takes that file in
# seconds; elsewhere pip fetches the same release from PyPI. Override for another build, e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install dev quickstart test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .

dev: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,nlp,demo]'

quickstart: install
	HF_HUB_OFFLINE=1 $(BIN)/ttd quickstart

test: dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/encode.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
