"""Extractive answers (rag/answer/extractive.py): RAG_ANSWER=extractive, and the fallback when the LM fails."""

from __future__ import annotations

import pytest
from dspy.utils.dummies import DummyLM

from rag.answer.extractive import YESNO_LEAD
from rag.answer.program import ABSTAIN_TEXT
from rag.errors import LMError
from rag.pipeline import Pipeline


class FailingLM(DummyLM):
    """An LM whose every call fails, as a backend that is down does."""

    def __init__(self) -> None:
        super().__init__([])
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        raise ConnectionError("connection refused by the fake server")


@pytest.fixture
def extractive(tiny_settings, embedder) -> Pipeline:
    return Pipeline.open(tiny_settings.replace(answer="extractive"), embedder=embedder)


def test_extractive_mode_loads_no_lm_and_quotes_the_best_evidence_cited(extractive):
    assert extractive.lm is None and extractive.program is None
    out = extractive.ask("At what temperature does sourdough acidity rise fastest?")
    assert out["abstained"] is False and out["shape"] == "specific" and out["verdict"] is None
    assert out["answer"].startswith("Acidity rises fastest at 30 degrees Celsius. [1]")
    assert out["citations"][0] == {"n": 1, "paper_id": "tiny-bread", "title": "Sourdough Fermentation Dynamics"}
    assert all(c["supported"] for c in out["claims"])  # a quote contains its own names and numbers
    prov = out["provenance"]
    assert prov["lm"] == "extractive" and prov["program"] == "extractive" and prov["fallback"] is None
    assert prov["prompt_tokens"] == 0 and prov["completion_tokens"] == 0
    # every [n] of the answer is a passage, and the quoted sentence is in that passage
    for c in out["citations"]:
        assert f"[{c['n']}]" in out["answer"]
    assert "Acidity rises fastest at 30 degrees Celsius." in out["passages"][0]["text"]


def test_an_extractive_yes_no_answer_says_what_the_evidence_states_and_invents_no_verdict(extractive):
    out = extractive.ask("Does sourdough acidity rise fastest at 50 degrees Celsius?")
    assert out["shape"] == "yesno" and out["verdict"] is None and not out["abstained"]
    assert out["answer"].startswith(f"{YESNO_LEAD} ") and "30 degrees Celsius" in out["answer"]


def test_an_extractive_list_answer_has_the_list_predictors_lines(extractive):
    out = extractive.ask("Which papers study state space models?")
    assert out["shape"] == "list" and not out["abstained"]
    lines = out["answer"].split("\n")
    assert lines[0].startswith("- Structured State Space Models for Long Sequences: ") and lines[0].endswith("[1]")
    passages = {p["n"]: p for p in out["passages"]}
    for line, c in zip(lines, out["citations"], strict=True):
        assert line == f"- {passages[c['n']]['title']}: {passages[c['n']]['text']} [{c['n']}]"


def test_extractive_abstains_below_min_score_as_the_program_does(tiny_settings, embedder):
    p = Pipeline.open(tiny_settings.replace(answer="extractive", min_score=0.5), embedder=embedder)
    out = p.ask("quantum chromodynamics lattice gauge theory")
    assert out["abstained"] is True and out["answer"] == ABSTAIN_TEXT and out["citations"] == []
    assert out["provenance"]["abstain_reason"] == "no_close_passage"


def test_extractive_stream_yields_passages_then_the_answer(extractive):
    events = list(extractive.ask_stream("At what temperature does sourdough acidity rise fastest?"))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done" and "passages" in kinds and "token" not in kinds
    assert events[-1]["result"]["provenance"]["lm"] == "extractive"


def test_a_failing_lm_falls_back_to_the_extractive_answer_with_the_error(tiny_settings, embedder):
    lm = FailingLM()
    p = Pipeline.open(tiny_settings.replace(fallback="extractive"), embedder=embedder, lm=lm)
    out = p.ask("At what temperature does sourdough acidity rise fastest?")
    assert lm.calls >= 1 and out["abstained"] is False
    assert out["answer"].startswith("Acidity rises fastest at 30 degrees Celsius. [1]")
    prov = out["provenance"]
    assert prov["fallback"] == "extractive" and prov["lm"] == "extractive"
    assert "connection refused by the fake server" in prov["lm_error"] and prov["program"] == "baseline"


def test_a_failing_lm_in_the_stream_falls_back_too(tiny_settings, embedder):
    p = Pipeline.open(tiny_settings.replace(fallback="extractive"), embedder=embedder, lm=FailingLM())
    done = list(p.ask_stream("At what temperature does sourdough acidity rise fastest?"))[-1]
    assert done["type"] == "done" and done["result"]["provenance"]["fallback"] == "extractive"
    assert "30 degrees Celsius" in done["result"]["answer"]


def test_by_default_a_failing_lm_is_an_lm_error(tiny_settings, embedder):
    assert tiny_settings.fallback == "none"
    p = Pipeline.open(tiny_settings, embedder=embedder, lm=FailingLM())
    with pytest.raises(LMError, match="connection refused"):
        p.ask("At what temperature does sourdough acidity rise fastest?")
    with pytest.raises(LMError, match="connection refused"):
        list(p.ask_stream("At what temperature does sourdough acidity rise fastest?"))


def test_a_healthy_lm_answer_reports_no_fallback(tiny_settings, embedder):
    lm = DummyLM([{"answer": "Acidity rises fastest at 30 degrees Celsius [1].", "sources": "[1]"}])
    out = Pipeline.open(tiny_settings, embedder=embedder, lm=lm).ask("At what temperature does sourdough acidity rise fastest?")
    assert out["provenance"]["fallback"] is None and out["provenance"]["lm_error"] is None
    assert out["provenance"]["lm"] != "extractive"
