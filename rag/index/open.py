"""The index for the current corpus and settings: loaded, or built first when missing or stale.

`open_index` reads the corpus once, finds where its index lives (rag/index/store.py names the
directory by the corpus content and the shaping settings), and builds it when it is missing or of an
older format, handing the build the vectors of the previous index of this corpus file so only new or
changed texts are embedded (rag/index/reuse.py). `rag index --rebuild` embeds everything again.

Left out: choosing among several corpora (one corpus per settings).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rag.errors import IndexStoreError
from rag.index.corpus import corpus_hash
from rag.index.embed import Embedder
from rag.index.reuse import with_previous_vectors
from rag.index.store import FORMAT, META, Index, build_index, file_exists, load_index, locate_index
from rag.settings import Settings


def expected_index_path(settings: Settings) -> Path:
    """Where the index for the current corpus and settings lives (built or not)."""
    return locate_index(settings)[1]


def open_index(settings: Settings, embedder_factory: Callable[[], Embedder], *, rebuild: str = "auto",
               progress: bool = False, on_build: Callable[[Path], None] | None = None) -> Index:
    """The index for the current corpus and settings; the corpus is read once.

    rebuild: "auto" builds it when missing or stale, "never" raises instead,
    "always" rebuilds even when a valid index exists. `on_build(path)` is called
    before a build starts (the CLI uses it to say that a build takes a minute).
    """
    papers, path = locate_index(settings)
    found = _format_of(path)
    if rebuild == "always" or (rebuild == "auto" and (found is None or found < FORMAT)):
        if on_build is not None:
            on_build(path)
        embedder = embedder_factory()
        if rebuild == "auto":  # "always" (--rebuild) means from scratch: every text embedded again
            embedder = with_previous_vectors(embedder, settings, skip=path)
        build_index(papers, embedder, settings, progress=progress)
    elif found is None:
        others = _other_indexes(Path(settings.index_dir))
        state = f"the index is stale (found {', '.join(others)}, built for another corpus or settings)" if others \
            else "no index has been built"
        raise IndexStoreError(f"{state}; run `rag index` to build {path.name}")
    return load_index(path, settings=settings, digest=corpus_hash(papers))


def _format_of(path: Path) -> int | None:
    """The format of the index at `path` (None: none there). An index of an older format (built by an
    earlier version) is rebuilt by `open_index(rebuild="auto")`; a newer or unreadable one is left to
    `load_index` to refuse, with the fix."""
    meta = path / META
    if not file_exists(meta):  # an unreadable directory is an error that says so
        return None
    try:
        found = json.loads(meta.read_text(encoding="utf-8")).get("format")
        return found if isinstance(found, int) else FORMAT
    except (OSError, ValueError, AttributeError):
        return FORMAT


def _other_indexes(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.glob("idx-*")) if root.is_dir() else []
    except PermissionError:
        return []
