"""Batch output: the JSONL file of answers, appended one whole line at a time, and its flat CSV view.

Each line is appended with one write and fsync'd: a crash or `kill -9` loses at most the answer being
computed, never a finished one, and never leaves a half line that a resumed run would trust (a torn
last line is cut off before appending). A failed write (a full disk) removes what it wrote of its
line and raises an error naming the file; every line before it stays, and a re-run resumes.

One run writes an output at a time: `Output` holds an OS lock on it (rag/files.py `hold_lock`) from
before the resume read to `close()`, and a second `rag batch` on the same file is refused before any
work, naming the pid of the first; two runs never append the same ids.

Left out: ordering the lines (with several workers they are written in completion order).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
from pathlib import Path

from rag.errors import RagError
from rag.files import LockHeld, atomic_writer, hold_lock

log = logging.getLogger(__name__)


class Output:
    """The JSONL output file: what is already done, and durable appends."""

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self._lock = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and not self.path.is_file():  # a FIFO or a terminal would block the resume read
                raise RagError(f"output {self.path} is not a regular file; -o needs a file path")
            try:
                self._lock = hold_lock(self.path.resolve())  # through any link: one lock per file
            except LockHeld as e:
                pid = f" (pid {e.pid})" if e.pid else ""
                raise RagError(f"another rag batch is writing {self.path}{pid}; wait for it to finish (then run this "
                               f"again to resume), or write to another file with -o") from None
            if overwrite:
                self.path.unlink(missing_ok=True)
            self._repair_torn_tail()
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            if self._lock is not None:
                self._lock.release()
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
        try:
            with open(self.path, encoding="utf-8", errors="replace") as src, atomic_writer(self.path) as dst:
                for line in src:
                    try:
                        if str(json.loads(line)["id"]) in ids:
                            continue
                    except (ValueError, KeyError, TypeError, RecursionError):
                        continue
                    dst.write(line)
                os.close(self.fd)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
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
        """Close the file and let the next run on it in (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._lock.release()


def write_csv(jsonl_path: Path, csv_path: Path) -> None:
    """Flat CSV view of the JSONL output: id, question, answer, cited titles, abstained, error."""
    try:
        with open(jsonl_path, encoding="utf-8") as src, atomic_writer(csv_path, newline="", errors="backslashreplace") as dst:
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
    except OSError as e:
        raise RagError(f"cannot write {csv_path}: {e.strerror}; the JSONL output {jsonl_path} is complete, "
                       f"free space and re-run the same command to write the CSV") from None
