"""What every eval kind shares: reading a JSONL set of labelled rows, and the report cells.

A set must be a regular file (a FIFO or a device is refused before a byte is read); its lines end at
"\n" only (rag/files.py `jsonl_objects`).

Left out: the kinds themselves (rag/evaluation/seed.py, rag/evaluation/pubmedqa.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.errors import EvalError
from rag.files import JSONLineError, NotRegularFile, jsonl_objects, read_text

RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")


def jsonl_rows(path: Path, required: tuple[str, ...], fix: str) -> Iterator[tuple[str, dict]]:
    """("file:line", row) for each non-blank line of a JSONL file, each row a JSON object whose `required`
    keys are non-empty strings; a problem is an EvalError naming its line (`fix` says what to do about bad JSON)."""
    try:
        text = read_text(path, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EvalError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    except NotRegularFile as e:  # a FIFO would hang the read, a device never end it
        raise EvalError(f"eval set {path} is {e.strerror}; pass a .jsonl file") from None
    except OSError as e:
        raise EvalError(f"cannot read eval set {path}: {e.strerror}") from None
    try:
        for no, row in jsonl_objects(text):
            where = f"{path}:{no}"
            for key in required:
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise EvalError(f"{where}: missing or empty {key!r}")
            yield where, row
    except JSONLineError as e:
        where = f"{path}:{e.line}"
        if e.problem == "not a JSON object":
            raise EvalError(f"{where}: expected a JSON object") from None
        raise EvalError(f"{where}: {e.problem}; {fix}") from None


def fmt(v: Any) -> str:
    """A report cell: a dash for nothing, three decimals for a float."""
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def cell(text: str | None, n: int) -> str:
    """Text made safe for one Markdown table cell, cut to `n` characters."""
    return (text or "").replace("|", "\\|").replace("\n", " ")[:n]


def retrieval_lines(retrieval: dict) -> list[str]:
    """The retrieval table of a report: one row per mode."""
    lines = ["| mode | recall@1 | recall@5 | recall@10 | MRR@10 | nDCG@10 |", "|---|---|---|---|---|---|"]
    for mode, r in retrieval.items():
        lines.append(f"| {mode} | " + " | ".join(fmt(r.get(m)) for m in RETRIEVAL_METRICS) + " |")
    return lines
