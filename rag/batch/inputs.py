"""Batch input: a file of questions (JSONL, CSV with a `question` column, or plain text, one question a
line; `-` is stdin), streamed as `Row`s so memory stays flat however long the file is.

A line longer than MAX_LINE_BYTES is a row error (and is never read whole into memory); so is a line
that cannot be read. The input must be a regular file (or stdin): a FIFO or a device is refused before a byte is read. A CSV
header is matched as the corpus reader matches one (rag/files.py `csv_header`: byte-order mark, spaces
and case dropped). The output must not be the input (nor the flat CSV the input): `check_paths`
compares files by device and inode, stdin included, before any work.

Left out: remote inputs (URLs, object stores).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from rag.errors import RagError
from rag.files import NotRegularFile, csv_header, open_regular

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "txt")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "txt", ".text": "txt"}
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
    stdin redirected from it), that is not a regular file, or that is the flat CSV itself (`-o x.csv
    --format csv`); before any model work."""
    try:
        src = os.fstat(sys.stdin.fileno()) if input_path == "-" else os.stat(input_path)
    except (OSError, ValueError):  # a missing input is open_input's to report; no stdin fd (tests)
        src = None
    name = "stdin" if input_path == "-" else f"input {input_path}"
    if csv_output is not None and Path(csv_output).resolve() == Path(output).resolve():
        raise RagError(f"-o {output} and the flat CSV that --format csv writes beside it are the same file; the CSV "
                       f"would overwrite the JSONL answers (and the next run would ask everything again). Name the "
                       f"JSONL output, e.g. -o {Path(output).with_suffix('.jsonl')}: the CSV goes to {csv_output}")
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
        return open_regular(path)
    except FileNotFoundError:
        raise RagError(f"input file {path} does not exist") from None
    except NotRegularFile as e:  # a FIFO would hang the read, a device never end it
        raise RagError(f"input {path} is {e.strerror}; pass a .jsonl, .csv or .txt file (or - for stdin)") from None
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
        if line_no == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not part of the first question
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
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # a byte-order mark is not in the header
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
            header = csv_header(reader.fieldnames)  # as the corpus reader matches it
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
