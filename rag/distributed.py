"""The Ray engine: index builds and batch QA spread over a Ray cluster (`--engine ray`).

- `RayEmbedder` has the `Embedder` interface, so `build_index` / `embed_chunks`
  take it like the local model and write the same index (same meta, checksums,
  atomic rename): only where the vectors are computed changes. Texts are sorted
  by length and cut into blocks; Ray Data maps them (`map_batches`) over a pool of
  actors, each of which loads the embedder once. Vectors stream back to the
  driver, which writes each batch into its rows of one array (above `SPILL_BYTES`
  a memory-mapped, already unlinked file in the index directory rather than RAM)
  and saves them as vector shards (`.shards-<key>/part-*.npz`, every `SHARD_ROWS`
  rows, each written whole): a build that is killed after a day of embedding and
  run again embeds only what no shard holds. The shards are deleted once every
  vector is back.
- `ray_asker(settings, workers)` gives `rag batch` an `ask` callable backed by Ray
  actors that each hold one loaded `Pipeline` (index, embedder, LM: loaded once per
  actor). `rag.batch.run.run_batch` is unchanged: it calls `ask` from `workers` threads
  and its driver-side writer keeps every guarantee (one line per id, fsync'd
  appends, resume, per-row errors). A row's error reads as it would locally. The
  actors are spread over the nodes; one that dies, alone or with its node, costs
  only the question it was answering (a row error `--retry-errors` re-asks). Its
  replacement joins the pool once Ray has room for it (at once after a crash, when
  a node joins after a lost one); until then the other actors answer every row.

Every node needs the project installed (a local Ray started here gets this checkout
on its workers' `PYTHONPATH`). Embedding actors need nothing else: the model ships in
the PyPI package (an ONNX backend is exported into the node's cache on first use)
and the texts travel through Ray's object store. Batch actors need the index and its
corpus: before they start, a task on every node with CPUs compares the index at the
driver's path (meta.json's manifest) and the corpus (size) with the driver's. A node
that lacks them gets both through the object store (a tarball built in the driver's
memory, up to `SHIP_BYTES`,
unpacked once under `<cache_dir>/ray-indexes/`); above that the batch is refused,
naming the node, before any actor starts: put them on shared storage at the same
paths, or build the index there. Paths are made absolute for the actors.

Left out: autoscaling, GPUs, deleting the shards of a job that is never run again or
the shipped copies of an index no longer used, and Ray's dashboard (never started).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import RagError
from rag.files import atomic_writer, tree_bytes
from rag.index.store import META
from rag.settings import Settings

log = logging.getLogger(__name__)

BLOCK_TEXTS = 512  # texts per actor call
SHARD_ROWS = 50_000  # vectors a shard file holds (~77 MB at 384-d): what a killed build can lose
SPILL_BYTES = 1 << 30  # vectors above this size go to a memory-mapped file, not RAM
SHIP_BYTES = 512 << 20  # an index and corpus up to this size are shipped to batch nodes that lack them
PROBE_WAIT = 120.0  # seconds the nodes have to say whether they hold the index
REPLACE_WAIT = 300.0  # seconds a question waits for a worker when none is running (lost nodes, no room)
REPLACE_TRIES = 3  # replacements started in a row for one dead worker before the pool goes on without it
PROJECT = Path(__file__).resolve().parent.parent


def _ray():
    try:
        import ray
    except ImportError:
        raise RagError("the ray engine needs Ray: pip install 'papers-rag[ray]' (or ray[data]==2.60.0)") from None
    return ray


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[Any]:
    """Ray, connected for the duration: to `settings.ray_address`, or a local instance started here
    (and shut down after). A Ray the caller already initialised is used and left running."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    quiet_ray()
    _check_reachable(settings.ray_address)
    paths = [str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])]
    try:
        ray.init(address=settings.ray_address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=True,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}})
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise RagError(f"cannot start or reach Ray at {settings.ray_address or '(local)'}: {first}; check "
                       f"RAG_RAY_ADDRESS (`ray start --head` on the head node, then --address auto)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a `host:port` nobody listens on; `ray.init` would retry for minutes."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise RagError(f"no Ray cluster answers at {address} ({reason}); start one with `ray start --head` "
                       f"and pass its address, or --address auto on its head node") from None


def quiet_ray() -> None:
    """Ray Data logs every execution plan and progress line at INFO; keep stderr for the command."""
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Advice that is noise here: we start a private local cluster, and we disable progress bars on purpose.
    for name in ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def cluster_workers(ray: Any, settings: Settings) -> int:
    """`ray_workers`, or one per CPU of the cluster."""
    return settings.ray_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


# --- distributed embedding ------------------------------------------------------------

class _EmbedActor:
    """A Ray Data actor: loads the embedder once, then embeds the batches it is handed."""

    def __init__(self, name: str, backend: str, cache_dir: str) -> None:
        from rag.index.embed import get_embedder

        self.embedder = get_embedder(name, backend, cache_dir)
        self.node = _ray().get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        vectors = self.embedder.encode([str(t) for t in batch["text"]])
        return {"row": batch["row"], "vector": vectors, "node": np.full(len(vectors), self.node)}


class RayEmbedder:
    """An `Embedder` whose `encode` runs on a Ray cluster; the model is never loaded in the driver. Its
    actors need only the project and its packaged model on each node, not the corpus or the index;
    `nodes` counts the texts each node embedded."""

    def __init__(self, settings: Settings, *, spill_dir: str | Path | None = None) -> None:
        from rag.index.embed import MODEL_DIMS

        if settings.embed_model not in MODEL_DIMS:
            raise RagError(f"the ray engine does not know the size of {settings.embed_model!r}'s vectors; "
                           f"use one of {sorted(MODEL_DIMS)}")
        _check_reachable(settings.ray_address)  # before any build starts
        self.settings = settings
        self.name = settings.embed_model
        self.dim = MODEL_DIMS[settings.embed_model]
        self.spill_dir = Path(spill_dir or settings.index_dir)
        self.workers = 0  # set by encode: the actors the last call used
        self.nodes: Counter[str] = Counter()  # texts embedded, by Ray node id, over every call

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        """Vectors of `texts`, in order. Batches that come back are saved as shards; a build that was
        stopped (killed, a lost driver) and run again over the same texts embeds only what is missing."""
        texts = list(texts)
        out = self._output(len(texts))
        if not texts:
            return out
        shards = Shards(self.spill_dir, _texts_key(texts, self.settings), self.dim)
        done = shards.load_into(out)
        todo = np.flatnonzero(~done)
        if done.any():
            log.info("resuming: %d of %d texts were embedded by an earlier run", int(done.sum()), len(texts))
        try:
            for rows, vectors in self._embed_remote([texts[i] for i in todo], progress):
                rows = todo[rows]
                out[rows] = vectors
                done[rows] = True
                shards.add(rows, vectors)
        finally:
            shards.flush()  # interrupted or not, what came back is kept
        if not done.all():
            raise RagError(f"the Ray cluster returned vectors for {int(done.sum())} of {len(texts)} texts; run the "
                           f"build again (what was embedded is kept)")
        shards.remove()  # the caller writes the index next; a failure there costs a re-embed, not a corrupt index
        return out

    def _embed_remote(self, texts: list[str], progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows of `texts`, their vectors) as Ray Data hands them back, in any order."""
        if not texts:
            return
        s = self.settings
        if s.embed_backend != "torch":  # export the ONNX file once here, not once per actor
            from rag.index.embed import model_dir
            from rag.index.embed_onnx import onnx_model_path

            onnx_model_path(model_dir(s.embed_model), s.embed_model, s.embed_backend, s.cache_dir)
        with ray_session(s) as ray:
            import pyarrow as pa
            from ray.data import ActorPoolStrategy, DataContext

            quiet_ray()  # importing ray.data configures its loggers at INFO
            ctx = DataContext.get_current()
            ctx.enable_progress_bars = progress
            ctx.verbose_stats_logs = False
            self.workers = cluster_workers(ray, s)
            # Longest first, like sentence-transformers: a block pads to the length of similar texts. Arrow
            # columns, not a dict per text: 30M texts cost their bytes, not 30M Python objects.
            order = np.argsort([-len(t) for t in texts], kind="stable")
            table = pa.table({"row": pa.array(order, pa.int64()), "text": pa.array([texts[i] for i in order], pa.string())})
            blocks = max(1, min(-(-len(texts) // BLOCK_TEXTS), self.workers * 16))
            step = -(-len(texts) // blocks)
            ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(texts), step)])
            ds = ds.map_batches(_EmbedActor, fn_constructor_args=(s.embed_model, s.embed_backend, s.cache_dir),
                                batch_size=BLOCK_TEXTS, batch_format="numpy", num_cpus=1,
                                compute=ActorPoolStrategy(size=min(self.workers, len(texts))))
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                nodes, counts = np.unique(batch["node"], return_counts=True)
                self.nodes.update({str(n): int(c) for n, c in zip(nodes, counts, strict=True)})
                yield np.asarray(batch["row"], dtype=np.int64), np.asarray(batch["vector"], dtype=np.float32)

    def _output(self, n: int) -> np.ndarray:
        if n * self.dim * 4 <= SPILL_BYTES:
            return np.empty((n, self.dim), dtype=np.float32)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-vectors-", suffix=".f32", dir=self.spill_dir)
        os.close(fd)
        try:
            return np.memmap(name, dtype=np.float32, mode="w+", shape=(n, self.dim))
        finally:
            os.unlink(name)  # the mapping keeps the space until the array is dropped


def _texts_key(texts: list[str], settings: Settings) -> str:
    """Names the shards of one embedding job: the texts, in order, and what embeds them."""
    h = hashlib.sha256(f"{settings.embed_model}\0{settings.embed_backend}\0{len(texts)}".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class Shards:
    """Vectors already embedded for one job, as `.npz` files (rows, vectors) in `<dir>/.shards-<key>/`:
    each written whole (temp file, fsync, rename) once `SHARD_ROWS` rows have come back."""

    def __init__(self, root: Path, key: str, dim: int) -> None:
        self.dir = Path(root) / f".shards-{key}"
        self.dim = dim
        self.rows: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []
        self.pending = 0

    def load_into(self, out: np.ndarray) -> np.ndarray:
        """Fill `out` from the shards on disk; returns which rows they held."""
        done = np.zeros(len(out), dtype=bool)
        for part in sorted(self.dir.glob("part-*.npz")) if self.dir.is_dir() else []:
            try:
                with np.load(part) as z:
                    rows, vectors = z["rows"], z["vectors"]
                if vectors.shape != (len(rows), self.dim) or (len(rows) and rows.max() >= len(out)):
                    raise ValueError("shape")
            except (OSError, ValueError, KeyError):  # a damaged shard is embedded again
                log.warning("ignoring damaged shard %s", part)
                continue
            out[rows] = vectors
            done[rows] = True
        return done

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self.rows.append(rows)
        self.vectors.append(vectors)
        self.pending += len(rows)
        if self.pending >= SHARD_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{os.getpid()}"
        with atomic_writer(self.dir / f"{name}.npz", "wb", suffix=".npz") as f:
            np.savez(f, rows=np.concatenate(self.rows), vectors=np.concatenate(self.vectors))
        self.rows, self.vectors, self.pending = [], [], 0

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --- distributed batch QA -----------------------------------------------------------

def open_pipeline(settings: Settings) -> Any:
    """What each batch actor runs once: the pipeline with its LM, over an index that already exists."""
    from rag.pipeline import Pipeline

    return Pipeline.open(settings, rebuild="never", need_lm=True)


@dataclass(frozen=True)
class IndexCopy:
    """The index every batch actor must open, and how a node without it gets it: `shipment`, a tarball of
    the index directory and the corpus in Ray's object store, unpacked once per node under `cached`."""

    name: str
    path: str
    key: str  # meta.json's manifest_sha256: the same index, not only one of the same name
    corpus: str
    corpus_bytes: int
    cached: str
    shipment: Any = None  # an ObjectRef; None when every node held the index at start

    def state(self) -> str:
        """On a node: "here" (the index and corpus at their paths), "cached" (an unpacked copy) or "missing"."""
        if _holds(Path(self.path), Path(self.corpus), self):
            return "here"
        return "cached" if self._cached() else "missing"

    def _cached(self) -> bool:
        cached = Path(self.cached)
        return _holds(cached / "indexes" / self.name, cached / "corpus" / Path(self.corpus).name, self)

    def settings_here(self, settings: Settings) -> Settings:
        """`settings` as this node can use them: the shared paths, or its unpacked copy (unpacked first)."""
        state = self.state()
        if state == "here":
            return settings
        if state == "missing":
            ray = _ray()
            if self.shipment is None:
                node = ray.get_runtime_context().get_node_id()
                raise RagError(f"Ray node {node[:12]} has no copy of index {self.name} at {self.path} (it joined "
                               f"after the batch started?): put the index and corpus on shared storage at the same "
                               f"paths on every node, or run the batch again")
            self._unpack(ray.get(self.shipment))
        cached = Path(self.cached)
        return settings.replace(index_dir=str(cached / "indexes"), corpus=str(cached / "corpus" / Path(self.corpus).name))

    def _unpack(self, data: bytes) -> None:
        """Unpack the shipment into `cached` whole (a temporary directory, then a rename): the actors of one
        node may race, and the first rename wins."""
        target = Path(self.cached)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=target.parent))
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(tmp, filter="data")
            if target.exists() and not self._cached():
                shutil.rmtree(target, ignore_errors=True)  # a damaged copy
            try:
                os.rename(tmp, target)
            except OSError:
                if not self._cached():  # not another actor's complete copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _state_on_node(copy: IndexCopy) -> str:
    return copy.state()


def _holds(index: Path, corpus: Path, copy: IndexCopy) -> bool:
    """Whether `index` is the copy's index (same manifest) and `corpus` its corpus (same size)."""
    try:
        meta = json.loads((index / META).read_text(encoding="utf-8"))
        return isinstance(meta, dict) and meta.get("manifest_sha256") == copy.key and tree_bytes(corpus) == copy.corpus_bytes
    except (OSError, ValueError):
        return False


def place_index(ray: Any, settings: Settings, index: Path) -> IndexCopy | None:
    """Ask every node with CPUs whether it holds `index` and the corpus; ship both to those that lack them
    (up to SHIP_BYTES), or refuse naming the node. None when there is no index here to place (the actors
    then fail to open it, with the fix, as a local run would)."""
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        key = json.loads((index / META).read_text(encoding="utf-8"))["manifest_sha256"]
        corpus = Path(settings.corpus)
        copy = IndexCopy(index.name, str(index), key, str(corpus), tree_bytes(corpus),
                         str(Path(settings.cache_dir) / "ray-indexes" / f"{index.name}-{key[:12]}"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0)(_state_on_node)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(copy)
            for n in nodes]
    try:
        states = ray.get(refs, timeout=PROBE_WAIT)
    except GetTimeoutError:
        raise RagError(f"the Ray nodes did not say within {PROBE_WAIT:.0f} s whether they hold index {index.name}; "
                       f"check the cluster with `ray status`") from None
    missing = [n for n, state in zip(nodes, states, strict=True) if state == "missing"]
    if not missing:
        return copy
    size = tree_bytes(index) + copy.corpus_bytes
    if size > SHIP_BYTES:
        node = missing[0]
        raise RagError(f"Ray node {node['NodeID'][:12]} ({node.get('NodeManagerAddress', '?')}) has no copy of index "
                       f"{index.name} at {index} or of the corpus {corpus}, and {size / 2**20:.0f} MiB is too much to "
                       f"ship through Ray's object store (limit {SHIP_BYTES / 2**20:.0f} MiB): put both on shared "
                       f"storage at the same paths on every node, or build the index there with `rag index`")
    log.info("shipping index %s (%.1f MiB) to %d Ray node(s) without it", index.name, size / 2**20, len(missing))
    return dataclasses.replace(copy, shipment=ray.put(_pack(index, corpus)))


def _pack(index: Path, corpus: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(index, arcname=f"indexes/{index.name}")
        tar.add(corpus, arcname=f"corpus/{corpus.name}")
    return buf.getvalue()


class _AnswerActor:
    """One loaded pipeline; answers questions one at a time."""

    def __init__(self, factory: Callable[[Settings], Any], settings: Settings, copy: IndexCopy | None = None) -> None:
        if copy is not None:
            settings = copy.settings_here(settings)
        self.pipe = factory(settings)

    def ready(self) -> dict:
        """Which index it opened, from where, on which node."""
        node = _ray().get_runtime_context().get_node_id()
        return {"index": self.pipe.index.name, "path": str(self.pipe.index.path), "node": node}

    def ask(self, question: str) -> tuple[str, Any]:
        """("ok", answer) or ("error", message): the message a local run would have put in the row."""
        try:
            return "ok", self.pipe.ask(question)
        except RagError as e:
            return "error", str(e)
        except Exception as e:  # noqa: BLE001 - as rag.batch.run.answer_row words it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            return "error", f"{type(e).__name__}: {first}"


@dataclass(eq=False)
class Worker:
    """One batch actor; `node` and `index` (the directory it opened) are known once it is ready."""

    actor: Any
    node: str = ""
    index: str = ""


class RayAsker:
    """`ask(question) -> answer dict` over a pool of Ray actors; safe to call from many threads
    (each call takes an idle actor, so at most one question per actor is in flight).

    An actor that dies (its process, or its node) costs its question, which becomes the row's error. Its
    replacement joins the pool once it is running: at once where the dead one's CPUs are free again, when
    a node joins where its node was lost; until then the other actors answer everything."""

    def __init__(self, ray: Any, settings: Settings, workers: int,
                 factory: Callable[[Settings], Any] = open_pipeline, index: str | Path | None = None) -> None:
        from rag.index.open import expected_index_path

        self.ray = ray
        self.factory = factory
        # A fractional share when there are more workers than CPUs: every actor still starts.
        self.cpus = float(ray.cluster_resources().get("CPU", 1)) / workers
        # The local LM would start a thread per core in every actor; give each its share. Paths are made
        # absolute: an actor on another node does not start in this directory.
        self.actor_settings = settings.replace(
            threads=settings.threads or max(1, int(self.cpus)),
            **{k: str(Path(getattr(settings, k)).expanduser().absolute()) for k in ("corpus", "index_dir", "cache_dir")})
        index = Path(index).absolute() if index else expected_index_path(self.actor_settings)
        self.copy = place_index(ray, self.actor_settings, index)
        self.remote = ray.remote(num_cpus=self.cpus, scheduling_strategy="SPREAD")(_AnswerActor)
        self.idle: queue.Queue[Worker] = queue.Queue()
        self.lock = threading.Lock()
        self.pool: list[Worker] = []
        self.asked: Counter[str] = Counter()  # questions answered (row errors included), by node id
        self.closed = False
        starting = [self._start() for _ in range(workers)]
        try:
            infos = ray.get([w.actor.ready.remote() for w in starting])
        except Exception as e:  # noqa: BLE001 - an actor that cannot load its pipeline
            self.close()
            raise RagError(f"a Ray worker could not load the pipeline: {_cause(e)}") from None
        for worker, info in zip(starting, infos, strict=True):
            worker.node, worker.index = info["node"], info["path"]
        log.info("%d Ray workers ready on index %s, over %d node(s)", workers, infos[0]["index"],
                 len({w.node for w in starting}))
        for w in starting:
            self.idle.put(w)
        self.workers = workers

    def _start(self) -> Worker:
        worker = Worker(self.remote.remote(self.factory, self.actor_settings, self.copy))
        with self.lock:
            self.pool.append(worker)
        return worker

    def _replace(self, dead: Worker, tries: int = 0) -> None:
        """Drop a dead worker and start another, which joins the idle pool once it is running."""
        with contextlib.suppress(Exception):
            self.ray.kill(dead.actor)  # an actor only unreachable for now would keep its CPUs
        with self.lock:
            if dead in self.pool:
                self.pool.remove(dead)
            if self.closed:
                return
        worker = self._start()
        threading.Thread(target=self._join, args=(worker, tries), name="ray-replacement", daemon=True).start()

    def _join(self, worker: Worker, tries: int) -> None:
        try:
            info = self.ray.get(worker.actor.ready.remote())
        except Exception as e:  # noqa: BLE001 - it cannot load, or died before it ran (placed on a dying node)
            if self.closed:
                return
            if tries + 1 < REPLACE_TRIES:
                self._replace(worker, tries + 1)
            else:
                log.warning("a Ray worker died and %d replacements failed to start: %s", REPLACE_TRIES, _cause(e))
                with self.lock:
                    if worker in self.pool:
                        self.pool.remove(worker)
            return
        worker.node, worker.index = info["node"], info["path"]
        self.idle.put(worker)

    def running(self) -> list[Worker]:
        """The workers that are ready (idle or answering)."""
        with self.lock:
            return [w for w in self.pool if w.node]

    def _take(self) -> Worker:
        """An idle worker; waits while any is running or a replacement may still start (REPLACE_WAIT)."""
        waited = 0.0
        while True:
            try:
                return self.idle.get(timeout=1.0)
            except queue.Empty:
                waited = 0.0 if self.running() else waited + 1.0
            if waited >= REPLACE_WAIT:
                raise RagError(f"no Ray worker has been running for {REPLACE_WAIT:.0f} s (the cluster lost the nodes "
                               f"they ran on?); --retry-errors re-asks this question once it has room for them")

    def close(self) -> None:
        """Stop the actors (and free their CPUs and models) now, not when the driver exits."""
        with self.lock:
            self.closed = True
            pool, self.pool = self.pool, []
        for worker in pool:
            with contextlib.suppress(Exception):
                self.ray.kill(worker.actor)

    def __call__(self, question: str) -> dict:
        worker = self._take()
        try:
            status, value = self.ray.get(worker.actor.ask.remote(question))
        except self.ray.exceptions.RayActorError as e:
            self._replace(worker)  # its question is this row's error
            raise RagError(f"the Ray worker answering this question died ({_cause(e)}); --retry-errors re-asks it") from None
        except BaseException:
            self.idle.put(worker)
            raise
        self.idle.put(worker)
        with self.lock:
            self.asked[worker.node] += 1
        if status == "error":
            raise RagError(value)
        return value


def _cause(e: BaseException) -> str:
    text = str(getattr(e, "cause", None) or e)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


@contextlib.contextmanager
def ray_asker(settings: Settings, factory: Callable[[Settings], Any] = open_pipeline, *,
              index: str | Path | None = None) -> Iterator[RayAsker]:
    """A `RayAsker` with `ray_workers` actors (one per CPU by default), for one `rag batch` run; `index` is
    the index directory the driver opened (found from the corpus when not given)."""
    with ray_session(settings) as ray:
        asker = RayAsker(ray, settings, cluster_workers(ray, settings), factory, index)
        try:
            yield asker
        finally:
            asker.close()
