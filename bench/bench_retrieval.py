"""Retrieval latency and a self-retrieval sanity check, per mode, on the real index.

For every paper, the query is the second sentence of its abstract (the first often
restates the title); we report how often the paper comes back at rank 1 and in the
top 3, and the per-query latency. Figures and ratios are measured in this one run.

    .venv/bin/python bench/bench_retrieval.py [--n 200]
"""

from __future__ import annotations

import argparse
import time

from rag.answer.retrieve import MODES
from rag.evaluation.metrics import percentile
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.text import split_sentences


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="papers to use as queries")
    args = ap.parse_args()

    t0 = time.perf_counter()
    pipe = Pipeline.open(Settings.load(), need_lm=False)
    print(f"open (load corpus, index, embedder): {time.perf_counter() - t0:.2f}s; index {pipe.index.name}, "
          f"{pipe.index.meta['n_chunks']} chunks, built in {pipe.index.meta['build_seconds']}s")
    queries = []
    for p in list(pipe.index.papers.values())[: args.n]:
        spans = split_sentences(p.abstract)
        s, e = spans[1] if len(spans) > 1 else spans[0]
        queries.append((p.id, p.abstract[s:e]))
    pipe.search("warm up", k=4)
    results = {}
    for mode in MODES:
        lat, top1, top3 = [], 0, 0
        for pid, q in queries:
            t = time.perf_counter()
            hits = pipe.retriever.search(q, k=3, mode=mode).hits
            lat.append((time.perf_counter() - t) * 1000)
            ids = [h.paper.id for h in hits]
            top1 += bool(ids) and ids[0] == pid
            top3 += pid in ids
        results[mode] = percentile(lat, 50)
        print(f"{mode:>6}: recall@1 {top1 / len(queries):.3f}  recall@3 {top3 / len(queries):.3f}  "
              f"latency p50 {percentile(lat, 50):.1f} ms  p95 {percentile(lat, 95):.1f} ms")
    print(f"hybrid/dense latency ratio: {results['hybrid'] / results['dense']:.2f}")


if __name__ == "__main__":
    main()
