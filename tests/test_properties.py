"""Property-based tests (hypothesis): arbitrary input never raises anything but the project's own errors.

Covered: the corpus parsers (seed pages, JSONL and CSV files, including JSON of any shape),
the batch input readers (bytes of any kind, in each format), citation mapping
(`map_citations`, with answers, source lists and passages of any shape), question
validation, sentence splitting, terminal-output cleaning and settings from the
environment. Each also checks the invariants its callers rely on.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.answer.program import ABSTAIN_TEXT, map_citations
from rag.batch import inputs
from rag.batch import run as batch
from rag.errors import CorpusError, RagError, SettingsError
from rag.index.corpus import Paper, load_corpus, parse_page
from rag.pipeline import MAX_QUESTION_CHARS, validate_question
from rag.settings import Settings
from rag.text import MAX_SENTENCE_CHARS, split_sentences, strip_control

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that stresses the parsers: brackets, digits, field markers, quotes, newlines, controls, surrogates.
tricky = st.text(alphabet=st.sampled_from(list("[]#(),;:.!? \n\t\"'{}\\\r\x00\x1b\x85\u2028\u200b\ufeffaA1é漢🙂"))
                 | st.characters(), max_size=300)
any_text = st.one_of(st.text(max_size=300), tricky)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=10)


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="rag-prop-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --- the corpus -------------------------------------------------------------------------


@SETTINGS
@given(any_text)
def test_seed_page_parser_raises_only_corpus_errors(text):
    try:
        pairs = parse_page(text)
    except CorpusError:
        return
    assert all(isinstance(t, str) and isinstance(a, str) and t and a for t, a in pairs)


def _check_papers(papers: list[Paper]) -> None:
    assert papers and len({p.id for p in papers}) == len(papers)
    for p in papers:
        assert all(isinstance(v, str) and v for v in (p.id, p.title, p.abstract))
        assert not any("\ud800" <= c <= "\udfff" for c in p.title + p.abstract + p.id)


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["id", "title", "abstract", "extra"]), json_values, max_size=4),
                max_size=5))
def test_jsonl_corpus_of_any_json_shape_loads_or_names_the_row(scratch, rows):
    f = scratch / "c.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        papers = load_corpus(f)
    except CorpusError as e:
        assert "c.jsonl" in str(e)
        return
    _check_papers(papers)


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from(["c.jsonl", "c.csv"]))
def test_corpus_files_of_any_bytes_load_or_raise_a_corpus_error(scratch, data, name):
    f = scratch / name
    f.write_bytes(data)
    try:
        papers = load_corpus(f)
    except CorpusError:
        return
    _check_papers(papers)


@SETTINGS
@given(st.lists(st.lists(any_text, min_size=1, max_size=4), max_size=5))
def test_csv_corpus_of_any_cells_loads_or_names_the_row(scratch, cells):
    import csv

    f = scratch / "c.csv"
    with open(f, "w", encoding="utf-8", errors="surrogatepass", newline="") as out:
        w = csv.writer(out)
        w.writerow(["id", "title", "abstract"])
        w.writerows(cells)
    try:
        papers = load_corpus(f)
    except CorpusError:
        return
    _check_papers(papers)


# --- batch input ------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=600) | any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
       st.sampled_from(inputs.FORMATS))
def test_batch_readers_stream_any_bytes_as_rows(data, fmt):
    try:
        rows = list(inputs.read_rows(io.BytesIO(data), fmt, "q"))
    except RagError:  # only a CSV with no question column, or not UTF-8, stops a batch
        assert fmt == "csv"
        return
    for row in rows:
        assert isinstance(row.id, str) and row.id and isinstance(row.line, int) and row.line >= 1
        assert row.error is None or isinstance(row.error, str)
        if row.error is None and fmt != "csv":
            assert isinstance(row.question, str)
        json.dumps(batch.error_record(row, "x"))  # every row can be written out


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["id", "question", "answer", "facts", "error"]), json_values,
                                max_size=4), max_size=6))
def test_jsonl_batch_rows_of_any_json_shape_are_rows_or_row_errors(rows):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    out = list(inputs.read_rows(io.BytesIO(data), "jsonl", "q.jsonl"))
    assert len(out) == len(rows)
    for row, raw in zip(out, rows, strict=True):
        assert (row.error is None) == isinstance(raw.get("question"), str)
        record = batch.error_record(row, "x")
        assert set(record) >= {"id", "question", "answer", "error"}  # carried fields never clobber these
        assert record["error"] == "x" and record["id"] == row.id


# --- citations ----------------------------------------------------------------------------

sources = st.one_of(st.none(), any_text, st.integers(), st.lists(st.one_of(st.integers(), any_text, st.none()), max_size=5))


@SETTINGS
@given(any_text, sources, st.lists(any_text, max_size=6))
def test_map_citations_only_ever_cites_given_passages(answer, raw_sources, passages):
    cited = map_citations(answer, raw_sources, passages)
    n = len(passages)
    assert all(isinstance(x, int) and 1 <= x <= n for x in cited.numbers)
    assert len(set(cited.numbers)) == len(cited.numbers)
    if cited.abstained:
        assert cited.answer == ABSTAIN_TEXT and cited.numbers == []
    else:
        assert cited.numbers and cited.answer.strip() and "[[ ##" not in cited.answer
        markers = {int(m) for m in re.findall(r"\[(\d+)\]", cited.answer)}
        assert markers <= set(cited.numbers), (cited.answer, cited.numbers)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["[1]", "[2]", "[9]", "[", "]", "[1, 9]", "[[9]", "2]", " ", "x", "7", "0", ",", "\n"]),
                max_size=12),
       st.integers(min_value=0, max_value=3))
def test_bracket_soup_never_leaves_a_marker_to_a_missing_passage(parts, n):
    cited = map_citations("A claim " + "".join(parts), [], ["some passage text"] * n)
    markers = {int(m) for m in re.findall(r"\[(\d+)\]", cited.answer)}
    assert markers <= set(range(1, n + 1))


# --- questions, sentences, terminal text, settings -----------------------------------------


@SETTINGS
@given(st.one_of(any_text, st.text(min_size=1990, max_size=2100), st.none(), st.integers(), st.binary(max_size=10),
                 st.lists(st.text(max_size=3), max_size=2)))
def test_question_validation_returns_a_clean_question_or_a_rag_error(question):
    try:
        q = validate_question(question)
    except RagError:
        return
    assert isinstance(q, str) and q and q == q.strip() and len(q) <= MAX_QUESTION_CHARS
    assert "  " not in q and "\n" not in q
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in q)


@SETTINGS
@given(any_text | st.text(alphabet=st.sampled_from(list("Ab. e.g. [1] ?!\"'(")), max_size=3000))
def test_sentence_spans_are_ordered_bounded_and_inside_the_text(text):
    spans = split_sentences(text)
    last = 0
    for s, e in spans:
        assert last <= s < e <= len(text) and e - s <= MAX_SENTENCE_CHARS
        assert text[s:e].strip()
        last = e


@SETTINGS
@given(any_text)
def test_strip_control_leaves_no_control_character(text):
    clean = strip_control(text)
    assert not any((ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F for c in clean)


numeric = [name for name, typ in {f: Settings.__dataclass_fields__[f].type for f in Settings.names()}.items()
           if typ in ("int", "float")]


@SETTINGS
@given(st.sampled_from(numeric), any_text | st.sampled_from(["nan", "-inf", "1e309", "-0", "0x10", " 7 ", "1_000"]))
def test_settings_from_any_environment_value_are_valid_or_a_settings_error(name, value):
    try:
        s = Settings.load(env={f"RAG_{name.upper()}": value})
    except SettingsError as e:
        assert "\n" not in str(e)
        return
    lo, hi = Settings.__dataclass_fields__[name].metadata["range"]
    assert lo <= getattr(s, name) <= hi
