"""Parsing the real seed pages, and loading user corpora with their errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rag.errors import CorpusError
from rag.index.corpus import corpus_hash, load_corpus, load_seed_pages, normalize_title, paper_id, parse_page

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "corpus"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def papers():
    return load_seed_pages(CORPUS)


def test_shipped_corpus_is_a_copy_of_the_four_pages():
    assert sorted(p.name for p in CORPUS.glob("*.txt")) == [
        "000_86e0861855a95b80.txt", "001_560043061fe9d83b.txt",
        "002_acaf6bd0a18b58c7.txt", "003_b76e11994ff6a1cd.txt"]


def test_real_corpus_has_441_unique_papers(papers):
    # 456 title/abstract entries across the four pages, 15 of them repeats of a paper on another page.
    # (The issue said 440; a per-pair check of titles and abstracts finds 441 distinct papers, see the note.)
    assert len(papers) == 441
    assert len({p.id for p in papers}) == 441
    assert len({normalize_title(p.title) for p in papers}) == 441
    assert Counter(len(p.sources) for p in papers) == {1: 426, 2: 15}


def test_entries_per_page():
    counts = {p.name: len(parse_page(p.read_text(encoding="utf-8"), p.name)) for p in sorted(CORPUS.glob("*.txt"))}
    assert counts == {"000_86e0861855a95b80.txt": 80, "001_560043061fe9d83b.txt": 207,
                      "002_acaf6bd0a18b58c7.txt": 66, "003_b76e11994ff6a1cd.txt": 103}


def test_glued_subscribe_title_is_split(papers):
    titles = {p.title for p in papers}
    assert "Base Models Beat Aligned Models at Randomness and Creativity" in titles
    assert "Building Bridges, Not Walls -- Advancing Interpretability by Unifying Feature, Data, and Model " \
           "Component Attribution" in titles
    assert not any(t.startswith("Subscribe") for t in titles)


def test_site_chrome_never_becomes_a_paper(papers):
    chrome = ("Get trending papers", "byAK and the research community", "Daily Papers", "Mar 11", "Aug 19")
    for p in papers:
        assert not any(p.title.startswith(c) or p.abstract.startswith(c) for c in chrome)
        assert p.title not in ("new", "Subscribe")


@pytest.mark.parametrize("title,opening", [
    ("Base Models Beat Aligned Models at Randomness and Creativity",
     "Alignment has quickly become a default ingredient in LLM development"),
    ("I am a Strange Dataset: Metalinguistic Tests for Language Models",
     "Statements involving metalinguistic self-reference"),
    ("OCR Hinders RAG: Evaluating the Cascading Impact of OCR on Retrieval-Augmented Generation",
     "Retrieval-augmented Generation (RAG) enhances Large Language Models (LLMs)"),
    ("The Policy Cliff: A Theoretical Analysis of Reward-Policy Maps in Large Language Models",
     "Reinforcement learning (RL) plays a crucial role in shaping the behavior"),
    ("[MASK] is All You Need", None),
    ("GraphFM: A Comprehensive Benchmark for Graph Foundation Model",
     "Foundation Models (FMs) serve as a general class"),
])
def test_known_titles_and_abstract_openings(papers, title, opening):
    by_title = {p.title: p for p in papers}
    assert title in by_title
    if opening:
        assert by_title[title].abstract.startswith(opening)


def test_duplicates_keep_every_source(papers):
    p = next(p for p in papers if p.title == "On the Opportunities and Risks of Foundation Models")
    assert set(p.sources) == {"000_86e0861855a95b80.txt", "002_acaf6bd0a18b58c7.txt"}


def test_blank_line_pages_parse_like_dense_pages():
    dense = "Title One\n" + "A" * 150 + "\nTitle Two\n" + "B" * 150 + "\n"
    spaced = "new\n\nSubscribe\n\nbyAK and the research community\n\nMar 11\n\n" + dense.replace("\n", "\n\n")
    assert parse_page(dense) == parse_page(spaced) == [("Title One", "A" * 150), ("Title Two", "B" * 150)]


def test_ids_are_stable_and_title_derived(papers):
    p = next(p for p in papers if p.title.startswith("ReFT: Representation Finetuning"))
    assert p.id == paper_id("ReFT: Representation Finetuning for Language Models")
    assert p.id == paper_id("  reft -- REPRESENTATION finetuning for language models!")  # normalised
    assert p.id == "pf213ddaf96"  # the same on every machine and run


def test_corpus_hash_changes_with_content(papers):
    from dataclasses import replace
    h = corpus_hash(papers)
    assert h == corpus_hash(list(reversed(papers)))
    assert h != corpus_hash([replace(papers[0], abstract=papers[0].abstract + " x")] + papers[1:])


def test_malformed_page_is_an_error():
    with pytest.raises(CorpusError, match="odd number"):
        parse_page("Only a title\n")
    with pytest.raises(CorpusError, match="does not look like"):
        parse_page("Title\nshort\n", "x.txt")


# --- user corpora ------------------------------------------------------------------

def test_jsonl_and_csv_load():
    jl = load_corpus(DATA / "tiny.jsonl")
    cs = load_corpus(DATA / "tiny.csv")
    assert [p.id for p in jl][:3] == [p.id for p in cs] == ["tiny-ssm", "tiny-bread", "tiny-retrieval"]
    assert jl[0].title == "Structured State Space Models for Long Sequences"
    assert jl[0].sources == ("tiny.jsonl",)


def test_id_is_optional(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"title": "A Paper", "abstract": "Text."}) + "\n")
    assert load_corpus(f)[0].id == paper_id("A Paper")


@pytest.mark.parametrize("content,match", [
    ('{"title": "A", "abstract": "x"}\n{"title": "B", "abstract": \n', r"c\.jsonl:2: invalid JSON"),
    ('{"title": "A", "abstract": "x"}\n\n{"abstract": "y"}\n', r"c\.jsonl:3: missing title"),
    ('{"id": "1", "title": "A", "abstract": "x"}\n{"id": "1", "title": "B", "abstract": "y"}\n',
     r"c\.jsonl:2: duplicate id '1' \(first on line 1\)"),
    ('[1, 2]\n', r"c\.jsonl:1: expected a JSON object"),
    ('', "empty"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, match):
    f = tmp_path / "c.jsonl"
    f.write_text(content)
    with pytest.raises(CorpusError, match=match):
        load_corpus(f)


def test_csv_errors(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("name,abstract\nA,x\n")
    with pytest.raises(CorpusError, match="title and abstract columns"):
        load_corpus(f)
    f.write_text("title,abstract\nA,x\nB,\n")
    with pytest.raises(CorpusError, match=r"c\.csv:3: missing abstract"):
        load_corpus(f)
    f.write_text("title,abstract\nA,x,extra\n")
    with pytest.raises(CorpusError, match=r"c\.csv:2: more cells"):
        load_corpus(f)


def test_bad_files(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(CorpusError, match="unknown corpus format .txt"):
        load_corpus(tmp_path / "c.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"title": "\xff\xfe"}\n')
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        load_corpus(bad)
    empty_dir = tmp_path / "pages"
    empty_dir.mkdir()
    with pytest.raises(CorpusError, match="no \\*.txt seed pages"):
        load_corpus(empty_dir)


# --- types and sizes -------------------------------------------------------------------

@pytest.mark.parametrize("row,match", [
    ({"title": 123, "abstract": "An abstract."}, r"c\.jsonl:1: title must be text, got a number"),
    ({"title": "A", "abstract": ["a", "list"]}, r"c\.jsonl:1: abstract must be text, got a list"),
    ({"title": "A", "abstract": {"x": 1}}, r"c\.jsonl:1: abstract must be text, got an object"),
    ({"title": True, "abstract": "x"}, r"c\.jsonl:1: title must be text, got true/false"),
    ({"id": [1], "title": "A", "abstract": "x"}, r"c\.jsonl:1: id must be text or a whole number, got a list"),
    ({"title": "A\udc80", "abstract": "x"}, r"c\.jsonl:1: title holds a lone surrogate"),
])
def test_non_text_fields_are_errors_naming_the_row(tmp_path, row, match):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps(row) + "\n")


# --- Parquet ---------------------------------------------------------------------------

def write_parquet(path: Path, columns: dict) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_loads_like_jsonl(tmp_path):
    rows = [json.loads(line) for line in (DATA / "tiny.jsonl").read_text().splitlines()]
    f = write_parquet(tmp_path / "tiny.parquet", {
        "Title": [r["title"] for r in rows], "abstract": [r["abstract"] for r in rows],
        "id": [r["id"] for r in rows], "year": [2024] * len(rows)})  # other columns are ignored
    got, want = load_corpus(f), load_corpus(DATA / "tiny.jsonl")
    assert [(p.id, p.title, p.abstract) for p in got] == [(p.id, p.title, p.abstract) for p in want]
    assert got[0].sources == ("tiny.parquet",) and corpus_hash(got) == corpus_hash(want)


def test_parquet_without_ids_derives_them(tmp_path):
    f = write_parquet(tmp_path / "c.parquet", {"title": ["A Paper"], "abstract": ["Text."]})
    assert load_corpus(f)[0].id == paper_id("A Paper")


@pytest.mark.parametrize("columns,match", [
    ({"name": ["A"], "abstract": ["x"]}, r"c\.parquet: Parquet columns must include title and abstract"),
    ({"title": ["A", None], "abstract": ["x", "y"]}, r"c\.parquet: row 2: missing title"),
    ({"title": ["A", "B"], "abstract": ["x", ""]}, r"c\.parquet: row 2: missing abstract"),
    ({"id": ["1", "1"], "title": ["A", "B"], "abstract": ["x", "y"]}, r"c\.parquet: row 2: duplicate id '1' \(first on row 1\)"),
    ({"title": ["A"], "abstract": [3]}, r"c\.parquet: row 1: abstract is int, not text"),
    ({"title": [], "abstract": []}, "empty"),
])
def test_parquet_errors_name_the_row(tmp_path, columns, match):
    pa = pytest.importorskip("pyarrow")
    if columns.get("title") == []:
        columns = {"title": pa.array([], pa.string()), "abstract": pa.array([], pa.string())}
    f = write_parquet(tmp_path / "c.parquet", columns)
    with pytest.raises(CorpusError, match=match):
        load_corpus(f)


def test_a_numeric_id_is_fine(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": 7, "title": "A", "abstract": "x"}) + "\n")
    assert load_corpus(f)[0].id == "7"


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: invalid JSON"):
        load_corpus(f)
    f.write_text('{"title": "A", "abstract": "x", "n": ' + "9" * 5000 + "}\n")  # over Python's int-digits limit
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: invalid JSON"):
        load_corpus(f)


def test_over_long_abstracts_and_titles_are_cut_with_a_warning_naming_the_row(tmp_path, caplog):
    f = tmp_path / "c.jsonl"
    rows = [{"title": "Short", "abstract": "Fine."},
            {"title": "T " * 400, "abstract": "word " * 1_000_000}]  # a 5 MB abstract
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING", logger="rag.index.corpus"):
        papers = load_corpus(f, max_abstract_chars=20_000)
    assert papers[0].abstract == "Fine."
    assert 19_000 < len(papers[1].abstract) <= 20_000 and papers[1].abstract.endswith("word")
    assert len(papers[1].title) <= 500
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "c.jsonl:2: abstract is 4,999,999 characters; indexed only its first" in warned
    assert "c.jsonl:2: title is" in warned


def test_a_csv_abstract_longer_than_the_csv_field_limit_is_cut_not_refused(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("title,abstract\nA," + "word " * 60_000 + "\n")  # 300 KB field; csv's own limit is 128 KiB
    assert len(load_corpus(f)[0].abstract) <= 20_000


def test_seed_pages_are_capped_too(tmp_path):
    (tmp_path / "p.txt").write_text("Title One\n" + "A sentence here. " * 2000 + "\n")
    paper = load_corpus(tmp_path, max_abstract_chars=1000)[0]
    assert len(paper.abstract) <= 1000


def test_damaged_parquet(tmp_path):
    f = tmp_path / "c.parquet"
    f.write_bytes(b"PAR1 this is not really parquet PAR1")
    with pytest.raises(CorpusError, match=r"c\.parquet: not a readable Parquet file \(.+\); re-export it"):
        load_corpus(f)
