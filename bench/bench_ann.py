"""Exact vs approximate (IVF) dense search on synthetic large corpora, in one run.

The vectors are SYNTHETIC, made from the real ones: every row is a real MiniLM vector
of the seed index (a chunk or a sentence) plus half of another real vector plus
Gaussian noise (norm ~0.5), renormalised. So they live where real embeddings live
(same directions, same cluster structure) but there are as many as we ask for. The
queries are made the same way from other draws and are not in the index. Recall@10
is measured against exact search over the same vectors.

For each size: exact search (IndexFlatIP) build time and query latency; the IVF index
that `rag index` would build (rag/index/vectors.py, the settings' `ivf_lists` and
`ivf_codec`) with its build (train + add) time, on-disk size, open time memory-mapped
(and the sha256 that `load_index` checks on open), resident memory, and query
p50/p95 and recall@10 at several `nprobe`. Exact search is timed with
`search_threads` threads and with every core. Queries are single (one at a time, as in
`rag ask`), for `depth` = 100 results (what retrieval asks FAISS for).

    .venv/bin/python bench/bench_ann.py [--sizes 100000 1000000] [--queries 300] [--index indexes/idx-...]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from rag.answer.retrieve import CANDIDATES
from rag.evaluation.metrics import percentile
from rag.index.store import load_index
from rag.index.vectors import build_dense, open_dense, plan, set_nprobe, write_dense
from rag.pipeline import Pipeline
from rag.settings import Settings


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def synthetic(base: np.ndarray, n: int, seed: int, block: int = 100_000) -> np.ndarray:
    """n rows: normalise(base[a] + 0.5 base[b] + noise of norm ~0.5)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    scale = 0.5 / np.sqrt(base.shape[1])
    for s in range(0, n, block):
        m = min(block, n - s)
        a, b = rng.integers(0, len(base), m), rng.integers(0, len(base), m)
        x = base[a] + 0.5 * base[b] + rng.standard_normal((m, base.shape[1]), dtype=np.float32) * scale
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(index, queries: np.ndarray, depth: int) -> tuple[list[float], np.ndarray]:
    index.search(queries[:5], depth)  # warm up (page in what the queries touch first)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None, :], depth)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    return times, np.array(found)


def recall10(exact: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean([len(set(a[:10]) & set(e[:10])) / 10 for a, e in zip(approx, exact, strict=True)]))


def sha256_s(path: Path) -> float:
    t = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--codecs", nargs="+", default=["sq8"], help="also try flat / pq")
    ap.add_argument("--index", help="an existing index directory to take the real vectors from (default: the seed index)")
    args = ap.parse_args()

    settings = Settings.load()
    index = load_index(args.index) if args.index else Pipeline.open(settings, need_lm=False).index
    base = np.concatenate([index.dense.reconstruct_n(0, len(index.chunks)), np.asarray(index.sentence_vectors)])
    print(f"real vectors: {len(base)} ({len(index.chunks)} chunks + {len(index.sentences)} sentences) "
          f"from {index.name}; search threads {settings.search_threads}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    depth = CANDIDATES
    for n in args.sizes:
        print(f"\n=== {n:,} synthetic vectors (384-d), {args.queries} single queries, depth {depth} ===")
        t = time.perf_counter()
        x = synthetic(base, n, seed=1)
        queries = synthetic(base, args.queries, seed=2)
        print(f"made in {time.perf_counter() - t:.1f}s; raw float32 {x.nbytes / 1e6:,.0f} MB")

        r0 = rss_mb()
        t = time.perf_counter()
        flat = build_dense(x, {"type": "flat"})
        flat_build = time.perf_counter() - t
        _, exact = flat.search(queries, 10)  # ground truth (batched)
        print(f"exact    build {flat_build:6.1f}s  RAM +{rss_mb() - r0:,.0f} MB")
        for threads in (settings.search_threads, 0):
            faiss.omp_set_num_threads(threads or os.cpu_count())
            lat, _ = latencies(flat, queries[:100], depth)
            print(f"  {threads or os.cpu_count()} thread(s)  query p50 {percentile(lat, 50):6.2f} ms  "
                  f"p95 {percentile(lat, 95):6.2f} ms  recall@10 1.000")
        del flat
        gc.collect()

        for codec in args.codecs:
            spec = plan(n, x.shape[1], settings.replace(ivf_threshold=1, ivf_codec=codec))
            t = time.perf_counter()
            ivf = build_dense(x, spec)
            build = time.perf_counter() - t
            with tempfile.TemporaryDirectory(dir=settings.index_dir) as d:
                path = Path(d) / "dense.faiss"
                write_dense(ivf, path)
                del ivf
                gc.collect()
                size = path.stat().st_size
                r0 = rss_mb()
                t = time.perf_counter()
                mapped = open_dense(path, settings.nprobe, threads=settings.search_threads)
                mapped.search(queries[:1], depth)
                opened = time.perf_counter() - t
                print(f"IVF{spec['lists']},{codec}  build {build:6.1f}s  disk {size / 1e6:,.0f} MB  open (mmap) + first "
                      f"query {opened:.2f}s  sha256 of the file {sha256_s(path):.2f}s")
                for nprobe in args.nprobe:
                    set_nprobe(mapped, nprobe)
                    lat, found = latencies(mapped, queries, depth)
                    print(f"  nprobe {nprobe:3d}  query p50 {percentile(lat, 50):6.2f} ms  p95 {percentile(lat, 95):6.2f} ms"
                          f"  recall@10 {recall10(exact, found):.3f}")
                print(f"  resident after the queries: +{rss_mb() - r0:,.0f} MB (memory-mapped pages touched)")
                del mapped
                gc.collect()
        del x
        gc.collect()


if __name__ == "__main__":
    main()
