"""The index's rows read on demand: JSONL files opened by byte offset, and the maps built on them.

An index's papers, chunks and sentences stay JSONL files (one row a line, human-readable, covered by
the checksums of meta.json like every other file). Beside each one, `<stem>.offsets.npy` holds the n+1
int64 byte offsets of its lines, so row i is `data[offsets[i]:offsets[i + 1]]` of the memory-mapped
file, decoded when asked for. Opening an index therefore reads no row: at 30 million chunks the old
lists cost gigabytes of RAM and minutes of JSON decoding before the first query, while a query reads
the few hundred rows it touches (mapped pages, which the kernel may drop and which no other process
pays for twice).

Why memory-mapped JSONL with offsets and not SQLite, Arrow or LMDB: no new dependency, the files stay
the ones a person can `head`, a build writes them the way it always did (plus one small array each),
and the existing integrity scheme (sizes, sampled hashes, `rag index --verify`) covers the offsets
like any other file; a row is decoded in microseconds, which is nothing next to a query.

- `JSONLRows`: a read-only sequence (`len`, `[i]`, negative `i`, slices, iteration) of decoded rows,
  with a small LRU cache (retrieval and evidence ask for the same chunk several times a query).
- `PaperTable`: a `Mapping[str, Paper]` over the papers' rows. Ids are found through
  `paper_ids.npy` (every id, UTF-8, fixed width, in paper order) and `paper_order.npy` (the
  permutation that sorts them): a binary search over memory-mapped arrays, written at build time.
  Why not a dict of id -> row: it costs about 130 bytes an entry (300 MB at 2.5 million papers) and
  reading every id at open; the arrays cost nothing at open and about 20 page reads a lookup.
- `Runs`: paper id -> the range of its rows, from `chunk_runs.npy` / `sentence_runs.npy` (per paper in
  paper order: first row, count), written at build time; a paper with no rows has no key, as before.

Left out: a row cache shared between processes, and ids that end in NUL characters (the fixed-width
id array cannot hold them; the build refuses them).
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable, ItemsView, Iterator, Mapping, Sequence, ValuesView
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from rag.errors import IndexStoreError
from rag.files import open_regular
from rag.index.chunking import Chunk
from rag.index.corpus import Paper

T = TypeVar("T")
CACHE_ROWS = 4096


def chunk_of(d: dict) -> Chunk:
    return Chunk(d["id"], d["paper_id"], d["text"], d["start"], d["end"])


def paper_of(d: dict) -> Paper:
    return Paper(d["paper_id"], d["title"], d["abstract"], tuple(d["sources"]))


def map_file(path: Path) -> mmap.mmap | bytes:
    """`path` memory-mapped read-only (an empty file, which mmap refuses, as b"")."""
    with open_regular(path, "rb") as f:
        size = f.seek(0, 2)
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""


class JSONLRows(Sequence[T], Generic[T]):
    """Rows of a JSONL file by number, decoded by `decode` when read. `offsets` has n+1 entries; `corrupt(why)`
    is the error a row that cannot be decoded raises (a one-line "rebuild it")."""

    def __init__(self, data: mmap.mmap | bytes, offsets: np.ndarray, decode: Callable[[dict], T],
                 corrupt: Callable[[str], Exception], name: str = "rows", cache: int = CACHE_ROWS) -> None:
        self.data, self.offsets, self.decode, self.corrupt, self.name = data, offsets, decode, corrupt, name
        self._n = len(offsets) - 1
        self._cached = lru_cache(maxsize=cache)(self._read)

    @classmethod
    def open(cls, path: Path, offsets_path: Path, decode: Callable[[dict], T],
             corrupt: Callable[[str], Exception]) -> JSONLRows[T]:
        """The rows of `path` by the offsets in `offsets_path` (both memory-mapped); the offsets must span
        the file exactly, else `corrupt`."""
        data = map_file(path)
        offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False).view(np.ndarray)  # a plain view indexes 3x faster
        if offsets.ndim != 1 or offsets.dtype != np.int64 or len(offsets) < 1 or offsets[0] != 0 \
                or offsets[-1] != len(data):
            raise corrupt(f"{offsets_path.name} does not match {path.name}")
        return cls(data, offsets, decode, corrupt, path.name)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._cached(j) for j in range(*i.indices(self._n))]
        i = int(i)  # numpy integers too
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} out of range ({self._n} rows)")
        return self._cached(i)

    def __iter__(self) -> Iterator[T]:
        """Every row in order, read straight through (the cache is left alone)."""
        for start in range(0, self._n, 65536):
            ends = np.asarray(self.offsets[start:start + 65537])
            for k in range(len(ends) - 1):
                yield self._decode(start + k, self.data[ends[k]:ends[k + 1]])

    def _read(self, i: int) -> T:
        return self._decode(i, self.data[int(self.offsets[i]):int(self.offsets[i + 1])])

    def _decode(self, i: int, raw: bytes) -> T:
        try:
            return self.decode(json.loads(raw))
        except (ValueError, KeyError, TypeError) as e:
            raise self.corrupt(f"row {i} of {self.name} cannot be read: {type(e).__name__}") from None


def encode_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(`paper_ids.npy`, `paper_order.npy`): the ids as fixed-width UTF-8 in paper order, and the
    permutation that sorts them (ties in paper order)."""
    raw = [i.encode("utf-8") for i in ids]
    if any(b.endswith(b"\0") for b in raw):
        raise IndexStoreError("a paper id ends in a NUL character; fix the corpus's ids")
    array = np.array(raw, dtype=f"S{max((len(b) for b in raw), default=1) or 1}")
    return array, np.argsort(array, kind="stable").astype(np.int64)


class PaperTable(Mapping[str, Paper]):
    """Paper id -> Paper, over the papers' rows; ids looked up by binary search in the sorted order."""

    def __init__(self, rows: JSONLRows[Paper], ids: np.ndarray, order: np.ndarray) -> None:
        self.rows, self.ids, self.order = rows, ids, order

    def row_of(self, pid: object) -> int | None:
        """The row of paper `pid`; None if there is none."""
        if not isinstance(pid, str) or not len(self.ids):
            return None
        key = pid.encode("utf-8")
        if len(key) > self.ids.dtype.itemsize or key.endswith(b"\0"):
            return None
        pos = int(np.searchsorted(self.ids, np.bytes_(key), sorter=self.order))
        if pos < len(self.order):
            row = int(self.order[pos])
            if self.ids[row] == key:
                return row
        return None

    def id_at(self, row: int) -> str:
        return bytes(self.ids[row]).decode("utf-8")

    def __getitem__(self, pid: str) -> Paper:
        row = self.row_of(pid)
        if row is None:
            raise KeyError(pid)
        return self.rows[row]

    def __contains__(self, pid: object) -> bool:
        return self.row_of(pid) is not None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self.ids), 65536):
            for raw in self.ids[start:start + 65536]:
                yield bytes(raw).decode("utf-8")

    def values(self) -> ValuesView[Paper]:
        return _Values(self)

    def items(self) -> ItemsView[str, Paper]:
        return _Items(self)


class _Values(ValuesView):
    def __iter__(self):
        return iter(self._mapping.rows)


class _Items(ItemsView):
    def __iter__(self):
        return ((p.id, p) for p in self._mapping.rows)


class Runs(Mapping[str, range]):
    """Paper id -> the rows its units (chunks or sentences) occupy, from the per-paper (first, count) array;
    papers with no units have no key."""

    def __init__(self, papers: PaperTable, runs: np.ndarray) -> None:
        self.papers, self.runs = papers, runs

    def __getitem__(self, pid: str) -> range:
        row = self.papers.row_of(pid)
        if row is None:
            raise KeyError(pid)
        first, count = (int(x) for x in self.runs[row])
        if not count:
            raise KeyError(pid)
        return range(first, first + count)

    def __contains__(self, pid: object) -> bool:
        row = self.papers.row_of(pid)
        return row is not None and bool(self.runs[row, 1])

    def __len__(self) -> int:
        return int(np.count_nonzero(self.runs[:, 1]))

    def __iter__(self) -> Iterator[str]:
        for row in np.flatnonzero(self.runs[:, 1]):
            yield self.papers.id_at(int(row))


def runs_of(paper_ids: Sequence[str], unit_papers: Sequence[str]) -> np.ndarray:
    """The (first, count) rows of each paper's units, in paper order; the units must be grouped by paper
    in paper order (a build writes them so), else IndexStoreError."""
    runs = np.zeros((len(paper_ids), 2), dtype=np.int64)
    at = {pid: i for i, pid in enumerate(paper_ids)}
    row, last = 0, -1
    for i, pid in enumerate(unit_papers):
        p = at.get(pid)
        if p is None or p < last:
            raise IndexStoreError(f"unit {i} of the index belongs to no paper or is out of paper order ({pid!r})")
        if p != last:  # a new run: the papers in between have none
            runs[last + 1:p + 1, 0] = row
            last = p
        runs[p, 1] += 1
        row = i + 1
    runs[last + 1:, 0] = row
    return runs


def check_runs(runs: np.ndarray, n_papers: int, n_units: int) -> bool:
    """Whether `runs` tiles rows 0..n_units-1 with one run a paper, in paper order (no unit without a paper)."""
    if runs.ndim != 2 or runs.shape != (n_papers, 2) or not np.issubdtype(runs.dtype, np.integer):
        return False
    if not n_papers:
        return n_units == 0
    first, count = np.asarray(runs[:, 0]), np.asarray(runs[:, 1])
    return bool(first[0] == 0 and (count >= 0).all() and (first[1:] == first[:-1] + count[:-1]).all()
                and first[-1] + count[-1] == n_units)
