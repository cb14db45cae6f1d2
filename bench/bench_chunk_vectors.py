"""Do chunk windows need their own vectors? Retrieval from vectors derived from the sentence store, on dev and train.

A build embeds every chunk window (title + a few sentences) and every sentence: on the seed corpus
186k + 125k tokens, so the chunks are 60% of the embedding time. The sentence vectors are already in
the index, so a chunk's vector could be derived instead of embedded. This compares, on the current
index and the same queries, retrieval (`rag.evaluation.harness.retrieval_table`: recall@5, MRR@10, dense
and hybrid) with:

- the chunk vectors as built (today);
- mean: the normalised sum of the chunk's sentence vectors and its paper's title vector (one FAISS
  vector per chunk, as today: only the build changes; titles are 441 short texts);
- max: each chunk scored by its best sentence (or its title), by exact search;
- max+mean: the average of the two scores.

Nothing is re-embedded but the titles and the queries, so it runs in under a minute. It measures quality
only; the build time saved is the token share above (the embedder's time is linear in tokens). Left out:
the program's `min_score` early abstention, which reads the best chunk cosine and would need refitting
for derived vectors (their cosines sit on another scale).

    .venv/bin/python bench/bench_chunk_vectors.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Scored:
    """A stand-in for the FAISS index: exact scores of every chunk for one query (enough for 2k chunks)."""

    def __init__(self, score) -> None:
        self.score = score

    def search(self, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.score(q[0])
        top = np.argsort(-scores, kind="stable")[:depth]
        return scores[top][None], top[None]


def main() -> None:
    import faiss

    from rag.answer.retrieve import Retriever
    from rag.evaluation.harness import retrieval_table
    from rag.evaluation.seed import load_set
    from rag.index.embed import get_embedder
    from rag.index.store import load_index, locate_index
    from rag.settings import Settings

    s = Settings.load()
    _, path = locate_index(s)
    index = load_index(path, settings=s)
    embedder = get_embedder(s.embed_model, s.embed_backend, s.cache_dir)
    sv = np.asarray(index.sentence_vectors)
    ids = list(index.papers.keys())
    title = dict(zip(ids, embedder.encode([index.papers[p].title for p in ids]), strict=True))
    members, chunk_title = [], []
    for i in range(len(index.chunks)):
        c = index.chunks[i]
        rows = [r for r in index.sentences_of[c.paper_id]
                if index.sentences[r].start >= c.start and index.sentences[r].end <= c.end]
        members.append(rows or [r for r in index.sentences_of[c.paper_id]
                                if index.sentences[r].start < c.end and index.sentences[r].end > c.start])
        chunk_title.append(title[c.paper_id])
    chunk_title = np.stack(chunk_title)
    mean = np.stack([sv[m].sum(0) + t for m, t in zip(members, chunk_title, strict=True)]).astype(np.float32)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(mean.shape[1])
    flat.add(mean)

    def best_sentence(q: np.ndarray) -> np.ndarray:
        ss = sv @ q
        return np.maximum(np.array([ss[m].max() for m in members], np.float32), chunk_title @ q)

    variants = {"chunk vectors (today)": index.dense, "mean (sentences + title)": flat,
                "max (best sentence or title)": _Scored(best_sentence),
                "max+mean": _Scored(lambda q: 0.5 * best_sentence(q) + 0.5 * (mean @ q))}
    sets = {name: load_set(ROOT / "eval" / f"{name}.jsonl") for name in ("dev", "train")}
    print(f"{'chunk vectors':<30} {'set':<6} {'dense R@5':>9} {'MRR@10':>7} {'hybrid R@5':>10} {'MRR@10':>7}")
    for name, dense in variants.items():
        index.dense = dense
        retriever = Retriever(index, embedder)

        def search(q: str, k: int, mode: str, retriever=retriever) -> list[str]:
            return [h.paper.id for h in retriever.search(q, k, mode).hits]

        for set_name, rows in sets.items():
            t = retrieval_table(search, rows)
            print(f"{name:<30} {set_name:<6} {t['dense']['recall@5']:9.3f} {t['dense']['mrr@10']:7.3f} "
                  f"{t['hybrid']['recall@5']:10.3f} {t['hybrid']['mrr@10']:7.3f}   (n={t['dense']['n']})")


if __name__ == "__main__":
    main()
