"""The on-disk index: the `Index` type, and building, writing, loading and validating it.

An index lives in `indexes/<name>/`, where `<name>` hashes the corpus content and
the settings that shape the index (embedding model, chunking). A change of
corpus or settings therefore points at a different directory and a stale index
is never reused. The directory holds:

    meta.json      format, corpus hash, shaping settings, counts, sha256 of every other file
    papers.jsonl   the papers, in corpus order
    paper_ids.npy  their ids (fixed-width UTF-8, row i is paper i), and paper_order.npy the permutation
                   that sorts them: an id is found by binary search, never by reading the papers
    chunks.jsonl   the chunks, row i is vector i and BM25 document i
    chunk_runs.npy per paper in paper order, the first row of its chunks and their count
    *.offsets.npy  beside each .jsonl file, the n+1 int64 byte offsets of its lines: rows are read
                   by offset from the memory-mapped file when asked for (rag/index/rows.py)
    dense.faiss    inner-product index over normalised vectors (cosine): exact, or IVF above
                   `ivf_threshold` chunks (rag/index/vectors.py chooses; meta.json "dense" says which)
    chunks.npy     the chunk vectors as float32, only beside an approximate index (whose codes
                   cannot give them back), so updates and re-indexing never re-embed
    bm25/          bm25s sparse index over title + chunk tokens
    sentences.jsonl  every abstract sentence (paper id, offsets, text), grouped by paper
    sentences.npy    their vectors (row i is sentence i), for choosing evidence at query time
    sentence_runs.npy  per paper, the first row of its sentences and their count

Loading reads no row: papers, chunks and sentences are lazy read-only sequences and maps over the
memory-mapped files (rag/index/rows.py says why JSONL with offsets), BM25 and the vectors are
memory-mapped, and where a chunk or sentence belongs is checked on the runs arrays and counts
(a handful of rows are read to see that they agree), not by visiting every row.

Writes are atomic: everything is built in a temporary sibling directory and
renamed into place, so an interrupted build never leaves a half index that
loads, and the previous index stays usable until the new one is complete.
Any failure of a build (the embedder, a full disk) is an IndexStoreError and
leaves the previous index as it was. What a killed build leaves (`.tmp-<pid>-*`,
`.old-<pid>-*`) carries the file LEFTOVER_MARK and is removed by the next build once
that pid is gone; nothing else in RAG_INDEX_DIR is removed, but by `rag index --prune`
(rag/index/prune.py: superseded indexes of this corpus that no process has open; `load_index`
holds a shared lock on the sidecar `.<name>.lock` for as long as the Index lives).

meta.json keeps, for every file under the directory, its sha256, its size and the hash of
sampled blocks (the whole file when under 1 MiB), and a hash over those lists. Loading checks
every file's size and sampled hash (a truncated, extended or swapped file, and any change of a
small one, is caught while reading about 1 MiB a file), that no file is missing or extra, then
that the BM25 index agrees with the chunks; `rag index --verify` (`full=True`) reads every byte
against the sha256. A damaged or hand-edited index is a "rebuild it" error, never a traceback
at query time.

Opening the index for the current settings, building it when missing or stale, is
rag/index/open.py; reusing an earlier index's vectors is rag/index/reuse.py.

Left out: HNSW search (see rag/index/vectors.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from rag.errors import IndexStoreError
from rag.files import fsync_dir, hold_shared, pid_alive, sha256_file, write_durably
from rag.index.chunking import Chunk, chunk_corpus, embedding_text, sentence_units
from rag.index.corpus import Paper, corpus_hash, load_corpus
from rag.index.embed import Embedder
from rag.index.rows import JSONLRows, PaperTable, Runs, check_runs, chunk_of, encode_ids, paper_of, runs_of
from rag.index.vectors import DEFAULT_NPROBE, build_dense, describe, open_dense, plan, write_dense
from rag.settings import Settings
from rag.text import tokenize

log = logging.getLogger(__name__)

# 2: the sentence store; 3: checksums over every file (bm25/ included), the 1,000-character sentence cap;
# 4: line offsets, paper ids and runs, so an index opens without reading its rows
FORMAT = 4
META = "meta.json"
# In every temporary build directory and every superseded index on its way out: what marks a `.tmp-*` or
# `.old-*` directory of RAG_INDEX_DIR as this project's, to be removed once its process is gone.
LEFTOVER_MARK = ".papers-rag-leftover"
CHUNK_VECTORS = "chunks.npy"  # written beside an approximate dense index only
OFFSETS = ".offsets.npy"  # beside each .jsonl file: "chunks.jsonl" -> "chunks.offsets.npy"
PAPER_IDS, PAPER_ORDER = "paper_ids.npy", "paper_order.npy"
CHUNK_RUNS, SENTENCE_RUNS = "chunk_runs.npy", "sentence_runs.npy"
# At open each file is checked by its size and a hash of sampled blocks (sampled_sha256), whole when small;
# `rag index --verify` (and an index written before sizes were kept) checks every byte.
SAMPLE_FULL = 1 << 20
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 64 << 10


@dataclass
class Index:
    """A loaded index: papers, chunks with their FAISS and BM25 indexes, and the sentence store
    (every abstract sentence and its vector, for evidence selection). `load_index` gives lazy rows
    (rag/index/rows.py) and the runs arrays; plain lists and dicts work too (runs then found by a scan)."""

    path: Path
    meta: dict
    papers: Mapping[str, Paper]
    chunks: Sequence[Chunk]
    dense: object  # faiss.Index
    bm25: object  # bm25s.BM25
    sentences: Sequence[Chunk] = field(default_factory=list)  # one-sentence chunks, grouped by paper
    sentence_vectors: np.ndarray | None = None  # row i is sentences[i], normalised float32
    chunk_runs: np.ndarray | None = None  # per paper in paper order: (first chunk row, count)
    sentence_runs: np.ndarray | None = None  # the same for the sentences

    @property
    def name(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.chunks)

    @cached_property
    def sentences_of(self) -> Mapping[str, range]:
        """Paper id -> the rows of its sentences (stored contiguously, in abstract order)."""
        return self._runs_of(self.sentence_runs, self.sentences)

    @cached_property
    def chunks_of(self) -> Mapping[str, range]:
        """Paper id -> the rows of its chunks (stored contiguously, in abstract order)."""
        return self._runs_of(self.chunk_runs, self.chunks)

    def _runs_of(self, runs: np.ndarray | None, units: Sequence[Chunk]) -> Mapping[str, range]:
        if runs is not None and isinstance(self.papers, PaperTable):
            return Runs(self.papers, runs)
        return _runs(units)


def _runs(units: Sequence[Chunk]) -> dict[str, range]:
    """Paper id -> the range of rows its units occupy (units of one paper are contiguous)."""
    spans: dict[str, range] = {}
    start = 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i].paper_id != units[start].paper_id:
            spans[units[start].paper_id] = range(start, i)
            start = i
    return spans


def _bm25s():
    import bm25s

    # bm25s sets its own logger to DEBUG on import, which would print on every build.
    logging.getLogger("bm25s").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    return bm25s


def index_name(corpus_digest: str, settings: Settings) -> str:
    """Directory name for a corpus and the settings that shape its index."""
    key = hashlib.sha256(f"{corpus_digest}:{settings.index_key()}".encode()).hexdigest()[:12]
    return f"idx-{key}"


@dataclass
class Units:
    """What a build embeds: the chunks (searched) and the sentences (evidence), with their texts."""

    chunks: list[Chunk]
    chunk_texts: list[str]
    sentences: list[Chunk]
    sentence_texts: list[str]

    @property
    def texts(self) -> list[str]:
        """Every text to embed: the chunks' first, then the sentences'."""
        return self.chunk_texts + self.sentence_texts


def chunk_papers(papers: list[Paper], settings: Settings) -> Units:
    """The chunks and sentences of `papers`, and the text embedded for each."""
    by_id = {p.id: p for p in papers}
    chunks = chunk_corpus(papers, settings.chunk_sentences, settings.chunk_overlap)
    sentences = [s for p in papers for s in sentence_units(p)]
    return Units(chunks, [embedding_text(by_id[c.paper_id], c) for c in chunks],
                 sentences, [s.text for s in sentences])


def embed_chunks(texts: list[str], embedder: Embedder, *, progress: bool = False) -> np.ndarray:
    """One normalised float32 row per text. Anything with the `Embedder` interface plugs in here:
    the local sentence-transformers model, a fake in tests, a distributed engine."""
    try:
        vectors = embedder.encode(texts, progress=progress)
    except Exception as e:  # noqa: BLE001 - any embedder failure; Ctrl-C passes through
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise IndexStoreError(f"embedding failed ({type(e).__name__}: {first}); no index was written and the previous "
                              f"one, if any, is untouched; check RAG_EMBED_MODEL and run `rag index` again") from None
    if vectors.shape != (len(texts), embedder.dim):
        raise IndexStoreError(f"embedder returned shape {vectors.shape}, expected {(len(texts), embedder.dim)}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(papers: list[Paper], embedder: Embedder, settings: Settings, *, progress: bool = False) -> Path:
    """Chunk, embed and index `papers`; write atomically to `index_dir/<name>`. Returns the path."""
    if not papers:
        raise IndexStoreError("cannot build an index over an empty corpus; check --corpus")
    root = Path(settings.index_dir)
    _check_writable(root)  # before the embedding work, not after it
    t0 = time.perf_counter()
    log.info("chunking %d papers", len(papers))
    units = chunk_papers(papers, settings)
    log.info("embedding %d chunks and %d sentences", len(units.chunks), len(units.sentences))
    vectors = embed_chunks(units.texts, embedder, progress=progress)
    return write_index(root, papers, units, vectors, settings, started=t0, progress=progress)


def write_index(root: Path, papers: list[Paper], units: Units, vectors: np.ndarray, settings: Settings, *,
                started: float | None = None, progress: bool = False) -> Path:
    """Write the index of `units` (`vectors`: one row per `units.texts`, chunks first) to `root/<name>`:
    built in a temporary sibling directory and renamed into place. Returns the path."""
    bm25s = _bm25s()
    t0 = time.perf_counter() if started is None else started
    n_chunks = len(units.chunks)
    if vectors.shape[0] != n_chunks + len(units.sentences):
        raise IndexStoreError(f"{vectors.shape[0]} vectors for {n_chunks} chunks and {len(units.sentences)} sentences")
    digest = corpus_hash(papers)
    final = root / index_name(digest, settings)
    tmp = _temp_dir(root, final.name)
    try:
        spec = plan(n_chunks, vectors.shape[1], settings)
        dense = build_dense(vectors[:n_chunks], spec)
        write_dense(dense, tmp / "dense.faiss")
        if spec["type"] != "flat":  # an approximate index cannot give its vectors back: keep them for updates
            _write_npy(tmp / CHUNK_VECTORS, vectors[:n_chunks])

        log.info("BM25 over %d chunks", n_chunks)
        bm25 = bm25s.BM25()
        bm25.index([tokenize(t) or ["<empty>"] for t in units.chunk_texts], show_progress=progress)
        bm25.save(str(tmp / "bm25"), show_progress=False)

        _write_jsonl(tmp / "papers.jsonl", (p.to_json() for p in papers))
        _write_jsonl(tmp / "chunks.jsonl", (c.to_json() for c in units.chunks))
        _write_jsonl(tmp / "sentences.jsonl", (s.to_json() for s in units.sentences))
        _write_npy(tmp / "sentences.npy", vectors[n_chunks:])
        _write_lookups(tmp, papers, units)
        meta = {
            "format": FORMAT,
            "corpus": str(settings.corpus),
            "corpus_hash": digest,
            "shape": settings.index_fields(),
            "embed_dim": int(vectors.shape[1]),
            "dense": describe(dense, spec),
            "n_papers": len(papers),
            "n_chunks": n_chunks,
            "n_sentences": len(units.sentences),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.perf_counter() - t0, 2),
            **manifest(tmp),
        }
        _write_text(tmp / META, json.dumps(meta, indent=2))
        fsync_dir(tmp)
        _swap_into_place(tmp, final)
    except OSError as e:  # a full disk, a quota: the temporary directory goes, the old index stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise IndexStoreError(f"cannot write index {final}: {e.strerror or e}; free space in {root} or set "
                              f"RAG_INDEX_DIR; the previous index, if any, is untouched") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built index %s: %d papers, %d chunks, %d sentences", final, len(papers), n_chunks, len(units.sentences))
    return final


def _write_lookups(directory: Path, papers: list[Paper], units: Units) -> None:
    """What lets `load_index` open without reading rows: the paper ids and their sorted order, and
    where each paper's chunks and sentences are."""
    ids = [p.id for p in papers]
    id_array, order = encode_ids(ids)
    _write_array(directory / PAPER_IDS, id_array)
    _write_array(directory / PAPER_ORDER, order)
    _write_array(directory / CHUNK_RUNS, runs_of(ids, [c.paper_id for c in units.chunks]))
    _write_array(directory / SENTENCE_RUNS, runs_of(ids, [s.paper_id for s in units.sentences]))


def load_index(path: str | Path, *, settings: Settings | None = None, digest: str | None = None,
               full: bool = False) -> Index:
    """Load and validate an index directory; checks it against `settings` and corpus `digest` if given.
    The files are checked by their sizes and sampled blocks (`full`: by their whole sha256; see verify_files)."""
    path = Path(path)
    fix = f"rebuild it with `rag index --rebuild` (or delete {path})"
    meta_path = path / META
    if not file_exists(meta_path):
        raise IndexStoreError(f"no index at {path} (meta.json missing); build one with `rag index`")
    # "open here": `rag index --prune` never removes an index a live process holds this on (released when
    # the Index is collected or the process ends)
    in_use = hold_shared(path)
    try:
        index = _load(path, meta_path, settings, digest, fix, full)
    except BaseException:
        if in_use is not None:
            os.close(in_use)
        raise
    if in_use is not None:
        weakref.finalize(index, os.close, in_use)
    return index


def _load(path: Path, meta_path: Path, settings: Settings | None, digest: str | None, fix: str, full: bool) -> Index:
    bm25s = _bm25s()
    if not file_exists(meta_path):  # removed (pruned, rebuilt) while waiting for the lock
        raise IndexStoreError(f"no index at {path} (meta.json missing); build one with `rag index`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise IndexStoreError(f"index {path} has format {meta.get('format')}, expected {FORMAT}; {fix}")
        verify_files(path, meta, fix, full=full)
        if settings is not None and meta["shape"] != settings.index_fields():
            raise IndexStoreError(f"index {path} was built with {meta['shape']}, settings ask for "
                                  f"{settings.index_fields()}; {fix}")
        if digest is not None and meta["corpus_hash"] != digest:
            raise IndexStoreError(f"index {path} is stale: the corpus changed since it was built; {fix}")
        def corrupt(why: str) -> IndexStoreError:
            return IndexStoreError(f"index {path} is corrupt ({why}); {fix}")

        papers = PaperTable(_rows(path, "papers", paper_of, corrupt), _npy(path / PAPER_IDS), _npy(path / PAPER_ORDER))
        chunks = _rows(path, "chunks", chunk_of, corrupt)
        sentences = _rows(path, "sentences", chunk_of, corrupt)
        chunk_runs, sentence_runs = _npy(path / CHUNK_RUNS), _npy(path / SENTENCE_RUNS)
        sentence_vectors = np.load(path / "sentences.npy", mmap_mode="r")
        dense = open_dense(path / "dense.faiss", settings.nprobe if settings is not None else DEFAULT_NPROBE,
                           threads=settings.search_threads if settings is not None else None)
        bm25 = bm25s.BM25.load(str(path / "bm25"), show_progress=False, mmap=True)
        _check_bm25(bm25, len(chunks), path, fix, full=full)
        if not (len(papers) == meta["n_papers"] and len(chunks) == meta["n_chunks"] == dense.ntotal
                and len(sentences) == meta["n_sentences"] == sentence_vectors.shape[0]
                and dense.d == meta["embed_dim"]):
            raise IndexStoreError(f"index {path} is corrupt (counts disagree with meta.json); {fix}")
        _check_ids(papers, corrupt)
        if not (check_runs(chunk_runs, len(papers), len(chunks)) and check_runs(sentence_runs, len(papers), len(sentences))
                and _runs_agree(papers, chunks, chunk_runs) and _runs_agree(papers, sentences, sentence_runs)):
            raise IndexStoreError(f"index {path} is corrupt (a chunk or sentence belongs to no paper); {fix}")
    except IndexStoreError:
        raise
    except PermissionError as e:
        raise IndexStoreError(f"cannot read index {path}: permission denied ({e.filename}); "
                              f"fix its permissions or set RAG_INDEX_DIR") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, IndexError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise IndexStoreError(f"index {path} is corrupt ({reason}); {fix}") from None
    return Index(path, meta, papers, chunks, dense, bm25, sentences, sentence_vectors, chunk_runs, sentence_runs)


def _rows(path: Path, stem: str, decode, corrupt) -> JSONLRows:
    return JSONLRows.open(path / f"{stem}.jsonl", path / f"{stem}{OFFSETS}", decode, corrupt)


def _npy(path: Path) -> np.ndarray:
    """A memory-mapped array, as a plain ndarray view (np.memmap's indexing is slower; the map stays open)."""
    return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)


def _check_ids(papers: PaperTable, corrupt) -> None:
    """The id arrays must be one id a paper and a permutation of the rows; the first and last papers'
    ids must be theirs (the checksums guard the rest)."""
    n = len(papers)
    if papers.ids.shape != (n,) or papers.order.shape != (n,) or papers.order.dtype != np.int64 \
            or papers.ids.dtype.kind != "S":
        raise corrupt(f"{PAPER_IDS} does not match papers.jsonl")
    if n and (papers.order.min() < 0 or papers.order.max() >= n):
        raise corrupt(f"{PAPER_ORDER} points outside the papers")
    for row in {0, n - 1} if n else ():
        if papers.rows[row].id != papers.id_at(row) or papers.row_of(papers.id_at(row)) != row:
            raise corrupt(f"{PAPER_IDS} does not match papers.jsonl")


def _runs_agree(papers: PaperTable, units: JSONLRows, runs: np.ndarray) -> bool:
    """Whether the first and last unit of the first and last paper that have units belong to that paper
    (a spot check: `check_runs` has seen the runs tile the rows, and the checksums guard the files)."""
    have = np.flatnonzero(np.asarray(runs[:, 1]))
    for row in {int(have[0]), int(have[-1])} if len(have) else ():
        first, count = (int(x) for x in runs[row])
        if {units[first].paper_id, units[first + count - 1].paper_id} != {papers.id_at(row)}:
            return False
    return True


def locate_index(settings: Settings) -> tuple[list[Paper], Path]:
    """The corpus's papers, and where their index for these settings lives (built or not)."""
    papers = load_corpus(settings.corpus, settings.max_abstract_chars)
    return papers, Path(settings.index_dir) / index_name(corpus_hash(papers), settings)


# --- checks -------------------------------------------------------------------

def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, recursively, by POSIX path relative to it; meta.json
    (which holds them) aside. Files a later format adds are covered without naming them here."""
    return {p.relative_to(directory).as_posix(): sha256_file(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in (META, LEFTOVER_MARK)}


def sampled_sha256(path: Path, size: int | None = None) -> str:
    """sha256 of a file's size and SAMPLE_BLOCKS blocks of SAMPLE_BYTES spread evenly over it, the first
    and the last included; of the whole file when it is no larger than SAMPLE_FULL. Cheap at any size
    (about 1 MiB read), and it changes when a file is truncated, extended or swapped for another."""
    size = path.stat().st_size if size is None else size
    if size <= SAMPLE_FULL:
        return sha256_file(path)
    h = hashlib.sha256(f"{size}:".encode())
    with open(path, "rb") as f:
        for i in range(SAMPLE_BLOCKS):
            f.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _manifest_hash(files: dict, sizes: dict, samples: dict) -> str:
    return hashlib.sha256(json.dumps([files, sizes, samples], sort_keys=True).encode()).hexdigest()


def manifest(directory: Path) -> dict:
    """meta.json's integrity fields for the files under `directory`: the full sha256 of each ("files",
    checked by `rag index --verify`), its size and sampled hash (checked at every open), and a hash over
    all three (a hand-edited manifest is refused too)."""
    files = checksums(directory)
    sizes = {name: (directory / name).stat().st_size for name in files}
    samples = {name: sampled_sha256(directory / name, sizes[name]) for name in files}
    return {"files": files, "sizes": sizes, "samples": samples, "manifest_sha256": _manifest_hash(files, sizes, samples)}


def verify_files(path: Path, meta: dict, fix: str, *, full: bool = False) -> int:
    """Check the files under `path` against meta.json: none missing, none extra, each of its size and
    sampled hash; with `full` (or for an index written before sizes and samples were kept) each by its
    whole sha256. Returns the bytes read; IndexStoreError naming the first file that does not match."""
    listed, sizes, samples = meta["files"], meta.get("sizes"), meta.get("samples")
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {META}
    for name in sorted(present - set(listed)):
        raise IndexStoreError(f"index {path} is corrupt or from an older version ({name} is not covered by its "
                              f"checksums); {fix}")
    quick = not full and isinstance(sizes, dict) and isinstance(samples, dict)
    if quick and meta.get("manifest_sha256") != _manifest_hash(listed, sizes, samples):
        raise IndexStoreError(f"index {path} is corrupt (meta.json's checksums were changed); {fix}")
    read = 0
    for name, want in listed.items():
        if name not in present:
            raise IndexStoreError(f"index {path} is corrupt ({name} is missing); {fix}")
        if quick:
            size = (path / name).stat().st_size
            if size != sizes.get(name):
                raise IndexStoreError(f"index {path} is corrupt ({name} does not match its checksum: {size} bytes, "
                                      f"{sizes.get(name)} were written; truncated or replaced); {fix}")
            if sampled_sha256(path / name, size) != samples.get(name):
                raise IndexStoreError(f"index {path} is corrupt ({name} does not match its checksum); {fix}")
            read += size if size <= SAMPLE_FULL else SAMPLE_BLOCKS * SAMPLE_BYTES
        else:
            if sha256_file(path / name) != want:
                raise IndexStoreError(f"index {path} is corrupt ({name} does not match its checksum); {fix}")
            read += (path / name).stat().st_size
    return read


def _check_bm25(bm25, n_chunks: int, path: Path, fix: str, *, full: bool = False) -> None:
    """The loaded BM25 index must describe exactly the chunks: one document per chunk, every posting
    pointing at a document, every vocabulary entry at a posting list. Otherwise a query would fail
    with an IndexError (or silently score the wrong chunks). The postings (GBs at arXiv scale) are read
    whole only when `full` (`rag index --verify`); an ordinary open checks sampled blocks of them, as
    verify_files samples the files."""
    scores, vocab = bm25.scores, bm25.vocab_dict
    indptr, indices, data = (np.asarray(scores[k]) for k in ("indptr", "indices", "data"))
    postings = indices if full else _sampled(indices)
    problems = []
    if int(scores["num_docs"]) != n_chunks:
        problems.append(f"{scores['num_docs']} documents for {n_chunks} chunks")
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) \
            or indptr[-1] != len(indices) or len(indices) != len(data):
        problems.append("malformed posting lists")
    elif len(postings) and (postings.min() < 0 or postings.max() >= n_chunks):
        problems.append("postings point outside the chunks")
    ids = [i for t, i in vocab.items() if t]
    if ids and (min(ids) < 0 or max(ids) >= len(indptr) - 1):
        problems.append("vocabulary points outside the posting lists")
    if problems:
        raise IndexStoreError(f"index {path} is corrupt (its BM25 index disagrees with the chunks: "
                              f"{'; '.join(problems)}); {fix}")


def _sampled(array: np.ndarray, blocks: int = SAMPLE_BLOCKS, size: int = SAMPLE_BYTES // 4) -> np.ndarray:
    """`array` itself when small, else `blocks` evenly spaced runs of `size` entries (its ends included)."""
    if len(array) <= blocks * size:
        return array
    starts = np.linspace(0, len(array) - size, blocks).astype(np.int64)
    return np.concatenate([array[s:s + size] for s in starts])


def file_exists(path: Path) -> bool:
    """Whether `path` exists; an unreadable parent is an IndexStoreError, not a PermissionError traceback."""
    try:
        return path.exists()
    except PermissionError:
        raise IndexStoreError(f"cannot read index directory {path.parent}: permission denied; fix its permissions "
                              f"or set RAG_INDEX_DIR to a readable directory") from None


# --- file helpers -------------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    write_durably(path, lambda f: f.write(text))


def _write_npy(path: Path, array: np.ndarray) -> None:
    """`array` as a float32 .npy file (the bytes `np.save` writes), durably; a memory-mapped
    array is copied in blocks, never loaded whole."""
    def write(f) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                 "fortran_order": False, "shape": tuple(array.shape)})
        for start in range(0, array.shape[0], 100_000):
            f.write(np.ascontiguousarray(array[start:start + 100_000], dtype=np.float32).tobytes())

    write_durably(path, write, "wb")


def _write_array(path: Path, array: np.ndarray) -> None:
    write_durably(path, lambda f: np.save(f, array, allow_pickle=False), "wb")


def _write_jsonl(path: Path, rows) -> None:
    """`rows` as JSONL at `path` (UTF-8, one object a line), and the byte offsets of its lines beside it
    (`<stem>.offsets.npy`, n+1 int64), so rows can be read by number without reading the file."""
    lengths = array("q")

    def write(f) -> None:
        block: list[bytes] = []
        for r in rows:
            line = (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")
            lengths.append(len(line))
            block.append(line)
            if len(block) == 10_000:
                f.write(b"".join(block))
                block.clear()
        f.write(b"".join(block))

    write_durably(path, write, "wb")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
    _write_array(path.with_name(path.name.removesuffix(".jsonl") + OFFSETS), offsets)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` stays whole until the new one is in place."""
    (tmp / LEFTOVER_MARK).unlink(missing_ok=True)  # the index itself carries no mark (other versions read it too)
    if final.exists():
        old = final.with_name(f".old-{os.getpid()}-{final.name}")
        os.rename(final, old)
        _mark_leftover(old)  # a kill from here to the rmtree leaves a marked leftover, removed later
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)


def _mark_leftover(directory: Path) -> None:
    write_durably(directory / LEFTOVER_MARK, lambda f: f.write("papers-rag: removed once the process in the name is gone\n"))


def _check_writable(root: Path) -> None:
    """Fail before any embedding work if `root` cannot take a new index: created if missing, and a file
    actually written and removed in it (a mode check alone says nothing about a read-only mount or ACLs)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(root)
        with tempfile.TemporaryFile(prefix=f".tmp-{os.getpid()}-probe-", dir=root):
            pass
    except OSError as e:
        raise IndexStoreError(f"cannot write to index directory {root}: {e.strerror}; set RAG_INDEX_DIR "
                              f"to a writable directory") from None


def _temp_dir(root: Path, name: str) -> Path:
    """A new temporary sibling of the final directory (the same file system, so the rename is atomic)."""
    _check_writable(root)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{name}-", dir=root))
        _mark_leftover(tmp)
        return tmp
    except OSError as e:
        raise IndexStoreError(f"cannot write to index directory {root}: {e.strerror}; set RAG_INDEX_DIR "
                              f"to a writable directory") from None


def _remove_abandoned_builds(root: Path) -> None:
    """Delete temporary directories of builds whose process is gone (killed mid-build): only those this
    project wrote (`.tmp-<pid>-`/`.old-<pid>-` holding LEFTOVER_MARK); anything else in RAG_INDEX_DIR is
    someone else's and stays."""
    for d in list(root.glob(".tmp-*")) + list(root.glob(".old-*")):
        m = re.match(r"\.(?:tmp|old)-(\d+)-", d.name)
        if m and not pid_alive(int(m.group(1))) and d.is_dir() and (d / LEFTOVER_MARK).is_file():
            shutil.rmtree(d, ignore_errors=True)
