"""The Ray engine on a local Ray (2 CPUs): distributed build equals the local one; distributed batch QA
keeps rag batch's guarantees. Ray is shut down after the module; no raylet outlives it."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rag.batch import inputs, output
from rag.batch import run as batch
from rag.index.corpus import load_corpus
from rag.index.open import open_index
from rag.index.store import build_index, load_index

ray = pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _raylets() -> int:
    out = subprocess.run(["pgrep", "-f", "-u", str(os.getuid()), "raylet"], capture_output=True, text=True).stdout
    return len(out.split())


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module: 2 CPUs, this checkout and tests/ importable by workers."""
    before = _raylets()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}})
    yield ray
    ray.shutdown()
    assert _raylets() <= before


@pytest.mark.slow
def test_ray_build_equals_the_local_build(local_ray, tiny_settings, monkeypatch):
    from rag import distributed
    from rag.distributed import RayEmbedder
    from rag.index.embed import get_embedder
    from rag.settings import Settings

    papers = load_corpus(tiny_settings.corpus)
    settings = tiny_settings.replace(cache_dir=Settings.load(env={}).cache_dir)  # the ONNX export the real tests use
    local_settings = settings.replace(index_dir=str(Path(settings.index_dir) / "local"))
    local_embedder = get_embedder(settings.embed_model, settings.embed_backend, settings.cache_dir)
    local = load_index(build_index(papers, local_embedder, local_settings))
    monkeypatch.setattr(distributed, "SPILL_BYTES", 0)  # the vectors go through the memory-mapped spill file
    monkeypatch.setattr(distributed, "BLOCK_TEXTS", 8)  # several blocks over both actors
    embedder = RayEmbedder(settings)
    remote = load_index(build_index(papers, embedder, settings))
    assert embedder.workers == 2
    assert remote.path.name == local.path.name
    assert [c.id for c in remote.chunks] == [c.id for c in local.chunks]
    for name in ("papers.jsonl", "chunks.jsonl", "sentences.jsonl"):
        assert (remote.path / name).read_bytes() == (local.path / name).read_bytes()
    np.testing.assert_allclose(remote.sentence_vectors, local.sentence_vectors, atol=2e-5)
    n = len(local.chunks)
    np.testing.assert_allclose(remote.dense.reconstruct_n(0, n), local.dense.reconstruct_n(0, n), atol=2e-5)
    drop = {"created", "build_seconds", "files", "samples", "manifest_sha256"}  # content hashes: vectors differ by ~1e-6
    assert {k: v for k, v in remote.meta.items() if k not in drop} == {k: v for k, v in local.meta.items() if k not in drop}
    assert not list(Path(tiny_settings.index_dir).glob(".tmp-*"))  # the spill file is gone


def _questions(path: Path, n: int) -> Path:
    # digit-free questions: the fake LM echoes the question, and a number in no passage would be declined
    lines = [json.dumps({"id": f"q{i}", "question": "FAIL question" if i == 3 else
                         f"What about state space models, case {chr(ord('a') + i)}?"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ray_batch_one_line_per_id_and_resume(local_ray, tiny_settings, embedder, tmp_path):
    from fakes import fake_pipeline

    from rag.distributed import ray_asker

    open_index(tiny_settings, lambda: embedder)  # the driver builds the index; workers only open it
    loads = tmp_path / "loads"
    loads.mkdir()
    qs = _questions(tmp_path / "qs.jsonl", 8)
    out_path = tmp_path / "out.jsonl"
    factory = functools.partial(fake_pipeline, log_dir=str(loads))
    with ray_asker(tiny_settings, factory) as ask:
        assert ask.workers == 2
        # a first run stopped after 3 rows (as if killed), then the same command again
        with open(qs, "rb") as f:
            rows = [r for _, r in zip(range(3), inputs.read_rows(f, "jsonl"), strict=False)]
        out = output.Output(out_path)
        batch.run_batch(iter(rows), out, ask, workers=ask.workers)
        out.close()
        out = output.Output(out_path)
        with open(qs, "rb") as f:
            summary = batch.run_batch(inputs.read_rows(f, "jsonl"), out, ask, workers=ask.workers)
        out.close()
    assert summary.skipped == 3 and summary.answered + summary.errors == 5
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(8))  # exactly one line per id
    failed = [r for r in records if r["error"]]
    assert [r["id"] for r in failed] == ["q3"] and "fake LM failure for this question" in failed[0]["error"]
    ok = next(r for r in records if r["id"] == "q0")
    assert ok["answer"].startswith("An answer to:") and ok["citations"] and ok["provenance"]["index"] == \
        open_index(tiny_settings, lambda: embedder).name
    assert len(list(loads.iterdir())) == 2  # one pipeline per worker, not per question
    # --retry-errors re-asks only the failed row, still one line per id
    with ray_asker(tiny_settings, factory) as ask:
        out = output.Output(out_path)
        with open(qs, "rb") as f:
            again = batch.run_batch(inputs.read_rows(f, "jsonl"), out, ask, workers=ask.workers, retry_errors=True)
        out.close()
    assert again.errors == 1 and again.skipped == 7
    assert len(out_path.read_text().splitlines()) == 8


def test_a_worker_that_cannot_load_is_an_error_before_any_row(local_ray, tiny_settings):
    from rag.distributed import ray_asker
    from rag.errors import RagError

    with pytest.raises(RagError, match="a Ray worker could not load the pipeline: .*run `rag index`"):
        with ray_asker(tiny_settings):  # no index was built in this index_dir
            pass


def test_an_address_nobody_answers_fails_fast(tiny_settings, capsys):
    import socket
    import time

    from rag.cli.main import main

    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        t = time.monotonic()
        code = main(["index", "--corpus", tiny_settings.corpus, "--index-dir", tiny_settings.index_dir,
                     "--engine", "ray", "--address", address])
    err = capsys.readouterr().err
    assert code == 1 and f"error: no Ray cluster answers at {address}" in err and "ray start --head" in err
    assert time.monotonic() - t < 30
    assert "Building index" not in err  # refused before any build starts


def test_a_killed_ray_build_resumes_from_its_shards(tiny_settings, embedder, monkeypatch):
    """The driver keeps what came back as shards; the next run embeds only the rest (no Ray needed to show it)."""
    from rag import distributed
    from rag.distributed import RayEmbedder

    texts = [f"text number {i} about state space models" for i in range(20)]
    asked: list[list[str]] = []
    state = {"fail_after": 2}

    def fake_remote(self, todo, progress):
        asked.append(list(todo))
        for n, start in enumerate(range(0, len(todo), 3)):
            if n == state["fail_after"]:
                raise KeyboardInterrupt  # the build is killed mid-way
            rows = np.arange(start, min(start + 3, len(todo)))
            yield rows, embedder.encode([todo[i] for i in rows])

    monkeypatch.setattr(RayEmbedder, "_embed_remote", fake_remote)
    monkeypatch.setattr(distributed, "SHARD_ROWS", 3)
    remote = RayEmbedder(tiny_settings.replace(embed_model="all-MiniLM-L6-v2"))
    remote.dim = embedder.dim
    with pytest.raises(KeyboardInterrupt):
        remote.encode(texts)
    assert len(list(Path(tiny_settings.index_dir).glob(".shards-*/part-*.npz"))) == 2  # 6 rows kept
    state["fail_after"] = None
    got = remote.encode(texts)
    assert asked[1] == texts[6:]  # the 6 rows in shards were not asked for again
    np.testing.assert_array_equal(got, embedder.encode(texts))
    assert not list(Path(tiny_settings.index_dir).glob(".shards-*"))  # done: the shards are gone


def _asker_without_ray(workers):
    """A RayAsker's waiting logic alone: its pool and idle queue, no Ray (nothing here calls it)."""
    import queue
    import threading

    from rag.distributed import RayAsker

    asker = object.__new__(RayAsker)
    asker.idle, asker.pool, asker.lock, asker.closed = queue.Queue(), list(workers), threading.Lock(), False
    return asker


def test_a_question_waits_for_a_busy_worker_but_not_for_ever_when_none_runs(monkeypatch):
    """The REPLACE_WAIT fallback: while a worker runs (busy elsewhere) a question waits past the limit; with no
    worker running (their nodes lost, replacements without room) it becomes a row error after REPLACE_WAIT."""
    import threading
    import time

    from rag import distributed
    from rag.errors import RagError

    monkeypatch.setattr(distributed, "REPLACE_WAIT", 2.0)
    busy = distributed.Worker(actor=None, node="node-a")
    asker = _asker_without_ray([busy])
    threading.Timer(3.5, asker.idle.put, args=(busy,)).start()  # frees up after the limit
    t = time.monotonic()
    assert asker._take() is busy and time.monotonic() - t >= 3.0
    starting = distributed.Worker(actor=None)  # a replacement that never becomes ready: no node
    asker = _asker_without_ray([starting])
    t = time.monotonic()
    with pytest.raises(RagError, match="no Ray worker has been running for 2 s.*--retry-errors"):
        asker._take()
    assert 1.5 <= time.monotonic() - t < 10
