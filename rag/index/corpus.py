"""Load papers: the scraped daily-paper seed pages, or a user's JSONL, CSV or Parquet file.

A seed page is plain text: site chrome, then alternating title and abstract
lines (some pages put blank lines between entries; the first title can be glued
to a preceding "Subscribe"). The same paper appears on several pages, so papers
are deduplicated by normalised title and keep every source file name.

Paper ids are derived from the normalised title, so they are stable across runs
and machines. Normalisation keeps the letters of every script (`normalize_title`): two
Chinese or Russian titles, or "α-entmax" and "β-entmax", are two papers with two ids;
a title in Latin letters keeps the id it always had. User files may give their own `id`.

Every file read must be a regular file (rag/files.py `open_regular`): a FIFO or a device
(`/dev/zero` behind a link) is a one-line error, never a hang or gigabytes read. A
UTF-8 byte-order mark is dropped, and CSV headers are matched by `csv_header` (as the
batch reader matches its own).

Sizes are bounded: an abstract longer than `max_abstract_chars` (RAG_MAX_ABSTRACT_CHARS)
and a title longer than MAX_TITLE_CHARS are cut at a word boundary, with a warning
that names the row, so one runaway row cannot stall an index build. A title or
abstract that is not text (a number, a list) is an error naming the row, not
silently turned into its Python spelling.

Parquet (the format large abstract dumps ship in) is read with pyarrow, only the
id/title/abstract columns, and its rows are checked like JSONL lines ("row N").

Left out: PDFs, full texts, authors and dates (the pages do not carry them).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import CorpusError
from rag.files import JSONLineError, NotRegularFile, csv_header, jsonl_objects, open_regular, read_text

log = logging.getLogger(__name__)

# Lines of site chrome, matched exactly after stripping.
CHROME = frozenset({
    "Get trending papers in your email inbox once a day!",
    "Get trending papers in your email inbox!",
    "Subscribe",
    "new",
    "Daily Papers",
    "byAK and the research community",
})
_WORD = re.compile(r"\w")
_DATE = re.compile(r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{1,2}(, \d{4})?")
# "SubscribeBase Models Beat..." -> "Base Models Beat..."
_GLUED = re.compile(r"^Subscribe(?=[A-Z0-9\[\"'(])")
# A title is a line; an abstract is a paragraph. Anything shorter is not an abstract.
MIN_ABSTRACT_CHARS = 100
# Defaults of the size caps (the abstract one is a setting, RAG_MAX_ABSTRACT_CHARS). Real abstracts
# are 1-3k characters and titles under 250.
MAX_ABSTRACT_CHARS = 20_000
MAX_TITLE_CHARS = 500
PARQUET = (".parquet", ".pq")


@dataclass(frozen=True)
class Paper:
    """One unique paper."""

    id: str
    title: str
    abstract: str
    sources: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        """The `rag papers --json` shape."""
        return {"paper_id": self.id, "title": self.title, "abstract": self.abstract, "sources": list(self.sources)}


def normalize_title(title: str) -> str:
    """Case-, accent- and punctuation-insensitive key for deduplication, in any script.

    A title written in Latin letters (ASCII once accents are taken off, punctuation aside) keeps the key
    it always had, accents dropped, so the ids of such corpora never change. Any other title (Chinese,
    Russian, "α-entmax") is NFKC-normalised and case-folded with every letter kept: two titles that
    differ in more than case, width, spacing and punctuation get different keys."""
    decomposed = unicodedata.normalize("NFKD", title)
    if all(c.isascii() or unicodedata.category(c) == "Mn" or not _WORD.match(c) for c in decomposed):
        text = decomposed.encode("ascii", "ignore").decode().lower()
    else:
        text = unicodedata.normalize("NFKC", title).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def paper_id(title: str) -> str:
    """Stable id from the normalised title."""
    return "p" + hashlib.sha1(normalize_title(title).encode()).hexdigest()[:10]


def parse_page(text: str, source: str = "<page>") -> list[tuple[str, str]]:
    """Parse one seed page into (title, abstract) pairs, in page order."""
    lines = []
    for raw in text.splitlines():
        line = _GLUED.sub("", raw.strip())
        if line and line not in CHROME and not _DATE.fullmatch(line):
            lines.append(line)
    if len(lines) % 2:
        raise CorpusError(f"{source}: odd number of title/abstract lines ({len(lines)}); "
                          f"the page layout is not the expected title-then-abstract format")
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    for i, (title, abstract) in enumerate(pairs):
        if len(abstract) < MIN_ABSTRACT_CHARS or len(title) > len(abstract):
            raise CorpusError(f"{source}: entry {i + 1} ({title[:60]!r}) does not look like a title "
                              f"followed by an abstract; check the page for a missing line")
    return pairs


def load_seed_pages(directory: str | Path, max_abstract_chars: int = MAX_ABSTRACT_CHARS) -> list[Paper]:
    """Every *.txt page in `directory`, deduplicated by normalised title."""
    directory = Path(directory)
    pages = sorted(directory.glob("*.txt"))
    if not pages:
        raise CorpusError(f"no *.txt seed pages in {directory}; pass a corpus directory or a .jsonl/.csv file")
    entries: list[tuple[str, str, str]] = []
    for page in pages:
        for i, (title, abstract) in enumerate(parse_page(_read_text(page), page.name), 1):
            where = f"{page.name}: entry {i}"
            entries.append((capped(title, MAX_TITLE_CHARS, f"{where}: title"),
                            capped(abstract, max_abstract_chars, f"{where}: abstract"), page.name))
    return _dedupe(entries)


def load_table(path: str | Path, max_abstract_chars: int = MAX_ABSTRACT_CHARS) -> list[Paper]:
    """A user's corpus: JSONL, CSV or Parquet with `title`, `abstract` and optional `id`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(_read_text(path), path.name)
    elif suffix == ".csv":
        rows = _csv_rows(_read_text(path), path.name)
    elif suffix in PARQUET:
        _read_check(path)
        rows = _parquet_rows(path)
    else:
        raise CorpusError(f"{path}: unknown corpus format {suffix or '(none)'}; use .jsonl, .csv, .parquet "
                          f"or a directory of pages")
    papers, seen = [], {}
    unit = "row" if suffix in PARQUET else "line"
    for line_no, row in rows:
        where = f"{path.name}: row {line_no}" if unit == "row" else f"{path.name}:{line_no}"
        title = _text_field(row, "title", where)
        abstract = _text_field(row, "abstract", where)
        missing = [k for k, v in (("title", title), ("abstract", abstract)) if not v]
        if missing:
            raise CorpusError(f"{where}: missing {' and '.join(missing)}; every row needs a title and an abstract")
        raw_id = row.get("id")
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise CorpusError(f"{where}: id must be text or a whole number, got {_kind(raw_id)}")
        pid = _text_field({"id": str(raw_id if raw_id is not None else "")}, "id", where) or paper_id(title)
        if pid in seen:
            raise CorpusError(f"{where}: duplicate id {pid!r} (first on {unit} {seen[pid]}); ids must be unique")
        seen[pid] = line_no
        papers.append(Paper(pid, capped(" ".join(title.split()), MAX_TITLE_CHARS, f"{where}: title"),
                            capped(" ".join(abstract.split()), max_abstract_chars, f"{where}: abstract"), (path.name,)))
    if not papers:
        raise CorpusError(f"{path}: no papers found; the file is empty")
    return papers


def load_corpus(path: str | Path, max_abstract_chars: int = MAX_ABSTRACT_CHARS) -> list[Paper]:
    """A directory of seed pages, or a JSONL, CSV or Parquet file; abstracts over `max_abstract_chars` are cut."""
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:
        raise CorpusError(f"cannot read corpus {path}: {e.strerror}; fix its permissions or pass --corpus") from None
    if not exists:
        raise CorpusError(f"corpus {path} does not exist; pass --corpus with a directory of pages or a "
                          f".jsonl/.csv/.parquet file")
    return load_seed_pages(path, max_abstract_chars) if is_dir else load_table(path, max_abstract_chars)


def capped(text: str, limit: int, where: str) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with a warning naming `where`."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    short = text[: cut if cut > limit // 2 else limit].rstrip()
    log.warning("%s is %s characters; indexed only its first %s (the limit, RAG_MAX_ABSTRACT_CHARS for abstracts)",
                where, f"{len(text):,}", f"{len(short):,}")
    return short


def _text_field(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(f"{where}: {key} must be text, got {_kind(value)}; quote it in the file")
    if any("\ud800" <= c <= "\udfff" for c in value):  # a JSON "\ud83d" escape without its pair
        raise CorpusError(f"{where}: {key} holds a lone surrogate escape (\\ud800-\\udfff), which is not text; fix the row")
    return value.strip()


def _kind(value: object) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def corpus_hash(papers: list[Paper]) -> str:
    """Content hash of a corpus: changes when any id, title or abstract does."""
    h = hashlib.sha256()
    for p in sorted(papers, key=lambda p: p.id):
        h.update(json.dumps([p.id, p.title, p.abstract]).encode())
    return h.hexdigest()


def _dedupe(entries: list[tuple[str, str, str]]) -> list[Paper]:
    merged: dict[str, dict] = {}
    for title, abstract, source in entries:
        slot = merged.setdefault(normalize_title(title), {"title": title, "abstract": abstract, "sources": []})
        if source not in slot["sources"]:
            slot["sources"].append(source)
    return [Paper(paper_id(s["title"]), s["title"], s["abstract"], tuple(s["sources"])) for s in merged.values()]


def _read_text(path: Path) -> str:
    """The text of a corpus file, a byte-order mark dropped; CorpusError for a FIFO, a device, bad UTF-8."""
    try:
        return read_text(path, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 (byte {e.start}); re-save the file as UTF-8") from None
    except NotRegularFile as e:
        raise CorpusError(f"corpus {path} is {e.strerror}; pass a .jsonl, .csv or .parquet file or a directory "
                          f"of pages") from None
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None


def _read_check(path: Path) -> None:
    """CorpusError unless `path` is a regular file that can be opened (for readers that open it themselves)."""
    try:
        with open_regular(path):
            pass
    except NotRegularFile as e:
        raise CorpusError(f"corpus {path} is {e.strerror}; pass a .jsonl, .csv or .parquet file or a directory "
                          f"of pages") from None
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None


def _jsonl_rows(text: str, name: str) -> list[tuple[int, dict]]:
    try:
        return list(jsonl_objects(text))
    except JSONLineError as e:
        if e.problem == "not a JSON object":
            raise CorpusError(f"{name}:{e.line}: expected a JSON object with title and abstract") from None
        msg = e.problem.removeprefix("not valid JSON (").removesuffix(")")
        raise CorpusError(f"{name}:{e.line}: invalid JSON ({msg}); each line must be one JSON object") from None


def _csv_rows(text: str, name: str) -> list[tuple[int, dict]]:
    # The whole file is in memory already; the csv module's own 128 KiB field limit would only turn a long
    # abstract into an error instead of a cut with a warning.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = csv_header(reader.fieldnames)
        if not {"title", "abstract"} <= set(header):
            raise CorpusError(f"{name}: CSV header must have title and abstract columns (and optional id), got {header}")
        reader.fieldnames = header
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise CorpusError(f"{name}:{reader.line_num}: more cells than header columns; "
                                  f"quote fields that contain commas")
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise CorpusError(f"{name}:{reader.line_num}: not valid CSV ({e}); check the quoting of that line") from None
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, dict]]:
    """(row number from 1, {id?, title, abstract}) for every row; other columns are never read."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{path.name}: reading Parquet needs pyarrow; run `make install` "
                          f"(or pip install pyarrow==26.0.1)") from None
    try:
        schema = pq.read_schema(path)
        columns = {name.strip().lower(): name for name in schema.names}
        if not {"title", "abstract"} <= set(columns):
            raise CorpusError(f"{path.name}: Parquet columns must include title and abstract (and optional id), "
                              f"got {schema.names}")
        wanted = [columns[c] for c in ("id", "title", "abstract") if c in columns]
        table = pq.read_table(path, columns=wanted)
    except CorpusError:
        raise
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own ArrowInvalid etc. for a damaged file
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CorpusError(f"{path.name}: not a readable Parquet file ({reason}); re-export it") from None
    data = {c: table.column(columns[c]).to_pylist() for c in ("id", "title", "abstract") if c in columns}
    for c in ("title", "abstract"):
        for i, value in enumerate(data[c]):
            if value is not None and not isinstance(value, str):
                raise CorpusError(f"{path.name}: row {i + 1}: {c} is {type(value).__name__}, not text; "
                                  f"the {c} column must hold strings")
    return [(i + 1, {c: values[i] for c, values in data.items()}) for i in range(table.num_rows)]
