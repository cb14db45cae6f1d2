"""Demos chosen per question by similarity: DSPy KNNFewShot's idea, with its bootstrapping done once.

DSPy's `KNNFewShot` finds the k train questions nearest the new one and bootstraps demos from
them at every call: on the local model that is several more model calls a question. Here the
bootstrapping is done once, when the program is optimised (`rag optimize --optimizer knn`): the
traces of the program's own passing answers on train (answers and correct declines), shortened to
the evidence they cite, each with its question's embedding. At answer time the question's
embedding, which retrieval has already computed (`SearchResult.query_vector`), picks the `k`
nearest demos of the question's shape, and only those go into the prompt.

Cost: per-question demos sit after the cached instruction prefix, so the model reads them for
every question (~60 prompt tokens a second on 2 cores). The pool is stored in the program file's
decisions (`knn`), vectors as base64 float16; a pool embedded with another embedder (another
dimension) is refused when the program loads.
"""

from __future__ import annotations

import base64
from typing import Any

import dspy
import numpy as np

KNN_K = 1  # demos a question reads: each costs ~2 s of prompt reading on 2 cores
# The fields a demo of each predictor holds, inputs first (the signatures in rag.answer.program).
DEMO_FIELDS = {
    "specific": ("passages", "question", "answerable", "answer", "sources"),
    "yesno": ("passages", "question", "answerable", "finding", "verdict", "sources"),
    "list": ("passages", "question", "answerable", "sources"),
}


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


class DemoPool:
    """Per question shape, demos and their questions' unit vectors; `nearest` picks a question's demos."""

    def __init__(self, demos: dict[str, list[dict]], k: int = KNN_K, embedder: str | None = None) -> None:
        self.k = int(k)
        self.embedder = embedder
        self.demos: dict[str, list[dict]] = {}
        self.vectors: dict[str, np.ndarray] = {}
        dims = set()
        for shape, rows in demos.items():
            if shape not in DEMO_FIELDS:
                raise ValueError(f"knn demos for unknown question shape {shape!r}; shapes: {', '.join(DEMO_FIELDS)}")
            missing = [f for row in rows for f in (*DEMO_FIELDS[shape], "vector") if f not in row]
            if missing:
                raise ValueError(f"a {shape} knn demo lacks {missing[0]!r}")
            if not rows:
                continue
            matrix = np.stack([decode_vector(row["vector"]) for row in rows])
            dims.add(matrix.shape[1])
            self.demos[shape], self.vectors[shape] = [dict(row) for row in rows], matrix
        if len(dims) > 1:
            raise ValueError(f"knn demo vectors of several dimensions {sorted(dims)}")
        if self.k < 1:
            raise ValueError(f"knn k must be at least 1, got {self.k}")
        self.dim = dims.pop() if dims else None

    def nearest(self, shape: str, query_vector: np.ndarray | None) -> list[dspy.Example] | None:
        """The `k` demos of `shape` nearest `query_vector`, most similar last (nearest the question);
        None (the predictor's own demos) when the pool has none for this shape or there is no vector."""
        matrix = self.vectors.get(shape)
        if matrix is None or query_vector is None or len(query_vector) != matrix.shape[1]:
            return None
        sims = matrix @ np.asarray(query_vector, dtype=np.float32)
        order = np.argsort(-sims, kind="stable")[: self.k][::-1]
        fields = DEMO_FIELDS[shape]
        return [dspy.Example(**{f: self.demos[shape][i][f] for f in fields}) for i in order]

    def sizes(self) -> dict[str, int]:
        return {shape: len(rows) for shape, rows in self.demos.items()}

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "embedder": self.embedder, "demos": self.demos}

    @classmethod
    def from_json(cls, data: Any) -> DemoPool:
        if not isinstance(data, dict) or not isinstance(data.get("demos"), dict):
            raise ValueError(f"knn must be {{'k': int, 'demos': {{shape: [demo, ...]}}}}, got {type(data).__name__}")
        return cls(data["demos"], data.get("k", KNN_K), data.get("embedder"))
