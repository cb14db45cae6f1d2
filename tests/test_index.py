"""The index: build, save, load, staleness, atomic writes, corruption."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.errors import IndexStoreError
from rag.index.corpus import load_corpus
from rag.index.open import expected_index_path, open_index
from rag.index.store import FORMAT, LEFTOVER_MARK, build_index, load_index

ROOT = Path(__file__).resolve().parent.parent


# --- index round trip ---------------------------------------------------------------

def test_build_and_load_round_trip(tiny_settings, embedder):
    path = build_index(load_corpus(tiny_settings.corpus), embedder, tiny_settings)
    assert path == expected_index_path(tiny_settings)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["n_papers"] == 6 and meta["shape"] == tiny_settings.index_fields()
    index = load_index(path, settings=tiny_settings)
    assert len(index.papers) == 6 and len(index) == meta["n_chunks"] == index.dense.ntotal
    assert index.papers["tiny-ssm"].title.startswith("Structured State Space")
    assert not list(path.parent.glob(".tmp-*"))


def test_open_index_builds_once_then_reuses(tiny_settings, embedder):
    first = open_index(tiny_settings, lambda: embedder)
    calls = embedder.calls
    second = open_index(tiny_settings, lambda: embedder)
    assert second.path == first.path and embedder.calls == calls  # no re-embedding


def test_changed_corpus_or_settings_means_a_new_index(tiny_settings, embedder, tmp_path):
    a = open_index(tiny_settings, lambda: embedder).path
    b = open_index(tiny_settings.replace(chunk_sentences=2), lambda: embedder).path
    edited = tmp_path / "edited.jsonl"
    lines = Path(tiny_settings.corpus).read_text().splitlines()
    edited.write_text("\n".join(lines[:-1]) + "\n")
    c = open_index(tiny_settings.replace(corpus=str(edited)), lambda: embedder).path
    assert len({a, b, c}) == 3
    # the k setting does not shape the index
    assert open_index(tiny_settings.replace(k=9), lambda: embedder).path == a


def test_no_rebuild_errors_when_stale(tiny_settings, embedder):
    with pytest.raises(IndexStoreError, match="no index has been built; run `rag index`"):
        open_index(tiny_settings, lambda: embedder, rebuild="never")
    open_index(tiny_settings, lambda: embedder)
    with pytest.raises(IndexStoreError, match="the index is stale .*run `rag index`"):
        open_index(tiny_settings.replace(chunk_overlap=0), lambda: embedder, rebuild="never")


def test_load_checks_settings_and_corpus(tiny_settings, embedder):
    path = open_index(tiny_settings, lambda: embedder).path
    with pytest.raises(IndexStoreError, match="was built with"):
        load_index(path, settings=tiny_settings.replace(chunk_sentences=5))
    with pytest.raises(IndexStoreError, match="stale: the corpus changed"):
        load_index(path, digest="0" * 64)


class ExplodingEmbedder:
    dim = 256
    name = "boom"

    def encode(self, texts, *, progress=False):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build


def test_interrupted_rebuild_leaves_the_old_index_usable(tiny_settings, embedder):
    path = open_index(tiny_settings, lambda: embedder).path
    before = (path / "meta.json").read_text()
    with pytest.raises(KeyboardInterrupt):
        open_index(tiny_settings, lambda: ExplodingEmbedder(), rebuild="always")
    assert (path / "meta.json").read_text() == before
    assert load_index(path, settings=tiny_settings).meta["n_papers"] == 6
    assert not list(path.parent.glob(".tmp-*"))


def test_killed_build_leftovers_never_load_and_are_cleaned(tiny_settings, embedder):
    root = Path(tiny_settings.index_dir)
    root.mkdir(parents=True)
    # What `kill -9` mid-build leaves: a temp dir of a dead process, never under the final name.
    leftover = root / ".tmp-999999-idx-abc-xyz"
    leftover.mkdir()
    (leftover / "dense.faiss").write_bytes(b"half")
    (leftover / LEFTOVER_MARK).write_text("")  # what marks it as ours (issue 23: nothing else is removed)
    with pytest.raises(IndexStoreError, match="no index has been built"):
        open_index(tiny_settings, lambda: embedder, rebuild="never")
    open_index(tiny_settings, lambda: embedder)
    assert not leftover.exists()


@pytest.mark.parametrize("damage,match", [
    (lambda p: (p / "dense.faiss").write_bytes(b"garbage"), "corrupt \\(dense.faiss does not match its checksum"),
    (lambda p: (p / "chunks.jsonl").unlink(), "corrupt"),
    (lambda p: (p / "meta.json").write_text("{not json"), "corrupt"),
    (lambda p: shutil.rmtree(p / "bm25"), "corrupt"),
    (lambda p: (p / "meta.json").write_text(json.dumps({"format": 99})), "format 99"),
])
def test_corrupt_index_is_a_one_line_error_that_says_how_to_rebuild(tiny_settings, embedder, damage, match):
    path = open_index(tiny_settings, lambda: embedder).path
    damage(path)
    with pytest.raises(IndexStoreError, match=match) as err:
        open_index(tiny_settings, lambda: embedder)
    assert "rag index --rebuild" in str(err.value) and "\n" not in str(err.value)
    # and the advertised fix works
    assert open_index(tiny_settings, lambda: embedder, rebuild="always").meta["n_papers"] == 6


def test_unwritable_index_dir(tiny_settings, embedder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(IndexStoreError, match="cannot write to index directory"):
        open_index(tiny_settings.replace(index_dir=str(blocker / "sub")), lambda: embedder)


# --- checksums cover every file; BM25 must agree with the chunks --------------------------

def test_every_file_of_the_index_is_checksummed(tiny_settings, embedder):
    path = open_index(tiny_settings, lambda: embedder).path
    listed = json.loads((path / "meta.json").read_text())["files"]
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"meta.json"}
    assert set(listed) == on_disk
    assert {"bm25/params.index.json", "bm25/indices.csc.index.npy", "sentences.npy", "dense.faiss"} <= on_disk


@pytest.mark.parametrize("damage,match", [
    (lambda p: (p / "bm25" / "params.index.json").write_text(
        (p / "bm25" / "params.index.json").read_text().replace('"num_docs": ', '"num_docs": 1')),
     "bm25/params.index.json does not match its checksum"),
    (lambda p: (p / "bm25" / "extra.json").write_text("{}"), "bm25/extra.json is not covered by its checksums"),
    (lambda p: (p / "bm25" / "vocab.index.json").unlink(), "bm25/vocab.index.json is missing"),
])
def test_a_damaged_bm25_index_is_refused(tiny_settings, embedder, damage, match):
    path = open_index(tiny_settings, lambda: embedder).path
    damage(path)
    with pytest.raises(IndexStoreError, match=match) as err:
        open_index(tiny_settings, lambda: embedder)
    assert "rag index --rebuild" in str(err.value)


def _rewrite_checksums(path: Path) -> None:
    """What a careful vandal (or a buggy tool) does: edit a file and fix meta.json to match."""
    from rag.index.store import manifest

    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **manifest(path)}))


@pytest.mark.parametrize("edit,problem", [
    (lambda p: (p / "bm25" / "params.index.json").write_text(
        json.dumps({**json.loads((p / "bm25" / "params.index.json").read_text()), "num_docs": 999})),
     "999 documents for"),
    (lambda p: np.save(p / "bm25" / "indices.csc.index.npy",
                       np.load(p / "bm25" / "indices.csc.index.npy") + 10_000), "postings point outside the chunks"),
    (lambda p: (p / "bm25" / "vocab.index.json").write_text(json.dumps({"state": 10**6, "": 0})),
     "vocabulary points outside"),
])
def test_valid_but_wrong_bm25_files_are_a_rebuild_error_not_an_index_error(tiny_settings, embedder, edit, problem):
    path = open_index(tiny_settings, lambda: embedder).path
    edit(path)
    _rewrite_checksums(path)
    with pytest.raises(IndexStoreError, match=f"BM25 index disagrees with the chunks: .*{problem}") as err:
        open_index(tiny_settings, lambda: embedder)
    assert "rag index --rebuild" in str(err.value)


def test_embedder_failure_during_a_rebuild_leaves_the_old_index_loading(tiny_settings, embedder):
    class Broken:
        dim, name = 256, "broken"

        def encode(self, texts, *, progress=False):
            raise RuntimeError("CUDA out of memory (simulated)")

    path = open_index(tiny_settings, lambda: embedder).path
    before = (path / "meta.json").read_text()
    with pytest.raises(IndexStoreError, match=r"embedding failed \(RuntimeError: CUDA out of memory") as err:
        open_index(tiny_settings, lambda: Broken(), rebuild="always")
    assert "previous one, if any, is untouched" in str(err.value)
    assert (path / "meta.json").read_text() == before
    assert open_index(tiny_settings, lambda: embedder, rebuild="never").meta["n_papers"] == 6
    assert not list(path.parent.glob(".tmp-*"))


def test_disk_full_during_a_build_is_an_error_and_the_old_index_stays(tiny_settings, embedder, monkeypatch):
    import errno

    import rag.index.store

    path = open_index(tiny_settings, lambda: embedder).path
    real = rag.index.store._write_jsonl

    def full(target, rows):
        if target.name == "chunks.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real(target, rows)

    monkeypatch.setattr(rag.index.store, "_write_jsonl", full)
    with pytest.raises(IndexStoreError, match=f"cannot write index {path}: No space left on device"):
        open_index(tiny_settings, lambda: embedder, rebuild="always")
    monkeypatch.undo()
    assert open_index(tiny_settings, lambda: embedder, rebuild="never").meta["n_chunks"] > 0
    assert not list(path.parent.glob(".tmp-*"))


# --- permissions: checked up front, reported in one line -----------------------------------

def _without_root_powers() -> list[str]:
    """Command prefix under which file permissions apply: as root, setpriv drops the capabilities that let
    root read and write anything (the files stay root's, so mode bits decide); as anyone else, nothing."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv (util-linux): cannot make a directory unreadable to root")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _rag_limited(tmp_path: Path, *argv: str, **env: str):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "RAG_CORPUS": str(ROOT / "tests/data/tiny.jsonl"), "RAG_MIN_SCORE": "0", **env}
    return subprocess.run([*_without_root_powers(), sys.executable, str(ROOT / "tests" / "fakes.py"), *argv],
                          capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for p in tmp_path.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)


def test_an_unreadable_index_directory_is_a_one_line_error(tmp_path, tiny_settings, embedder, restore_modes):
    root = tmp_path / "indexes"
    open_index(tiny_settings.replace(index_dir=str(root)), lambda: embedder)
    root.chmod(0o000)
    proc = _rag_limited(tmp_path, "search", "state space models", RAG_INDEX_DIR=str(root))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot read index directory") and "permission denied" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_an_unwritable_index_directory_fails_before_any_embedding(tmp_path, restore_modes):
    root = tmp_path / "indexes"
    root.mkdir()
    root.chmod(0o555)  # exists and is readable, but not writable
    proc = _rag_limited(tmp_path, "index", RAG_INDEX_DIR=str(root), FAKE_EMBEDDER="fail")
    assert proc.returncode == 1, proc.stderr
    assert "error: cannot write to index directory" in proc.stderr and "RAG_INDEX_DIR" in proc.stderr
    assert "embedder was called" not in proc.stderr and "Traceback" not in proc.stderr
    assert list(root.iterdir()) == []


def test_unreadable_index_dir(tiny_settings, embedder):
    path = open_index(tiny_settings, lambda: embedder).path
    if os.geteuid() == 0:  # root reads anything; replace a file by a directory instead
        (path / "papers.jsonl").unlink()
        (path / "papers.jsonl").mkdir()
    else:
        os.chmod(path / "papers.jsonl", 0)
    with pytest.raises(IndexStoreError, match="rag index --rebuild|permission denied"):
        load_index(path)


# --- the sentence store -----------------------------------------------------------------

def test_sentence_store_holds_every_sentence_with_its_vector(tiny_settings, embedder):
    from rag.text import split_sentences

    papers = load_corpus(tiny_settings.corpus)
    index = load_index(build_index(papers, embedder, tiny_settings), settings=tiny_settings)
    assert len(index.sentences) == index.meta["n_sentences"] == index.sentence_vectors.shape[0]
    assert index.sentence_vectors.shape[1] == embedder.dim
    for p in papers:
        rows = index.sentences_of[p.id]
        assert [(index.sentences[i].start, index.sentences[i].end) for i in rows] == split_sentences(p.abstract)
        for i in rows:
            s = index.sentences[i]
            assert p.abstract[s.start:s.end] == s.text and s.id == f"{p.id}.s{i - rows.start}"
            assert np.allclose(index.sentence_vectors[i], embedder.encode([s.text])[0])


def test_a_tampered_sentence_store_is_refused(tiny_settings, embedder):
    path = build_index(load_corpus(tiny_settings.corpus), embedder, tiny_settings)
    vectors = np.load(path / "sentences.npy")
    np.save(path / "sentences.npy", vectors[:-1])
    with pytest.raises(IndexStoreError, match="sentences.npy does not match its checksum"):
        load_index(path, settings=tiny_settings)


def test_an_index_of_the_previous_format_is_rebuilt_or_refused(tiny_settings, embedder):
    path = build_index(load_corpus(tiny_settings.corpus), embedder, tiny_settings)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(IndexStoreError, match=f"format 1, expected {FORMAT}"):
        open_index(tiny_settings, lambda: embedder, rebuild="never")
    built = []
    index = open_index(tiny_settings, lambda: embedder, on_build=built.append)
    assert built == [path] and index.meta["format"] == FORMAT


def test_an_open_samples_the_bm25_postings_and_verify_reads_them_all(tmp_path):
    """At arXiv scale the postings are GBs: an open checks sampled blocks (a bad posting there is
    refused), `rag index --verify` (full) every one (a bad posting between the blocks too)."""
    from types import SimpleNamespace

    from rag.index.store import _check_bm25, _sampled

    n_chunks, n = 50, 4_000_000
    indices = np.arange(n, dtype=np.int32) % n_chunks
    bm25 = SimpleNamespace(vocab_dict={"w": 0}, scores={
        "num_docs": n_chunks, "indptr": np.array([0, n]), "indices": indices, "data": np.ones(n, np.float32)})
    _check_bm25(bm25, n_chunks, tmp_path, "rebuild it")
    _check_bm25(bm25, n_chunks, tmp_path, "rebuild it", full=True)
    sampled = _sampled(indices)
    assert len(sampled) < n // 10
    indices[0] = indices[-1] = n_chunks  # in the first and last blocks: always sampled
    for full in (False, True):
        with pytest.raises(IndexStoreError, match="postings point outside the chunks"):
            _check_bm25(bm25, n_chunks, tmp_path, "rebuild it", full=full)
    indices[0], indices[-1] = 0, 0
    between = n // 32  # between the first two sampled blocks
    indices[between] = n_chunks
    _check_bm25(bm25, n_chunks, tmp_path, "rebuild it")
    with pytest.raises(IndexStoreError, match="postings point outside the chunks"):
        _check_bm25(bm25, n_chunks, tmp_path, "rebuild it", full=True)
