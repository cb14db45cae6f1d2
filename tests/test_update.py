"""Incremental updates: `rag index --add` and vector reuse give what a full rebuild of the final corpus gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.answer.retrieve import Retriever
from rag.cli.main import main
from rag.errors import CorpusError
from rag.index.add import add_papers, previous_index
from rag.index.corpus import load_corpus
from rag.index.open import expected_index_path, open_index
from rag.index.store import build_index, load_index

DATA = Path(__file__).parent / "data"
QUERIES = ("state space models for long sequences", "sourdough fermentation acidity", "late interaction retrieval",
           "protein structure", "reinforcement learning reward")


def split_corpus(tmp_path: Path, keep: int) -> tuple[Path, Path, list[str]]:
    """The tiny corpus cut in two files: the first `keep` lines (the corpus) and the rest (to add)."""
    lines = (DATA / "tiny.jsonl").read_text().splitlines()
    corpus, extra = tmp_path / "corpus.jsonl", tmp_path / "new.jsonl"
    corpus.write_text("\n".join(lines[:keep]) + "\n")
    extra.write_text("\n".join(lines[keep:]) + "\n")
    return corpus, extra, lines


def search_all(index, embedder) -> list:
    r = Retriever(index, embedder)
    return [[(h.paper.id, h.text, round(h.score, 6)) for h in r.search(q, k=4, mode=m).hits]
            for q in QUERIES for m in ("dense", "bm25", "hybrid")]


class CountingEmbedder:
    """Wraps an embedder and counts the texts it is asked for."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dim, self.texts = inner, inner.name, inner.dim, 0

    def encode(self, texts, *, progress=False):
        self.texts += len(texts)
        return self.inner.encode(texts)


def test_add_equals_a_full_rebuild_of_the_final_corpus(tiny_settings, embedder, tmp_path):
    corpus, extra, lines = split_corpus(tmp_path, 4)
    settings = tiny_settings.replace(corpus=str(corpus))
    old = open_index(settings, lambda: embedder)
    counting = CountingEmbedder(embedder)
    added = add_papers(settings, extra, counting)
    assert (added.new, added.changed, added.unchanged) == (2, 0, 0)
    # only the two new papers' chunks and sentences were embedded
    new_papers = load_corpus(extra)
    fresh = open_index(tiny_settings.replace(corpus=str(extra), index_dir=str(tmp_path / "x")), lambda: embedder)
    assert counting.texts == added.reuse.embedded == fresh.meta["n_chunks"] + fresh.meta["n_sentences"]
    assert added.reuse.reused == old.meta["n_chunks"] + old.meta["n_sentences"]
    assert len(new_papers) == 2
    # the corpus file now holds every paper, and the next open finds the added-to index under its hash
    now = corpus.read_text().splitlines()
    assert now[:4] == lines[:4] and [json.loads(x)["id"] for x in now[4:]] == [p.id for p in new_papers]
    assert expected_index_path(settings) == added.path
    after_add = open_index(settings, lambda: embedder, rebuild="never")
    # a full rebuild of the same final corpus, elsewhere
    full_settings = settings.replace(index_dir=str(tmp_path / "full"))
    full = load_index(build_index(load_corpus(corpus), embedder, full_settings), settings=full_settings)
    assert after_add.path.name == full.path.name
    for name in ("papers.jsonl", "chunks.jsonl", "sentences.jsonl", "sentences.npy", "dense.faiss"):
        assert (after_add.path / name).read_bytes() == (full.path / name).read_bytes(), name
    assert search_all(after_add, embedder) == search_all(full, embedder)


def test_add_replaces_a_changed_paper_and_skips_known_ones(tiny_settings, embedder, tmp_path):
    corpus, _, lines = split_corpus(tmp_path, 6)
    settings = tiny_settings.replace(corpus=str(corpus))
    open_index(settings, lambda: embedder)
    row = json.loads(lines[1])
    row["abstract"] = "We now study rye starters. " + row["abstract"]
    update = tmp_path / "update.jsonl"
    update.write_text(json.dumps(row) + "\n" + lines[2] + "\n")
    counting = CountingEmbedder(embedder)
    added = add_papers(settings, update, counting)
    assert (added.new, added.changed, added.unchanged) == (0, 1, 1)
    papers = load_corpus(corpus)
    assert [p.id for p in papers] == [json.loads(x)["id"] for x in lines]  # replaced in place
    assert papers[1].abstract.startswith("We now study rye starters.")
    assert 0 < counting.texts < 10  # only the changed paper's texts
    full_settings = settings.replace(index_dir=str(tmp_path / "full"))
    full = load_index(build_index(papers, embedder, full_settings), settings=full_settings)
    assert search_all(open_index(settings, lambda: embedder, rebuild="never"), embedder) == search_all(full, embedder)
    # the same file again: nothing to do, nothing embedded
    again = add_papers(settings, update, counting)
    assert (again.new, again.changed, again.unchanged) == (0, 0, 2) and counting.texts < 10


def test_editing_the_corpus_reuses_the_previous_index(tiny_settings, embedder, tmp_path):
    """Removing a paper (or changing one) by editing the corpus: `rag index` embeds only what is new."""
    corpus, _, lines = split_corpus(tmp_path, 6)
    settings = tiny_settings.replace(corpus=str(corpus))
    first = open_index(settings, lambda: embedder).path
    corpus.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # one paper removed
    counting = CountingEmbedder(embedder)
    assert previous_index(settings) == first
    second = open_index(settings, lambda: counting)
    assert second.path != first and counting.texts == 0  # everything reused
    assert json.loads(lines[2])["id"] not in second.papers
    full_settings = settings.replace(index_dir=str(tmp_path / "full"))
    full = load_index(build_index(load_corpus(corpus), embedder, full_settings), settings=full_settings)
    assert np.array_equal(second.sentence_vectors, full.sentence_vectors)
    assert search_all(second, embedder) == search_all(full, embedder)
    # --rebuild is from scratch: every text embedded again
    open_index(settings, lambda: counting, rebuild="always")
    assert counting.texts == full.meta["n_chunks"] + full.meta["n_sentences"]


def test_reuse_from_an_approximate_index(tiny_settings, embedder, tmp_path):
    corpus, extra, _ = split_corpus(tmp_path, 4)
    settings = tiny_settings.replace(corpus=str(corpus), ivf_threshold=1)  # IVF: vectors come from chunks.npy
    open_index(settings, lambda: embedder)
    counting = CountingEmbedder(embedder)
    added = add_papers(settings, extra, counting)
    assert added.reuse.reused > 0 and counting.texts == added.reuse.embedded


def test_add_needs_a_rewritable_corpus_file(tiny_settings, embedder, tmp_path):
    pages = tmp_path / "pages"
    shutil.copytree(Path(__file__).resolve().parent.parent / "data" / "corpus", pages)
    with pytest.raises(CorpusError, match="not a .jsonl or .csv file; add the papers to the corpus yourself and run `rag index`"):
        add_papers(tiny_settings.replace(corpus=str(pages)), DATA / "tiny.jsonl", embedder)


def test_add_to_a_csv_corpus(tiny_settings, embedder, tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("title,abstract,year\nA Paper About Bread,"
                      "\"We bake bread with wild yeast and measure acidity over two days of fermentation.\",2024\n")
    settings = tiny_settings.replace(corpus=str(corpus))
    open_index(settings, lambda: embedder)
    added = add_papers(settings, DATA / "tiny.jsonl", embedder)
    assert added.new == 6
    papers = load_corpus(corpus)
    assert len(papers) == 7 and papers[0].title == "A Paper About Bread" and papers[1].id == "tiny-ssm"
    assert corpus.read_text().splitlines()[0] == "id,title,abstract,year"  # ids kept: the added ones are not title hashes


def test_cli_add_then_search_matches_a_full_rebuild(fake_models, tmp_path, capsys):
    corpus, extra, _ = split_corpus(tmp_path, 3)
    common = ["--corpus", str(corpus), "--index-dir", str(tmp_path / "idx")]
    assert main(["index", *common]) == 0
    capsys.readouterr()
    assert main(["index", *common, "--add", str(extra)]) == 0
    out = capsys.readouterr().out
    assert "added 3 new and 0 changed papers (0 already there)" in out and "reused" in out
    assert main(["search", "state space models", "--json", *common, "--no-rebuild"]) == 0
    after_add = json.loads(capsys.readouterr().out)
    full = ["--corpus", str(corpus), "--index-dir", str(tmp_path / "full")]
    assert main(["search", "state space models", "--json", *full]) == 0
    assert json.loads(capsys.readouterr().out) == after_add
    assert main(["index", *common, "--add", str(extra)]) == 0
    assert "nothing to add" in capsys.readouterr().out
    assert main(["index", *common, "--add", str(extra), "--rebuild"]) == 1
    assert "do not go together" in capsys.readouterr().err
