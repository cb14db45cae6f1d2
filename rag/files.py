"""File helpers every stage shares: one way to hash, write, check a process and read JSONL.

- `sha256_file(path)`: the hex sha256 of a file, read in blocks (model files are a GB).
- `atomic_write(path, data)` / `atomic_writer(path)`: write a temporary sibling, fsync it, rename it
  over `path`, fsync the directory; a crash leaves the old file or the new one, never half of one.
- `fsync_dir(path)`: make a rename in `path` durable.
- `pid_alive(pid)`: whether a process exists (another user's counts as alive), for leftovers whose
  name carries the pid of the process that wrote them.
- `jsonl_objects(text)`: (line, object) for each non-blank line of JSONL text, the same checks for
  every reader of corpora, labelled sets and questions (bad JSON, nesting too deep, not an object),
  lines split on "\n" only; each reader words the error for its users.

Left out: locking (each writer that needs one says so) and compression.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

BLOCK = 1 << 22


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at `path`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None,
                  errors: str | None = None, suffix: str = "") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on a clean exit it is fsync'd and renamed over
    `path` (and the directory fsync'd); on an error it is removed and `path` is left as it was.
    `suffix` ends the temporary name (a reader that goes by extension sees the same format)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent)
    try:
        text = "b" not in mode
        with open(fd, mode, encoding=encoding if text else None, newline=newline if text else None,
                  errors=errors if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes, *, encoding: str = "utf-8") -> None:
    """Write `data` (text or bytes) to `path` atomically and durably (see `atomic_writer`)."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w", encoding=encoding, newline="") as f:
        f.write(data)


def write_durably(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "w", *,
                  newline: str | None = None) -> None:
    """Create or truncate `path` and fill it through `write(f)`, then fsync it: for files that are
    renamed into place later, or sit in a directory that is (an index build)."""
    with open(path, mode, encoding=None if "b" in mode else "utf-8", newline=newline) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists; one of another user's is alive (and what it left is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JSONLineError(ValueError):
    """A JSONL line that cannot be read: `line` (from 1) and `problem` ("not valid JSON (...)", "nested too
    deeply", "not a JSON object"); each reader words its own one-line message around them."""

    def __init__(self, line: int, problem: str, value: object = None) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem, self.value = line, problem, value


def jsonl_objects(text: str) -> Iterator[tuple[int, dict]]:
    """(line number from 1, object) for each non-blank line of JSONL `text`; JSONLineError for a line
    that is not JSON, is nested too deeply to parse, or holds something other than an object.

    Lines end at "\\n" only (a "\\r" before it is stripped): U+2028, U+0085 and the other characters
    `str.splitlines` also breaks at are valid inside a JSON string, as `json.dumps(ensure_ascii=False)`
    writes them."""
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise JSONLineError(no, f"not valid JSON ({e.msg})") from None
        except ValueError as e:  # a number over Python's digit limit
            raise JSONLineError(no, f"not valid JSON ({str(e).split(':')[0]})") from None
        except RecursionError:
            raise JSONLineError(no, "not valid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise JSONLineError(no, "not a JSON object", row)
        yield no, row
