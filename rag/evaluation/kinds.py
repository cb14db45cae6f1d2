"""Eval kinds, by name: what is specific to one kind of labelled set.

An `EvalKind` says how its rows are chosen and checked, how each answer is scored, and how a run is
summed up, tabled, plotted and printed; the harness (rag/evaluation/harness.py) runs any of them and
compare.py pairs two runs of one. `KINDS` is the table `rag eval --set` reads: a set name there
(`pubmedqa`) picks its kind, anything else is a path to a seed-style labelled set.

Left out: kinds loaded from plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from rag.evaluation.pubmedqa import PubMedQA
from rag.evaluation.seed import SeedSet


class EvalKind(Protocol):
    """What one kind of labelled set adds to the shared harness (see the module doc)."""

    name: str  # written to summary.json as "benchmark" (the seed set writes none)
    score_name: str  # what the paired per-question score, metrics["headline"], is called in reports
    metrics: tuple[str, ...]  # per-question metrics `compare_reports` tables, in order

    def score(self, pipe: Any, row: dict, pred: dict, error: str | None) -> dict:
        """The results.jsonl record of one answered row, with its "metrics" (timing is added after)."""

    def summarize(self, results: list[dict], rows: list[dict]) -> dict: ...

    def render(self, summary: dict, results: list[dict]) -> str: ...

    def plot(self, summary: dict, path: Path) -> None: ...

    def compare_extra(self, a: list[dict], b: list[dict]) -> dict:
        """Set-level metrics of two reports' shared questions ({name: {"a", "b", "n"}}), for compare."""

    corpus: Path | None  # the corpus the set runs over (None: the user's, RAG_CORPUS)

    def select(self, spec: str | None, *, split: str | None = None, full: bool = False,
               limit: int | None = None) -> tuple[list[dict], Path]:
        """(rows, set file) for `rag eval --set`; every problem is found before anything loads."""

    def check(self, rows: list[dict], path: Path, paper_ids: set[str]) -> None:
        """Every gold paper is in the index being searched (after it is open)."""

    def label(self, program: str, retrieval: str) -> str: ...

    def describe(self, n: int) -> str: ...

    def summary_lines(self, summary: dict) -> list[str]: ...


# Set name -> kind; the seed set is the default (and takes a path).
KINDS: dict[str, type] = {SeedSet.name: SeedSet, PubMedQA.name: PubMedQA}


def kind_for_set(spec: str | None, **kwargs: Any) -> EvalKind:
    """The kind `rag eval --set SPEC` runs: a name in KINDS, else the seed set (SPEC is its path)."""
    return KINDS.get(spec or "", SeedSet)(**kwargs)


def kind_of(summary: dict) -> EvalKind:
    """The kind of set a report was run on, from its summary.json ("benchmark"; the seed set writes none)."""
    return KINDS.get(summary.get("benchmark") or SeedSet.name, SeedSet)()
