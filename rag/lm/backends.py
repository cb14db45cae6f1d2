"""How language models are reached: a table of backends, chosen by RAG_LM.

- `local` (the default): the embedded Qwen2.5-Coder-1.5B GGUF, joined and
  verified by `rag.lm.gguf`, run in-process by `rag.lm.llama`. Nothing touches
  the network.
- anything else: a LiteLLM model string (`openai/gpt-4o-mini`,
  `ollama_chat/llama3.2`, `openai/<name>` with RAG_API_BASE for vLLM or a
  llama.cpp server), through DSPy's own client.

Each backend says how to check its settings before any work, how to build the
`dspy.LM`, and what to call it in an answer's provenance. Backend failures are
turned into one-line errors that name the setting to fix.

Left out: model download, routing between several backends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import LMError, LMTimeout
from rag.settings import Settings


@dataclass(frozen=True)
class Backend:
    """One way of reaching a model."""

    label: Callable[[Settings], str]  # the LM's name in provenance
    check: Callable[[Settings], None]  # fail fast, before an index build or a model load
    make: Callable[[Settings, bool], Any]  # the dspy.LM (the flag asks for a disk cache)


def _local_label(settings: Settings) -> str:
    from rag.lm.gguf import LOCAL_MODEL_NAME

    return f"local/{LOCAL_MODEL_NAME}"


def _local_lm(settings: Settings, disk_cache: bool) -> Any:
    import dspy

    from rag.lm.gguf import LOCAL_MODEL_NAME, LOCAL_MODEL_SHA256
    from rag.lm.llama import local_engine

    engine: Any = local_engine(settings)
    if disk_cache:
        from rag.lm.cache import DiskCachedEngine

        engine = DiskCachedEngine(engine, Path(settings.cache_dir) / "lm-cache.sqlite", LOCAL_MODEL_SHA256)
    return dspy.LM(f"local/{LOCAL_MODEL_NAME}", engine=engine, cache=False,
                   temperature=settings.temperature, max_tokens=settings.max_tokens, num_retries=0)


def check_remote(settings: Settings) -> None:
    """Fail fast, before any work, on a remote backend that cannot work."""
    model = settings.lm
    if "/" not in model:
        raise LMError(f"RAG_LM={model!r} is not 'local' or a LiteLLM model string like openai/gpt-4o-mini")
    if model.startswith("openai/") and not settings.api_base and not (settings.api_key or os.environ.get("OPENAI_API_KEY")):
        raise LMError(f"RAG_LM={model} needs an API key: set OPENAI_API_KEY (or RAG_API_KEY), "
                      f"or RAG_API_BASE for an OpenAI-compatible server")


def _remote_lm(settings: Settings, disk_cache: bool) -> Any:
    """DSPy's LiteLLM client; `disk_cache` uses DSPy's own disk cache."""
    import dspy

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


BACKENDS: dict[str, Backend] = {
    "local": Backend(label=_local_label, check=lambda settings: None, make=_local_lm),
    "litellm": Backend(label=lambda settings: settings.lm, check=check_remote, make=_remote_lm),
}


def backend(settings: Settings) -> Backend:
    """The backend that serves `settings.lm`."""
    return BACKENDS["local" if settings.lm == "local" else "litellm"]


def lm_label(settings: Settings) -> str:
    """The configured LM's name, as provenance reports it."""
    return backend(settings).label(settings)


def make_lm(settings: Settings, disk_cache: bool = False) -> Any:
    """A dspy.LM for the configured backend.

    `disk_cache=True` (the eval harness, the optimiser) stores every completion on disk, under
    RAG_CACHE_DIR/lm-cache.sqlite for the local model and in DSPy's own disk cache for remote
    ones, so a re-run of the same prompts costs nothing. Chat and `rag ask` never cache.
    """
    return backend(settings).make(settings, disk_cache)


def describe_lm_error(exc: BaseException, settings: Settings) -> LMError:
    """Turn a backend exception into a one-line LMError that names the setting to fix (an `LMTimeout` for a
    timeout: `rag batch` retries those once). An LMError of ours that DSPy wrapped is returned as it was."""
    cause: BaseException | None = exc
    for _ in range(8):  # a chain of causes, never a cycle
        if isinstance(cause, LMError):
            return cause
        cause = cause and (cause.__cause__ or cause.__context__)
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
    kind = LMTimeout if hint.startswith("the server did not answer") else LMError
    return kind(f"LM call failed ({name}: {text}); {hint}")
