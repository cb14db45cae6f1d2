"""`rag index --prune`: remove the superseded index directories of this corpus.

Every change of the corpus file (an `--add`, an edit) builds a new `idx-*` directory beside the old
one, which stays so a running chat keeps its index; over time they pile up. A directory is
superseded when it was built from this same corpus file with the same shaping settings (embedding
model, chunking) but from earlier content: it can never be opened again by these settings.

Never removed: the directory the current corpus and settings use, directories of other corpora or
other settings (another configuration may still want them), and any directory a live process has open
(`load_index` holds a shared lock on its sidecar `.idx-*.lock`; prune takes it exclusively, without
waiting, or leaves the directory and says who holds it). A directory on its way out is first renamed
to a marked `.old-<pid>-*` leftover, so a prune killed half-way never leaves a half index that looks
whole; the next build removes the rest.

Left out: pruning by age or size, and across corpora (delete those directories by hand).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rag.files import LockHeld, hold_lock, tree_bytes
from rag.index.store import LEFTOVER_MARK, META, locate_index
from rag.settings import Settings


@dataclass
class Pruned:
    current: Path
    removed: list[Path] = field(default_factory=list)
    in_use: list[Path] = field(default_factory=list)  # left: a live process has them open
    freed_bytes: int = 0


def superseded(settings: Settings) -> tuple[Path, list[Path]]:
    """The current index directory for `settings`, and those of the same corpus file and shaping settings
    built from other content (oldest first)."""
    _, current = locate_index(settings)
    root, found = current.parent, []
    if not root.is_dir():
        return current, []
    for d in sorted(root.glob("idx-*")):
        if d == current or not d.is_dir():
            continue
        try:
            meta = json.loads((d / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours to judge: a damaged index is rebuilt or deleted by hand
        if (isinstance(meta, dict) and meta.get("corpus") == str(settings.corpus)
                and meta.get("shape") == settings.index_fields()):
            found.append(((d / META).stat().st_mtime_ns, d))
    return current, [d for _, d in sorted(found)]


def prune(settings: Settings, *, dry_run: bool = False) -> Pruned:
    """Remove the superseded index directories of `settings`' corpus that no live process has open."""
    current, candidates = superseded(settings)
    out = Pruned(current)
    for d in candidates:
        try:
            lock = hold_lock(d)  # exclusive, not waiting: any reader's shared lock keeps it
        except LockHeld:
            out.in_use.append(d)
            continue
        with lock:
            size = tree_bytes(d)
            if not dry_run:
                gone = d.with_name(f".old-{os.getpid()}-{d.name}")
                os.rename(d, gone)
                (gone / LEFTOVER_MARK).write_text("papers-rag: a pruned index, removed once the process in the name is gone\n")
                shutil.rmtree(gone, ignore_errors=True)
            out.removed.append(d)
            out.freed_bytes += size
        if not dry_run:
            lock.path.unlink(missing_ok=True)  # the directory is gone: its sidecar would only be litter
    return out
