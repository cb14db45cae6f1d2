"""The embedded model, run in-process by llama.cpp (`xllamacpp`) behind DSPy's engine interface.

`LlamaCppEngine` turns a DSPy request into an OpenAI-style chat-completion body,
hands it to llama.cpp, and turns the reply (whole or streamed token by token)
back into DSPy's response types. One generation runs at a time: on 2 cores
llama.cpp gains nothing from parallel requests, and one slot keeps the prompt
cache warm, so a fixed prompt prefix (instructions, demos) is read once;
llama.cpp also keeps earlier prompts' states in RAM and restores the longest
matching one, so alternating between a few fixed prefixes stays cheap.

A JSON schema on the request (DSPy's JSONAdapter sets one: the engine declares
`supports_response_schema`) becomes llama.cpp's top-level `json_schema` field,
which it compiles into a grammar: the reply always parses. (`response_format`
with the schema directly under it is silently ignored by this server.) Token
logprobs (`logprobs`, `top_logprobs`) come back as DSPy's `TokenLogprob`s; note
that llama.cpp reports the model's probabilities before the grammar is applied.
`warm(messages)` evaluates a fixed prompt prefix into the cache at load time,
so the first question a user asks is as fast as the second.

Left out: GPU offload and several local models at once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.errors import LMError
from rag.model_file import LOCAL_MODEL_NAME, local_model_path
from rag.settings import Settings

log = logging.getLogger(__name__)


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
    if schema:
        body["json_schema"] = schema
    elif fmt.get("type") == "json_object":
        body["json_schema"] = {"type": "object"}
    if cfg.logprobs is not None:
        body["logprobs"] = True
        if cfg.logprobs:
            body["top_logprobs"] = cfg.logprobs
    return body


class LlamaCppEngine:
    """DSPy engine running a GGUF model in-process with llama.cpp (xllamacpp)."""

    # What DSPy may ask of this engine (its JSONAdapter sends a schema only to engines that say so).
    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"temperature", "max_tokens", "stop", "seed", "response_format", "logprobs",
                                  "top_logprobs"})

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
        return to_response(self.chat(request_body(request, cache_prompt=self.cache_prompt)), self.model)

    def warm(self, messages: list[dict]) -> None:
        """Evaluate `messages` (a fixed prompt prefix) into the prompt cache; generates one token."""
        self.chat({"messages": messages, "max_tokens": 1, "temperature": 0.0, "cache_prompt": True})

    def stream(self, request: Any) -> Iterator[Any]:
        """Token-by-token events: llama.cpp calls back per chunk on a worker thread; we relay them."""
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta, Usage

        body = {**request_body(request, cache_prompt=self.cache_prompt), "stream": True,
                "stream_options": {"include_usage": True}}
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
            _LOCAL[key] = LlamaCppEngine(local_model_path(settings.cache_dir), settings.n_ctx, settings.threads)
        return _LOCAL[key]
