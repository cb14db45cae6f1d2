"""`rag index --add`: papers merged into the corpus file and indexed, embedding only them.

- `add_papers(settings, path, embedder)` is `rag index --add papers.jsonl`: the
  papers of `path` are merged into the corpus file (a new id is appended, a known
  id with a different title or abstract replaces its row, an identical one is
  skipped), the new index is built first under the merged corpus's hash, and only
  then is the corpus file replaced (temp file + rename). The next `rag ask` reads
  the merged corpus and finds that index; an interrupted `--add` leaves the old
  corpus and index as they were, and re-running it finishes the job.
- Two `--add`s on one corpus run in turn: each holds an OS lock on the corpus file (rag/files.py
  `hold_lock`, a `.<name>.lock` sidecar) and reads the corpus under it, so the second merges into
  what the first wrote and no paper is lost. A temporary corpus file left by a killed `--add`
  (`.<stem>.<pid>.tmp<suffix>`, its pid gone) is removed by the next one.
- A corpus that is a symbolic link: the file it points at is rewritten, the link is kept.

The vectors of the corpus's current index are reused (rag/index/reuse.py). Left out:
deleting superseded index directories (they stay until
removed, like any stale index). `--add` rewrites JSONL and CSV corpora; for a
Parquet corpus or a directory of seed pages, edit the corpus and run `rag index`:
the same vector reuse applies.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rag.errors import CorpusError, IndexStoreError
from rag.files import csv_header, fsync_dir, hold_lock, pid_alive, read_text, write_durably
from rag.index.corpus import Paper, load_corpus, load_table, paper_id
from rag.index.embed import Embedder
from rag.index.reuse import Reuse, ReusingEmbedder, StoredVectors, previous_index, stored_vectors
from rag.index.store import build_index, locate_index
from rag.settings import Settings

log = logging.getLogger(__name__)

REWRITABLE = (".jsonl", ".ndjson", ".csv")


# --- rag index --add -------------------------------------------------------------------

@dataclass
class Added:
    """What `add_papers` did."""

    path: Path  # the index built for the merged corpus
    new: int
    changed: int
    unchanged: int
    reuse: Reuse


def merge(old: list[Paper], incoming: list[Paper]) -> tuple[list[Paper], list[Paper], list[Paper]]:
    """(merged corpus, new papers, changed papers): a changed paper keeps its place, new ones go last."""
    by_id = {p.id: p for p in old}
    new = [p for p in incoming if p.id not in by_id]
    changed = [p for p in incoming if p.id in by_id and (by_id[p.id].title, by_id[p.id].abstract) != (p.title, p.abstract)]
    replace = {p.id: p for p in changed}
    merged = [replace.get(p.id, p) for p in old] + new
    return merged, new, changed


def add_papers(settings: Settings, path: str | Path, embedder: Embedder) -> Added:
    """`rag index --add PATH`: merge the papers of PATH into the corpus file and index them,
    embedding only their texts. See the module docstring for the order of writes."""
    corpus = Path(settings.corpus)
    if corpus.is_dir() or corpus.suffix.lower() not in REWRITABLE:
        raise CorpusError(f"--add rewrites the corpus file, and {corpus} is not a .jsonl or .csv file; add the papers "
                          f"to the corpus yourself and run `rag index` (papers already indexed are not embedded again)")
    incoming = load_table(path)
    target = corpus.resolve()  # a linked corpus: its target is rewritten and the link kept
    try:
        lock = hold_lock(target, wait=True, waiting=lambda pid: log.warning(
            "another rag index --add is updating %s%s; waiting for it", target, f" (pid {pid})" if pid else ""))
    except OSError as e:
        raise CorpusError(f"cannot lock the corpus {target}: {e.strerror}; the corpus must be in a writable "
                          f"directory for --add") from None
    with lock:  # the corpus is read under the lock: a concurrent --add's papers are in what this one merges into
        _remove_dead_temps(target)
        return _add_locked(settings, path, embedder, corpus, target, incoming)


def _add_locked(settings: Settings, path: str | Path, embedder: Embedder, corpus: Path, target: Path,
                incoming: list[Paper]) -> Added:
    old, old_index = locate_index(settings)
    merged, new, changed = merge(old, incoming)
    if not new and not changed:
        return Added(old_index, 0, 0, len(incoming), Reuse())
    # As the corpus file will read back: every paper's source is the corpus file.
    merged = [dataclasses.replace(p, sources=(corpus.name,)) for p in merged]
    source = old_index if (old_index / "meta.json").is_file() else previous_index(settings)
    stored = StoredVectors.empty(embedder.dim)
    if source is not None:
        try:
            stored = stored_vectors(source)
        except IndexStoreError as e:  # an unreadable old index: embed everything rather than fail
            log.warning("not reusing vectors of %s: %s", source, e)
    if stored.dim != embedder.dim:  # another model's vectors: nothing to reuse
        stored = StoredVectors.empty(embedder.dim)
    reusing = ReusingEmbedder(embedder, stored, source or corpus)
    tmp = _write_temp(target, _rewrite(target, old, new, changed))
    try:
        # What the next `rag ask` reads must be what gets indexed: check before anything is replaced.
        if [(p.id, p.title, p.abstract) for p in load_corpus(tmp)] != [(p.id, p.title, p.abstract) for p in merged]:
            raise CorpusError(f"merging {path} into {corpus} would not read back as the merged papers; the corpus "
                              f"and its index are unchanged (please report this)")
        built = build_index(merged, reusing, settings)
        _commit(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Added(built, len(new), len(changed), len(incoming) - len(new) - len(changed), reusing.last)


def _rewrite(corpus: Path, old: list[Paper], new: list[Paper], changed: list[Paper]) -> str:
    """The corpus file's text with `changed` rows replaced in place and `new` rows appended."""
    replace = {p.id: p for p in changed}
    raw = read_text(corpus, encoding="utf-8-sig")
    if corpus.suffix.lower() == ".csv":
        return _rewrite_csv(raw, old, new, replace)
    lines, i = [], 0
    # Lines end at "\n" only, as load_table reads them: U+2028 and the like are text inside an abstract.
    for line in raw.split("\n")[:-1] if raw.endswith("\n") else raw.split("\n"):
        if line.strip():
            paper = old[i]  # load_table keeps one paper per non-blank line, in order
            i += 1
            if paper.id in replace:
                line = json.dumps(_row(replace[paper.id]), ensure_ascii=False)
        lines.append(line)
    lines += [json.dumps(_row(p), ensure_ascii=False) for p in new]
    return "\n".join(lines) + "\n"


def _rewrite_csv(raw: str, old: list[Paper], new: list[Paper], replace: dict[str, Paper]) -> str:
    reader = csv.DictReader(io.StringIO(raw))
    header = list(reader.fieldnames or [])
    names = dict(zip(csv_header(header), header, strict=True))
    need_id = "id" not in names and any(p.id != paper_id(p.title) for p in (*new, *replace.values()))
    if need_id:
        header = ["id", *header]
        names["id"] = "id"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for paper, row in zip(old, reader, strict=True):
        if need_id:
            row["id"] = paper.id
        if paper.id in replace:
            row.update({names[k]: v for k, v in _row(replace[paper.id]).items() if k in names})
        writer.writerow(row)
    for paper in new:
        writer.writerow({names[k]: v for k, v in _row(paper).items() if k in names})
    return out.getvalue()


def _row(paper: Paper) -> dict:
    return {"id": paper.id, "title": paper.title, "abstract": paper.abstract}


def _write_temp(path: Path, text: str) -> Path:
    """`text` in a temporary sibling of `path` with the same suffix (so it reads as the same format)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write_durably(tmp, lambda f: f.write(text), newline="")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"cannot write next to the corpus {path}: {e.strerror}; the corpus must be in a writable "
                          f"directory for --add") from None
    return tmp


def _remove_dead_temps(path: Path) -> None:
    """Delete the temporary corpus files (`_write_temp`'s names) of --add runs whose process is gone."""
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(\d+)\.tmp{re.escape(path.suffix)}")
    for tmp in path.parent.glob(".*.tmp*"):
        m = pattern.fullmatch(tmp.name)
        if m and tmp.is_file() and not pid_alive(int(m.group(1))):
            log.info("removing %s, left by an interrupted --add", tmp)
            tmp.unlink(missing_ok=True)


def _commit(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path` and make the rename durable."""
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise CorpusError(f"cannot replace the corpus {path}: {e.strerror}; the index for the merged corpus is built, "
                          f"so fix the permissions and run the same --add again") from None
