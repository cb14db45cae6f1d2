"""The dense index: exact below the threshold, IVF above it, its recall against exact search, mmap loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.answer.retrieve import Retriever
from rag.errors import IndexStoreError
from rag.index.corpus import load_corpus
from rag.index.store import build_index, load_index
from rag.index.vectors import build_dense, open_dense, plan, set_nprobe, write_dense
from rag.settings import Settings


def clustered(n: int, dim: int = 64, centres: int = 50, seed: int = 0) -> np.ndarray:
    """Normalised vectors around random centres: structure like real embeddings, not uniform noise."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at(exact: np.ndarray, approx: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))


def test_plan_is_exact_up_to_the_threshold_and_ivf_above():
    s = Settings.load(env={}, ivf_threshold=1000)
    assert plan(1000, 384, s) == {"type": "flat"}
    assert plan(100_000, 384, s) == {"type": "ivf", "lists": int(4 * 100_000 ** 0.5), "codec": "sq8"}
    assert plan(40_000, 384, s.replace(ivf_lists=64, ivf_codec="pq"))["lists"] == 64
    # never more cells than 39 training vectors each can fit
    assert plan(2000, 384, s.replace(ivf_lists=500))["lists"] == 2000 // 39
    with pytest.raises(IndexStoreError, match="RAG_IVF_CODEC=sq8"):
        plan(5000, 100, s.replace(ivf_codec="pq"))


@pytest.mark.parametrize("codec", ["sq8", "flat"])
def test_ivf_recall_against_exact_search(tmp_path, codec):
    x = clustered(20_000)
    queries = clustered(200, seed=1)
    spec = plan(len(x), x.shape[1], Settings.load(env={}, ivf_threshold=10_000, ivf_codec=codec))
    ivf = build_dense(x, spec)
    flat = build_dense(x, {"type": "flat"})
    assert type(ivf).__name__.startswith("IndexIVF") and type(flat).__name__ == "IndexFlat"
    _, exact = flat.search(queries, 10)
    write_dense(ivf, tmp_path / "dense.faiss")
    loaded = open_dense(tmp_path / "dense.faiss", nprobe=Settings.load(env={}).nprobe)  # the default
    _, approx = loaded.search(queries, 10)
    assert recall_at(exact, approx) >= 0.95
    set_nprobe(loaded, 1)  # one cell: recall falls, which shows nprobe reaches the index
    _, one = loaded.search(queries, 10)
    assert recall_at(exact, one) < recall_at(exact, approx)


def test_training_is_deterministic():
    x = clustered(5000)
    spec = {"type": "ivf", "lists": 32, "codec": "sq8"}
    q = clustered(50, seed=2)
    a, b = build_dense(x, spec), build_dense(x, spec)
    for ix in (a, b):
        set_nprobe(ix, 4)
    assert np.array_equal(a.search(q, 10)[1], b.search(q, 10)[1])


@pytest.mark.parametrize("spec", [{"type": "flat"}, {"type": "ivf", "lists": 16, "codec": "sq8"}])
def test_memory_mapped_open_answers_like_a_full_read(tmp_path, spec):
    x = clustered(3000)
    write_dense(build_dense(x, spec), tmp_path / "dense.faiss")
    q = clustered(20, seed=3)
    mapped, read = open_dense(tmp_path / "dense.faiss", 4), open_dense(tmp_path / "dense.faiss", 4, mmap=False)
    assert np.array_equal(mapped.search(q, 5)[1], read.search(q, 5)[1])


def test_index_above_the_threshold_is_ivf_with_float_vectors_kept(tiny_settings, embedder):
    papers = load_corpus(tiny_settings.corpus)
    settings = tiny_settings.replace(ivf_threshold=1)  # 6 papers' chunks are "large" here
    path = build_index(papers, embedder, settings)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["dense"]["type"] == "ivf" and meta["dense"]["factory"].startswith("IVF")
    assert "chunks.npy" in meta["files"]
    index = load_index(path, settings=settings)
    assert np.load(path / "chunks.npy").shape == (meta["n_chunks"], embedder.dim)
    # one IVF cell holds everything here, so approximate search is exact: same hits as the flat index
    flat = load_index(build_index(papers, embedder, tiny_settings), settings=tiny_settings)
    for q in ("state space models", "retrieval augmented generation"):
        got = Retriever(index, embedder).search(q, k=3, mode="dense").hits
        want = Retriever(flat, embedder).search(q, k=3, mode="dense").hits
        assert [h.paper.id for h in got] == [h.paper.id for h in want]


def test_exact_index_meta_says_flat(tiny_settings, embedder):
    path = build_index(load_corpus(tiny_settings.corpus), embedder, tiny_settings)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["dense"] == {"type": "flat", "factory": "Flat"} and "chunks.npy" not in meta["files"]
