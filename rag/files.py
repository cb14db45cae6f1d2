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
- `open_regular(path)` / `read_text(path)`: open a file that must be a regular file; a FIFO, a device
  (`/dev/zero`), a socket, through any link, is `NotRegularFile` (an OSError whose strerror says so)
  at once, never a hang or gigabytes read.
- `hold_lock(path)` / `LockHeld`: an exclusive OS lock (flock) on the sidecar `.<name>.lock` of `path`,
  which records the holder's pid for the refusal; `wait=True` waits for the holder instead.
- `csv_header(names)`: a CSV header as every reader matches it (byte-order mark and spaces stripped,
  lower case).

Left out: compression, and locks across machines (flock on NFS is only as good as the server's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
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


def tree_bytes(path: str | Path) -> int:
    """Bytes in a file, or in every file under a directory (an index, a corpus of seed pages)."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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


class NotRegularFile(OSError):
    """`path` is a FIFO, a device, a socket or a directory: something that is not read as a file."""

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", str(path))


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def open_regular(path: str | Path, mode: str = "rb", *, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> IO[Any]:
    """Open `path` for reading, refusing anything but a regular file (NotRegularFile) before a byte is
    read: the open does not block on a FIFO without a writer, and a device is refused, not read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode_bits = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode_bits):
            raise NotRegularFile(path, next((k for test, k in _KINDS if test(mode_bits)), "not a file"))
        os.set_blocking(fd, True)
        text = "b" not in mode
        return open(fd, mode, encoding=encoding if text else None, errors=errors if text else None,
                    newline=newline if text else None)
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of the regular file `path` (see `open_regular`); UnicodeDecodeError as `open` gives it."""
    with open_regular(path, "r", encoding=encoding) as f:
        return f.read()


def csv_header(names: list[str] | None) -> list[str]:
    """Header cells as every CSV reader matches them: a UTF-8 byte-order mark, spaces and case dropped."""
    return [str(n).lstrip("\ufeff").strip().lower() for n in (names or [])]


class LockHeld(OSError):
    """Another process holds the lock on `path`; `pid` is its pid when it recorded one."""

    def __init__(self, path: str | Path, pid: int | None) -> None:
        super().__init__(errno.EWOULDBLOCK, f"locked by pid {pid}" if pid else "locked", str(path))
        self.path, self.pid = Path(path), pid


class Lock:
    """An exclusive flock held on the sidecar `.<name>.lock` of a path, released by `release()` (or at
    exit: the OS drops a dead process's locks, so a `kill -9` never leaves one behind). The sidecar is
    never removed: removing a lock file lets two processes lock two different files."""

    def __init__(self, path: str | Path, *, wait: bool = False,
                 waiting: Callable[[int | None], None] | None = None) -> None:
        path = Path(path)
        self.path = path.with_name(f".{path.name}.lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                if not wait:
                    raise LockHeld(path, holder) from None
                if waiting is not None:
                    waiting(holder)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(self.fd)
            raise

    def _holder(self) -> int | None:
        try:
            return int(os.pread(self.fd, 32, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        """Let the next process in (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_shared(path: str | Path) -> int | None:
    """A shared flock on the sidecar `.<name>.lock` of `path`, held until the returned descriptor is closed
    (or the process ends): "this process has it open". Any number of processes hold it together; `Lock`
    (exclusive) cannot be taken while one does. Waits while an exclusive holder works. None when the sidecar
    cannot be created (a read-only directory: nothing there can be removed by us either)."""
    path = Path(path)
    try:
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def hold_lock(path: str | Path, *, wait: bool = False, waiting: Callable[[int | None], None] | None = None) -> Lock:
    """Lock `path` for this process (see `Lock`); LockHeld if another holds it and not `wait`, else wait
    for it, calling `waiting(pid of the holder)` first."""
    return Lock(path, wait=wait, waiting=waiting)


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
