"""Batch QA: a file of questions in, one JSONL line of cited answer per question out.

Input is streamed (rag/batch/inputs.py), so memory stays flat however long the
file is. Each output line (rag/batch/output.py) is the `rag ask --json` object plus `id`, `error` and the
input row's extra fields, appended with one write and fsync'd: a crash or
`kill -9` loses at most the answer being computed, never a finished one, and
never leaves a half line that a resumed run would trust (a torn last line is
cut off before appending).

Re-running with the same output skips ids already there; `--retry-errors`
re-answers only the rows that failed, replacing their lines. Errors are per
row: one failing question never stops the batch. A row that times out
(`LMTimeout`: the embedded model made no progress, a server did not answer) is
asked once more before its error is recorded: under load a timeout is often
the machine, not the question. A line longer than
MAX_LINE_BYTES is such a row error too (and is never read whole into memory).

The output must not be the input (nor the flat CSV the input): `check_paths`
compares files by device and inode, stdin included, before any work. A failed
write (a full disk) removes what it wrote of its line and stops the batch with
an error naming the file; every line before it stays, and a re-run resumes.

Left out: distributing work over machines, and ordering the output (with
several workers, lines are written in completion order; ids say which is which).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rag.batch.inputs import Row
from rag.batch.output import Output
from rag.errors import LMTimeout, RagError
from rag.evaluation.metrics import percentile
from rag.pipeline import Answer

log = logging.getLogger(__name__)

ASK_KEYS = tuple(f.name for f in dataclasses.fields(Answer))
TIMEOUT_RETRIES = 1  # a row that times out is asked this many more times before its error is recorded


@dataclass
class Summary:
    answered: int = 0
    abstained: int = 0
    errors: int = 0
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)  # 8 bytes a row: fine for millions
    prompt_tokens: int = 0
    completion_tokens: int = 0
    warnings: list[str] = field(default_factory=list)

    def add(self, record: dict) -> None:
        if record.get("error"):
            self.errors += 1
            return
        self.answered += 1
        self.abstained += bool(record.get("abstained"))
        prov = record.get("provenance") or {}
        self.latencies.append(float(prov.get("latency_s") or 0.0))
        self.prompt_tokens += int(prov.get("prompt_tokens") or 0)
        self.completion_tokens += int(prov.get("completion_tokens") or 0)

    def line(self) -> str:
        mean = statistics.fmean(self.latencies) if self.latencies else 0.0
        p95 = percentile(self.latencies, 95) if self.latencies else 0.0
        return (f"answered {self.answered} (abstained {self.abstained}), errors {self.errors}, "
                f"skipped {self.skipped} already done; latency mean {mean:.2f}s p95 {p95:.2f}s; "
                f"tokens {self.prompt_tokens} prompt + {self.completion_tokens} completion")


def carry(extra: dict[str, Any]) -> dict[str, Any]:
    """Input fields carried to the output; one that clashes with an answer field gets an `input_` prefix
    (a reference `answer` in a labelled file becomes `input_answer`)."""
    return {(f"input_{k}" if k in ASK_KEYS or k in ("id", "error") else k): v for k, v in extra.items()}


def error_record(row: Row, error: str) -> dict:
    return {"id": row.id, **Answer.failed(row.question).to_json(), **carry(row.extra), "error": error}


def answer_row(ask: Callable[[str], dict], row: Row) -> dict:
    """Answer one row; any failure becomes the row's `error`, never an exception. A timeout is retried
    `TIMEOUT_RETRIES` times first."""
    if row.error:
        return error_record(row, row.error)
    try:
        for attempt in range(TIMEOUT_RETRIES + 1):
            try:
                result = ask(row.question)
                break
            except LMTimeout as e:
                if attempt == TIMEOUT_RETRIES:
                    raise LMTimeout(f"{e} (asked {attempt + 1} times)") from None
                log.warning("row %s timed out (%s); asking once more", row.id, e)
    except RagError as e:
        return error_record(row, str(e))
    except Exception as e:  # noqa: BLE001 - unparseable output, backend bugs: isolate the row
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return error_record(row, f"{type(e).__name__}: {first}")
    return {"id": row.id, **result, **carry(row.extra), "error": None}


def unique_ids(rows: Iterator[Row], summary: Summary) -> Iterator[Row]:
    """Give a repeated id a suffix (#2, #3...) and report it."""
    seen: dict[str, int] = {}
    for row in rows:
        if row.id in seen:
            seen[row.id] += 1
            new = f"{row.id}#{seen[row.id]}"
            while new in seen:
                seen[row.id] += 1
                new = f"{row.id}#{seen[row.id]}"
            summary.warnings.append(f"line {row.line}: duplicate id {row.id!r}, answered as {new!r}")
            row.id = new
        seen[row.id] = seen.get(row.id, 1)
        yield row


def run_batch(rows: Iterator[Row], out: Output, ask: Callable[[str], dict], *, workers: int = 1,
              retry_errors: bool = False, progress: Callable[[dict], None] | None = None,
              summary: Summary | None = None) -> Summary:
    """Answer every row not already done; append each result as it finishes."""
    summary = summary or Summary()
    ok, failed = out.done()
    if retry_errors and failed:
        out.drop(failed)
    todo = (r for r in unique_ids(rows, summary) if not _skip(r, ok, failed, retry_errors, summary))

    def finish(record: dict) -> None:
        out.write(record)
        summary.add(record)
        if progress:
            progress(record)

    if workers <= 1:
        for row in todo:
            finish(answer_row(ask, row))
        return summary
    # Bounded in-flight work: never more than 2 x workers rows read ahead of the writer.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future] = set()
        for row in todo:
            pending.add(pool.submit(answer_row, ask, row))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    finish(f.result())
        for f in pending:
            finish(f.result())
    return summary


def _skip(row: Row, ok: set[str], failed: set[str], retry_errors: bool, summary: Summary) -> bool:
    """Resume: skip rows already in the output; with retry_errors, run only the failed ones."""
    skip = row.id not in failed if retry_errors else (row.id in ok or row.id in failed)
    summary.skipped += skip
    return skip
