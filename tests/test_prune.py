"""`rag index --prune`: superseded indexes of this corpus go; the current one, other settings' and open ones stay."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

from test_update import split_corpus

from rag.cli.main import main
from rag.index.open import open_index
from rag.index.prune import prune
from rag.index.store import load_index

ROOT = Path(__file__).resolve().parent.parent


def _three_generations(tmp_path, tiny_settings, embedder):
    """The same corpus file at three contents (each with its index), plus an index of other chunk settings."""
    corpus, _, lines = split_corpus(tmp_path, 4)
    settings = tiny_settings.replace(corpus=str(corpus))
    paths = []
    for keep in (4, 5, 6):
        corpus.write_text("\n".join(lines[:keep]) + "\n")
        paths.append(open_index(settings, lambda: embedder).path)
    other = open_index(settings.replace(chunk_sentences=settings.chunk_sentences + 1), lambda: embedder).path
    gc.collect()  # the Index objects above are gone: nothing here holds them open
    return settings, paths, other


def test_prune_removes_only_superseded_indexes_of_this_corpus_and_settings(tmp_path, tiny_settings, embedder):
    settings, (first, second, current), other = _three_generations(tmp_path, tiny_settings, embedder)
    done = prune(settings, dry_run=True)
    assert done.removed == [first, second] and first.is_dir() and second.is_dir()
    done = prune(settings)
    assert done.removed == [first, second] and done.freed_bytes > 0 and not done.in_use
    assert not first.exists() and not second.exists()
    assert load_index(current).meta["n_papers"] == 6  # the current one is whole
    assert other.is_dir()  # other settings: another configuration may still want it
    root = Path(settings.index_dir)
    assert not list(root.glob(".old-*")) and not (root / f".{first.name}.lock").exists()
    assert prune(settings).removed == []


def test_prune_keeps_an_index_another_process_has_open(tmp_path, tiny_settings, embedder):
    settings, (first, second, _), _ = _three_generations(tmp_path, tiny_settings, embedder)
    held = load_index(first)  # this process holds it (a shared lock on its sidecar)
    done = prune(settings)
    assert done.in_use == [first] and done.removed == [second] and first.is_dir()
    del held
    gc.collect()
    # another process holding it keeps it too; once that process is gone it goes
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from rag.index.store import load_index
        index = load_index({str(first)!r})
        print("open", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        assert prune(settings).in_use == [first] and first.is_dir()
    finally:
        child.kill()
        child.wait()
    assert prune(settings).removed == [first] and not first.exists()


def test_cli_prune_says_what_it_did(tmp_path, tiny_settings, embedder, fake_models, monkeypatch, capsys):
    settings, (first, second, current), _ = _three_generations(tmp_path, tiny_settings, embedder)
    monkeypatch.setenv("RAG_CORPUS", settings.corpus)
    monkeypatch.setenv("RAG_INDEX_DIR", settings.index_dir)
    monkeypatch.setenv("RAG_CACHE_DIR", settings.cache_dir)
    assert main(["index", "--prune"]) == 0
    out = capsys.readouterr().out
    assert f"removed {first}" in out and f"removed {second}" in out
    assert f"2 superseded index(es) of {settings.corpus} removed" in out and current.name in out
    assert main(["index", "--prune", "--rebuild"]) == 1
    assert "run --add or --rebuild separately" in capsys.readouterr().err


# --- the cheap check at open, the full one at --verify -------------------------------------------

def _big_store(tmp_path, rng_seed: int = 0):
    """A directory with one 4 MiB file (sampled at open) and one small one (hashed whole), and its manifest."""
    import numpy as np

    from rag.index.store import manifest

    d = tmp_path / "store"
    d.mkdir(parents=True)
    rng = np.random.default_rng(rng_seed)
    (d / "big.bin").write_bytes(rng.bytes(4 << 20))
    (d / "small.txt").write_text("a small file\n")
    return d, manifest(d)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_open_check_refuses_truncated_swapped_and_flipped_files_that_full_verify_also_catches(tmp_path):
    import pytest

    from rag.errors import IndexStoreError
    from rag.index.store import SAMPLE_BLOCKS, SAMPLE_BYTES, verify_files

    d, meta = _big_store(tmp_path)
    assert verify_files(d, meta, "fix") == SAMPLE_BLOCKS * SAMPLE_BYTES + len("a small file\n")  # ~1 MiB read
    assert verify_files(d, meta, "fix", full=True) == (4 << 20) + 13
    big, original = d / "big.bin", (d / "big.bin").read_bytes()

    def refused(full: bool, what: str) -> None:
        with pytest.raises(IndexStoreError, match=f"{what} does not match its checksum"):
            verify_files(d, meta, "fix", full=full)

    big.write_bytes(original[:-1])  # truncated
    refused(False, "big.bin")
    refused(True, "big.bin")
    other, _ = _big_store(tmp_path / "other", rng_seed=1)
    big.write_bytes((other / "big.bin").read_bytes())  # swapped for another index's file of the same size
    refused(False, "big.bin")
    refused(True, "big.bin")
    big.write_bytes(original)
    _flip(big, 10)  # a bit flipped in a sampled block: caught at open
    refused(False, "big.bin")
    big.write_bytes(original)
    gap = SAMPLE_BYTES + ((4 << 20) - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1) // 2  # between two sampled blocks
    _flip(big, gap)  # outside every sampled block: only --verify reads it
    assert verify_files(d, meta, "fix") > 0
    refused(True, "big.bin")
    big.write_bytes(original)
    _flip(d / "small.txt", 3)  # a small file is hashed whole, even at open
    refused(False, "small.txt")
    (d / "small.txt").write_text("a small file\n")
    # meta.json's lists edited to match a changed file, without its manifest hash: refused at open
    with pytest.raises(IndexStoreError, match="meta.json's checksums were changed"):
        verify_files(d, {**meta, "sizes": {**meta["sizes"], "big.bin": 1}}, "fix")
    # an index written before sizes and samples were kept is checked whole
    legacy = {"files": meta["files"]}
    _flip(big, gap)
    with pytest.raises(IndexStoreError, match="big.bin does not match its checksum"):
        verify_files(d, legacy, "fix")


def test_cli_verify_reads_every_byte(tmp_path, tiny_settings, embedder, fake_models, monkeypatch, capsys):
    monkeypatch.setenv("RAG_CORPUS", tiny_settings.corpus)
    monkeypatch.setenv("RAG_INDEX_DIR", tiny_settings.index_dir)
    monkeypatch.setenv("RAG_CACHE_DIR", tiny_settings.cache_dir)
    assert main(["index", "--verify"]) == 1
    assert "build it with `rag index`" in capsys.readouterr().err
    path = open_index(tiny_settings, lambda: embedder).path
    gc.collect()
    assert main(["index", "--verify"]) == 0
    assert "every file matches its sha256" in capsys.readouterr().out
    _flip(path / "chunks.jsonl", 5)
    assert main(["index", "--verify"]) == 1
    err = capsys.readouterr().err
    assert "chunks.jsonl does not match its checksum" in err and "rag index --rebuild" in err and "Traceback" not in err
