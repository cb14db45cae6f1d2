"""Odd files and text in any script (issue 23): devices and FIFOs, JSONL line ends, non-Latin titles,
CSV byte-order marks, new emoji, enormous setting values."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest

from rag.answer.program_files import read_program_file
from rag.batch import inputs
from rag.batch.output import Output, write_csv
from rag.cli.main import main
from rag.errors import CorpusError, EvalError, ProgramError, RagError, SettingsError
from rag.evaluation import seed
from rag.evaluation.harness import read_report
from rag.index.add import add_papers
from rag.index.corpus import load_corpus, normalize_title, paper_id
from rag.pipeline import validate_question
from rag.settings import Settings

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent
ABSTRACT = "An abstract long enough to be one: we study the matter at length with experiments and ablations of all parts."


def within(fn, seconds: float = 20):
    """fn()'s result or exception, or a failure if it is still blocked after `seconds` (a hang)."""
    box: dict = {}

    def go() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back below
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail("blocked: a read of a FIFO hangs")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def fifo(tmp_path):
    made = []

    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    for path in made:  # release a reader left blocked in open() (before the fix)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


# --- not a regular file -------------------------------------------------------------------

def test_a_fifo_corpus_is_refused_not_read(fifo):
    with pytest.raises(CorpusError, match="not a regular file"):
        within(lambda: load_corpus(fifo("corpus.jsonl")))


def test_a_corpus_linked_to_a_device_is_refused(tmp_path):
    link = tmp_path / "corpus.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(CorpusError, match="not a regular file") as e:
        load_corpus(link)
    assert "\n" not in str(e.value)


def test_a_fifo_batch_input_is_refused(fifo, fake_models, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    q = fifo("q.txt")
    assert within(lambda: main(["batch", str(q), "-o", str(tmp_path / "out.jsonl")])) == 1
    assert "not a regular file" in capsys.readouterr().err


def test_a_fifo_eval_set_is_refused(fifo):
    with pytest.raises(EvalError, match="not a regular file"):
        within(lambda: seed.load_set(fifo("set.jsonl")))


def test_a_fifo_program_file_is_refused(fifo):
    with pytest.raises(ProgramError, match="not a regular file"):
        within(lambda: read_program_file(fifo("program.json")))


# --- JSONL lines end at "\n" only ------------------------------------------------------------

SEPARATORS = "\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c"


def test_add_rewrites_a_corpus_whose_abstracts_hold_line_separators(tiny_settings, embedder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    odd = {"id": "odd", "title": "Odd separators", "abstract": f"Before{SEPARATORS}after. " + ABSTRACT}
    corpus.write_text(json.dumps(odd, ensure_ascii=False) + "\n" + (DATA / "tiny.jsonl").read_text(), encoding="utf-8")
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "new", "title": "A new paper", "abstract": ABSTRACT}) + "\n")
    before = [(p.id, p.abstract) for p in load_corpus(corpus)]
    add_papers(tiny_settings.replace(corpus=str(corpus)), extra, embedder)
    assert [(p.id, p.abstract) for p in load_corpus(corpus)] == [*before, ("new", ABSTRACT)]


def test_a_report_whose_answers_hold_line_separators_reads_back(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    rows = [{"id": "a", "answer": f"one{SEPARATORS}two"}, {"id": "b", "answer": "three"}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    assert read_report(tmp_path)[1] == rows


# --- titles in any script ---------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [
    ("大型语言模型的推理能力研究", "多模态模型的视觉理解研究"),
    ("Масштабирование языковых моделей", "Обучение с подкреплением"),
    ("Scaling laws for α-entmax", "Scaling laws for β-entmax"),
    ("Ἀρχή", "Τέλος"),
])
def test_different_titles_in_any_script_get_different_ids(a, b):
    assert normalize_title(a) != normalize_title(b) and paper_id(a) != paper_id(b)


def test_title_normalisation_still_folds_case_accents_and_punctuation():
    assert paper_id("Café: Crème!") == paper_id("cafe creme")
    assert paper_id("Масштабирование  моделей") == paper_id("МАСШТАБИРОВАНИЕ, моделей.")
    assert paper_id("Ｆｕｌｌｗｉｄｔｈ 语言") == paper_id("fullwidth 语言")  # NFKC


def test_ids_of_latin_titles_are_unchanged():
    assert paper_id("Structured State Space Models for Long Sequences") == "p9c832403f4"
    assert paper_id("Café crème") == "p939d8bd562"
    ids = [p.id for p in load_corpus(ROOT / "rag" / "seed_pages")]
    assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == \
        "ae0c5e9529b2dc9d53f14c902e6f64a8ee3749442910b4d05af9e3c01b491eef"


def test_two_chinese_papers_without_ids_load_as_two(tmp_path):
    path = tmp_path / "zh.jsonl"
    path.write_text("".join(json.dumps({"title": t, "abstract": ABSTRACT}, ensure_ascii=False) + "\n"
                            for t in ("大型语言模型的推理能力研究", "多模态模型的视觉理解研究")), encoding="utf-8")
    assert len({p.id for p in load_corpus(path)}) == 2
    pages = tmp_path / "pages"
    pages.mkdir()
    page = f"大型语言模型的推理能力研究\n{ABSTRACT}\n多模态模型的视觉理解研究\n{ABSTRACT} More.\n"
    (pages / "a.txt").write_text(page, encoding="utf-8")
    assert [p.title for p in load_corpus(pages)] == ["大型语言模型的推理能力研究", "多模态模型的视觉理解研究"]


# --- CSV headers ---------------------------------------------------------------------------------

def test_a_corpus_csv_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "tiny.csv").read_bytes())
    assert [p.id for p in load_corpus(path)] == [p.id for p in load_corpus(DATA / "tiny.csv")]


@pytest.mark.parametrize("header", ["\ufeffquestion,id", "Question,ID", "\ufeff QUESTION ,Id"])
def test_a_batch_csv_header_matches_like_the_corpus_one(header, fake_models, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    q = tmp_path / "q.csv"
    q.write_text(f"{header}\nWhat are state space models?,q1\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(q), "-o", str(out)]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["question"]) for r in rows] == [("q1", "What are state space models?")]


@pytest.mark.parametrize("name,text", [("q.jsonl", '{"id": "q1", "question": "What are state space models?"}'),
                                       ("q.txt", "What are state space models?")])
def test_a_byte_order_mark_before_the_first_batch_line_is_dropped(name, text):
    rows = list(inputs.read_rows(io.BytesIO(b"\xef\xbb\xbf" + text.encode() + b"\n"), inputs.detect_format(name)))
    assert [(r.question, r.error) for r in rows] == [("What are state space models?", None)]


# --- questions and settings ------------------------------------------------------------------------

@pytest.mark.parametrize("question", ["what shakes like 🫨?", "what is \U000e0999 here", "ReFT in हिन्दी?"])
def test_new_and_unassigned_characters_are_accepted_in_questions(question):
    assert validate_question(question) == question


@pytest.mark.parametrize("question", ["nul\x00", "c1\x85c1", "bell\x07", "lone\ud800"])
def test_controls_and_surrogates_are_still_refused(question):
    with pytest.raises(RagError):
        validate_question(question)


@pytest.mark.parametrize("var,value", [("RAG_K", "1" + "0" * 5000), ("RAG_K", "9" * 5000 + "x"),
                                       ("RAG_TEMPERATURE", "1e5000"), ("RAG_RETRIEVAL", "z" * 5000)])
def test_an_enormous_setting_value_is_cut_in_its_error(var, value):
    with pytest.raises(SettingsError) as e:
        Settings.load(env={var: value})
    assert len(str(e.value)) < 400 and var in str(e.value)


def test_batch_output_readers_keep_line_separators_inside_answers(tmp_path):
    path = tmp_path / "out.jsonl"
    out = Output(path)
    out.write({"id": "a", "question": "q", "answer": f"one{SEPARATORS}two", "error": None})
    out.write({"id": "b", "question": "q", "answer": None, "error": "failed"})
    out.close()
    again = Output(path)
    assert again.done() == ({"a"}, {"b"})
    again.drop({"b"})
    again.close()
    write_csv(path, tmp_path / "out.csv")
    rows = list(csv.reader((tmp_path / "out.csv").open(newline="", encoding="utf-8")))
    assert [r[0] for r in rows[1:]] == ["a"] and rows[1][2] == f"one{SEPARATORS}two"
