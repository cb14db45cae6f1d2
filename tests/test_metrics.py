"""Metrics on hand-made predictions with known scores."""

from __future__ import annotations

import pytest

from rag.evaluation.metrics import fact_found, normalize, retrieval_scores, score_row, summarize, token_f1
from rag.pipeline import Answer


def pred(answer="", cited=(), passages=(), abstained=False):
    return Answer("q", answer, abstained, citations=[{"paper_id": p} for p in cited],
                  passages=[{"paper_id": p} for p in passages]).to_json()


def test_normalize_and_facts():
    assert normalize("LoReFT is 10x-50x more efficient!") == "loreft is 10x 50x more efficient"
    assert fact_found("10x", "It is 10x-50x better") and fact_found("GPT-4", "beats gpt 4 easily")
    assert not fact_found("verification", "only generation")
    assert fact_found(r"/10\s*x?\s*(-|to)\s*50/", "10 to 50 times")


def test_token_f1():
    assert token_f1("generation and verification", "generation and verification") == 1.0
    assert token_f1("", "x") == 0.0
    assert token_f1("a b", "b c") == pytest.approx(0.5)


def test_score_answerable():
    label = {"type": "single", "facts": ["generation", "verification"], "gold_paper_ids": ["p1"], "answer": "x"}
    s = score_row(label, pred("It has generation [1].", cited=["p1"], passages=["p1", "p2"]))
    assert s["fact_recall"] == 0.5 and s["citation_precision"] == 1.0 and s["citation_recall"] == 1.0
    assert s["citation_validity"] == 1.0 and s["retrieval_recall"] == 1.0
    assert s["false_abstention"] == 0.0 and s["correct_abstention"] is None


def test_score_edge_cases():
    label = {"type": "single", "facts": ["x1"], "gold_paper_ids": ["p1"]}
    none = score_row(label, pred("The papers here do not answer this question.", abstained=True))
    assert none["false_abstention"] == 1.0 and none["fact_recall"] == 0.0 and none["citation_recall"] == 0.0
    assert none["citation_precision"] is None and none["citation_validity"] is None  # nothing cited
    empty = score_row(label, pred(""))
    assert empty["fact_recall"] == 0.0
    invalid = score_row(label, pred("x1 [1]", cited=["p9"], passages=["p1"]))
    assert invalid["citation_validity"] == 0.0 and invalid["citation_precision"] == 0.0
    unans = {"type": "unanswerable", "facts": [], "gold_paper_ids": []}
    assert score_row(unans, pred(abstained=True))["correct_abstention"] == 1.0
    assert score_row(unans, pred("made up [1]", cited=["p1"], passages=["p1"]))["correct_abstention"] == 0.0


def test_summary_skips_non_applicable():
    s = summarize([{"a": 1.0, "b": None}, {"a": 0.0, "b": 0.5}])
    assert s == {"n": 2, "a": 0.5, "a_n": 2, "b": 0.5, "b_n": 1}


def test_retrieval_scores():
    s = retrieval_scores(["x", "g1", "y", "g2"], ["g1", "g2"])
    assert s["recall@1"] == 0.0 and s["recall@5"] == 1.0 and s["mrr@10"] == 0.5
    assert 0 < s["ndcg@10"] < 1
    assert retrieval_scores(["g"], ["g"])["ndcg@10"] == 1.0
    assert set(retrieval_scores(["a", "b"], ["g"]).values()) == {0.0}
