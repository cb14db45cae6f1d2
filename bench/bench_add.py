"""`rag index --add` of 100 papers vs a full rebuild, on the seed corpus, in one run.

The seed corpus (441 papers) is written as JSONL in a temporary directory. First the
full rebuild is timed: every chunk and sentence of the 441 papers embedded and
indexed from scratch. Then the index of the first 341 papers is made (its vectors
taken from that build, so the set-up costs no embedding), and `add_papers` adds the
last 100 papers to it: it embeds only their texts, rebuilds BM25 and FAISS, writes
the new index and rewrites the corpus file. Both end with the same index (checked:
same directory name and the same search results).

Embedding dominates both, so the speed-up is bounded by the share of texts added
(printed): adding 100 papers to 341 can never be 10x faster than re-embedding 441.

    .venv/bin/python bench/bench_add.py [--add 100]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rag.answer.retrieve import Retriever
from rag.index.add import ReusingEmbedder, add_papers, stored_vectors
from rag.index.corpus import load_corpus
from rag.index.embed import get_embedder
from rag.index.store import build_index, chunk_papers, load_index
from rag.settings import Settings


def write_jsonl(path: Path, papers) -> None:
    path.write_text("".join(json.dumps({"id": p.id, "title": p.title, "abstract": p.abstract}) + "\n" for p in papers))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--add", type=int, default=100)
    args = ap.parse_args()
    base = Settings.load()
    papers = load_corpus(base.corpus)
    emb = get_embedder(base.embed_model, base.embed_backend, base.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        full_corpus, corpus, extra = Path(tmp, "full.jsonl"), Path(tmp, "corpus.jsonl"), Path(tmp, "new.jsonl")
        write_jsonl(full_corpus, papers)
        write_jsonl(corpus, papers[:-args.add])
        write_jsonl(extra, papers[-args.add:])
        full_s = base.replace(corpus=str(corpus), index_dir=f"{tmp}/full")
        t = time.perf_counter()
        full = load_index(build_index(load_corpus(full_corpus), emb, full_s))
        rebuild = time.perf_counter() - t

        s = base.replace(corpus=str(corpus), index_dir=f"{tmp}/inc")
        build_index(load_corpus(corpus), ReusingEmbedder(emb, stored_vectors(full.path), full.path), s)  # set-up
        t = time.perf_counter()
        added = add_papers(s, extra, emb)
        add = time.perf_counter() - t
        inc = load_index(added.path)

        same_name = inc.path.name == full.path.name
        queries = [p.title for p in papers[::20]]
        same = all([h.paper.id for h in Retriever(inc, emb).search(q, 4, "hybrid").hits]
                   == [h.paper.id for h in Retriever(full, emb).search(q, 4, "hybrid").hits] for q in queries)
        n_added = len(chunk_papers(papers[-args.add:], base).texts)
        n_all = len(chunk_papers(papers, base).texts)
        print(f"backend {base.embed_backend}; {len(papers)} papers, {n_all} texts in all")
        print(f"full rebuild ({len(papers)} papers): {rebuild:6.1f}s")
        print(f"--add {args.add} papers to {len(papers) - args.add}: {add:6.1f}s (embedded {added.reuse.embedded} "
              f"texts, reused {added.reuse.reused})")
        print(f"speed-up {rebuild / add:.1f}x; bound by embedding alone: {n_all / n_added:.1f}x "
              f"({n_added} of {n_all} texts are new)")
        print(f"same index directory as the full rebuild: {same_name}; same hybrid top-4 on {len(queries)} "
              f"queries: {same}")


if __name__ == "__main__":
    main()
