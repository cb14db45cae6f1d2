"""The Ray engine on a real multi-node cluster on this machine (`ray.cluster_utils.Cluster`): a head with no
CPUs and two worker nodes of one CPU each, every node its own raylet and object store. The build's
embedding and batch QA's actors spread over both nodes; a killed node costs only its in-flight question;
a node that cannot see the index directory gets it through the object store. No raylet outlives the module."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rag.batch import inputs, output
from rag.batch import run as batch
from rag.index.corpus import load_corpus
from rag.index.open import open_index
from rag.index.store import build_index, load_index

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - only once Ray is known to be installed

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
MB = 1024 * 1024
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}}

pytestmark = pytest.mark.slow


def _raylets() -> int:
    out = subprocess.run(["pgrep", "-f", "-u", str(os.getuid()), "raylet"], capture_output=True, text=True).stdout
    return len(out.split())


class Nodes:
    """The cluster and its worker nodes by name (a node added by a test is kept here for the next)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.nodes = {name: self.add(name) for name in ("node_a", "node_b")}

    def add(self, name: str):
        return self.cluster.add_node(num_cpus=1, resources={name: 1}, object_store_memory=80 * MB)

    def ids(self) -> set[str]:
        return {n.node_id for n in self.nodes.values()}


@pytest.fixture(scope="module")
def cluster():
    before = _raylets()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MB,
                                                      "include_dashboard": False})
    try:
        nodes = Nodes(c)
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False, runtime_env=RUNTIME_ENV)
        yield nodes
    finally:
        ray.shutdown()
        c.shutdown()
    assert _raylets() <= before


def _within(seconds: float, fn, *args, **kw):
    """fn(*args, **kw), failing the test (rather than hanging it) past `seconds`."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args, **kw).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def _questions(path: Path, n: int) -> Path:
    # digit-free questions: the fake LM echoes the question, and a number in no passage would be declined
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What about state space models, case "
                                        f"{chr(ord('a') + i)}?"}) + "\n" for i in range(n)))
    return path


def _run(qs: Path, out_path: Path, ask, **kw) -> batch.Summary:
    out = output.Output(out_path)
    try:
        with open(qs, "rb") as f:
            return _within(120, batch.run_batch, inputs.read_rows(f, "jsonl"), out, ask, workers=2, **kw)
    finally:
        out.close()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_build_embeds_on_both_worker_nodes_and_equals_the_local_build(cluster, tiny_settings, monkeypatch):
    from rag import distributed
    from rag.distributed import RayEmbedder
    from rag.index.embed import get_embedder
    from rag.settings import Settings

    papers = load_corpus(tiny_settings.corpus)
    settings = tiny_settings.replace(cache_dir=Settings.load(env={}).cache_dir)  # the ONNX export the real tests use
    local_settings = settings.replace(index_dir=str(Path(settings.index_dir) / "local"))
    local = load_index(build_index(papers, get_embedder(settings.embed_model, settings.embed_backend,
                                                        settings.cache_dir), local_settings))
    monkeypatch.setattr(distributed, "BLOCK_TEXTS", 8)  # several blocks for the two actors
    embedder = RayEmbedder(settings)
    remote = load_index(build_index(papers, embedder, settings))
    assert embedder.workers == 2
    # Embedded on the worker nodes only (the head has no CPUs). Which of the two takes blocks is Ray Data's choice:
    # on a loaded machine one actor can finish the tiny corpus before the other has loaded its model.
    assert embedder.nodes and set(embedder.nodes) <= cluster.ids()
    assert sum(embedder.nodes.values()) == len(local.chunks) + len(local.sentence_vectors)
    assert remote.path.name == local.path.name
    for name in ("papers.jsonl", "chunks.jsonl", "sentences.jsonl"):
        assert (remote.path / name).read_bytes() == (local.path / name).read_bytes()
    np.testing.assert_allclose(remote.sentence_vectors, local.sentence_vectors, atol=2e-5)
    n = len(local.chunks)
    np.testing.assert_allclose(remote.dense.reconstruct_n(0, n), local.dense.reconstruct_n(0, n), atol=2e-5)


def test_batch_actors_answer_on_both_worker_nodes_one_line_per_id(cluster, tiny_settings, embedder, tmp_path,
                                                                   monkeypatch):
    from fakes import fake_pipeline

    from rag.distributed import ray_asker

    # paths relative to the driver's directory, which is not the one the workers started in
    shutil.copy(tiny_settings.corpus, tmp_path / "tiny.jsonl")
    monkeypatch.chdir(tmp_path)
    settings = tiny_settings.replace(corpus="tiny.jsonl", index_dir="indexes")
    index = open_index(settings, lambda: embedder)  # the driver builds the index; workers only open it
    qs, out_path = _questions(tmp_path / "qs.jsonl", 8), tmp_path / "out.jsonl"
    with ray_asker(settings, functools.partial(fake_pipeline, delay=0.2)) as ask:
        assert ask.workers == 2
        assert sorted(w.node for w in ask.running()) == sorted(cluster.ids())  # one actor per worker node
        assert {w.index for w in ask.running()} == {str(tmp_path / "indexes" / index.name)}  # nothing shipped
        assert ask.copy.shipment is None
        summary = _run(qs, out_path, ask)
        assert set(ask.asked) == cluster.ids() and sum(ask.asked.values()) == 8
    assert summary.answered == 8 and summary.errors == 0
    records = _records(out_path)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(8))  # exactly one line per id
    assert all(r["answer"].startswith("An answer to:") and r["provenance"]["index"] == index.name for r in records)


@pytest.fixture
def bare_node(cluster, tmp_path):
    """A third worker node (`ray start` in its own mount namespace) whose processes see tmp_path/shared
    empty: a machine without the shared storage. Yields its node id; killed (its raylet too) after."""
    shared = tmp_path / "shared"
    shared.mkdir()
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root) to start a node that cannot see a directory")
    ray_cli = Path(sys.executable).parent / "ray"
    script = (f"mount -t tmpfs none {shared} && exec {ray_cli} start --address={cluster.cluster.address} "
              f"--num-cpus=1 --resources='{json.dumps({'bare': 1})}' --object-store-memory={80 * MB} "
              f"--disable-usage-stats --block")
    log = (tmp_path / "bare-node.log").open("w")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (node := next((n for n in ray.nodes() if n["Alive"] and "bare" in n["Resources"]), None)):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "bare-node.log").read_text()
            time.sleep(0.2)
        yield node["NodeID"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its raylet with it
        proc.wait(30)
        log.close()
        deadline = time.monotonic() + 60
        while any(n["Alive"] and "bare" in n["Resources"] for n in ray.nodes()) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_a_node_without_the_index_gets_it_through_the_object_store(cluster, bare_node, tiny_settings, embedder,
                                                                    tmp_path, monkeypatch):
    from fakes import fake_pipeline

    from rag import distributed
    from rag.distributed import ray_asker
    from rag.errors import RagError

    shared = tmp_path / "shared"
    shutil.copy(tiny_settings.corpus, shared / "tiny.jsonl")
    settings = tiny_settings.replace(corpus=str(shared / "tiny.jsonl"), index_dir=str(shared / "indexes"))
    index = open_index(settings, lambda: embedder)
    factory = functools.partial(fake_pipeline, delay=0.2)
    with monkeypatch.context() as m:  # too large to ship: refused before any actor starts, naming the node
        m.setattr(distributed, "SHIP_BYTES", 1000)
        with pytest.raises(RagError, match=rf"^Ray node {bare_node[:12]} \(.*\) has no copy of index {index.name} "
                                           r"at .* too much to ship .*: put both on shared storage at the same paths"):
            with ray_asker(settings, factory):
                pass
    qs, out_path = _questions(tmp_path / "qs.jsonl", 9), tmp_path / "out.jsonl"
    with ray_asker(settings, factory) as ask:
        assert ask.workers == 3
        opened = {w.node: w.index for w in ask.running()}
        assert set(opened) == cluster.ids() | {bare_node}  # one actor per node
        cached = Path(ask.copy.cached) / "indexes" / index.name
        assert opened == {**{n: str(index.path) for n in cluster.ids()}, bare_node: str(cached)}
        summary = _run(qs, out_path, ask)
        assert ask.asked[bare_node] > 0  # the node without shared storage answered from its copy
    assert summary.answered == 9 and summary.errors == 0
    records = _records(out_path)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(9))
    assert {r["provenance"]["index"] for r in records} == {index.name}


def test_a_killed_worker_node_costs_only_its_in_flight_question(cluster, tiny_settings, embedder, tmp_path):
    from fakes import fake_pipeline

    from rag.distributed import ray_asker

    open_index(tiny_settings, lambda: embedder)
    qs, out_path = _questions(tmp_path / "qs.jsonl", 12), tmp_path / "out.jsonl"
    node_a = cluster.nodes["node_a"]
    written: list[dict] = []
    asked_at_kill: dict[str, int] = {}
    with ray_asker(tiny_settings, functools.partial(fake_pipeline, delay=1.0)) as ask:
        assert {w.node for w in ask.running()} == cluster.ids()

        def kill_after_two(record: dict) -> None:
            written.append(record)
            if len(written) == 2:  # both actors are answering the next questions now
                asked_at_kill.update(ask.asked)
                cluster.cluster.remove_node(node_a, allow_graceful=False)

        summary = _run(qs, out_path, ask, progress=kill_after_two)
        assert [w.node for w in ask.running()] == [cluster.nodes["node_b"].node_id]  # no room for a replacement yet
        assert ask.asked[node_a.node_id] == asked_at_kill.get(node_a.node_id, 0)  # nothing more answered on node A
        del cluster.nodes["node_a"]
        # a node joins: the replacement that waited for room starts there and joins the pool
        cluster.nodes["node_c"] = cluster.add("node_c")
        deadline = time.monotonic() + 90
        while {w.node for w in ask.running()} != cluster.ids():
            assert time.monotonic() < deadline, "the replacement never started on the new node"
            time.sleep(0.5)
        records = _records(out_path)
        assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(12))  # one line per id
        failed = [r for r in records if r["error"]]
        assert summary.errors == 1 and len(failed) == 1  # only the question in flight on node A
        assert "the Ray worker answering this question died" in failed[0]["error"]
        assert "--retry-errors re-asks it" in failed[0]["error"]
        before = [(r["id"], r["answer"]) for r in written[:2]]
        assert [(r["id"], r["answer"]) for r in records[:2]] == before and all(a for _, a in before)  # kept
        again = _run(qs, out_path, ask, retry_errors=True)
    assert again.skipped == 11 and again.answered == 1 and again.errors == 0
    records = _records(out_path)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(12))
    assert not any(r["error"] for r in records)
