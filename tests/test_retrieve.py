"""Dense, BM25 and hybrid retrieval on the tiny corpus with the keyword embedder."""

from __future__ import annotations

import numpy as np
import pytest

from rag.answer.retrieve import Retriever, _rrf
from rag.errors import RagError
from rag.index.open import open_index


@pytest.fixture
def retriever(tiny_settings, embedder):
    return Retriever(open_index(tiny_settings, lambda: embedder), embedder)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
@pytest.mark.parametrize("query,paper", [
    ("state space models for long sequences", "tiny-ssm"),
    ("sourdough fermentation yeast acidity", "tiny-bread"),
    ("late interaction token embeddings retrieval latency", "tiny-retrieval"),
    ("exoplanets transit light curves", "tiny-astro"),
])
def test_known_queries_rank_their_paper_first(retriever, mode, query, paper):
    hits = retriever.search(query, k=3, mode=mode).hits
    assert hits[0].paper.id == paper
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_k_results_cover_k_distinct_papers(retriever):
    hits = retriever.search("models learn", k=4, mode="hybrid", per_paper=2).hits
    assert len(hits) == 4 and len({h.paper.id for h in hits}) == 4


def test_k_larger_than_corpus_returns_every_paper_once(retriever):
    hits = retriever.search("robots", k=1000, mode="hybrid").hits
    assert len(hits) == 6 and len({h.paper.id for h in hits}) == 6


def test_bm25_with_no_matching_word_returns_nothing(retriever):
    assert retriever.search("zzzz qqqq", k=3, mode="bm25").hits == []


def test_passage_merges_the_best_chunks_of_a_paper_in_abstract_order(retriever):
    hit = retriever.search("sourdough fermentation acidity flavour loaf volume", k=1, per_paper=2).hits[0]
    assert hit.paper.id == "tiny-bread"
    for start, end in hit.spans:
        assert hit.paper.abstract[start:end] in hit.text
    one = retriever.search("sourdough fermentation acidity flavour loaf volume", k=1, per_paper=1).hits[0]
    assert len(one.chunks) == 1 and len(hit.chunks) <= 2


def test_best_similarity_separates_in_and_out_of_corpus(retriever):
    inside = retriever.search("state space models", k=1).best_similarity
    outside = retriever.search("quantum chromodynamics lattice gauge", k=1).best_similarity
    assert inside > 0.3 > outside


@pytest.mark.parametrize("kwargs,match", [({"k": 0}, "k must be at least 1"), ({"mode": "magic"}, "unknown retrieval mode")])
def test_bad_arguments(retriever, kwargs, match):
    with pytest.raises(RagError, match=match):
        retriever.search("x", **{"k": 3, "mode": "hybrid", **kwargs})


def test_rrf_rewards_agreement():
    fused = dict(_rrf([[1, 2, 3], [3, 2, 1]]))
    assert fused[2] == pytest.approx(2 / 62)
    assert dict(_rrf([[1, 2], [2, 9]]))[2] > dict(_rrf([[1, 2], [2, 9]]))[1]


def test_top_indices_is_the_stable_full_sort_without_it():
    from rag.answer.retrieve import top_indices

    rng = np.random.default_rng(3)
    for n, depth in [(1, 1), (10, 3), (10, 10), (10, 50), (5000, 60), (5000, 0)]:
        # few distinct values, so ties straddle the depth boundary
        scores = rng.integers(0, 7, n).astype(np.float32)
        assert top_indices(scores, depth).tolist() == np.argsort(-scores, kind="stable")[:depth].tolist()
