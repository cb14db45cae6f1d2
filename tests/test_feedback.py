"""Ratings (rag/feedback.py): stored durably at once, readable while being written, exported as eval rows
that `rag eval --set` and `rag optimize --train` accept; `rag feedback list|stats|export`."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rag.errors import RagError
from rag.feedback import FeedbackStore, db_path, export_rows, label
from rag.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def result(question="What are state space models?", cited=("tiny-ssm",), abstained=False, answer="SSMs are ... [1]."):
    passages = [{"n": i, "paper_id": p, "title": p, "text": "...", "score": 0.5}
                for i, p in enumerate([*cited, "tiny-bread"], 1)]
    return {"question": question, "answer": answer, "abstained": abstained,
            "citations": [] if abstained else [{"n": i, "paper_id": p, "title": p} for i, p in enumerate(cited, 1)],
            "passages": passages, "provenance": {"lm": "fake", "index": "x", "program": "baseline"},
            "shape": "specific", "verdict": None, "claims": []}


@pytest.fixture
def store(tmp_path) -> FeedbackStore:
    return FeedbackStore(db_path(tmp_path / "cache"))


def test_a_rating_is_one_row_with_the_whole_result(store):
    r = result()
    row_id = store.add(r, 1)
    store.correct(row_id, "unsupported_source", source_n=2)
    [row] = store.rows()
    assert row["id"] == row_id and row["rating"] == 1 and row["question"] == r["question"]
    assert row["result"] == r, "the whole ask --json result, provenance included"
    assert (row["correction"], row["source_n"], row["correction_text"]) == ("unsupported_source", 2, None)
    assert row["time"].endswith("+00:00")
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("args, message", [
    ((0,), r"1 \(like\) or -1"),
    ((-1, "nonsense"), "is not one of"),
    ((-1, "right_answer", "  "), "needs the answer"),
    ((-1, "unsupported_source"), "needs the source"),
    ((-1, "unsupported_source", None, 7), r"\[7\] is not one of this answer.s 2 sources"),
])
def test_a_rating_the_export_could_not_use_is_refused(store, args, message):
    with pytest.raises(RagError, match=message):
        store.add(result(), *args)
    assert store.rows() == []


def _rate_then_die(path: str, n: int) -> None:
    store = FeedbackStore(path)
    for i in range(n):
        store.add(result(question=f"question {i}"), 1)
    os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown: what was committed must be there


def test_ratings_survive_a_killed_writer(tmp_path):
    path = db_path(tmp_path)
    proc = multiprocessing.get_context("spawn").Process(target=_rate_then_die, args=(str(path), 5))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert [r["question"] for r in FeedbackStore(path).rows()] == [f"question {i}" for i in range(5)]


def test_readable_while_another_connection_is_writing(store):
    store.add(result(question="first"), 1)
    writer = sqlite3.connect(store.path, timeout=1)
    writer.execute("BEGIN IMMEDIATE")  # the chat in the middle of a write
    writer.execute("INSERT INTO ratings (time, question, result, rating) VALUES ('t', 'second', '{}', 1)")
    try:
        assert [r["question"] for r in store.rows()] == ["first"], "a reader sees the last commit, and is not blocked"
        assert store.stats()["ratings"] == 1
    finally:
        writer.commit()
        writer.close()
    assert [r["question"] for r in store.rows()] == ["first", "second"]


def _row(rating, res, correction=None, text=None, n=None, i=1):
    return {"id": i, "time": "2026-01-01T00:00:00+00:00", "question": res["question"], "result": res,
            "rating": rating, "correction": correction, "correction_text": text, "source_n": n}


def test_the_export_mapping():
    liked, _ = label(_row(1, result(cited=("tiny-ssm", "tiny-rl"))))
    assert (liked["type"], liked["gold_paper_ids"], liked["facts"]) == ("multi", ["tiny-ssm", "tiny-rl"], [])
    assert liked["id"] == "fb-1" and liked["answer"] == "SSMs are ... [1]."
    # a cited source the user says does not support it is not gold
    trimmed, _ = label(_row(1, result(cited=("tiny-ssm", "tiny-rl")), "unsupported_source", n=2))
    assert (trimmed["type"], trimmed["gold_paper_ids"]) == ("single", ["tiny-ssm"])
    abstain, _ = label(_row(-1, result(), "should_abstain"))
    assert (abstain["type"], abstain["gold_paper_ids"]) == ("unanswerable", [])
    approved_abstention, _ = label(_row(1, result(abstained=True, answer="The papers do not answer this.")))
    assert approved_abstention["type"] == "unanswerable"
    fixed, _ = label(_row(-1, result(), "right_answer", "diagonal matrices; HiPPO initialisation", n=1))
    assert fixed["facts"] == ["diagonal matrices", "HiPPO initialisation"] and fixed["gold_paper_ids"] == ["tiny-ssm"]
    assert fixed["answer"] == "diagonal matrices; HiPPO initialisation"
    assert label(_row(-1, result())) == (None, "disliked")
    assert label(_row(-1, result(), "wrong_paper"))[0] is None
    assert label(_row(1, result(), "wrong_paper"))[0] is None


def test_the_latest_rating_wins_and_dev_questions_never_leave():
    ratings = [_row(1, result("Q one"), i=1), _row(-1, result("q  ONE"), "should_abstain", i=2),
               _row(1, result("a dev question"), i=3), _row(-1, result("disliked"), i=4)]
    rows, why = export_rows(ratings, exclude={"a dev question"})
    assert [(r["id"], r["type"]) for r in rows] == [("fb-2", "unanswerable")]
    assert why == {"superseded": 1, "unanswerable": 1, "in the dev set": 1, "disliked": 1}


@pytest.fixture
def cli(monkeypatch, tmp_path, fake_models, capsys):
    from rag.cli.main import main

    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_feedback_commands_and_the_export_read_by_eval_and_optimize(cli, tmp_path):
    code, _, err = cli("feedback", "stats")
    assert code == 1 and "no ratings yet" in err
    store = FeedbackStore(db_path(tmp_path / "cache"))
    store.add(result("What are state space models?"), 1)
    store.add(result("How do legged robots learn to walk?", cited=("tiny-rl",)), -1, "right_answer",
              "learned reward", 1)
    store.add(result("Who won the 1998 World Cup?"), -1, "should_abstain")
    store.add(result("Which paper is about bread?"), -1, "wrong_paper")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "t1", "type": "single", "question": "What is sourdough made of?",
                                 "facts": ["yeast"], "gold_paper_ids": ["tiny-bread"]}) + "\n")
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"id": "d1", "type": "unanswerable", "question": "Who won the 1998 World Cup?"}) + "\n")

    code, out, _ = cli("feedback", "stats", "--json")
    assert json.loads(out) == {"ratings": 4, "likes": 1, "dislikes": 3, "questions": 4,
                               "corrections": {"right_answer": 1, "should_abstain": 1, "wrong_paper": 1}}
    code, out, _ = cli("feedback", "list")
    assert code == 0 and "right answer: learned reward" in out and "dislike [wrong_paper]" in out

    exported = tmp_path / "fb.jsonl"
    code, _, err = cli("feedback", "export", "-o", str(exported), "--merge", str(train), "--dev", str(dev))
    assert code == 0 and "wrote 2 feedback rows after the 1 rows" in err and "1 in the dev set" in err
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(r["id"], r["type"], r["gold_paper_ids"]) for r in rows] == [
        ("t1", "single", ["tiny-bread"]), ("fb-1", "single", ["tiny-ssm"]), ("fb-2", "single", ["tiny-rl"])]
    assert all(r["question"] != "Who won the 1998 World Cup?" for r in rows), "never a dev question"
    from test_json_contract import conforms, documented_shapes

    assert all(conforms(r, documented_shapes()["feedback-export-row"]) == [] for r in rows[1:])

    code, out, err = cli("eval", "--set", str(exported), "--out", str(tmp_path / "reports"))
    assert code == 0, err
    summary = json.loads(next((tmp_path / "reports").glob("*/summary.json")).read_text())
    assert summary["n"] == 3

    from rag.evaluation.seed import load_set
    from rag.optimize import to_examples

    assert [e.question for e in to_examples(load_set(exported, {"tiny-bread", "tiny-ssm", "tiny-rl"}))][1:] == [
        "What are state space models?", "How do legged robots learn to walk?"]


def test_optimize_accepts_an_export_as_train(cli, tmp_path, monkeypatch):
    """`rag optimize --train exported.jsonl` reads and checks it (the compile itself is optimize's own test)."""
    import rag.optimize

    store = FeedbackStore(db_path(tmp_path / "cache"))
    store.add(result("What are state space models?"), 1)
    store.add(result("Who won the 1998 World Cup?"), -1, "should_abstain")
    exported = tmp_path / "fb.jsonl"
    assert cli("feedback", "export", "-o", str(exported), "--dev", "none")[0] == 0
    seen = {}

    def fake_optimize(pipe, optimizer, train, train_path, out, **kw):
        seen.update(n=len(train), types=sorted(r["type"] for r in train))
        return out, None

    monkeypatch.setattr(rag.optimize, "optimize_and_save", fake_optimize)
    code, _, err = cli("optimize", "--train", str(exported), "--dev", "none", "--out", str(tmp_path / "p.json"))
    assert code == 0, err
    assert seen == {"n": 2, "types": ["single", "unanswerable"]}


def test_the_chat_store_lives_under_the_cache_dir(tmp_path):
    settings = Settings.load(env={}, cache_dir=str(tmp_path / "c"))
    assert db_path(settings.cache_dir) == tmp_path / "c" / "feedback.sqlite3"


def test_export_refuses_when_nothing_is_labelled(cli, tmp_path):
    FeedbackStore(db_path(tmp_path / "cache")).add(result(), -1)
    code, _, err = cli("feedback", "export", "-o", str(tmp_path / "x.jsonl"), "--dev", "none")
    assert code == 1 and "no rating makes a labelled row" in err and not (tmp_path / "x.jsonl").exists()


def test_stats_while_the_chat_process_holds_the_file(tmp_path):
    """Another process (the chat) has the file open mid-write; `rag feedback stats` still reads it."""
    path = db_path(tmp_path / "cache")
    FeedbackStore(path).add(result(), 1)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sqlite3, sys, time
con = sqlite3.connect({str(path)!r}); con.execute("BEGIN IMMEDIATE")
con.execute("INSERT INTO ratings (time, question, result, rating) VALUES ('t', 'q', '{{}}', -1)")
print("holding", flush=True); time.sleep(30)"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        proc = subprocess.run([sys.executable, "-m", "rag", "feedback", "stats", "--db", str(path)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("1 ratings of 1 questions: 1 liked, 0 disliked")
    finally:
        holder.kill()
        holder.wait()
