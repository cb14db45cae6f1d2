"""The dense (FAISS) index of the chunk vectors: choose, train, build, write and open it.

The one module that decides which FAISS index a corpus gets:

- up to `ivf_threshold` chunks, an exact inner-product index (`IndexFlatIP`): exact
  search over a few hundred thousand 384-d vectors takes milliseconds, and
  approximation would only add error;
- above it, an inverted-file index (IVF, `ivf_lists` k-means cells, 4 x sqrt(n) by
  default) whose vectors are stored as 8-bit scalars (`sq8`, 4x smaller than float32,
  the default), float32 (`flat`) or product-quantised codes (`pq`, 32x smaller, for
  corpora whose vectors do not fit in memory even at 8 bits). A query searches
  `nprobe` cells, a query-time setting.

Training is deterministic (a fixed-seed sample of the vectors, and FAISS's fixed
k-means seed), so two builds over the same vectors give the same index: an index
updated in place (rag/index/add.py) answers like a full rebuild.

Threads: training and adding use every core; searching uses `search_threads`
(default 1). A query is one vector, and on a machine whose cores are busy (2 cores
shared by several jobs, here) OpenMP's threads wait on each other: one thread
measured 4x faster than two for exact search over 100k vectors (bench/bench_ann.py).
FAISS's thread count is per process, so opening an index sets it.

Indexes are opened memory-mapped (`IO_FLAG_MMAP_IFC`), so a multi-gigabyte index opens in the time it takes to read its
header and pages in what queries touch.

Left out: HNSW (its graph must be held in memory and is slow to build on few
cores), GPU indexes, and sharding one index over machines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import IndexStoreError

log = logging.getLogger(__name__)

# k-means trains on at most this many vectors per cell (FAISS warns below 39; above ~64 the
# centroids barely move and training time grows linearly).
TRAIN_PER_LIST = 64
TRAIN_SEED = 0
ADD_BLOCK = 100_000  # rows copied from a (memory-mapped) vector array at a time
PQ_BITS = 8
DEFAULT_NPROBE = 32


def plan(n: int, dim: int, settings: Any) -> dict:
    """Which dense index `n` vectors get under `settings`: {"type": "flat"} or
    {"type": "ivf", "lists": L, "codec": "sq8" | "flat" | "pq"}. Recorded in meta.json as "dense"."""
    if n <= settings.ivf_threshold:
        return {"type": "flat"}
    lists = settings.ivf_lists or int(4 * math.sqrt(n))
    # At least 39 training vectors a cell, or k-means has nothing to fit.
    lists = max(1, min(lists, n // 39))
    codec = settings.ivf_codec
    if codec == "pq" and dim % _pq_subquantizers(dim):
        raise IndexStoreError(f"cannot product-quantise {dim}-d vectors; set RAG_IVF_CODEC=sq8")
    return {"type": "ivf", "lists": lists, "codec": codec}


def _pq_subquantizers(dim: int) -> int:
    return dim // 8  # 8 dimensions a byte: 48 bytes a 384-d vector


def _factory(spec: dict, dim: int) -> str:
    if spec["type"] == "flat":
        return "Flat"
    codes = {"sq8": "SQ8", "flat": "Flat", "pq": f"PQ{_pq_subquantizers(dim)}x{PQ_BITS}"}[spec["codec"]]
    return f"IVF{spec['lists']},{codes}"


def build_dense(vectors: np.ndarray, spec: dict) -> Any:
    """The FAISS index of `vectors` (normalised float32 rows; a memory-mapped array is read in
    blocks), as `spec` (from `plan`) says: trained if it needs training, every row added in order."""
    import faiss

    n, dim = vectors.shape
    index = faiss.index_factory(dim, _factory(spec, dim), faiss.METRIC_INNER_PRODUCT)
    with _threads(os.cpu_count() or 1):
        if not index.is_trained:
            sample = _training_sample(vectors, spec["lists"] * TRAIN_PER_LIST)
            log.info("training %s on %d of %d vectors", _factory(spec, dim), len(sample), n)
            index.train(sample)
        for start in range(0, n, ADD_BLOCK):
            index.add(np.ascontiguousarray(vectors[start:start + ADD_BLOCK], dtype=np.float32))
    return index


@contextlib.contextmanager
def _threads(n: int):
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    n = vectors.shape[0]
    if n <= size:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def write_dense(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def open_dense(path: Path, nprobe: int = DEFAULT_NPROBE, *, mmap: bool = True, threads: int | None = None) -> Any:
    """The index at `path`, memory-mapped unless `mmap` is false; an IVF index searches `nprobe` cells.
    `threads` (0: every core), if given, becomes FAISS's thread count for this process's searches."""
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    # IO_FLAG_MMAP_IFC maps both the flat codes and IVF lists (IO_FLAG_MMAP alone reads a flat index whole).
    flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0
    index = faiss.read_index(str(path), flags)
    set_nprobe(index, nprobe)
    return index


def set_nprobe(index: Any, nprobe: int) -> None:
    """Cells an IVF index searches per query; nothing for an exact index."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return
    ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))


def describe(index: Any, spec: dict) -> dict:
    """What meta.json records about the dense index: the plan, plus the FAISS factory string."""
    return {**spec, "factory": _factory(spec, index.d)}
