"""The `rag` command: --json shapes, human output, exit codes and one-line errors.

In-process tests swap the real embedder and LM for the keyword embedder and
DummyLM; subprocess tests run the real console entry point for the error paths.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from dspy.utils import DummyLM

from rag.cli.main import main
from rag.pipeline import Pipeline

DATA = Path(__file__).parent / "data"


@pytest.fixture
def cli(monkeypatch, tmp_path, fake_models, capsys):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    fake_models.lm = DummyLM([{"answer": "They initialise the state matrix with HiPPO [1].", "sources": "[1]"}])

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_papers_json_shape(cli):
    code, out, _ = cli("papers", "--json")
    papers = json.loads(out)
    assert code == 0 and len(papers) == 6
    assert set(papers[0]) == {"paper_id", "title", "abstract", "sources", "flags", "suspicious_sentences"}
    assert papers[0]["flags"] == [] and papers[0]["suspicious_sentences"] == []
    assert papers[0]["sources"] == ["tiny.jsonl"]


def test_papers_human(cli):
    code, out, err = cli("papers")
    assert code == 0 and out.splitlines()[0] == "tiny-ssm  Structured State Space Models for Long Sequences"
    assert "6 papers" in err


def test_index_builds_then_reports_up_to_date(cli):
    code, out, err = cli("index")
    assert code == 0 and "6 papers" in out and "built in" in out
    assert "  chunking 6 papers\n  embedding 6 chunks and 18 sentences\n  BM25 over 6 chunks\n" in err  # each step shown
    code, out, _ = cli("index")
    assert code == 0 and "up to date" in out
    code, out, _ = cli("index", "--rebuild")
    assert code == 0 and "built in" in out


def test_search_json_shape(cli):
    code, out, _ = cli("search", "state space models", "--k", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["question"] == "state space models"
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    assert set(data["results"][0]) == {"rank", "paper_id", "title", "score", "text"}
    assert data["results"][0]["paper_id"] == "tiny-ssm"


def test_search_k_larger_than_corpus(cli):
    code, out, _ = cli("search", "models", "--k", "500", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 6


def test_ask_json_shape(cli):
    code, out, _ = cli("ask", "How are state space models initialised?", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"question", "answer", "abstained", "citations", "passages", "provenance"}
    assert data["citations"] == [{"n": 1, "paper_id": "tiny-ssm", "title": "Structured State Space Models for Long Sequences"}]
    assert set(data["passages"][0]) == {"n", "paper_id", "title", "text", "score"}
    assert set(data["provenance"]) >= {"lm", "index", "program", "latency_s", "prompt_tokens", "completion_tokens"}
    assert data["provenance"]["lm"].startswith("local/")


def test_ask_human_prints_answer_and_references(cli):
    code, out, _ = cli("ask", "How are state space models initialised?")
    assert code == 0
    assert out.startswith("They initialise the state matrix with HiPPO [1].")
    assert "References:\n  [1] Structured State Space Models for Long Sequences (tiny-ssm)" in out


def test_library_warnings_are_quiet_unless_verbose(cli, monkeypatch):
    opening = Pipeline.open.__func__

    def importing_dspy(cls, settings, **kw):  # importing dspy while the pipeline opens sets its logger to INFO
        logging.getLogger("dspy").setLevel(logging.INFO)
        return opening(cls, settings, **kw)
    monkeypatch.setattr(Pipeline, "open", classmethod(importing_dspy))
    code, _, _ = cli("ask", "How are state space models initialised?")
    assert code == 0
    assert not logging.getLogger("dspy.clients.lm").isEnabledFor(logging.WARNING)


def test_no_rebuild_is_a_one_line_error(cli):
    code, out, err = cli("search", "x", "--no-rebuild")
    assert code == 1 and out == "" and err.startswith("error: no index has been built; run `rag index`")
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv,code,message", [
    (["ask", ""], 1, "error: the question is empty"),
    (["ask", "   "], 1, "error: the question is empty"),
    (["ask", "x" * 100_000], 1, "error: the question is 100,000 characters; the limit is 2,000"),
    (["ask", "bad\x01question"], 1, "error: the question contains control characters (U+0001)"),
    (["search", "x", "--k", "0"], 1, "error: k must be at least 1"),
    (["papers", "--corpus", "/nonexistent/corpus.jsonl"], 1, "error: corpus /nonexistent/corpus.jsonl does not exist"),
    (["ask", "x", "--corpus", "/nonexistent"], 1, "error: corpus /nonexistent does not exist"),
    (["search", "x", "--retrieval", "magic"], 2, "invalid choice"),
    (["frobnicate"], 2, "invalid choice"),
    ([], 2, "required"),
])
def test_errors_exit_codes_and_one_line_messages(argv, code, message, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "rag", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    if code == 1:
        assert proc.stderr.count("\n") == 1


def test_unknown_environment_setting_is_an_error():
    env = {"PATH": "/usr/bin:/bin", "RAG_TOPK": "3"}
    proc = subprocess.run([sys.executable, "-m", "rag", "papers"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown environment variable RAG_TOPK")


def test_corrupt_index_error_from_the_command(cli, tmp_path):
    assert cli("index")[0] == 0
    faiss_file = next((tmp_path / "indexes").glob("idx-*/dense.faiss"))
    faiss_file.write_bytes(b"broken")
    code, _, err = cli("search", "state space")
    assert code == 1 and "is corrupt" in err and "rag index --rebuild" in err


def test_remote_backend_without_key_fails_before_any_work(cli, monkeypatch, fake_models):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake_models.lm = None  # the real backend
    code, _, err = cli("ask", "state space", "--lm", "openai/gpt-4o-mini")
    assert code == 1 and "needs an API key: set OPENAI_API_KEY" in err


def test_unreachable_server_is_a_one_line_error(cli, monkeypatch, fake_models):
    fake_models.lm = None  # the real backend
    monkeypatch.setenv("RAG_TIMEOUT", "5")
    assert cli("index")[0] == 0
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    code, _, err = cli("ask", "state space models", "--lm", "openai/some-model", "--api-base", "http://127.0.0.1:9/v1")
    assert code == 1 and err.startswith("error: LM call failed") and "RAG_API_BASE" in err
    assert err.count("\n") == 1


def test_help_shows_examples():
    for cmd in ("index", "papers", "search", "ask", "chat"):
        proc = subprocess.run([sys.executable, "-m", "rag", cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "examples:" in proc.stdout and "rag " in proc.stdout


def test_settings_lists_every_field():
    proc = subprocess.run([sys.executable, "-m", "rag", "settings"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "RAG_API_KEY": "sekret"})
    assert proc.returncode == 0 and "RAG_K " in proc.stdout and "RAG_LM " in proc.stdout
    assert "sekret" not in proc.stdout


# --- hostile but fair input -----------------------------------------------------------------

@pytest.fixture
def evil_corpus(tmp_path, monkeypatch):
    rows = [{"id": "ansi", "title": "\x1b[2J\x1b]0;pwned\x07Evil \x1b[31mred\x1b[0m title \x9b31m",
             "abstract": "State space models \x1b[5mblink\x1b[0m scale linearly with sequence length."},
            {"id": "plain", "title": "Sourdough Fermentation", "abstract": "Acidity rises fastest at 30 degrees."}]
    f = tmp_path / "evil.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("RAG_CORPUS", str(f))
    return f


def test_terminal_escapes_in_titles_never_reach_the_terminal(cli, evil_corpus):
    for argv in (["papers"], ["search", "state space models"]):
        code, out, _ = cli(*argv)
        assert code == 0 and "Evil red title" in out
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, argv
    code, out, _ = cli("papers", "--json")
    assert code == 0 and "\x1b" not in out and "\x9b" not in out
    assert "\\u001b[2J" in out and "\\u009b31m" in out  # escaped, and the JSON still round-trips
    assert json.loads(out)[0]["title"].startswith("\x1b[2J")


def test_terminal_escapes_in_answers_are_removed_from_human_output(cli, fake_models):
    # no digits or capitals in the sequences: the claim check would decline a name or number in no passage
    fake_models.lm = DummyLM([{"answer": "They scale \x1b[mlinearly\x1b[m [1].\x07\x1b]lpwned\x07", "sources": "[1]"}])
    code, out, _ = cli("ask", "How do state space models scale?")
    assert code == 0 and out.startswith("They scale linearly [1].") and "\x1b" not in out and "\x07" not in out


@pytest.mark.parametrize("question", ["\u200b\u200c\u2060", "\u200b \ufeff \u00ad", "\u2062\t\u200e"])
def test_a_question_of_only_invisible_characters_is_empty(cli, fake_models, question):
    code, out, err = cli("ask", question)
    assert code == 1 and err.startswith("error: the question is empty") and out == ""


def test_invalid_utf8_in_argv_is_named_as_such(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([sys.executable.encode(), b"-m", b"rag", b"ask", b"caf\xc3 au lait?"], capture_output=True,
                          env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.decode() == ("error: the question is not valid UTF-8 (byte 0xC3); type it again or re-save the "
                                    "text as UTF-8\n")


def test_a_prompt_that_cannot_fit_the_context_fails_before_anything_loads(cli, monkeypatch, fake_models, tmp_path):
    import rag.pipeline

    fake_models.lm = None  # the real local backend, whose load must never start
    monkeypatch.setattr(rag.pipeline, "make_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setenv("RAG_EVIDENCE_TOKENS", "5000")
    code, _, err = cli("ask", "state space models")
    assert code == 1 and err.count("\n") == 1 and not (tmp_path / "indexes").exists()
    assert err.startswith("error: RAG_EVIDENCE_TOKENS=5000 and RAG_MAX_TOKENS=120 need about 6,320 tokens")
    assert "RAG_N_CTX=4,096" in err
    monkeypatch.delenv("RAG_EVIDENCE_TOKENS")
    code, _, err = cli("ask", "state space models", "--k", "100000")  # k is bounded by its range
    assert code == 1 and err.startswith("error: k must be at most 1000, got 100000")
    assert not (tmp_path / "indexes").exists()
    fake_models.lm = DummyLM([{"answer": "They use HiPPO [1].", "sources": "[1]"}] * 3)
    monkeypatch.setattr(rag.pipeline, "make_lm", lambda *a, **k: fake_models.lm)
    # a large k is fine: the model reads at most RAG_EVIDENCE_TOKENS of evidence however many papers come back
    code, out, _ = cli("ask", "state space models", "--k", "900", "--json")
    assert code == 0 and len(json.loads(out)["passages"]) <= 6


def test_a_tampered_bm25_index_is_a_one_line_error_for_every_mode(cli, tmp_path):
    import numpy as np

    from rag.index.store import manifest

    assert cli("index")[0] == 0
    path = next((tmp_path / "indexes").glob("idx-*"))
    np.save(path / "bm25" / "indices.csc.index.npy", np.load(path / "bm25" / "indices.csc.index.npy") + 50)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **manifest(path)}))  # checksums "fixed" too
    for mode in ("hybrid", "bm25", "dense"):
        code, out, err = cli("search", "state space", "--retrieval", mode, "--no-rebuild")
        assert code == 1 and out == "" and err.count("\n") == 1
        assert "BM25 index disagrees with the chunks" in err and "rag index --rebuild" in err


def test_a_5mb_abstract_is_cut_with_a_warning_and_the_index_builds(cli, tmp_path, monkeypatch, caplog):
    f = tmp_path / "big.jsonl"
    f.write_text(json.dumps({"id": "big", "title": "Huge", "abstract": "word " * 1_000_000}) + "\n"
                 + json.dumps({"id": "small", "title": "Small", "abstract": "A short abstract."}) + "\n")
    monkeypatch.setenv("RAG_CORPUS", str(f))
    code, out, err = cli("index")
    assert code == 0 and "2 papers" in out
    assert "big.jsonl:1: abstract is 4,999,999 characters; indexed only its first 19,999" in caplog.text
