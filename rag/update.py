"""Incremental index updates: embed only what is new, and `rag index --add`.

An index directory is named by the hash of its corpus content and shaping settings
(rag/index.py), so an updated corpus always gets a new directory. What makes the
update cheap is that its build is handed the vectors of the previous index:

- `with_previous_vectors(embedder, settings)` wraps an embedder so that every text
  the previous index of this corpus file already embedded (same model, same
  backend; matched by the exact text) takes its stored vector, and only the rest
  reaches the model. Papers added, changed (their texts differ) or removed are
  therefore handled by one rule; BM25, the FAISS index and the sentence store are
  rebuilt from the full set of vectors, so the result is the index a full rebuild
  writes (bit for bit where the embedder is deterministic per text; with torch,
  within float noise of batching). `open_index` uses it for every "auto" build;
  `rag index --rebuild` embeds everything again.
- `add_papers(settings, path, embedder)` is `rag index --add papers.jsonl`: the
  papers of `path` are merged into the corpus file (a new id is appended, a known
  id with a different title or abstract replaces its row, an identical one is
  skipped), the new index is built first under the merged corpus's hash, and only
  then is the corpus file replaced (temp file + rename). The next `rag ask` reads
  the merged corpus and finds that index; an interrupted `--add` leaves the old
  corpus and index as they were, and re-running it finishes the job.

Left out: extending BM25 and IVF lists in place (rebuilt: seconds to minutes, where
embedding is hours) and deleting superseded index directories (they stay until
removed, like any stale index). `--add` rewrites JSONL and CSV corpora; for a
Parquet corpus or a directory of seed pages, edit the corpus and run `rag index`:
the same vector reuse applies.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.chunking import embedding_text
from rag.corpus import Paper, load_corpus, load_table, paper_id
from rag.embed import Embedder
from rag.errors import CorpusError, IndexStoreError
from rag.index import CHUNK_VECTORS, FORMAT, build_index, load_index, locate_index
from rag.settings import Settings

log = logging.getLogger(__name__)

REWRITABLE = (".jsonl", ".ndjson", ".csv")


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
    texts = [embedding_text(index.papers[c.paper_id], c) for c in index.chunks] + [s.text for s in index.sentences]
    sentences = index.sentence_vectors
    if sentences is None:
        sentences = np.empty((0, chunk_vectors.shape[1]), np.float32)
    return StoredVectors(texts, chunk_vectors, sentences)


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


# --- rag index --add -------------------------------------------------------------------

@dataclass
class Added:
    """What `add_papers` did."""

    path: Path  # the index built for the merged corpus
    new: int
    changed: int
    unchanged: int
    reuse: Reuse


def merge(old: list[Paper], incoming: list[Paper]) -> tuple[list[Paper], list[Paper], list[Paper]]:
    """(merged corpus, new papers, changed papers): a changed paper keeps its place, new ones go last."""
    by_id = {p.id: p for p in old}
    new = [p for p in incoming if p.id not in by_id]
    changed = [p for p in incoming if p.id in by_id and (by_id[p.id].title, by_id[p.id].abstract) != (p.title, p.abstract)]
    replace = {p.id: p for p in changed}
    merged = [replace.get(p.id, p) for p in old] + new
    return merged, new, changed


def add_papers(settings: Settings, path: str | Path, embedder: Embedder) -> Added:
    """`rag index --add PATH`: merge the papers of PATH into the corpus file and index them,
    embedding only their texts. See the module docstring for the order of writes."""
    corpus = Path(settings.corpus)
    if corpus.is_dir() or corpus.suffix.lower() not in REWRITABLE:
        raise CorpusError(f"--add rewrites the corpus file, and {corpus} is not a .jsonl or .csv file; add the papers "
                          f"to the corpus yourself and run `rag index` (papers already indexed are not embedded again)")
    incoming = load_table(path)
    old, old_index = locate_index(settings)
    merged, new, changed = merge(old, incoming)
    if not new and not changed:
        return Added(old_index, 0, 0, len(incoming), Reuse())
    # As the corpus file will read back: every paper's source is the corpus file.
    merged = [dataclasses.replace(p, sources=(corpus.name,)) for p in merged]
    source = old_index if (old_index / "meta.json").is_file() else previous_index(settings)
    stored = StoredVectors.empty(embedder.dim)
    if source is not None:
        try:
            stored = stored_vectors(source)
        except IndexStoreError as e:  # an unreadable old index: embed everything rather than fail
            log.warning("not reusing vectors of %s: %s", source, e)
    if stored.dim != embedder.dim:  # another model's vectors: nothing to reuse
        stored = StoredVectors.empty(embedder.dim)
    reusing = ReusingEmbedder(embedder, stored, source or corpus)
    tmp = _write_temp(corpus, _rewrite(corpus, old, new, changed))
    try:
        # What the next `rag ask` reads must be what gets indexed: check before anything is replaced.
        if [(p.id, p.title, p.abstract) for p in load_corpus(tmp)] != [(p.id, p.title, p.abstract) for p in merged]:
            raise CorpusError(f"merging {path} into {corpus} would not read back as the merged papers; the corpus "
                              f"and its index are unchanged (please report this)")
        built = build_index(merged, reusing, settings)
        _commit(tmp, corpus)
    finally:
        tmp.unlink(missing_ok=True)
    return Added(built, len(new), len(changed), len(incoming) - len(new) - len(changed), reusing.last)


def _rewrite(corpus: Path, old: list[Paper], new: list[Paper], changed: list[Paper]) -> str:
    """The corpus file's text with `changed` rows replaced in place and `new` rows appended."""
    replace = {p.id: p for p in changed}
    raw = corpus.read_text(encoding="utf-8")
    if corpus.suffix.lower() == ".csv":
        return _rewrite_csv(raw, old, new, replace)
    lines, i = [], 0
    for line in raw.splitlines():
        if line.strip():
            paper = old[i]  # load_table keeps one paper per non-blank line, in order
            i += 1
            if paper.id in replace:
                line = json.dumps(_row(replace[paper.id]), ensure_ascii=False)
        lines.append(line)
    lines += [json.dumps(_row(p), ensure_ascii=False) for p in new]
    return "\n".join(lines) + "\n"


def _rewrite_csv(raw: str, old: list[Paper], new: list[Paper], replace: dict[str, Paper]) -> str:
    reader = csv.DictReader(io.StringIO(raw))
    header = list(reader.fieldnames or [])
    names = {h.strip().lower(): h for h in header}
    need_id = "id" not in names and any(p.id != paper_id(p.title) for p in (*new, *replace.values()))
    if need_id:
        header = ["id", *header]
        names["id"] = "id"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for paper, row in zip(old, reader, strict=True):
        if need_id:
            row["id"] = paper.id
        if paper.id in replace:
            row.update({names[k]: v for k, v in _row(replace[paper.id]).items() if k in names})
        writer.writerow(row)
    for paper in new:
        writer.writerow({names[k]: v for k, v in _row(paper).items() if k in names})
    return out.getvalue()


def _row(paper: Paper) -> dict:
    return {"id": paper.id, "title": paper.title, "abstract": paper.abstract}


def _write_temp(path: Path, text: str) -> Path:
    """`text` in a temporary sibling of `path` with the same suffix (so it reads as the same format)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"cannot write next to the corpus {path}: {e.strerror}; the corpus must be in a writable "
                          f"directory for --add") from None
    return tmp


def _commit(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path` and make the rename durable."""
    try:
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CorpusError(f"cannot replace the corpus {path}: {e.strerror}; the index for the merged corpus is built, "
                          f"so fix the permissions and run the same --add again") from None
