# papers-rag: `make run` (set up, index, chat) and `make test` (set up, every test).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: install index run chat test test-fast lint bench clean

# torch first, pinned: its CPU build lies on this machine's disk; an unpinned torch
# pulled in by sentence-transformers would download several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

index: install
	$(BIN)/rag index

run: index
	$(BIN)/rag chat

chat: run

lint: install
	$(BIN)/ruff check rag tests bench

# Every test, the real-model ones (marked slow) included.
test: install lint
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

bench: index
	$(BIN)/python bench/bench_retrieval.py
	$(BIN)/python bench/bench_ask.py

clean:
	rm -rf $(VENV) indexes/idx-* indexes/.tmp-* *.egg-info .pytest_cache
