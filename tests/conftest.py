"""Shared fixtures: a tiny keyword embedder, a tiny corpus, isolated settings, a clean DSPy."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import dspy
import numpy as np
import pytest

from rag.settings import Settings

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent


class KeywordEmbedder:
    """Bag of hashed word stems: texts sharing words are close. Deterministic, instant."""

    name = "keyword-fake"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                if len(word) < 3:
                    continue
                h = int(hashlib.md5(word[:6].encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0
            norm = np.linalg.norm(out[i])
            if norm:
                out[i] /= norm
        return out


@pytest.fixture(autouse=True)
def _clean_dspy_and_env(monkeypatch, request, tmp_path):
    """Each test starts with no configured LM and no RAG_* variables from the caller's shell.

    Fast tests also see no optimised programs (the shipped programs/*.json would put its
    demos into every DummyLM prompt); the real-model (slow) tests use what a clone ships."""
    import os

    import rag.answer.program_files

    for key in list(os.environ):
        if key.startswith("RAG_"):
            monkeypatch.delenv(key)
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr(rag.answer.program_files, "PROGRAMS_DIR", tmp_path / "programs")
    dspy.settings.configure(lm=None, adapter=None)
    yield
    dspy.settings.configure(lm=None, adapter=None)
    _reset_step_logging()


def _reset_step_logging() -> None:
    """Undo rag.logs.show_steps (a CLI build in one test must not change logging for the next)."""
    import logging

    from rag.logs import _Steps

    logger = logging.getLogger("rag.index.store")
    for h in [h for h in logger.handlers if isinstance(h, _Steps)]:
        logger.removeHandler(h)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def embedder() -> KeywordEmbedder:
    return KeywordEmbedder()


@pytest.fixture
def fake_models(monkeypatch, embedder):
    """Every `Pipeline.open` that is not handed its own models (the CLI, batch and eval commands open
    theirs) gets the keyword embedder and a fake LM; see `fakes.Models` to swap the LM."""
    from fakes import FakeEngine, Models, inject

    return inject(Models(embedder, FakeEngine()), monkeypatch.setattr)


@pytest.fixture
def tiny_settings(tmp_path) -> Settings:
    return Settings.load(env={}, corpus=str(DATA / "tiny.jsonl"), index_dir=str(tmp_path / "indexes"),
                         cache_dir=str(tmp_path / "cache"), min_score=0.0)


@pytest.fixture(scope="session")
def real_settings(tmp_path_factory) -> Settings:
    """Settings for the real corpus with an index in a session temp dir (built once, ~1 min)."""
    return Settings.load(env={}, index_dir=str(tmp_path_factory.mktemp("real") / "indexes"))


@pytest.fixture(scope="session")
def real_search_pipe(real_settings):
    """The real corpus, the real index and the real embedder; no LM."""
    from rag.pipeline import Pipeline

    return Pipeline.open(real_settings, need_lm=False)
