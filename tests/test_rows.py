"""Rows read on demand (rag/index/rows.py): the lazy sequences and maps `load_index` returns, and that
search, evidence and extractive answers over them are exactly those over fully loaded lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag.answer.evidence import select_evidence
from rag.answer.extractive import extractive_answer
from rag.answer.retrieve import Retriever
from rag.errors import IndexStoreError
from rag.index.chunking import Chunk
from rag.index.corpus import Paper, load_corpus
from rag.index.open import open_index
from rag.index.rows import JSONLRows, PaperTable, Runs, check_runs, chunk_of, encode_ids, runs_of
from rag.index.store import Index, _runs, build_index, load_index, manifest

QUERIES = ["state space models for long sequences", "sourdough fermentation yeast acidity", "robots",
           "late interaction token embeddings retrieval latency", "how do exoplanets dim light curves?",
           "which models learn from rewards?", "Does music generation use transformers?", "zzzz qqqq"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _fully_loaded(path: Path, lazy: Index) -> Index:
    """The index as it loaded before format 4: every row read into lists and a dict, BM25 read whole."""
    import bm25s

    papers = {d["paper_id"]: Paper(d["paper_id"], d["title"], d["abstract"], tuple(d["sources"]))
              for d in _jsonl(path / "papers.jsonl")}
    chunks = [Chunk(**d) for d in _jsonl(path / "chunks.jsonl")]
    sentences = [Chunk(**d) for d in _jsonl(path / "sentences.jsonl")]
    bm25 = bm25s.BM25.load(str(path / "bm25"), show_progress=False)
    return Index(path, lazy.meta, papers, chunks, lazy.dense, bm25, sentences, np.load(path / "sentences.npy"))


def _hits(result) -> list:
    return [(h.rank, h.paper, h.chunks, h.text, h.score) for h in result.hits]


@pytest.fixture(params=[(3, 1), (2, 1)], ids=["default-chunks", "two-sentence-chunks"])
def both(request, tiny_settings, embedder):
    sentences, overlap = request.param
    settings = tiny_settings.replace(chunk_sentences=sentences, chunk_overlap=overlap)
    lazy = load_index(build_index(load_corpus(settings.corpus), embedder, settings), settings=settings)
    return lazy, _fully_loaded(lazy.path, lazy), settings


def test_search_evidence_and_extractive_answers_match_fully_loaded_lists(both, embedder):
    lazy, full, settings = both
    assert isinstance(lazy.chunks, JSONLRows) and isinstance(lazy.papers, PaperTable)
    assert isinstance(lazy.bm25.scores["data"], np.memmap)
    assert list(lazy.chunks) == full.chunks and list(lazy.sentences) == full.sentences
    assert dict(lazy.papers) == full.papers and list(lazy.papers) == list(full.papers)
    assert dict(lazy.chunks_of) == full.chunks_of and dict(lazy.sentences_of) == full.sentences_of
    new, old = Retriever(lazy, embedder), Retriever(full, embedder)
    for query in QUERIES:
        for mode in ("dense", "bm25", "hybrid"):
            for k, per_paper in ((3, 1), (6, 2)):
                a, b = new.search(query, k=k, mode=mode, per_paper=per_paper), old.search(query, k=k, mode=mode,
                                                                                         per_paper=per_paper)
                assert _hits(a) == _hits(b) and a.best_similarity == b.best_similarity
                assert a.chunk_scores == b.chunk_scores
                for shape in ("specific", "list", "yesno"):
                    assert select_evidence(lazy, a, query, budget=120, shape=shape) == \
                        select_evidence(full, b, query, budget=120, shape=shape)
        a, b = new.search(query, k=4), old.search(query, k=4)
        x = extractive_answer(query, a, lazy, budget=settings.evidence_tokens, min_score=0.0)
        y = extractive_answer(query, b, full, budget=settings.evidence_tokens, min_score=0.0)
        assert x.toDict() == y.toDict()


def test_the_lazy_rows_index_like_a_list(tiny_settings, embedder):
    index = open_index(tiny_settings, lambda: embedder)
    rows, want = index.sentences, [Chunk(**d) for d in _jsonl(index.path / "sentences.jsonl")]
    assert len(rows) == len(want) > 3
    assert rows[0] == want[0] and rows[-1] == want[-1] and rows[np.int64(2)] == want[2]
    assert rows[1:4] == want[1:4] and rows[::-5] == want[::-5] and rows[-2:] == want[-2:]
    assert list(rows) == want and list(reversed(rows)) == want[::-1] and want[3] in rows
    for bad in (len(want), -len(want) - 1):
        with pytest.raises(IndexError):
            rows[bad]


def test_papers_behave_like_a_mapping(tiny_settings, embedder):
    index = open_index(tiny_settings, lambda: embedder)
    papers, want = index.papers, {p.id: p for p in load_corpus(tiny_settings.corpus)}
    assert len(papers) == 6 and set(papers) == set(want) and list(papers) == list(want)
    assert papers["tiny-ssm"] == want["tiny-ssm"] and "tiny-ssm" in papers
    assert [p.id for p in papers.values()] == list(want) and dict(papers.items()) == {k: v for k, v in papers.items()}
    for missing in ("tiny-ss", "tiny-ssm-and-more-than-any-id-is-long", "", 3, None, "tiny-ssm\0"):
        assert missing not in papers and papers.get(missing) is None
    with pytest.raises(KeyError):
        papers["nope"]
    assert "nope" not in index.chunks_of and index.sentences_of.get("nope", range(0)) == range(0)


def test_ids_of_any_script_and_length_are_found():
    ids = ["b", "a", "épée-ü", "论文-7", "a" * 40, "ab", "Z"]
    rows = [json.dumps({"paper_id": i, "title": i, "abstract": "x.", "sources": []}).encode() + b"\n" for i in ids]
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    from rag.index.rows import paper_of

    table = PaperTable(JSONLRows(b"".join(rows), offsets, paper_of, IndexStoreError), *encode_ids(ids))
    assert list(table) == ids and [table.row_of(i) for i in ids] == list(range(len(ids)))
    assert all(table[i].id == i for i in ids) and "a" * 39 not in table and "c" not in table
    with pytest.raises(IndexStoreError, match="NUL"):
        encode_ids(["a\0"])


def test_runs_are_written_per_paper_and_checked():
    runs = runs_of(["a", "b", "c", "d"], ["a", "a", "c", "c", "c", "d"])
    assert runs.tolist() == [[0, 2], [2, 0], [2, 3], [5, 1]] and check_runs(runs, 4, 6)
    assert not check_runs(runs, 4, 7) and not check_runs(runs[:3], 4, 6)
    bad = runs.copy()
    bad[2, 0] = 3
    assert not check_runs(bad, 4, 6)
    for units in (["a", "c", "a"], ["x"], ["b", "a"]):
        with pytest.raises(IndexStoreError, match="paper"):
            runs_of(["a", "b", "c"], units)
    chunks = [Chunk(f"{p}#{i}", p, "t", 0, 1) for i, p in enumerate("aaccc")]
    table = PaperTable(JSONLRows(b"", np.zeros(4, np.int64), chunk_of, IndexStoreError), *encode_ids(["a", "b", "c"]))
    assert dict(Runs(table, runs_of(["a", "b", "c"], [c.paper_id for c in chunks]))) == _runs(chunks)


def test_an_unreadable_row_is_a_rebuild_error_not_a_traceback():
    data = b'{"id": "a#0", "paper_id": "a", "text": "t", "start": 0, "end": 1}\n{"id": "a#1", "broken\n'
    rows = JSONLRows(data, np.array([0, data.index(b"\n") + 1, len(data)], np.int64), chunk_of,
                     lambda why: IndexStoreError(f"corrupt ({why}); rebuild it"))
    assert rows[0].id == "a#0"
    with pytest.raises(IndexStoreError, match=r"corrupt \(row 1 of rows cannot be read"):
        rows[1]


# --- damaged files: refused at open in one line ---------------------------------------------------

def _truncate(path: Path, by: int = 8) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-by])


@pytest.mark.parametrize("name", ["chunks.offsets.npy", "sentences.offsets.npy", "papers.jsonl", "chunks.jsonl",
                                  "chunk_runs.npy", "paper_ids.npy"])
def test_a_truncated_file_is_refused_at_open(tiny_settings, embedder, name):
    path = open_index(tiny_settings, lambda: embedder).path
    _truncate(path / name)
    with pytest.raises(IndexStoreError, match=f"corrupt \\({name} does not match its checksum") as err:
        open_index(tiny_settings, lambda: embedder)
    assert "rag index --rebuild" in str(err.value) and "\n" not in str(err.value)


def _edit(path: Path, name: str, array: np.ndarray) -> None:
    """Replace one array and fix meta.json's checksums to match (what the checksums alone cannot catch)."""
    np.save(path / name, array)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **manifest(path)}))


@pytest.mark.parametrize("name,change,problem", [
    ("sentences.offsets.npy", lambda a: np.delete(a, 1), "counts disagree with meta.json"),
    ("chunks.offsets.npy", lambda a: a[:-1], "chunks.offsets.npy does not match chunks.jsonl"),
    ("chunks.offsets.npy", lambda a: a + 1, "chunks.offsets.npy does not match chunks.jsonl"),
    ("sentences.offsets.npy", lambda a: a.astype(np.int32), "sentences.offsets.npy does not match sentences.jsonl"),
    ("chunk_runs.npy", lambda a: a[::-1].copy(), "a chunk or sentence belongs to no paper"),
    ("sentence_runs.npy", lambda a: a[:-1], "a chunk or sentence belongs to no paper"),
    ("sentence_runs.npy", lambda a: np.roll(a, 1, axis=0), "a chunk or sentence belongs to no paper"),
    ("paper_ids.npy", lambda a: a[::-1].copy(), "paper_ids.npy does not match papers.jsonl"),
    ("paper_order.npy", lambda a: a + 7, "paper_order.npy points outside the papers"),
])
def test_consistent_checksums_over_wrong_arrays_are_refused(tiny_settings, embedder, name, change, problem):
    path = open_index(tiny_settings, lambda: embedder).path
    _edit(path, name, change(np.load(path / name)))
    with pytest.raises(IndexStoreError, match=problem) as err:
        open_index(tiny_settings, lambda: embedder)
    assert "rag index --rebuild" in str(err.value) and "\n" not in str(err.value)


def test_an_index_without_the_new_files_is_rebuilt(tiny_settings, embedder):
    """What a format-3 index looks like: no offsets, ids or runs; `open_index` rebuilds it."""
    path = open_index(tiny_settings, lambda: embedder).path
    for name in ("chunks.offsets.npy", "papers.offsets.npy", "sentences.offsets.npy", "paper_ids.npy",
                 "paper_order.npy", "chunk_runs.npy", "sentence_runs.npy"):
        (path / name).unlink()
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format": 3, **manifest(path)}))
    index = open_index(tiny_settings, lambda: embedder)
    assert index.meta["format"] == 4 and (index.path / "chunk_runs.npy").is_file()
