"""Batch QA: a file of questions in, one JSONL line of cited answer per question out.

Input is streamed (JSONL, CSV with a `question` column, or plain text, one
question a line; `-` is stdin), so memory stays flat however long the file is.
Each output line is the `rag ask --json` object plus `id`, `error` and the
input row's extra fields, appended with one write and fsync'd: a crash or
`kill -9` loses at most the answer being computed, never a finished one, and
never leaves a half line that a resumed run would trust (a torn last line is
cut off before appending).

Re-running with the same output skips ids already there; `--retry-errors`
re-answers only the rows that failed, replacing their lines. Errors are per
row: one failing question never stops the batch.

Left out: distributing work over machines, and ordering the output (with
several workers, lines are written in completion order; ids say which is which).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from rag.errors import RagError
from rag.metrics import percentile
from rag.pipeline import Answer

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "txt")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "txt", ".text": "txt"}
ASK_KEYS = tuple(f.name for f in dataclasses.fields(Answer))


@dataclass
class Row:
    """One input question. `error` is set when the line itself could not be read."""

    id: str
    question: str | None
    line: int
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


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


# --- input ------------------------------------------------------------------------------

def detect_format(path: str, explicit: str | None = None, first_line: bytes = b"") -> str:
    if explicit:
        return explicit
    if path == "-":
        return "jsonl" if first_line.lstrip().startswith(b"{") else "txt"
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise RagError(f"{path}: unknown input extension {Path(path).suffix or '(none)'}; use .jsonl, .csv or .txt, "
                       f"or pass --input-format")
    return fmt


def open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise RagError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise RagError(f"input {path} is a directory; pass a .jsonl, .csv or .txt file") from None
    except OSError as e:
        raise RagError(f"cannot read input {path}: {e.strerror}") from None


def read_rows(stream: BinaryIO, fmt: str, name: str = "input") -> Iterator[Row]:
    """Stream rows; a bad line becomes a Row with `error` set, and reading goes on."""
    if fmt == "csv":
        yield from _csv_rows(stream, name)
        return
    for line_no, raw in enumerate(stream, 1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield Row(str(line_no), None, line_no, error=f"{name}:{line_no}: not valid UTF-8; re-save the file as UTF-8")
            continue
        if not text:
            continue
        if fmt == "txt":
            yield Row(str(line_no), text, line_no)
            continue
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            msg = getattr(e, "msg", str(e))
            yield Row(str(line_no), None, line_no, error=f"{name}:{line_no}: malformed JSONL line ({msg})")
            continue
        rid = obj.pop("id", None)
        question = obj.pop("question", None)
        row = Row(str(rid) if rid not in (None, "") else str(line_no), question, line_no, obj)
        if not isinstance(question, str):
            row.error = f"{name}:{line_no}: no \"question\" string in this line"
        yield row


def _csv_rows(stream: BinaryIO, name: str) -> Iterator[Row]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    try:
        reader = csv.DictReader(text)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "question" not in header:
            raise RagError(f"{name}: CSV has no question column (header: {', '.join(header) or 'empty'})")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            rid = (row.pop("id", None) or "").strip()
            question = row.pop("question", None)
            row.pop(None, None)
            yield Row(rid or str(line), question, line, {k: v for k, v in row.items() if k})
    except UnicodeDecodeError:
        raise RagError(f"{name}: not valid UTF-8; re-save the file as UTF-8") from None
    finally:
        text.detach()


# --- output ---------------------------------------------------------------------------

class Output:
    """The JSONL output file: what is already done, and durable appends."""

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if overwrite:
                self.path.unlink(missing_ok=True)
            self._repair_torn_tail()
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise RagError(f"cannot write output {self.path}: {e.strerror}; choose a writable path with -o") from None

    def _repair_torn_tail(self) -> None:
        """Cut a last line that a killed run left without its newline."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos = size - 1
            while pos > 0:  # scan back to the previous newline
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            f.truncate(max(pos, 0))
            log.warning("removed a partial last line from %s (a previous run was interrupted)", self.path)

    def done(self) -> tuple[set[str], set[str]]:
        """(ids answered, ids that failed) according to the file; the last line of an id wins."""
        ok: set[str] = set()
        failed: set[str] = set()
        if not self.path.exists():
            return ok, failed
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    rid = str(rec["id"])
                except (ValueError, KeyError, TypeError):
                    continue
                (failed if rec.get("error") else ok).add(rid)
                (ok if rec.get("error") else failed).discard(rid)
        return ok, failed

    def drop(self, ids: set[str]) -> None:
        """Rewrite the file without the lines of `ids` (atomically), before retrying them."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(self.path, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                try:
                    if str(json.loads(line)["id"]) in ids:
                        continue
                except (ValueError, KeyError, TypeError):
                    continue
                dst.write(line)
            dst.flush()
            os.fsync(dst.fileno())
        os.close(self.fd)
        os.replace(tmp, self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            os.write(self.fd, data)  # one write on an O_APPEND fd: the line goes in whole
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def write_csv(jsonl_path: Path, csv_path: Path) -> None:
    """Flat CSV view of the JSONL output: id, question, answer, cited titles, abstained, error."""
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(jsonl_path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["id", "question", "answer", "cited_titles", "abstained", "error"])
        for line in src:
            r = json.loads(line)
            w.writerow([r.get("id"), r.get("question"), r.get("answer"),
                        " | ".join(c["title"] for c in r.get("citations") or []),
                        r.get("abstained"), r.get("error") or ""])
    os.replace(tmp, csv_path)


# --- the run --------------------------------------------------------------------------

def carry(extra: dict[str, Any]) -> dict[str, Any]:
    """Input fields carried to the output; one that clashes with an answer field gets an `input_` prefix
    (a reference `answer` in a labelled file becomes `input_answer`)."""
    return {(f"input_{k}" if k in ASK_KEYS or k in ("id", "error") else k): v for k, v in extra.items()}


def error_record(row: Row, error: str) -> dict:
    return {"id": row.id, **Answer.failed(row.question).to_json(), **carry(row.extra), "error": error}


def answer_row(ask: Callable[[str], dict], row: Row) -> dict:
    """Answer one row; any failure becomes the row's `error`, never an exception."""
    if row.error:
        return error_record(row, row.error)
    try:
        result = ask(row.question)
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


def count_rows(path: str, fmt: str) -> int | None:
    """Rows in a file, for the progress bar total (None for stdin)."""
    if path == "-":
        return None
    with open(path, "rb") as f:
        n = sum(1 for line in f if line.strip())
    return max(n - 1, 0) if fmt == "csv" else n
