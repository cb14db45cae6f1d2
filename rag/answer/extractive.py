"""Extractive answers: the best evidence sentences, quoted and cited, with no language model at all.

`extractive_answer(question, result, index, budget=..., min_score=...)` answers in the question's shape
(rag/answer/shapes.py) from the same evidence the LM program reads (rag/answer/evidence.py), in about a
millisecond:

- `specific`: the best evidence sentence, and the second best when it scores within `SECOND_WITHIN` of it,
  each quoted as the abstract writes it and cited [n];
- `yesno`: the same sentences after "The evidence states:"; no verdict is invented (`verdict` is None);
- `list`: the lines the list predictor renders ("- title: evidence [n]"), for every evidence paper whose best
  sentence scores within `LIST_WITHIN` of the best one;
- it abstains exactly where the LM program abstains before calling the model: no retrieved passage, or the
  best dense similarity below `min_score` without a coined name of the question in the passages.

The prediction has the fields of `CitedRAG`'s (`hits`, `answer`, `citations`, `shape`, `claims`, ...), so
`Pipeline` turns it into the same `rag ask --json` object. It is `RAG_ANSWER=extractive`, the chat's first
visible text while the model writes, and the answer when the LM fails (`RAG_FALLBACK=extractive`).

Left out: any paraphrase or synthesis (a quote cannot misstate its paper, but it cannot combine two either)
and declining an answerable-looking question whose evidence is off the point (only the LM judges that).
"""

from __future__ import annotations

import dspy

from rag.answer.claims import check_claims, names_found
from rag.answer.evidence import Scored, score_sentences, select_evidence
from rag.answer.program import ABSTAIN_TEXT, NO_CLOSE_PASSAGE
from rag.answer.retrieve import Hit, SearchResult
from rag.answer.shapes import question_shape
from rag.index.store import Index

# The second-best sentence is quoted too when its score is at most this far below the best one's.
SECOND_WITHIN = 0.1
# A list answer names every evidence paper whose best sentence is at most this far below the best paper's.
LIST_WITHIN = 0.25
YESNO_LEAD = "The evidence states:"


def extractive_answer(question: str, result: SearchResult, index: Index, *, budget: int,
                      min_score: float) -> dspy.Prediction:
    """The extractive answer to `question` from retrieval `result` (see the module doc)."""
    shape = question_shape(question)
    retrieved = result.hits
    if not retrieved or (result.best_similarity < min_score
                         and not names_found(question, [f"{h.paper.title} {h.text}" for h in retrieved])):
        return _prediction(ABSTAIN_TEXT, [], retrieved, retrieved, shape, abstained=True, reason=NO_CLOSE_PASSAGE)
    evidence = select_evidence(index, result, question, budget=budget, shape=shape) or retrieved
    ranked = _ranked_sentences(index, result, question, evidence)
    text, numbers = SHAPES[shape](ranked, evidence)
    if not numbers:
        return _prediction(ABSTAIN_TEXT, [], evidence, retrieved, shape, abstained=True, reason=NO_CLOSE_PASSAGE)
    return _prediction(text, numbers, evidence, retrieved, shape)


# (passage number, sentence text, score), best first.
Ranked = list[tuple[int, str, float]]


def _ranked_sentences(index: Index, result: SearchResult, question: str, evidence: list[Hit]) -> Ranked:
    """The evidence sentences, best first, each with the number of the passage that holds it. Without
    sentence vectors (an index that has none) the passages themselves, in retrieval order."""
    where = {(c.paper_id, c.start): n for n, h in enumerate(evidence, 1) for c in h.chunks}
    scored: list[Scored] = score_sentences(index, result, question)
    ranked = []
    for s in sorted(scored, key=lambda s: -s.score):
        sentence = index.sentences[s.row]
        n = where.get((sentence.paper_id, sentence.start))
        if n is not None:
            ranked.append((n, sentence.text.strip(), s.score))
    if not ranked:
        ranked = [(n, h.text.strip(), -float(n)) for n, h in enumerate(evidence, 1)]
    return ranked


def _quote(ranked: Ranked) -> list[tuple[int, str]]:
    best = ranked[:1]
    if len(ranked) > 1 and ranked[1][2] >= ranked[0][2] - SECOND_WITHIN:
        best = ranked[:2]
    return [(n, text) for n, text, _ in best]


def _specific(ranked: Ranked, evidence: list[Hit]) -> tuple[str, list[int]]:
    quoted = _quote(ranked)
    return " ".join(f"{_closed(text)} [{n}]" for n, text in quoted), list(dict.fromkeys(n for n, _ in quoted))


def _yesno(ranked: Ranked, evidence: list[Hit]) -> tuple[str, list[int]]:
    text, numbers = _specific(ranked, evidence)
    return (f"{YESNO_LEAD} {text}" if numbers else ""), numbers


def _list(ranked: Ranked, evidence: list[Hit]) -> tuple[str, list[int]]:
    best: dict[int, float] = {}
    for n, _, score in ranked:
        best.setdefault(n, score)
    if not best:
        return "", []
    top = max(best.values())
    numbers = sorted(n for n, score in best.items() if score >= top - LIST_WITHIN)
    lines = "\n".join(f"- {evidence[n - 1].paper.title}: {evidence[n - 1].text} [{n}]" for n in numbers)
    return lines, numbers


# How each question shape is answered (rag.answer.shapes.SHAPES).
SHAPES = {"specific": _specific, "yesno": _yesno, "list": _list}


def _closed(text: str) -> str:
    """A quoted sentence ends with its own stop, so the marker after it reads as a citation."""
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _prediction(text: str, numbers: list[int], evidence: list[Hit], retrieved: list[Hit], shape: str, *,
                abstained: bool = False, reason: str | None = None) -> dspy.Prediction:
    claims = [] if abstained else check_claims(text, {n: f"{h.paper.title}: {h.text}" for n, h in enumerate(evidence, 1)})
    return dspy.Prediction(answer=text, citations=numbers, abstained=abstained, hits=evidence, retrieved=retrieved,
                           shape=shape, verdict=None, claims=claims, p_answerable=None, abstain_reason=reason,
                           lm_called=False)
