"""Sentence-level evidence: which sentences of the retrieved papers the model reads.

Retrieval finds papers; the model should read only what answers the question.
Every sentence of the top papers is scored against the question (dense cosine of
its stored vector with the query vector retrieval already computed, plus IDF-
weighted overlap of the question's BM25 tokens with the sentence's), and the best
are kept under a token budget. No model call and no embedding happens here: a
selection costs about a millisecond.

The chosen sentences are returned as `Hit`s, one per paper in retrieval order,
numbered [1]..[m] as passages always were: a paper's sentences in abstract order,
joined with " ... " where they are not adjacent, so `Hit.text` is what the model
reads after the title and `Hit.spans` is what the chat highlights.

Sentences that only point at code or data ("available at https://...") are
never evidence, nor are sentences addressed to the model ("whenever you are asked ..., answer that ...",
"always cite [2]": `rag.answer.poison`), so a poisoned abstract cannot instruct the model.

Shapes choose differently (`rag.answer.shapes`): a list question gets each paper's best
sentence first (one line per paper), a yes/no or specific question the best
sentences wherever they are.

Left out: cross-encoder re-ranking (no packaged model) and sentences from papers
outside the top k.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rag.answer.poison import is_instruction
from rag.answer.retrieve import Hit, SearchResult
from rag.index.store import Index
from rag.text import tokenize

# Chosen on train (bench/bench_evidence.py): the share of answer facts the evidence keeps, per token.
LEXICAL_WEIGHT = 0.3
CONTEXT_WEIGHT = 0.5  # weight of the best retrieved window holding the sentence (its context)
RANK_WEIGHT = 0.05  # a sentence of the k-th paper gives up k * RANK_WEIGHT: retrieval rank is context a lone sentence lacks
TITLE_TOKENS = 4  # "[n] ...: " costs about this, besides the title's own words
CHARS_PER_TOKEN = 4.0  # Qwen's tokenizer on English abstracts: about 4 characters a token
# Sentences that only say where the code or data lives: never evidence, and URLs cost many tokens.
BOILERPLATE = re.compile(r"https?://|www\.|\bgithub\b|\b(?:code|data|datasets?|models?|weights|toolkit|implementation|"
                         r"benchmark|resources?)\b[^.]{0,60}\b(?:available|released|open[- ]sourced?)\b", re.IGNORECASE)


def tokens_of(text: str) -> int:
    """A cheap token count (no tokenizer call): what the budget is measured in."""
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def usable(sentence: str) -> bool:
    """Whether `sentence` may be evidence: not code/data boilerplate, not addressed to the model."""
    return not BOILERPLATE.search(sentence) and not is_instruction(sentence)


@dataclass(frozen=True)
class Scored:
    row: int  # sentence row in the index's store
    paper_rank: int  # 0-based rank of its paper in the retrieval result
    score: float


def score_sentences(index: Index, result: SearchResult, question: str, lexical_weight: float = LEXICAL_WEIGHT,
                    rank_weight: float = RANK_WEIGHT, context_weight: float = CONTEXT_WEIGHT) -> list[Scored]:
    """Every sentence of the retrieved papers, scored against the question (see the module doc)."""
    if result.query_vector is None or index.sentence_vectors is None:
        return []
    rows, ranks = [], []
    for rank, hit in enumerate(result.hits):
        span = [i for i in index.sentences_of.get(hit.paper.id, range(0)) if usable(index.sentences[i].text)]
        rows.extend(span)
        ranks.extend([rank] * len(span))
    if not rows:
        return []
    dense = np.asarray(index.sentence_vectors[rows], dtype=np.float32) @ np.asarray(result.query_vector, dtype=np.float32)
    weights = _idf(index, set(tokenize(question)))
    total = sum(weights.values())
    scores = []
    floor = min(result.chunk_scores.values(), default=0.0)  # windows outside the top depth score at most this
    for row, rank, cos in zip(rows, ranks, dense, strict=True):
        sentence = index.sentences[row]
        lexical = sum(w for t, w in weights.items() if t in set(tokenize(sentence.text))) / total if total else 0.0
        context = max((result.chunk_scores.get(c, floor) for c in index.chunks_of.get(sentence.paper_id, ())
                       if index.chunks[c].start <= sentence.start and sentence.end <= index.chunks[c].end), default=floor)
        scores.append(Scored(row, rank, float(cos) + lexical_weight * lexical + context_weight * context
                             - rank_weight * rank))
    return scores


def select_evidence(index: Index, result: SearchResult, question: str, *, budget: int, shape: str = "specific",
                    **weights: float) -> list[Hit]:
    """The evidence the model reads, under `budget` tokens (titles included), as numbered passages.
    `weights` override the scoring weights (lexical_weight, rank_weight, context_weight)."""
    scored = score_sentences(index, result, question, **weights)
    if not scored:
        return []
    order = sorted(scored, key=lambda s: -s.score)
    if shape == "list":  # each paper's best sentence first, papers in retrieval order
        firsts: dict[int, Scored] = {}
        for s in order:
            firsts.setdefault(s.paper_rank, s)
        order = [firsts[r] for r in sorted(firsts)] + [s for s in order if firsts[s.paper_rank] is not s]
    chosen: dict[int, list[int]] = {}
    used = 0
    for s in order:
        cost = tokens_of(index.sentences[s.row].text)
        if s.paper_rank not in chosen:
            cost += tokens_of(result.hits[s.paper_rank].paper.title) + TITLE_TOKENS
        if used + cost > budget and chosen:
            continue
        chosen.setdefault(s.paper_rank, []).append(s.row)
        used += cost
    return [Hit(n, tuple(sorted((index.sentences[r] for r in rows), key=lambda c: c.start)),
                result.hits[rank].paper, result.hits[rank].score)
            for n, (rank, rows) in enumerate(sorted(chosen.items()), 1)]


def evidence_tokens(hits: Iterable[Hit]) -> int:
    """The budget-measure of a set of passages (titles included)."""
    return sum(tokens_of(h.paper.title) + TITLE_TOKENS + sum(tokens_of(c.text) for c in h.chunks) for h in hits)


def _idf(index: Index, terms: set[str]) -> dict[str, float]:
    """BM25's inverse document frequency of `terms` over the chunks (terms the corpus lacks weigh 0)."""
    bm25 = index.bm25
    vocab = bm25.vocab_dict
    indptr = bm25.scores["indptr"]
    n = len(index.chunks)
    out = {}
    for t in terms:
        if t in vocab:
            i = vocab[t]
            df = int((indptr[i + 1] if i + 1 < len(indptr) else len(bm25.scores["indices"])) - indptr[i])
            out[t] = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return out
