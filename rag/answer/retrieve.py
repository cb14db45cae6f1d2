"""Dense, BM25 and hybrid search over the chunks of an index.

Hybrid fuses the dense and BM25 rankings with reciprocal-rank fusion (RRF,
Cormack et al. 2009): score = sum over rankings of 1 / (60 + rank). RRF needs no
score calibration between cosine similarities and BM25 scores, which live on
different scales.

Results are diversified by paper: a hit is one paper with its best `per_paper`
chunks (merged where they overlap), so k results cover k papers where the corpus
has them, and a fact split between two windows of one abstract still reaches the
model. Each hit also carries the
best dense cosine similarity of the query to any chunk, which the program uses
to abstain early when nothing in the corpus is close.

`Index` is a loaded index (papers, chunks, FAISS and BM25); `rag.index.store` builds,
saves and loads it.

Left out: re-ranking with a cross-encoder (no packaged offline model) and query
expansion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rag.errors import RagError
from rag.index.chunking import Chunk
from rag.index.corpus import Paper
from rag.index.embed import Embedder
from rag.index.store import Index
from rag.text import tokenize

RRF_K = 60
# Candidates taken from each ranking before fusion and per-paper diversification.
CANDIDATES = 100


@dataclass(frozen=True)
class Hit:
    """One retrieved passage: the best chunks (at most `per_paper`) of one paper, in abstract order."""

    rank: int
    chunks: tuple[Chunk, ...]
    paper: Paper
    score: float

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Character spans of the passage in the abstract; overlapping or touching chunks merge."""
        merged: list[list[int]] = []
        for c in self.chunks:
            if merged and c.start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], c.end)
            else:
                merged.append([c.start, c.end])
        return [(s, e) for s, e in merged]

    @property
    def text(self) -> str:
        return " ... ".join(self.paper.abstract[s:e] for s, e in self.spans)

    def to_json(self) -> dict:
        """The `rag search --json` result shape."""
        return {"rank": self.rank, "paper_id": self.paper.id, "title": self.paper.title,
                "score": round(float(self.score), 6), "text": self.text}


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    best_similarity: float  # highest dense cosine similarity of the query to any chunk
    query_vector: np.ndarray | None = None  # the embedded query, reused to score evidence sentences
    chunk_scores: dict[int, float] = field(default_factory=dict)  # dense cosine of the top chunks (row -> score)


class Retriever:
    """Search one index with one embedder."""

    def __init__(self, index: Index, embedder: Embedder) -> None:
        self.index = index
        self.embedder = embedder

    def search(self, query: str, k: int = 4, mode: str = "hybrid", per_paper: int = 1) -> SearchResult:
        """The best `k` papers for `query`, each with its best `per_paper` chunks, by `mode` (see MODES)."""
        if mode not in MODES:
            raise RagError(f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}")
        if k < 1:
            raise RagError(f"k must be at least 1, got {k}")
        n = len(self.index.chunks)
        if n == 0:
            return SearchResult([], 0.0)
        depth = min(n, max(CANDIDATES, k * per_paper * 4))
        # Dense search runs in every mode: its best cosine is what the program's early abstention reads.
        vec = self.embedder.encode([query])
        dense = self._dense(vec, depth)
        best = float(dense[0][1]) if dense else 0.0
        return SearchResult(MODES[mode](self, query, dense, depth, k, per_paper), best, vec[0], dict(dense))

    def _dense_hits(self, query: str, dense: list[tuple[int, float]], depth: int, k: int, per_paper: int) -> list[Hit]:
        return self._diversify(dense, k, per_paper)

    def _bm25_hits(self, query: str, dense: list[tuple[int, float]], depth: int, k: int, per_paper: int) -> list[Hit]:
        return self._diversify(self._bm25(query, depth), k, per_paper)

    def _hybrid_hits(self, query: str, dense: list[tuple[int, float]], depth: int, k: int, per_paper: int) -> list[Hit]:
        dense_ids = [i for i, _ in dense]
        bm25_ids = [i for i, _ in self._bm25(query, depth)]
        # Papers are ordered by the fused ranking, but a paper's passage starts from the chunk each
        # retriever liked best: fused ranks within one paper are close, and BM25's favourite (the
        # sentence with the exact term) is often the one that holds the answer.
        return self._diversify(_rrf([dense_ids, bm25_ids]), k, per_paper, seeds=(dense_ids, bm25_ids))

    def _dense(self, vec: np.ndarray, depth: int) -> list[tuple[int, float]]:
        scores, ids = self.index.dense.search(np.ascontiguousarray(vec, dtype=np.float32), depth)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _bm25(self, query: str, depth: int) -> list[tuple[int, float]]:
        vocab = self.index.bm25.vocab_dict
        tokens = [t for t in tokenize(query) if t in vocab]
        if not tokens:
            return []
        scores = self.index.bm25.get_scores(tokens)
        return [(int(i), float(scores[i])) for i in top_indices(scores, depth) if scores[i] > 0]

    def _diversify(self, ranked: list[tuple[int, float]], k: int, per_paper: int,
                   seeds: tuple[list[int], ...] = ()) -> list[Hit]:
        """Group ranked chunks by paper (best paper first, scored by its best chunk); keep k papers.

        A paper's chunks are its first chunk in each of `seeds` (other rankings), then its
        chunks in `ranked` order, at most `per_paper` of them.
        """
        best: dict[str, float] = {}
        for idx, score in ranked:
            pid = self.index.chunks[int(idx)].paper_id
            if pid not in best:
                best[pid] = float(score)
                if len(best) == k:
                    break
        picked: dict[str, list[int]] = {pid: [] for pid in best}
        rankings = [_firsts(s, self.index.chunks, picked) for s in seeds] + [[i for i, _ in ranked]]
        for ranking in rankings:
            for idx in ranking:
                chosen = picked.get(self.index.chunks[int(idx)].paper_id)
                if chosen is not None and int(idx) not in chosen and len(chosen) < per_paper:
                    chosen.append(int(idx))
        return [Hit(rank, tuple(sorted((self.index.chunks[i] for i in idxs), key=lambda c: c.start)),
                    self.index.papers[pid], best[pid])
                for rank, (pid, idxs) in enumerate(picked.items(), 1)]


def top_indices(scores: np.ndarray, depth: int) -> np.ndarray:
    """The indices of the `depth` highest scores, highest first, ties in index order: exactly
    `np.argsort(-scores, kind="stable")[:depth]`, without sorting every score (at 1M chunks the full sort
    was 70-100 ms of a BM25 query; this is ~2 ms): a partition finds the depth-th highest value, and only
    the scores at or above it (ties at the boundary included) are sorted."""
    n = len(scores)
    if depth <= 0:
        return np.empty(0, dtype=np.int64)
    if depth >= n:
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, n - depth)[n - depth]
    candidates = np.flatnonzero(scores >= kth)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:depth]


def _firsts(ranking: list[int], chunks: Sequence[Chunk], papers: dict) -> list[int]:
    """The first chunk of each paper in `papers` within `ranking`."""
    seen: set[str] = set()
    out = []
    for idx in ranking:
        pid = chunks[int(idx)].paper_id
        if pid in papers and pid not in seen:
            seen.add(pid)
            out.append(int(idx))
    return out


def _rrf(rankings: list[list[int]]) -> list[tuple[int, float]]:
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, idx in enumerate(ranking, 1):
            fused[int(idx)] = fused.get(int(idx), 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


SearchMode = Callable[[Retriever, str, list[tuple[int, float]], int, int, int], list[Hit]]
# The retrieval modes, by name: the one list the settings, the CLI, the chat and the eval read.
MODES: dict[str, SearchMode] = {
    "hybrid": Retriever._hybrid_hits,
    "dense": Retriever._dense_hits,
    "bm25": Retriever._bm25_hits,
}
