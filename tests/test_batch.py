"""`rag batch`: formats, resume after a crash, per-row errors, duplicates, --eval, bounded memory."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import rag.pipeline
from rag.batch import inputs, output
from rag.batch import run as batch
from rag.cli.main import main

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    return tmp_path


@pytest.fixture
def engine(env, fake_models):
    return fake_models.engine


@pytest.fixture
def run(engine, capsys):
    def go(*argv: str) -> tuple[int, str, str]:
        code = main(["batch", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err
    return go


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_text_input(run, tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("What are state space models?\n\nsourdough acidity?\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(str(q), "-o", str(out))
    rows = lines(out)
    assert code == 0 and [r["id"] for r in rows] == ["1", "3"]  # ids are line numbers; blank lines skipped
    assert rows[0]["citations"][0]["paper_id"] == "tiny-ssm" and rows[0]["error"] is None
    assert set(rows[0]) >= {"id", "error", "question", "answer", "abstained", "citations", "passages", "provenance"}
    assert "answered 2 (abstained 0), errors 0" in err


def test_jsonl_input_carries_extra_fields(run, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "a", "question": "robots walking", "topic": "rl", "answer": "ref"}) + "\n"
                 + json.dumps({"question": "exoplanet transits"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert run(str(q), "-o", str(out))[0] == 0
    a, b = lines(out)
    assert a["id"] == "a" and a["topic"] == "rl" and a["input_answer"] == "ref" and a["answer"].startswith("An answer")
    assert b["id"] == "2"


def test_csv_input_and_csv_output(run, tmp_path):
    q = tmp_path / "q.csv"
    q.write_text('id,question,note\nq1,"state space, long sequences",x\nq2,sourdough acidity,y\n')
    out = tmp_path / "out.jsonl"
    assert run(str(q), "-o", str(out), "--format", "csv")[0] == 0
    assert [r["id"] for r in lines(out)] == ["q1", "q2"] and lines(out)[0]["note"] == "x"
    flat = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert list(flat[0]) == ["id", "question", "answer", "cited_titles", "abstained", "error"]
    assert flat[0]["cited_titles"] == "Structured State Space Models for Long Sequences"


def test_stdin_input(run, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(b"robots walking\nexoplanets\n"))))
    out = tmp_path / "out.jsonl"
    assert run("-", "-o", str(out))[0] == 0
    assert [r["question"] for r in lines(out)] == ["robots walking", "exoplanets"]


def test_resume_skips_done_ids_and_overwrite_starts_fresh(run, engine, tmp_path):
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("state space\nsourdough\n")
    run(str(q), "-o", str(out))
    calls = engine.calls
    q.write_text("state space\nsourdough\nrobots\nexoplanets\n")
    code, _, err = run(str(q), "-o", str(out))
    assert code == 0 and "skipped 2 already done" in err
    assert engine.calls == calls + 2
    assert [r["id"] for r in lines(out)] == ["1", "2", "3", "4"]
    run(str(q), "-o", str(out), "--overwrite")
    assert [r["id"] for r in lines(out)] == ["1", "2", "3", "4"] and engine.calls == calls + 6


def test_a_torn_last_line_is_cut_and_redone(run, tmp_path):
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("state space\nsourdough\n")
    run(str(q), "-o", str(out))
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 40])  # as if killed in the middle of writing line 2
    run(str(q), "-o", str(out))
    rows = lines(out)
    assert [r["id"] for r in rows] == ["1", "2"] and all(r["error"] is None for r in rows)


def test_per_row_errors_do_not_stop_the_batch_and_can_be_retried(run, engine, tmp_path):
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("state space\nplease FAIL here\nsourdough\n" + "x" * 3000 + "\n")
    code, _, err = run(str(q), "-o", str(out))
    rows = {r["id"]: r for r in lines(out)}
    assert code == 0 and "errors 2" in err
    assert "fake LM failure" in rows["2"]["error"] and rows["2"]["answer"] is None
    assert "limit is 2,000" in rows["4"]["error"]
    assert rows["1"]["error"] is None and rows["3"]["error"] is None
    # plain re-run: failed rows count as done
    assert "skipped 4" in run(str(q), "-o", str(out))[2]
    # the LM recovers; --retry-errors re-answers only the failed rows, one line per id remains
    q.write_text("state space\nplease succeed here\nsourdough\n" + "x" * 3000 + "\n")
    before = engine.calls
    code, _, err = run(str(q), "-o", str(out), "--retry-errors")
    rows = lines(out)
    assert code == 0 and engine.calls == before + 1
    assert sorted(r["id"] for r in rows) == ["1", "2", "3", "4"]
    assert {r["id"]: r["error"] for r in rows}["2"] is None


def test_duplicate_ids_are_reported_and_suffixed(run, tmp_path):
    q, out = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    q.write_text("".join(json.dumps({"id": "x", "question": f"robots {i}"}) + "\n" for i in range(3)))
    code, _, err = run(str(q), "-o", str(out))
    assert code == 0 and [r["id"] for r in lines(out)] == ["x", "x#2", "x#3"]
    assert "warning: line 2: duplicate id 'x', answered as 'x#2'" in err


def test_malformed_lines_are_reported_and_the_rest_processed(run, tmp_path):
    q, out = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    q.write_bytes(b'{"question": "robots"}\n{"question": \n{"q": "no question field"}\n{"question": "bad \xff"}\n'
                  b'{"question": "exoplanets"}\n')
    code, _, err = run(str(q), "-o", str(out))
    rows = {r["id"]: r for r in lines(out)}
    assert code == 0 and "errors 3" in err
    assert rows["2"]["error"].startswith("q.jsonl:2: malformed JSONL line")
    assert rows["3"]["error"] == 'q.jsonl:3: no "question" string in this line'
    assert rows["4"]["error"] == "q.jsonl:4: not valid UTF-8; re-save the file as UTF-8"
    assert rows["1"]["error"] is None and rows["5"]["error"] is None


@pytest.mark.parametrize("setup,match", [
    (lambda d: (d / "nope.txt", d / "o.jsonl"), "input file .*nope.txt does not exist"),
    (lambda d: ((d / "q.docx").write_text("x") and d / "q.docx", d / "o.jsonl"), "unknown input extension .docx"),
    (lambda d: ((d / "q.csv").write_text("text\nhello\n") and d / "q.csv", d / "o.jsonl"), "CSV has no question column"),
    (lambda d: ((d / "q.csv").write_bytes(b"question\n\xff\xfe\n") and d / "q.csv", d / "o.jsonl"), "not valid UTF-8"),
    (lambda d: ((d / "q.txt").write_text("robots\n") and d / "q.txt", d / "file" / "o.jsonl"), "cannot write output"),
])
def test_bad_input_fails_before_any_model_work(run, engine, tmp_path, setup, match):
    (tmp_path / "file").write_text("a file where a directory is needed")
    q, out = setup(tmp_path)
    code, _, err = run(str(q), "-o", str(out))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err
    assert engine.calls == 0 and not (tmp_path / "indexes").exists()


def test_eval_scores_labelled_rows(run, tmp_path):
    q, out = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    q.write_text(json.dumps({"id": "1", "question": "robots walking", "facts": ["answer to"],
                             "gold_paper_ids": ["tiny-rl"], "type": "single", "answer": "robots walk"}) + "\n")
    code, stdout, _ = run(str(q), "-o", str(out), "--eval")
    summary = json.loads(stdout)
    assert code == 0 and summary["n"] == 1
    assert summary["fact_recall"] == 1.0 and summary["citation_precision"] == 1.0 and summary["retrieval_recall"] == 1.0


def test_workers_for_remote_backends(run, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_LM", "ollama_chat/fake")
    engine.delay = 0.05
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("".join(f"robots {i}\n" for i in range(20)))
    t0 = time.perf_counter()
    code, _, err = run(str(q), "-o", str(out), "--workers", "4")
    assert code == 0 and sorted(int(r["id"]) for r in lines(out)) == list(range(1, 21))
    assert time.perf_counter() - t0 < 20 * 0.05 + 5  # sanity only; speed is measured in bench/


def test_killed_run_resumes_with_exactly_one_line_per_id(tmp_path):
    """kill -9 a real `rag batch` mid-file, re-run it, and check every id is there exactly once."""
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("".join(f"question about robots number {i}\n" for i in range(40)))
    env = {**os.environ, "RAG_CORPUS": str(DATA / "tiny.jsonl"), "RAG_INDEX_DIR": str(tmp_path / "idx"),
           "RAG_MIN_SCORE": "0", "FAKE_LM_DELAY": "0.1"}
    cmd = [sys.executable, str(HERE / "fakes.py"), "batch", str(q), "-o", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = out.read_text().count("\n")
    assert 5 <= partial < 40
    done = subprocess.run(cmd, env={**env, "FAKE_LM_DELAY": "0"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = lines(out)
    assert sorted(int(r["id"]) for r in rows) == list(range(1, 41))
    assert all(r["error"] is None for r in rows)
    assert f"skipped {partial} already done" in done.stderr


def test_thousand_questions_in_bounded_memory(engine, tiny_settings, embedder, tmp_path):
    from fakes import fake_lm

    pipe = rag.pipeline.Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(engine))

    def peak(n: int) -> int:
        q = tmp_path / f"q{n}.txt"
        q.write_text("".join(f"robots walking question {i}\n" for i in range(n)))
        out = output.Output(tmp_path / f"o{n}.jsonl")
        tracemalloc.start()
        with open(q, "rb") as f:
            summary = batch.run_batch(inputs.read_rows(f, "txt"), out, pipe.ask)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.close()
        assert summary.answered == n
        return top

    small, large = peak(100), peak(1000)
    # Results stream to disk: 10x the questions must not mean 10x the memory.
    assert large < small * 2 + 2_000_000, (small, large)
    assert len(lines(tmp_path / "o1000.jsonl")) == 1000


# --- input used as output -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["q.txt", "q.jsonl"])
def test_output_that_is_the_input_is_refused_before_any_work(run, engine, tmp_path, name):
    q = tmp_path / name
    content = "robots walking\n" if name.endswith(".txt") else json.dumps({"question": "robots"}) + "\n"
    q.write_text(content)
    code, _, err = run(str(q), "-o", str(q))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"input {q} and output {q} are the same file" in err and "-o q.answers.jsonl" in err
    assert q.read_text() == content and engine.calls == 0 and not (tmp_path / "indexes").exists()


def test_same_file_through_a_link_or_another_spelling_is_refused(run, engine, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "robots"}) + "\n")
    (tmp_path / "sym.jsonl").symlink_to(q)
    os.link(q, tmp_path / "hard.jsonl")
    (tmp_path / "sub").mkdir()
    for out in (tmp_path / "sym.jsonl", tmp_path / "hard.jsonl", tmp_path / "sub" / ".." / "q.jsonl"):
        code, _, err = run(str(q), "-o", str(out))
        assert code == 1 and "are the same file" in err, out
    assert engine.calls == 0


def test_csv_output_that_would_overwrite_the_csv_input_is_refused(run, engine, tmp_path):
    q = tmp_path / "q.csv"
    q.write_text("question\nrobots\n")
    code, _, err = run(str(q), "-o", str(tmp_path / "q.jsonl"), "--format", "csv")
    assert code == 1 and f"the flat CSV it writes ({q})" in err
    assert q.read_text() == "question\nrobots\n" and engine.calls == 0


def test_stdin_redirected_from_the_output_file_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "1", "question": "robots", "error": None}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "RAG_CORPUS": str(DATA / "tiny.jsonl"),
           "RAG_INDEX_DIR": str(tmp_path / "idx"), "RAG_MIN_SCORE": "0"}
    with open(out, "rb") as stdin:
        proc = subprocess.run([sys.executable, str(HERE / "fakes.py"), "batch", "-", "-o", str(out)], stdin=stdin,
                              capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: stdin and output {out} are the same file")
    assert not (tmp_path / "idx").exists()


def test_an_output_that_is_not_a_regular_file_is_refused(run, engine, tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("robots\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (fifo, Path("/dev/null")):
        code, _, err = run(str(q), "-o", str(out))
        assert code == 1 and f"output {out} is not a regular file" in err
    assert engine.calls == 0


# --- input that is too big ------------------------------------------------------------------

def test_an_over_long_line_is_a_row_error_and_is_never_read_whole(run, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 1000)
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("robots walking\n" + "x" * 50_000 + "\nexoplanets\n" + "y" * 5000)  # the last one has no newline
    code, _, err = run(str(q), "-o", str(out))
    rows = {r["id"]: r for r in lines(out)}
    assert code == 0 and sorted(rows) == ["1", "2", "3", "4"]
    assert rows["2"]["error"] == "q.txt:2: line longer than 1,000 bytes; split or shorten it"
    assert rows["4"]["error"].startswith("q.txt:4: line longer") and rows["3"]["error"] is None


def test_over_long_csv_lines_and_bad_csv_are_row_errors(run, tmp_path, monkeypatch):
    q, out = tmp_path / "q.csv", tmp_path / "out.jsonl"
    # a 140,000-character field: under the line limit, over the csv module's own field limit
    q.write_text("id,question\na,robots\nb," + "x" * 140_000 + "\nc,exoplanets\n")
    code, _, err = run(str(q), "-o", str(out))
    rows = {r["id"]: r for r in lines(out)}
    assert code == 0 and rows["a"]["error"] is None and rows["c"]["error"] is None
    assert rows["3"]["error"].startswith("q.csv:3: not valid CSV (field larger than field limit")
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 1000)
    q.write_text("id,question\na,robots\nb," + "x" * 5000 + "\nc,exoplanets\n")
    code, _, err = run(str(q), "-o", str(out), "--overwrite")
    rows = {r["id"]: r for r in lines(out)}
    assert code == 0 and rows["a"]["error"] is None and rows["c"]["error"] is None
    assert rows["3"]["error"] == "q.csv:3: line longer than 1,000 bytes; split or shorten it"


def test_count_rows_reads_in_blocks(tmp_path):
    f = tmp_path / "q.txt"
    f.write_bytes(b"a\n\n  \nb\n" + b"c" * 3_000_000 + b"\n\nd")
    assert inputs.count_rows(str(f), "txt") == 4


# --- a full disk --------------------------------------------------------------------------

def test_disk_full_mid_batch_keeps_earlier_answers_names_the_file_and_resumes(run, engine, tmp_path, monkeypatch):
    import errno

    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("".join(f"robots {i}\n" for i in range(5)))
    real_write, calls = os.write, []

    def filling_disk(fd, data):
        if not data.startswith(b'{"id"'):  # not an answer line
            return real_write(fd, data)
        calls.append(fd)
        if len(calls) == 3:  # the third answer: half of it lands, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", filling_disk)
    code, _, err = run(str(q), "-o", str(out))
    last = err.splitlines()[-1]
    assert code == 1 and last.startswith(f"error: cannot write to {out}: No space left on device")
    assert "re-run the same command to resume" in last and "Traceback" not in err
    assert out.read_bytes().endswith(b"\n") and [r["id"] for r in lines(out)] == ["1", "2"]  # no torn line
    monkeypatch.setattr(output.os, "write", real_write)
    code, _, err = run(str(q), "-o", str(out))
    assert code == 0 and "skipped 2 already done" in err
    assert [r["id"] for r in lines(out)] == ["1", "2", "3", "4", "5"]


class TimesOut:
    """An ask that times out (LMTimeout, as the embedded model or a server does under load) `n` times first."""

    def __init__(self, n: int, error=None):
        from rag.errors import LMTimeout

        self.n, self.calls, self.error = n, 0, error or LMTimeout("the local model made no progress for RAG_TIMEOUT=1s")

    def __call__(self, question: str) -> dict:
        self.calls += 1
        if self.calls <= self.n:
            raise self.error
        return {"question": question, "answer": "An answer [1].", "abstained": False}


def test_a_row_that_times_out_once_is_asked_again_and_answered(tmp_path):
    ask = TimesOut(1)
    out = output.Output(tmp_path / "o.jsonl")
    summary = batch.run_batch(iter([inputs.Row("a", "What is ScoNe?", 1), inputs.Row("b", "What is MoNLI?", 2)]), out, ask)
    out.close()
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().split("\n") if line]
    assert ask.calls == 3 and summary.errors == 0 and [r["error"] for r in rows] == [None, None]


def test_a_row_that_times_out_twice_records_the_error():
    ask = TimesOut(2)
    record = batch.answer_row(ask, inputs.Row("a", "What is ScoNe?", 1))
    assert ask.calls == 2 and "made no progress" in record["error"] and "(asked 2 times)" in record["error"]


def test_other_errors_are_not_asked_again():
    from rag.errors import LMError

    ask = TimesOut(1, LMError("LM call failed (AuthenticationError: 401); check RAG_API_KEY"))
    record = batch.answer_row(ask, inputs.Row("a", "What is ScoNe?", 1))
    assert ask.calls == 1 and "401" in record["error"]


def test_the_embedded_models_timeout_reaches_the_batch_as_a_timeout_through_dspy(tiny_settings, embedder):
    """DSPy wraps what an engine raises; the pipeline unwraps our LMTimeout, so the batch can retry it."""
    from fakes import FakeEngine, fake_lm

    from rag.errors import LMTimeout

    class Stalls(FakeEngine):
        def complete(self, request):
            self.calls += 1
            if self.calls == 1:
                raise LMTimeout("the local model made no progress (no token, no prompt batch read) for RAG_TIMEOUT=1s")
            return super().complete(request)

    engine = Stalls()
    pipe = rag.pipeline.Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(engine))
    with pytest.raises(LMTimeout, match="made no progress"):
        pipe.ask("How do robots learn to walk?")
    engine.calls = 0
    record = batch.answer_row(pipe.ask, inputs.Row("a", "How do robots learn to walk?", 1))
    assert record["error"] is None and engine.calls >= 2  # the first call timed out; the row was asked again
