"""One settings object for the whole project.

Every field carries a description. Values come from defaults, then environment
variables `RAG_<FIELD>` (upper case), then explicit overrides (CLI flags). An
unknown `RAG_*` variable or override is an error, not silently ignored, so a typo
never leaves a setting at its default without anyone noticing. Every value is
checked when the object is made: its type, its range (`range=(lo, hi)` in the
field's metadata; NaN and infinities are errors), its `choices`, and that text
settings marked `nonempty` are not blank, so a bad value never reaches a backend
or silently switches a check off.

`index_key()` hashes only the fields that shape the index (embedding model and
chunking), so the index directory changes whenever one of them does and a stale
index is never reused.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rag.errors import SettingsError

ROOT = Path(__file__).resolve().parent.parent
# A checkout keeps the seed pages in data/corpus and indexes in indexes/; an installed wheel carries the
# pages as rag/seed_pages and keeps its indexes in the cache directory (site-packages is no place for them).
CHECKOUT = (ROOT / "pyproject.toml").is_file()
SEED_PAGES = ROOT / "data" / "corpus" if CHECKOUT else Path(__file__).resolve().parent / "seed_pages"
ENV_PREFIX = "RAG_"
# The retrieval modes, by name: rag/answer/retrieve.py implements each (its MODES table has exactly these keys).
RETRIEVAL_MODES = ("hybrid", "dense", "bm25")


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "papers-rag")


def _default_indexes() -> str:
    return str(ROOT / "indexes") if CHECKOUT else os.path.join(_default_cache(), "indexes")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    """All knobs of papers-rag. Read with `Settings.load(**overrides)`."""

    # --- corpus and index -------------------------------------------------
    corpus: str = _f(str(SEED_PAGES),
                     "Corpus: a directory of seed pages (*.txt), or a .jsonl/.csv file of papers.", nonempty=True)
    index_dir: str = _f(lambda: _default_indexes(), "Directory that holds built indexes, one sub-directory each.",
                        nonempty=True)
    embed_model: str = _f("all-MiniLM-L6-v2", "Sentence-transformers model, loaded offline from its PyPI package.",
                          shapes_index=True, nonempty=True)
    chunk_sentences: int = _f(3, "Sentences per chunk (sentence-window chunking).", shapes_index=True, range=(1, 50))
    chunk_overlap: int = _f(1, "Sentences shared by consecutive chunks of one abstract.", shapes_index=True,
                            range=(0, 49))
    max_abstract_chars: int = _f(20_000, "Longest abstract read from the corpus, in characters; a longer one is cut "
                                         "at a word boundary, with a warning naming its row.", range=(100, 10_000_000))
    embed_backend: str = _f("onnx", "How the embedding model runs: onnx (ONNX Runtime, exported once from the packaged "
                                    "model; the default), torch (sentence-transformers) or onnx-int8 (int8-quantised: "
                                    "1.5x faster, slightly lower recall); see bench/bench_embed.py.",
                            shapes_index=True, choices=("torch", "onnx", "onnx-int8"))
    # --- large corpora ------------------------------------------------------
    ivf_threshold: int = _f(100_000, "Chunk count above which the dense index is approximate (FAISS IVF) "
                                     "instead of exact; see bench/bench_ann.py for the measurement.", shapes_index=True,
                        range=(1, 10**9))
    ivf_lists: int = _f(0, "IVF cells (k-means centroids) of an approximate index; 0 picks 4 x sqrt(chunks).",
                        shapes_index=True, range=(0, 10**9))
    ivf_codec: str = _f("sq8", "How an approximate index stores vectors: sq8 (8-bit scalar, 4x smaller), flat "
                               "(float32) or pq (product quantisation, 32x smaller, lower recall).",
                        shapes_index=True, choices=("sq8", "flat", "pq"))
    nprobe: int = _f(32, "IVF cells searched per query (more: higher recall, slower); exact indexes ignore it.", range=(1, 10**9))
    search_threads: int = _f(1, "FAISS threads for a query (0: every core); one is fastest on a busy machine, "
                                "see bench/bench_ann.py.", range=(0, 10**9))
    engine: str = _f("local", "Where `rag index` embeds and `rag batch` answers: local (this process) or ray "
                              "(a Ray cluster; pip install 'papers-rag[ray]').", choices=("local", "ray"))
    ray_address: str = _f("", "Ray cluster to join ('auto': the one running on this machine, 'ray://host:10001'); "
                              "empty starts a local Ray for the command.")
    ray_workers: int = _f(0, "Ray actors (each loads the embedder, or a whole pipeline for batch QA, once); "
                             "0: one per CPU of the cluster.", range=(0, 10**9))
    # --- retrieval ----------------------------------------------------------
    k: int = _f(6, "Papers retrieved for a question; the model reads evidence sentences chosen from them "
                   "(and `rag search` shows them).", range=(1, 1000))
    retrieval: str = _f("hybrid", "Retrieval mode: hybrid (reciprocal-rank fusion), dense or bm25.",
                        choices=RETRIEVAL_MODES)
    per_paper: int = _f(2, "Best chunks of one paper merged into its passage (1 = just the best chunk).",
                        range=(1, 20))
    min_score: float = _f(0.38, "Dense cosine similarity below which no passage is relevant: the program "
                                "abstains without calling the model (calibrated on train: eval/calibrate_abstention.py). "
                                "A program file's per-shape minimums (rag optimize --optimizer abstain) take its place "
                                "unless this is set.", range=(-1.0, 1.0))
    evidence_tokens: int = _f(250, "Token budget of the evidence the model reads (the best sentences of the retrieved "
                                   "papers, titles included). 250: the smallest that keeps 300's facts within 0.01 on "
                                   "train (bench/bench_evidence.py --budgets); it reads ~40 fewer tokens a question.",
                              range=(20, 100_000))
    answerable_threshold: float = _f(0.0, "P(answerable), read from the model's logprobs, below which the program "
                                          "abstains; 0 = off (on the embedded model it does not separate answerable "
                                          "from unanswerable questions: eval/calibrate_abstention.py).", range=(0.0, 1.0))
    decline_unsupported: int = _f(1, "1: decline an answer that names something (a name, a number) its cited evidence "
                                     "does not contain; 0: answer and flag the claim.", range=(0, 1))
    # --- language model -----------------------------------------------------
    answer: str = _f("lm", "How answers are written: lm (the language model, through the DSPy program) or extractive "
                           "(no model: the best evidence sentences quoted and cited, milliseconds a question; "
                           "rag/answer/extractive.py).", choices=("lm", "extractive"))
    fallback: str = _f("none", "What a question gets when the LM call fails: none (the error: `rag ask` exits 1, a "
                               "batch row keeps it for --retry-errors) or extractive (the extractive answer, its "
                               "provenance naming the fallback and the LM's error).", choices=("none", "extractive"))
    lm: str = _f("local", "LM backend: 'local' (embedded Qwen2.5-Coder-1.5B GGUF) or a LiteLLM model string, "
                          "e.g. openai/gpt-4o-mini, ollama_chat/llama3.2, openai/<name> with RAG_API_BASE.", nonempty=True)
    api_base: str = _f("", "Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama); empty for OpenAI.")
    api_key: str = _f("", "API key for a remote backend; falls back to OPENAI_API_KEY for openai/ models.")
    temperature: float = _f(0.0, "Sampling temperature.", range=(0.0, 2.0))
    max_tokens: int = _f(120, "Most tokens the model may write for one answer (an answer is one or two sentences; "
                              "one cut short keeps its last full sentence).", range=(1, 32_768))
    timeout: float = _f(120.0, "Seconds an LM call may take before it is abandoned: a remote request in all, the "
                               "embedded model without progress (no token, no prompt batch read).", range=(0.1, 86_400.0))
    n_ctx: int = _f(4096, "Context window of the local model, in tokens.", range=(512, 131_072))
    threads: int = _f(0, "CPU threads for the local model; 0 means all cores.", range=(0, 1024))
    cache_dir: str = _f(_default_cache, "Where the joined local model file and LM call caches live.", nonempty=True)
    program: str = _f("auto", "Program to run: 'auto' (latest optimised if any), 'baseline', or a program JSON path.",
                      nonempty=True)
    # --- app ----------------------------------------------------------------
    host: str = _f("127.0.0.1", "Address the Gradio chat binds to.", nonempty=True)
    port: int = _f(7860, "Port of the Gradio chat.", range=(1, 65_535))
    auth: str = _f("", "Optional basic auth for the chat, 'user:password'.")
    mcp: int = _f(0, "1: the chat also serves the MCP tools (search_papers, ask_papers, list_papers) over HTTP at "
                     "/mcp/, behind RAG_AUTH when it is set; `rag mcp` serves them on stdio.", range=(0, 1))
    max_wait: float = _f(300.0, "Longest estimated wait, in seconds, the chat accepts a question with; beyond it "
                                "the question is refused at once, with the estimate.", range=(1.0, 86_400.0))

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
        settings = cls(**{name: _coerce(cls, name, value) for name, value in values.items()})
        object.__setattr__(settings, "_set", frozenset(values))
        return settings

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if self.chunk_overlap >= self.chunk_sentences:
            raise SettingsError(
                f"chunking needs chunk_overlap < chunk_sentences, got {self.chunk_overlap} and {self.chunk_sentences}; "
                f"set {ENV_PREFIX}CHUNK_OVERLAP lower")

    def replace(self, **changes: Any) -> Settings:
        changes = {k: v for k, v in changes.items() if v is not None}
        settings = dataclasses.replace(self, **changes)
        object.__setattr__(settings, "_set", self.__dict__.get("_set", frozenset()) | frozenset(changes))
        return settings

    def is_set(self, name: str) -> bool:
        """Whether `name` was given (its RAG_* variable, an override, `replace`) rather than left at its default:
        a value the user gives wins over one a program file fitted (the program's per-shape `min_score`)."""
        return name in self.__dict__.get("_set", frozenset())

    def index_fields(self) -> dict[str, Any]:
        """The settings that shape an index; a change to any of them means a new index."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("shapes_index")}

    def index_key(self) -> str:
        blob = json.dumps(self.index_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, description) for every field, for `rag settings`."""
        return [(f.name, getattr(self, f.name), f.metadata["help"]) for f in fields(self)]


def _check_field(f: dataclasses.Field, value: Any) -> None:
    """Type, range, choices and non-blankness of one field's value; SettingsError naming the variable to fix."""
    var = f"{ENV_PREFIX}{f.name.upper()}"
    want = {"int": int, "float": (int, float), "str": str}[f.type]
    if isinstance(value, bool) or not isinstance(value, want):
        raise SettingsError(f"setting {f.name} must be {f.type}, got {_shown(value)}; set {var}")
    rng = f.metadata.get("range")
    if rng is not None:
        lo, hi = rng
        if not math.isfinite(value):
            raise SettingsError(f"{f.name} must be a finite number, got {_shown(value, plain=True)}; "
                                f"set {var} to a value from {lo} to {hi}")
        if value < lo:
            raise SettingsError(f"{f.name} must be at least {lo}, got {_shown(value, plain=True)}; "
                                f"set {var} to a value from {lo} to {hi}")
        if value > hi:
            raise SettingsError(f"{f.name} must be at most {hi}, got {_shown(value, plain=True)}; "
                                f"set {var} to a value from {lo} to {hi}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SettingsError(f"{f.name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {_shown(value)}; set {var}")
    if f.metadata.get("nonempty") and not value.strip():
        raise SettingsError(f"{f.name} must not be empty; set {var} or leave it unset for the default")


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
        raise SettingsError(f"setting {name} must be {typ}, got {_shown(value)}; set {ENV_PREFIX}{name.upper()}") from None


SHOWN_CHARS = 60  # of a value echoed in an error: a 5,000-digit one is cut


def _shown(value: Any, *, plain: bool = False) -> str:
    """`value` as an error message shows it (repr, or str when `plain`), cut to SHOWN_CHARS with its length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * SHOWN_CHARS:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    text = str(value) if plain else repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(str(value)):,} characters)"
