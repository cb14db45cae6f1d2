# papers-rag: `make run` (set up, index, chat) and `make test` (set up, every test).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: install index run chat test test-fast lint bench bench-scale browser clean

# torch first, pinned: its CPU build lies on this machine's disk; an unpinned torch
# pulled in by sentence-transformers would download several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

index: install
	$(BIN)/rag index

# The Gradio chat on http://127.0.0.1:7860 (RAG_HOST / RAG_PORT / RAG_AUTH change it).
run: index
	$(BIN)/python app.py

# The same questions in the terminal.
chat: index
	$(BIN)/rag chat

lint: install
	$(BIN)/ruff check rag tests bench eval app.py

# Debian's Chromium for the browser tests (never `playwright install`, which downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "!!! could not install chromium: the browser tests will be SKIPPED !!!"

# Every test, the real-model and browser ones (marked slow) included.
test: install lint browser
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

bench: index
	$(BIN)/python bench/bench_retrieval.py
	$(BIN)/python bench/bench_ask.py

# The large-corpus figures in the README: embedding backends and Ray, the approximate index at
# 100k and 1M synthetic vectors, incremental add (about 30 minutes on 2 cores, 4 GB of memory).
bench-scale: index
	$(BIN)/python bench/bench_embed.py
	$(BIN)/python bench/bench_ann.py
	$(BIN)/python bench/bench_add.py

clean:
	rm -rf $(VENV) indexes/idx-* indexes/.tmp-* *.egg-info .pytest_cache
