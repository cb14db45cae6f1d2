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
row: one failing question never stops the batch. A line longer than
MAX_LINE_BYTES is such a row error too (and is never read whole into memory).

The output must not be the input (nor the flat CSV the input): `check_paths`
compares files by device and inode, stdin included, before any work. A failed
write (a full disk) removes what it wrote of its line and stops the batch with
an error naming the file; every line before it stays, and a re-run resumes.

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
import stat
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
# Longest input line read; a question is at most 2,000 characters, a labelled row a few KB.
MAX_LINE_BYTES = 1 << 20


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


def check_paths(input_path: str, output: Path, csv_output: Path | None = None) -> None:
    """Refuse an output that is the input (the same file by device and inode, through any link, or
    stdin redirected from it), or that is not a regular file; before any model work."""
    try:
        src = os.fstat(sys.stdin.fileno()) if input_path == "-" else os.stat(input_path)
    except (OSError, ValueError):  # a missing input is open_input's to report; no stdin fd (tests)
        src = None
    name = "stdin" if input_path == "-" else f"input {input_path}"
    for out, what in ((output, "-o"), (csv_output, "--format csv")):
        if out is None:
            continue
        try:
            dst = os.stat(out)
        except OSError:
            continue  # not there yet: it cannot be the input
        if src is not None and (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino):
            target = f"output {out}" if what == "-o" else f"the flat CSV it writes ({out})"
            raise RagError(f"{name} and {target} are the same file; the answers would overwrite the questions. "
                           f"Write them elsewhere, e.g. -o {Path(out).with_suffix('').name}.answers.jsonl")
        if not stat.S_ISREG(dst.st_mode):
            raise RagError(f"output {out} is not a regular file; -o needs a file path (it is appended to and "
                           f"read back to resume)")


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
    for line_no, raw in _lines(stream):
        if raw is None:
            yield Row(str(line_no), None, line_no, error=f"{name}:{line_no}: line longer than {MAX_LINE_BYTES:,} bytes; "
                                                          f"split or shorten it")
            continue
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
        except (ValueError, RecursionError) as e:  # RecursionError: nesting thousands of levels deep
            msg = getattr(e, "msg", None) or str(e).split(":")[0] or type(e).__name__
            yield Row(str(line_no), None, line_no, error=f"{name}:{line_no}: malformed JSONL line ({msg})")
            continue
        rid = obj.pop("id", None)
        question = obj.pop("question", None)
        row = Row(str(rid) if rid not in (None, "") else str(line_no), question, line_no, obj)
        if not isinstance(question, str):
            row.error = f"{name}:{line_no}: no \"question\" string in this line"
        yield row


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) from a binary stream, reading at most MAX_LINE_BYTES of a line; a longer line
    is skipped to its end and given as None."""
    line_no = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield line_no, None
            continue
        yield line_no, raw


def _csv_rows(stream: BinaryIO, name: str) -> Iterator[Row]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    too_long: list[int] = []
    read = [0]  # physical lines handed to the csv reader so far

    def bounded() -> Iterator[str]:
        # The csv module reads whole lines; an over-long one becomes an empty line (which it skips),
        # reported as an error row below.
        while line := text.readline(MAX_LINE_BYTES + 1):
            read[0] += 1
            line_no = read[0]
            if len(line) > MAX_LINE_BYTES and not line.endswith("\n"):
                while (rest := text.readline(1 << 16)) and not rest.endswith("\n"):
                    pass
                too_long.append(line_no)
                line = "\n"
            yield line

    def long_rows() -> Iterator[Row]:
        while too_long:
            n = too_long.pop(0)
            yield Row(str(n), None, n, error=f"{name}:{n}: line longer than {MAX_LINE_BYTES:,} bytes; split or shorten it")

    reader = csv.DictReader(bounded())
    try:
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
        except csv.Error as e:
            raise RagError(f"{name}: the CSV header is not valid CSV ({e}); check its first line") from None
        if "question" not in header:
            raise RagError(f"{name}: CSV has no question column (header: {', '.join(header) or 'empty'})")
        reader.fieldnames = header
        failed_at = -1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # a field over the csv module's size limit, ...
                yield from long_rows()
                if read[0] == failed_at:  # no progress: the rest cannot be read
                    break
                failed_at = read[0]
                yield Row(str(read[0]), None, read[0], error=f"{name}:{read[0]}: not valid CSV ({e})")
                continue
            yield from long_rows()
            line = reader.line_num
            rid = (row.pop("id", None) or "").strip()
            question = row.pop("question", None)
            row.pop(None, None)
            yield Row(rid or str(line), question, line, {k: v for k, v in row.items() if k})
        yield from long_rows()
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
            if self.path.exists() and not self.path.is_file():  # a FIFO or a terminal would block the resume read
                raise RagError(f"output {self.path} is not a regular file; -o needs a file path")
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
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue
                (failed if rec.get("error") else ok).add(rid)
                (ok if rec.get("error") else failed).discard(rid)
        return ok, failed

    def drop(self, ids: set[str]) -> None:
        """Rewrite the file without the lines of `ids` (atomically), before retrying them."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(self.path, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
                for line in src:
                    try:
                        if str(json.loads(line)["id"]) in ids:
                            continue
                    except (ValueError, KeyError, TypeError, RecursionError):
                        continue
                    dst.write(line)
                dst.flush()
                os.fsync(dst.fileno())
            os.close(self.fd)
            os.replace(tmp, self.path)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RagError(f"cannot rewrite output {self.path} for --retry-errors: {e.strerror}; it is unchanged, "
                           f"free space and run again") from None

    def write(self, record: dict) -> None:
        """Append one line, durably. On failure (a full disk) what was written of it is cut off again,
        so the file holds only whole lines, and a RagError names the file."""
        # backslashreplace: a lone surrogate (from a JSON "\\udc80" escape) becomes that same escape.
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
        with self.lock:
            size = os.fstat(self.fd).st_size
            try:
                written = os.write(self.fd, data)  # one write on an O_APPEND fd: the line goes in whole
                if written != len(data):
                    raise OSError(28, "short write (disk full?)")
                os.fsync(self.fd)
            except OSError as e:
                try:
                    os.ftruncate(self.fd, size)
                except OSError:
                    pass  # the next run cuts a torn last line anyway
                raise RagError(f"cannot write to {self.path}: {e.strerror or e}; the {size:,} bytes of answers before "
                               f"this one are kept: free space and re-run the same command to resume") from None

    def close(self) -> None:
        os.close(self.fd)


def write_csv(jsonl_path: Path, csv_path: Path) -> None:
    """Flat CSV view of the JSONL output: id, question, answer, cited titles, abstained, error."""
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    try:
        with open(jsonl_path, encoding="utf-8") as src, \
                open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="") as dst:
            w = csv.writer(dst)
            w.writerow(["id", "question", "answer", "cited_titles", "abstained", "error"])
            for line in src:
                try:
                    r = json.loads(line)
                    r.get("id")
                except (ValueError, AttributeError, RecursionError):  # not one of our lines
                    continue
                w.writerow([r.get("id"), r.get("question"), r.get("answer"),
                            " | ".join(c["title"] for c in r.get("citations") or []),
                            r.get("abstained"), r.get("error") or ""])
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, csv_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RagError(f"cannot write {csv_path}: {e.strerror}; the JSONL output {jsonl_path} is complete, "
                       f"free space and re-run the same command to write the CSV") from None


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
    """Non-blank lines in a file, for the progress bar total (None for stdin); read in blocks, so a file
    of one enormous line costs no memory."""
    if path == "-":
        return None
    n, content = 0, False
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            parts = block.split(b"\n")
            for i, part in enumerate(parts):
                content = content or bool(part.strip())
                if i < len(parts) - 1:  # a newline ends this line
                    n, content = n + content, False
    n += content
    return max(n - 1, 0) if fmt == "csv" else n
