"""Vector reuse: a build embeds only the texts an earlier index of the same corpus file has not.

An index directory is named by the hash of its corpus content and shaping settings
(rag/index/store.py), so an updated corpus always gets a new directory. What makes the
update cheap is that its build is handed the vectors of the previous index:
`with_previous_vectors(embedder, settings)` wraps an embedder so that every text
the previous index of this corpus file already embedded (same model, same
backend; matched by the exact text) takes its stored vector, and only the rest
reaches the model. Papers added, changed (their texts differ) or removed are
therefore handled by one rule; BM25, the FAISS index and the sentence store are
rebuilt from the full set of vectors, so the result is the index a full rebuild
writes (bit for bit where the embedder is deterministic per text; with torch,
within float noise of batching). `open_index` uses it for every "auto" build and
`rag index --add` (rag/index/add.py) for its merged corpus.

Left out: extending BM25 and IVF lists in place (rebuilt: seconds to minutes, where
embedding is hours).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.errors import IndexStoreError
from rag.index.chunking import embedding_text
from rag.index.embed import Embedder
from rag.index.store import CHUNK_VECTORS, FORMAT, Index, load_index
from rag.settings import Settings

log = logging.getLogger(__name__)


def _key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


@dataclass
class Reuse:
    """How many texts the last `encode` took from the previous index, and how many it embedded."""

    reused: int = 0
    embedded: int = 0


class StoredVectors:
    """The vectors of an earlier index, found by the exact text they embed: its chunks' (from
    `chunks.npy` or the exact FAISS index) and its sentences' (memory-mapped, never copied whole)."""

    def __init__(self, texts: list[str], chunks: np.ndarray, sentences: np.ndarray) -> None:
        self.chunks, self.sentences = chunks, sentences
        self.keys: dict[bytes, int] = {}
        for row, text in enumerate(texts):
            self.keys.setdefault(_key(text), row)
        self.dim = int(chunks.shape[1])

    @classmethod
    def empty(cls, dim: int) -> StoredVectors:
        return cls([], np.empty((0, dim), np.float32), np.empty((0, dim), np.float32))

    def rows(self, texts: list[str]) -> np.ndarray:
        """The stored row of each text, -1 where it has none."""
        return np.array([self.keys.get(_key(t), -1) for t in texts], dtype=np.int64)

    def take(self, rows: np.ndarray) -> np.ndarray:
        n = len(self.chunks)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        first = rows < n
        out[first] = self.chunks[rows[first]]
        out[~first] = self.sentences[rows[~first] - n]
        return out


class ReusingEmbedder:
    """An `Embedder` that answers from an earlier index's vectors where it has the text, and asks
    `inner` for the rest, in one call."""

    def __init__(self, inner: Embedder, stored: StoredVectors, source: Path) -> None:
        self.inner = inner
        self.stored = stored
        self.source = source
        self.name = inner.name
        self.dim = inner.dim
        self.last = Reuse()

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        rows = self.stored.rows(texts)
        known = np.flatnonzero(rows >= 0)
        missing = np.flatnonzero(rows < 0)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if len(known):
            out[known] = self.stored.take(rows[known])
        if len(missing):
            out[missing] = self.inner.encode([texts[i] for i in missing], progress=progress)
        self.last = Reuse(reused=len(known), embedded=len(missing))
        log.info("reused %d vectors from %s, embedded %d texts", len(known), self.source.name, len(missing))
        return out


def previous_index(settings: Settings, skip: Path | None = None) -> Path | None:
    """The newest built index of this corpus file whose vectors this embedder would reproduce
    (same embedding model and backend, current format); None if there is none."""
    root = Path(settings.index_dir)
    if not root.is_dir():
        return None
    want = {"embed_model": settings.embed_model, "embed_backend": settings.embed_backend}
    best: tuple[str, Path] | None = None
    for meta_path in root.glob("idx-*/meta.json"):
        if skip is not None and meta_path.parent == skip:
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            shape = meta["shape"]
            same = (meta.get("format") == FORMAT and meta.get("corpus") == str(settings.corpus)
                    and all(shape.get(k, "torch" if k == "embed_backend" else None) == v for k, v in want.items()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if same and (best is None or meta.get("created", "") > best[0]):
            best = (meta.get("created", ""), meta_path.parent)
    return best[1] if best else None


def stored_vectors(path: Path) -> StoredVectors:
    """The vectors of the index at `path`, by text; the index is validated (checksums) first.

    The chunk vectors come from `chunks.npy` beside an approximate index, or from the exact
    FAISS index itself."""
    index = load_index(path)
    n = len(index.chunks)
    if (path / CHUNK_VECTORS).is_file():
        chunk_vectors = np.load(path / CHUNK_VECTORS, mmap_mode="r")
    elif index.meta.get("dense", {"type": "flat"})["type"] == "flat":
        chunk_vectors = index.dense.reconstruct_n(0, n) if n else np.empty((0, index.meta["embed_dim"]), np.float32)
    else:
        raise IndexStoreError(f"index {path} keeps no float vectors of its chunks; rebuild it with `rag index --rebuild`")
    texts = _chunk_texts(index) + [s.text for s in index.sentences]
    sentences = index.sentence_vectors
    if sentences is None:
        sentences = np.empty((0, chunk_vectors.shape[1]), np.float32)
    return StoredVectors(texts, chunk_vectors, sentences)


def _chunk_texts(index: Index) -> list[str]:
    """What each chunk embedded, read straight through the rows (chunks are grouped by paper, so each
    paper is looked up once)."""
    texts, paper = [], None
    for c in index.chunks:
        if paper is None or paper.id != c.paper_id:
            paper = index.papers[c.paper_id]
        texts.append(embedding_text(paper, c))
    return texts


def with_previous_vectors(embedder: Embedder, settings: Settings, *, skip: Path | None = None) -> Embedder:
    """`embedder`, reusing the vectors of the newest earlier index of this corpus file (other than
    `skip`). Returns `embedder` itself when there is nothing usable to reuse."""
    source = previous_index(settings, skip)
    if source is None:
        return embedder
    try:
        stored = stored_vectors(source)
    except IndexStoreError as e:
        log.warning("not reusing vectors of %s: %s", source, e)
        return embedder
    if stored.dim != embedder.dim:
        return embedder
    return ReusingEmbedder(embedder, stored, source)
