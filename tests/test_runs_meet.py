"""Two runs at once, and what runs leave behind: output and corpus locks, leftovers, links (issue 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.batch.output import Output
from rag.cli.main import main
from rag.index.add import add_papers
from rag.index.corpus import load_corpus
from rag.index.open import open_index
from rag.index.store import build_index, load_index, locate_index

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent

# Holds the lock `rag batch` takes on an output file until its stdin closes.
HOLD = """
import sys
from rag.batch.output import Output
out = Output(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
out.close()
"""


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    return tmp_path


def _paper(pid: str, title: str) -> dict:
    return {"id": pid, "title": title, "abstract": f"{title} is studied here at length, with experiments on many "
                                                     f"benchmarks and a careful ablation of every component."}


def test_a_second_batch_on_the_same_output_is_refused_naming_the_first(env, fake_models, tmp_path, capsys):
    q = tmp_path / "q.txt"
    q.write_text("What are state space models?\nsourdough acidity?\n")
    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert main(["batch", str(q), "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"another rag batch is writing {out} (pid {holder.pid})" in err and len(err.strip().splitlines()) == 1
        assert fake_models.engine.calls == 0
        assert not out.exists() or out.read_text() == ""  # nothing was answered, nothing doubled
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # once the first is gone, the same command runs
    assert main(["batch", str(q), "-o", str(out)]) == 0
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["1", "2"]


def test_format_csv_with_the_output_at_the_csv_path_is_refused_before_any_work(env, fake_models, tmp_path, capsys):
    q = tmp_path / "q.txt"
    q.write_text("What are state space models?\n")
    out = tmp_path / "answers.csv"
    assert main(["batch", str(q), "-o", str(out), "--format", "csv"]) == 1
    err = capsys.readouterr().err
    assert "same file" in err and "answers.jsonl" in err
    assert not out.exists()


# One `rag index --add` in its own process, with the keyword embedder. Its first embedding waits (3 s at
# most) for the other process's: when nothing keeps the two apart they meet there, both having read the
# old corpus (a lost update); with the corpus lock the second waits at the lock instead and they run in turn.
ADD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import KeywordEmbedder
from rag.index.add import add_papers
from rag.settings import Settings

corpus, index_dir, extra, me, other = sys.argv[2:7]

class Meeting(KeywordEmbedder):
    met = False

    def encode(self, texts, *, progress=False):
        if not self.met:
            self.met = True
            Path(me).touch()
            deadline = time.monotonic() + 3
            while not Path(other).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().encode(texts)

settings = Settings.load(env={}, corpus=corpus, index_dir=index_dir, cache_dir=index_dir + "-cache", min_score=0.0)
add_papers(settings, extra, Meeting())
"""


def test_two_adds_at_once_both_end_up_in_the_corpus_and_the_index(tiny_settings, embedder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((DATA / "tiny.jsonl").read_text())
    settings = tiny_settings.replace(corpus=str(corpus))
    open_index(settings, lambda: embedder)
    procs = []
    for me, other in (("a", "b"), ("b", "a")):
        extra = tmp_path / f"{me}.jsonl"
        extra.write_text(json.dumps(_paper(f"new-{me}", f"Paper {me} on graph neural networks")) + "\n")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", ADD, str(HERE), str(corpus), settings.index_dir, str(extra),
             str(tmp_path / f"arrived-{me}"), str(tmp_path / f"arrived-{other}")],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    ids = [p.id for p in load_corpus(corpus)]
    assert {"new-a", "new-b"} <= set(ids) and len(ids) == len(set(ids))
    _, path = locate_index(settings)
    assert {"new-a", "new-b"} <= set(load_index(path).papers) == set(ids)
    assert not list(tmp_path.glob(".corpus.*.tmp*"))


def test_add_through_a_symlinked_corpus_updates_its_target_and_keeps_the_link(tiny_settings, embedder, tmp_path):
    real = tmp_path / "real" / "corpus.jsonl"
    real.parent.mkdir()
    real.write_text((DATA / "tiny.jsonl").read_text())
    link = tmp_path / "corpus.jsonl"
    link.symlink_to(real)
    settings = tiny_settings.replace(corpus=str(link))
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps(_paper("new-x", "Paper x on protein folding")) + "\n")
    add_papers(settings, extra, embedder)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert "new-x" in {p.id for p in load_corpus(real)}
    open_index(settings, lambda: embedder, rebuild="never")  # the index of what the link reads is there


def test_a_killed_adds_temp_file_is_removed_by_the_next_add(tiny_settings, embedder, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((DATA / "tiny.jsonl").read_text())
    dead = tmp_path / ".corpus.999999.tmp.jsonl"  # what `kill -9` mid --add leaves
    dead.write_text("half")
    alive = tmp_path / f".corpus.{os.getppid()}.tmp.jsonl"  # a live process's: not ours to remove
    alive.write_text("in use")
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps(_paper("new-y", "Paper y on quantum chemistry")) + "\n")
    add_papers(tiny_settings.replace(corpus=str(corpus)), extra, embedder)
    assert not dead.exists() and alive.exists()


def test_index_removes_only_its_own_leftovers(tiny_settings, embedder):
    root = Path(tiny_settings.index_dir)
    root.mkdir(parents=True)
    theirs = [root / ".tmp-build-cache", root / ".old-photos", root / ".tmp-999999-not-ours"]
    for d in theirs:
        d.mkdir()
        (d / "keep.txt").write_text("someone else's")
    build_index(load_corpus(DATA / "tiny.jsonl"), embedder, tiny_settings)
    assert all((d / "keep.txt").exists() for d in theirs)


def test_a_batch_that_fails_after_taking_the_lock_lets_it_go(env, fake_models, monkeypatch, tmp_path, capsys):
    q = tmp_path / "q.txt"
    q.write_text("What are state space models?\n")
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("RAG_CORPUS", str(tmp_path / "missing.jsonl"))  # fails when the pipeline opens
    assert main(["batch", str(q), "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    Output(out).close()  # the same process takes the lock again: the failed run let it go
