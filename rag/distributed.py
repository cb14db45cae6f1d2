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
  appends, resume, per-row errors). A row's error reads as it would locally; an
  actor that dies is replaced and only its question fails.

Every actor needs the index directory at the same path (one machine, or shared
storage on a cluster) and the project installed; a local Ray started here gets
this checkout on its workers' `PYTHONPATH`.

Left out: autoscaling, GPUs, deleting the shards of a job that is never run again,
and Ray's dashboard (never started).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import RagError
from rag.files import atomic_writer
from rag.settings import Settings

log = logging.getLogger(__name__)

BLOCK_TEXTS = 512  # texts per actor call
SHARD_ROWS = 50_000  # vectors a shard file holds (~77 MB at 384-d): what a killed build can lose
SPILL_BYTES = 1 << 30  # vectors above this size go to a memory-mapped file, not RAM
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

    def __call__(self, batch: dict) -> dict:
        vectors = self.embedder.encode([str(t) for t in batch["text"]])
        return {"row": batch["row"], "vector": vectors}


class RayEmbedder:
    """An `Embedder` whose `encode` runs on a Ray cluster; the model is never loaded in the driver."""

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


class _AnswerActor:
    """One loaded pipeline; answers questions one at a time."""

    def __init__(self, factory: Callable[[Settings], Any], settings: Settings) -> None:
        self.pipe = factory(settings)

    def ready(self) -> str:
        return self.pipe.index.name

    def ask(self, question: str) -> tuple[str, Any]:
        """("ok", answer) or ("error", message): the message a local run would have put in the row."""
        try:
            return "ok", self.pipe.ask(question)
        except RagError as e:
            return "error", str(e)
        except Exception as e:  # noqa: BLE001 - as rag.batch.run.answer_row words it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            return "error", f"{type(e).__name__}: {first}"


class RayAsker:
    """`ask(question) -> answer dict` over a pool of Ray actors; safe to call from many threads
    (each call takes an idle actor, so at most one question per actor is in flight)."""

    def __init__(self, ray: Any, settings: Settings, workers: int,
                 factory: Callable[[Settings], Any] = open_pipeline) -> None:
        self.ray = ray
        self.settings = settings
        self.factory = factory
        # A fractional share when there are more workers than CPUs: every actor still starts.
        self.cpus = float(ray.cluster_resources().get("CPU", 1)) / workers
        # The local LM would start a thread per core in every actor; give each its share.
        self.actor_settings = settings.replace(threads=settings.threads or max(1, int(self.cpus)))
        self.remote = ray.remote(num_cpus=self.cpus)(_AnswerActor)
        self.idle: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.actors: list[Any] = []
        for _ in range(workers):
            self._start()
        try:
            names = ray.get([a.ready.remote() for a in self.actors])
        except Exception as e:  # noqa: BLE001 - an actor that cannot load its pipeline
            self.close()
            raise RagError(f"a Ray worker could not load the pipeline: {_cause(e)}") from None
        log.info("%d Ray workers ready on index %s", workers, names[0])
        for a in self.actors:
            self.idle.put(a)
        self.workers = workers

    def _start(self) -> Any:
        actor = self.remote.remote(self.factory, self.actor_settings)
        self.actors.append(actor)
        return actor

    def close(self) -> None:
        """Stop the actors (and free their CPUs and models) now, not when the driver exits."""
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []

    def __call__(self, question: str) -> dict:
        actor = self.idle.get()
        try:
            status, value = self.ray.get(actor.ask.remote(question))
        except self.ray.exceptions.RayActorError as e:
            actor = self._start()  # a dead worker is replaced; its question is this row's error
            raise RagError(f"the Ray worker answering this question died ({_cause(e)}); --retry-errors re-asks it") from None
        finally:
            self.idle.put(actor)
        if status == "error":
            raise RagError(value)
        return value


def _cause(e: BaseException) -> str:
    text = str(getattr(e, "cause", None) or e)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


@contextlib.contextmanager
def ray_asker(settings: Settings, factory: Callable[[Settings], Any] = open_pipeline) -> Iterator[RayAsker]:
    """A `RayAsker` with `ray_workers` actors (one per CPU by default), for one `rag batch` run."""
    with ray_session(settings) as ray:
        asker = RayAsker(ray, settings, cluster_workers(ray, settings), factory)
        try:
            yield asker
        finally:
            asker.close()
