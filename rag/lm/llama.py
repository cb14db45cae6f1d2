"""The embedded model, run in-process by llama.cpp (`xllamacpp`) behind DSPy's engine interface.

`LlamaCppEngine` turns a DSPy request into an OpenAI-style chat-completion body,
hands it to llama.cpp, and turns the reply (whole or streamed token by token)
back into DSPy's response types. One generation runs at a time: on 2 cores
llama.cpp gains nothing from parallel requests, and one slot keeps the prompt
cache warm, so a fixed prompt prefix (instructions, demos) is read once;
llama.cpp also keeps earlier prompts' states in RAM and restores the longest
matching one, so alternating between a few fixed prefixes stays cheap.

A JSON schema on the request (DSPy's JSONAdapter sets one: the engine declares
`supports_response_schema`) becomes a llama.cpp grammar (llguidance) for one
compact JSON object: the reply always parses, and carries no fence or
indentation to pay for. (`response_format` with the schema directly under it is
silently ignored by this server.) Token
logprobs (`logprobs`, `top_logprobs`) come back as DSPy's `TokenLogprob`s; note
that llama.cpp reports the model's probabilities before the grammar is applied.
`warm(messages)` evaluates a fixed prompt prefix into the cache at load time,
so the first question a user asks is as fast as the second.

`timeout` (RAG_TIMEOUT) bounds the time without progress, not the total: every
call is streamed from llama.cpp (a whole completion is assembled from its
chunks, logprobs included), with `return_progress`, so each batch of
`PROMPT_BATCH` prompt tokens read and each token generated is progress. A call
that makes none for `timeout` seconds is an LMError instead of a hang; a slow,
contended machine is not a hang (issue 23: 1,879 prompt tokens took 129 s on
two loaded cores, past the old total limit of 120 s). A remote backend keeps
LiteLLM's total timeout (`rag.lm.backends`).

The model is driven by direct calls, but xllamacpp's `Server` always starts
llama.cpp's HTTP server as well (it cannot be switched off). It is locked down
(`server_params`): it listens on a Unix socket, not a TCP port, in a directory
only this user can enter, the socket itself mode 0600; every endpoint but
/health wants a random per-process API key that never leaves the process; the
slots, props, metrics and web-UI endpoints are off. So no other user can reach
it at all, and another process of this user cannot use the model, read its
settings or evict its prompt cache without reading this process's memory.

Left out: GPU offload and several local models at once.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.errors import LMError, LMTimeout
from rag.files import pid_alive
from rag.lm.gguf import LOCAL_MODEL_NAME, local_model_path
from rag.settings import Settings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def compact_json_grammar(schema_json: str) -> str:
    """llama.cpp's grammar for replies that are one compact JSON object of `schema_json`.

    Given a `json_schema`, this server lets the model open with a Markdown fence and pretty-print
    ("```json", newlines, indents): about half the tokens of a short reply, at ~15 tokens a second.
    The grammar llama.cpp would build, with llguidance's whitespace made strict, starts the reply at
    "{" and writes it on one line."""
    import xllamacpp

    schema = {**json.loads(schema_json), "x-guidance": {"whitespace_flexible": False}}
    return xllamacpp.json_schema_to_grammar(json.dumps(schema))


CHARS_PER_TOKEN = 3  # a safe floor for English prose with names and numbers in it (most runs 4)
JSON_OVERHEAD_TOKENS = 32  # keys, quotes, a boolean, a verdict and a short list of sources


def fit_strings(schema: dict, max_tokens: int | None) -> dict:
    """`schema` with a `maxLength` on its free-text string fields, so that a reply written under it ends
    inside `max_tokens`: a long text field can no longer eat the budget of the fields after it (a yes/no
    finding cut off by the token limit before its verdict). The text budget is shared by those fields."""
    props = schema.get("properties") or {}
    texts = [name for name, p in props.items() if p.get("type") == "string" and "enum" not in p
             and "maxLength" not in p]
    if not max_tokens or not texts:
        return schema
    cap = max(40, (max_tokens - JSON_OVERHEAD_TOKENS) * CHARS_PER_TOKEN // len(texts))
    return {**schema, "properties": {name: ({**p, "maxLength": cap} if name in texts else p)
                                     for name, p in props.items()}}


def request_body(request: Any, *, cache_prompt: bool = True) -> dict:
    """The OpenAI-style chat-completion body for a DSPy request (what llama.cpp is sent)."""
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    cfg = request.config
    body: dict[str, Any] = {"messages": messages, "cache_prompt": cache_prompt}
    if cfg.max_tokens:
        body["max_tokens"] = cfg.max_tokens
    body["temperature"] = 0.0 if cfg.temperature is None else cfg.temperature
    if cfg.stop:
        body["stop"] = list(cfg.stop)
    if cfg.seed is not None:
        body["seed"] = cfg.seed
    fmt = cfg.response_format or {}
    schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
    if schema or fmt.get("type") == "json_object":
        schema = fit_strings(schema, cfg.max_tokens) if schema else {"type": "object"}
        body["grammar"] = compact_json_grammar(json.dumps(schema))  # key order is field order
    if cfg.logprobs is not None:
        body["logprobs"] = True
        if cfg.logprobs:
            body["top_logprobs"] = cfg.logprobs
    return body


SOCKET_NAME = "llama.sock"
PROMPT_BATCH = 256  # prompt tokens read between two progress reports (llama.cpp's default, 2048, is a whole prompt)
_SOCKET_DIR_PREFIX = "rag-llm-"


def server_params(model_path: str | Path, n_ctx: int, threads: int, socket_path: str, api_key: str) -> Any:
    """xllamacpp parameters for the embedded model, its HTTP side locked down (see the module docstring)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.n_ctx = n_ctx
    params.n_batch = PROMPT_BATCH  # progress is reported once a batch: a long prompt reports several times
    params.n_parallel = 1
    n = threads or os.cpu_count() or 2
    params.cpuparams.n_threads = n
    params.cpuparams_batch.n_threads = n
    params.warmup = False
    params.verbosity = -1  # llama.cpp logs to stderr by default: keep the terminal clean
    params.cache_prompt = True
    params.hostnames = [socket_path]  # a path ending in .sock: AF_UNIX, no TCP port at all
    params.api_keys = [api_key]
    params.endpoint_slots = False
    params.endpoint_props = False
    params.endpoint_metrics = False
    params.ui = False
    params.n_threads_http = 1  # nobody legitimate talks to it
    return params


class LlamaCppEngine:
    """DSPy engine running a GGUF model in-process with llama.cpp (xllamacpp)."""

    # What DSPy may ask of this engine (its JSONAdapter sends a schema only to engines that say so).
    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"temperature", "max_tokens", "stop", "seed", "response_format", "logprobs",
                                  "top_logprobs"})

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, threads: int = 0, timeout: float = 120.0) -> None:
        import xllamacpp

        self.socket_dir = _private_dir()
        socket_path = os.path.join(self.socket_dir, SOCKET_NAME)
        self.api_key = secrets.token_urlsafe(32)
        t0 = time.perf_counter()
        try:
            self.server = xllamacpp.Server(server_params(model_path, n_ctx, threads, socket_path, self.api_key))
            os.chmod(socket_path, 0o600)
        except Exception as e:  # noqa: BLE001 - the C++ side raises plain RuntimeError
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise LMError(f"cannot load local model {model_path}: {e}; delete it to re-join it from the packages") from None
        atexit.register(shutil.rmtree, self.socket_dir, True)
        log.info("loaded %s in %.1fs; its HTTP side is %s", model_path, time.perf_counter() - t0,
                 self.server.listening_address)
        self.model = LOCAL_MODEL_NAME
        self.timeout = timeout
        self._lock = threading.Lock()
        self.cache_prompt = True  # reuse the KV cache of the longest shared prompt prefix
        self.last_timings: dict[str, Any] = {}

    @property
    def address(self) -> str:
        """Where llama.cpp's HTTP side listens: unix://<private dir>/llama.sock."""
        return self.server.listening_address

    def _start(self, body: dict, stream: bool) -> tuple[queue.Queue, threading.Event]:
        """Run one generation on a worker thread (one at a time); its replies arrive on the queue, then
        _DONE. Setting the event asks llama.cpp to stop a stream at its next token."""
        items: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def on_chunk(chunk: Any) -> bool:
            items.put(chunk)
            return cancel.is_set()  # True stops the generation

        def run() -> None:
            try:
                with self._lock:
                    if cancel.is_set():
                        return
                    if stream:
                        self.server.handle_chat_completions(body, on_chunk)
                    else:
                        items.put(self.server.handle_chat_completions(body))
            except Exception as e:  # noqa: BLE001 - relayed to the consumer
                items.put(e)
            finally:
                items.put(_DONE)

        threading.Thread(target=run, name="llama-generate", daemon=True).start()
        return items, cancel

    def _next(self, items: queue.Queue, cancel: threading.Event) -> Any:
        """The next chunk (or _DONE); an LMError when llama.cpp makes no progress for `timeout` seconds."""
        try:
            return items.get(timeout=self.timeout)
        except queue.Empty:
            cancel.set()
            raise LMTimeout(f"the local model made no progress (no token, no prompt batch read) for RAG_TIMEOUT="
                            f"{self.timeout:g}s; raise RAG_TIMEOUT, or lower RAG_K / RAG_MAX_TOKENS") from None

    def _chunks(self, body: dict) -> Iterator[dict]:
        """The chunks of one streamed generation of `body`, each within `timeout` of the one before (prompt
        progress reports included); errors as LMErrors. Stops the generation when abandoned."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}, "return_progress": True}
        items, cancel = self._start(body, stream=True)
        try:
            while (item := self._next(items, cancel)) is not _DONE:
                if isinstance(item, Exception):
                    raise LMError(f"local model failed: {item}")
                if not isinstance(item, dict) or "error" in item:
                    err = item.get("error") if isinstance(item, dict) else item
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise LMError(f"local model failed: {msg}; shorten the question or lower RAG_K")
                if "timings" in item:
                    self.last_timings = item["timings"]
                yield item
        finally:
            cancel.set()  # a consumer that stops reading (an error, a closed chat) stops the generation

    def chat(self, body: dict) -> dict:
        """One OpenAI-style chat completion, assembled from its stream (so the timeout is on progress)."""
        return assemble(list(self._chunks(body)))

    def wire_request(self, request: Any) -> dict:
        """What this engine sends llama.cpp for `request` (the disk cache keys on it too)."""
        return request_body(request, cache_prompt=self.cache_prompt)

    def complete(self, request: Any) -> Any:
        return to_response(self.chat(self.wire_request(request)), self.model)

    def warm(self, messages: list[dict]) -> None:
        """Evaluate `messages` (a fixed prompt prefix) into the prompt cache; generates one token."""
        self.chat({"messages": messages, "max_tokens": 1, "temperature": 0.0, "cache_prompt": True})

    def stream(self, request: Any) -> Iterator[Any]:
        """Token-by-token events: llama.cpp calls back per chunk on a worker thread; we relay them."""
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta, Usage

        yield StreamStartEvent(id=None, model=self.model)
        finish, usage = "stop", {}
        chunks = self._chunks(request_body(request, cache_prompt=self.cache_prompt))
        try:
            for item in chunks:
                usage = item.get("usage") or usage
                for choice in item.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield StreamDeltaEvent(delta=TextDelta(text=text, part_index=0))
                    if choice.get("finish_reason") in ("stop", "length"):
                        finish = choice["finish_reason"]
        finally:
            chunks.close()  # a consumer that stops reading stops the generation
        yield StreamEndEvent(finish_reason=finish, usage=Usage(
            input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0),
            total_tokens=usage.get("total_tokens", 0)))

    def close(self) -> None:
        pass


_DONE = object()


def _private_dir(base: str | None = None) -> str:
    """A new directory only this user can enter (mkdtemp makes it 0700) for the model's socket. Those of
    dead processes (killed before their exit handler ran) are removed first. The base is kept short:
    a Unix socket path is limited to 107 bytes."""
    base = base or tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    for d in Path(base).glob(f"{_SOCKET_DIR_PREFIX}*"):
        m = re.match(rf"{_SOCKET_DIR_PREFIX}(\d+)-", d.name)
        if m and d.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_SOCKET_DIR_PREFIX}{os.getpid()}-", dir=base)


def assemble(chunks: list[dict]) -> dict:
    """The chat-completion dict a non-streamed call returns, from the chunks of its stream: the content
    joined, the logprobs in order, the last finish reason, the usage and timings."""
    text: list[str] = []
    logprobs: list[dict] = []
    finish, usage, timings, cid = None, {}, {}, None
    for chunk in chunks:
        cid = cid or chunk.get("id")
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
        for choice in chunk.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
            raw = choice.get("logprobs")
            logprobs.extend(raw.get("content") or [] if isinstance(raw, dict) else [])
            finish = choice.get("finish_reason") or finish
    choice = {"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": finish or "stop"}
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    return {"id": cid, "choices": [choice], "usage": usage, "timings": timings}


def to_response(out: dict, model: str) -> Any:
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
                                total_tokens=usage.get("total_tokens", 0)),
                    logprobs=_logprobs(choice.get("logprobs")))


def _logprobs(raw: Any) -> Any:
    """llama.cpp's OpenAI-style `logprobs.content` as DSPy TokenLogprobs (None when not asked for)."""
    from dspy.lm15 import TokenLogprob, TopLogprob

    if not isinstance(raw, dict) or not raw.get("content"):
        return None
    return tuple(TokenLogprob(token=t.get("token") or "", logprob=float(t.get("logprob", 0.0)),
                              top=tuple(TopLogprob(token=a.get("token") or "", logprob=float(a.get("logprob", 0.0)))
                                        for a in t.get("top_logprobs") or ()))
                 for t in raw["content"])


_LOCAL: dict[tuple, LlamaCppEngine] = {}
_LOCAL_LOCK = threading.Lock()


def local_engine(settings: Settings) -> LlamaCppEngine:
    """The process-wide local engine: the model is loaded once and shared."""
    key = (settings.cache_dir, settings.n_ctx, settings.threads)
    with _LOCAL_LOCK:
        if key not in _LOCAL:
            _LOCAL[key] = LlamaCppEngine(local_model_path(settings.cache_dir), settings.n_ctx, settings.threads,
                                         settings.timeout)
        _LOCAL[key].timeout = settings.timeout
        return _LOCAL[key]
