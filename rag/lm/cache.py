"""An on-disk cache of whole completions, around any DSPy engine (the eval harness and optimiser use it).

The key is the request as DSPy composed it (system text, messages, sampling
settings, response schema, logprobs) plus a model key (the local model's
sha256), so a different prompt, demo, temperature or model misses. The value is
the engine's response in lm15's exact JSON form, so everything a response
carries (text, usage, logprobs) comes back from a hit. A hit also counts the
seconds the original generation took (`stats["lm_seconds"]`), so the latency
figures of a re-run still describe the model, and `stats["hits"]` says how many
calls cost nothing. Streaming passes through uncached. Entries are SQLite rows,
written per call: a killed run keeps what it finished.

It relies only on the engine protocol (`complete`, `stream`, `close`), so it
wraps the llama.cpp engine, a fake engine in tests, or any other.

Left out: eviction (entries are small; delete the file to start over).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def request_key(request: Any, model_key: str, sent: Any = None) -> str:
    """A stable hash of what decides a completion: the model and the request as composed, and `sent`, what
    the engine makes of it when it says (its `wire_request`: the llama.cpp body with its grammar), so a
    change in how the engine constrains a reply misses too."""
    from dspy._vendor.lm15.serde import request_to_dict

    data = request_to_dict(request)
    data.pop("model", None)  # the engine's name for it; `model_key` is what identifies the weights
    parts = [model_key, data] if sent is None else [model_key, data, sent]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class DiskCachedEngine:
    """`engine`, with its completions stored in the SQLite file at `path`."""

    def __init__(self, engine: Any, path: str | Path, model_key: str) -> None:
        self.engine = engine
        self.model = getattr(engine, "model", model_key)
        self.model_key = model_key
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT, seconds REAL)")
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "hits": 0, "lm_seconds": 0.0}

    def complete(self, request: Any) -> Any:
        from dspy._vendor.lm15.serde import response_from_dict, response_to_dict

        wire = getattr(self.engine, "wire_request", None)
        key = request_key(request, self.model_key, wire(request) if callable(wire) else None)
        with self._lock:
            row = self._db.execute("SELECT response, seconds FROM responses WHERE key = ?", (key,)).fetchone()
        self.stats["calls"] += 1
        if row is not None:
            self.stats["hits"] += 1
            self.stats["lm_seconds"] += row[1]
            return response_from_dict(json.loads(row[0]))
        t0 = time.perf_counter()
        response = self.engine.complete(request)
        seconds = time.perf_counter() - t0
        self.stats["lm_seconds"] += seconds
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                             (key, json.dumps(response_to_dict(response)), seconds))
        return response

    def stream(self, request: Any) -> Iterator[Any]:
        return self.engine.stream(request)

    def __getattr__(self, name: str) -> Any:
        # What the wrapped engine declares (supported_params, supports_response_schema, warm, ...)
        # holds for the cached one too.
        if name.startswith("_") or name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def close(self) -> None:
        pass
