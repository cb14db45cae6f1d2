"""Evidence selection: budget, order, numbering, the sentence that holds the fact, list shape, boilerplate."""

from __future__ import annotations

import pytest

from rag.answer.evidence import TITLE_TOKENS, evidence_tokens, select_evidence, tokens_of
from rag.answer.retrieve import Retriever
from rag.index.store import build_index, load_index
from rag.settings import Settings


@pytest.fixture
def corpus(tmp_path, embedder):
    """Three papers; the answer to "how fast does acidity rise?" is the middle sentence of one of them."""
    import json

    rows = [
        {"id": "bread", "title": "Sourdough Fermentation Dynamics", "abstract":
         "We study wild yeast in sourdough starters over many bakes. Our code is available at https://github.com/x/y. "
         "Acidity rises fastest at 30 degrees Celsius during fermentation. Longer fermentation improves bread flavour. "
         "We also describe the flour types that bakers prefer in several countries and the history of sourdough."},
        {"id": "beer", "title": "Yeast Strains in Brewing", "abstract":
         "Brewing yeast strains differ in how they ferment malt sugars. Fermentation temperature changes ester flavours. "
         "Lager strains prefer cold fermentation."},
        {"id": "astro", "title": "Detecting Exoplanets with Transit Photometry", "abstract":
         "We search telescope light curves for periodic dips caused by transiting exoplanets. "
         "A convolutional classifier separates planets from eclipsing binaries."},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = Settings.load(env={}, corpus=str(path), index_dir=str(tmp_path / "idx"), min_score=0.0)
    from rag.index.corpus import load_corpus

    index = load_index(build_index(load_corpus(path), embedder, settings), settings=settings)
    return index, Retriever(index, embedder)


def test_the_sentence_that_holds_the_fact_is_chosen_within_budget(corpus):
    index, retriever = corpus
    q = "At what temperature does sourdough acidity rise fastest during fermentation?"
    result = retriever.search(q, k=3, mode="hybrid", per_paper=2)
    hits = select_evidence(index, result, q, budget=40)
    assert hits[0].paper.id == "bread" and "30 degrees Celsius" in hits[0].text
    assert evidence_tokens(hits) <= 40
    # numbered 1..m in retrieval order, each hit a paper's chosen sentences in abstract order
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    for h in hits:
        assert [c.start for c in h.chunks] == sorted(c.start for c in h.chunks)
        assert all(h.paper.abstract[c.start:c.end] == c.text for c in h.chunks)


def test_a_larger_budget_adds_sentences_and_joins_non_adjacent_ones(corpus):
    index, retriever = corpus
    q = "At what temperature does sourdough acidity rise fastest during fermentation?"
    result = retriever.search(q, k=3, mode="hybrid", per_paper=2)
    small, large = (select_evidence(index, result, q, budget=b) for b in (40, 200))
    assert sum(len(h.chunks) for h in large) > sum(len(h.chunks) for h in small)
    assert evidence_tokens(large) <= 200
    bread = next(h for h in large if h.paper.id == "bread")
    starts = [c.start for c in bread.chunks]
    if len(bread.spans) > 1:  # sentences that are not next to each other are joined with " ... "
        assert " ... " in bread.text
    assert starts == sorted(starts)


def test_sentences_that_only_point_at_code_are_never_evidence(corpus):
    index, retriever = corpus
    q = "Where is the sourdough code available on github?"
    hits = select_evidence(index, retriever.search(q, k=3, mode="hybrid", per_paper=2), q, budget=500)
    assert all("github" not in h.text for h in hits)


def test_list_questions_get_each_papers_best_sentence_first(corpus):
    index, retriever = corpus
    q = "Which papers study yeast fermentation?"
    result = retriever.search(q, k=3, mode="hybrid", per_paper=2)
    best = {h.paper.id: min(tokens_of(s.text) for s in index.sentences if s.paper_id == h.paper.id) for h in result.hits}
    budget = sum(tokens_of(h.paper.title) + TITLE_TOKENS + 25 for h in result.hits)  # room for one sentence each
    as_list = select_evidence(index, result, q, budget=budget, shape="list")
    specific = select_evidence(index, result, q, budget=budget, shape="specific")
    # one line per paper before any paper gets a second sentence
    assert [h.paper.id for h in as_list] == [h.paper.id for h in result.hits] and all(best.values())
    assert len(specific) <= len(as_list)


def test_no_sentence_store_means_no_evidence(corpus):
    index, retriever = corpus
    result = retriever.search("yeast", k=2, mode="dense", per_paper=1)
    index.sentence_vectors = None
    assert select_evidence(index, result, "yeast", budget=100) == []
