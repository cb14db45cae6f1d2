"""Ratings of answers, kept for good: the chat's like/dislike and corrections, and their export as labelled rows.

`FeedbackStore` is one SQLite file under the cache directory (RAG_CACHE_DIR/feedback.sqlite3) in WAL mode
with `synchronous=FULL`: a rating is committed and on disk before the chat says it is saved, a crash loses
none, and `rag feedback list` can read the file while the chat writes it. One row per rating: the question,
the whole `rag ask --json` result it rated (provenance included), the rating (+1 like, -1 dislike), an
optional correction (its kind from `CORRECTIONS`, its text, the source number it names) and the time.

`export_rows` turns ratings into rows of the eval set's own format (eval/README.md; docs/json.md, "rag
feedback export"), which `rag eval --set` and `rag optimize --train` read: gold papers from the sources
of an answer the user approved, facts from a "the right answer is" correction, `unanswerable` from
"should have said it does not know". A question that is in the dev set is never exported (dev measures;
feedback only trains). Nothing leaves the machine.

Left out: who rated (the chat has no accounts; RAG_AUTH is one shared login), editing or deleting ratings
(the file is SQLite: any SQLite tool can), and de-duplicating ratings across users beyond "the latest
rating of a question wins".
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.errors import RagError

DB_NAME = "feedback.sqlite3"

# Correction kind -> what the chat offers (the user's words).
CORRECTIONS = {
    "wrong_paper": "wrong paper",
    "should_abstain": "should have said it does not know",
    "right_answer": "the right answer is ...",
    "unsupported_source": "this source does not support it",
}
RATINGS = {1: "like", -1: "dislike"}

SCHEMA = """CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    question TEXT NOT NULL,
    result TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
    correction TEXT,
    correction_text TEXT,
    source_n INTEGER
)"""


def db_path(cache_dir: str | Path) -> Path:
    """Where the ratings live: RAG_CACHE_DIR/feedback.sqlite3."""
    return Path(cache_dir) / DB_NAME


class FeedbackStore:
    """The ratings file; every call opens its own connection, so threads and processes share it safely."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(SCHEMA)
                con.commit()
        except (OSError, sqlite3.Error) as e:
            raise RagError(f"cannot open the ratings file {self.path} ({e}); check RAG_CACHE_DIR is writable") from None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA synchronous=FULL")  # in WAL mode, FULL makes each commit durable on its own
        con.row_factory = sqlite3.Row
        return con

    def _write(self, sql: str, params: tuple) -> int:
        try:
            with closing(self._connect()) as con:
                with con:  # commits (or rolls back) the transaction
                    cur = con.execute(sql, params)
                return int(cur.lastrowid or 0) if sql.lstrip().upper().startswith("INSERT") else cur.rowcount
        except sqlite3.Error as e:
            raise RagError(f"could not save the rating to {self.path} ({e}); check the disk and RAG_CACHE_DIR") from None

    def add(self, result: dict, rating: int, correction: str | None = None, text: str | None = None,
            source_n: int | None = None) -> int:
        """Store one rating of `result` (a `rag ask --json` object); returns its row id."""
        if rating not in RATINGS:
            raise RagError(f"a rating is 1 (like) or -1 (dislike), not {rating!r}")
        check_correction(result, correction, text, source_n)
        question = result.get("question")
        if not isinstance(question, str) or not question.strip():
            raise RagError("the rated result has no question")
        return self._write("INSERT INTO ratings (time, question, result, rating, correction, correction_text, source_n) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (now(), question, json.dumps(result, ensure_ascii=False), rating, correction,
                            (text or "").strip() or None, source_n))

    def correct(self, row_id: int, correction: str, text: str | None = None, source_n: int | None = None) -> None:
        """Add (or replace) the correction of rating `row_id`."""
        row = self.get(row_id)
        check_correction(row["result"], correction, text, source_n)
        self._write("UPDATE ratings SET correction = ?, correction_text = ?, source_n = ? WHERE id = ?",
                    (correction, (text or "").strip() or None, source_n, row_id))

    def get(self, row_id: int) -> dict:
        found = [r for r in self.rows(where="id = ?", params=(row_id,))]
        if not found:
            raise RagError(f"no rating {row_id} in {self.path}")
        return found[0]

    def rows(self, where: str = "1", params: tuple = ()) -> list[dict]:
        """Every rating, oldest first, its result parsed back into a dict."""
        try:
            with closing(self._connect()) as con:
                got = con.execute(f"SELECT * FROM ratings WHERE {where} ORDER BY id", params).fetchall()
        except sqlite3.Error as e:
            raise RagError(f"cannot read the ratings file {self.path} ({e})") from None
        return [{**dict(r), "result": json.loads(r["result"])} for r in got]

    def stats(self) -> dict[str, Any]:
        """Counts: ratings, likes, dislikes, corrections by kind, distinct questions."""
        rows = self.rows()
        return {"ratings": len(rows), "likes": sum(r["rating"] == 1 for r in rows),
                "dislikes": sum(r["rating"] == -1 for r in rows),
                "corrections": dict(Counter(r["correction"] for r in rows if r["correction"])),
                "questions": len({question_key(r["question"]) for r in rows})}


def check_correction(result: dict, correction: str | None, text: str | None, source_n: int | None) -> None:
    """A correction the export can use, or a RagError saying what it lacks."""
    if correction is None:
        return
    if correction not in CORRECTIONS:
        raise RagError(f"correction {correction!r} is not one of {', '.join(CORRECTIONS)}")
    if correction == "right_answer" and not (text or "").strip():
        raise RagError("'the right answer is ...' needs the answer: write its key facts, separated by ';'")
    n_passages = len(result.get("passages") or [])
    if correction == "unsupported_source" and source_n is None:
        raise RagError("'this source does not support it' needs the source's number [n]")
    if source_n is not None and not 1 <= source_n <= n_passages:
        raise RagError(f"source [{source_n}] is not one of this answer's {n_passages} sources")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def question_key(question: str) -> str:
    """A question compared loosely: case and spacing do not make another question."""
    return re.sub(r"\s+", " ", question).strip().casefold()


def _paper(result: dict, n: int) -> str | None:
    return next((p["paper_id"] for p in result.get("passages") or [] if p.get("n") == n), None)


def label(rating: dict) -> tuple[dict | None, str]:
    """The eval row one rating makes (None if it makes none) and why: the mapping in docs/json.md."""
    result, kind, text, n = rating["result"], rating["correction"], rating["correction_text"], rating["source_n"]
    cited = list(dict.fromkeys(c["paper_id"] for c in result.get("citations") or []))
    row: dict[str, Any] = {"id": f"fb-{rating['id']}", "question": rating["question"], "facts": [],
                           "gold_paper_ids": [], "source": "feedback", "rated_at": rating["time"]}
    if kind == "should_abstain" or (rating["rating"] == 1 and result.get("abstained") and kind is None):
        return {**row, "type": "unanswerable"}, "unanswerable"
    if kind == "right_answer":
        gold = [_paper(result, n)] if n is not None else cited
        if not gold:
            return None, "right answer without a source"
        facts = [f.strip() for f in (text or "").split(";") if f.strip()]
        return {**row, "type": _type(gold), "answer": text, "facts": facts, "gold_paper_ids": gold}, "corrected"
    if rating["rating"] != 1:
        return None, "disliked" if kind is None else kind
    if kind == "unsupported_source":
        cited = [p for p in cited if p != _paper(result, n)]
    if kind == "wrong_paper" or not cited:
        return None, "liked without an approved source"
    return {**row, "type": _type(cited), "answer": result.get("answer"), "gold_paper_ids": cited}, "approved"


def _type(gold: list[str]) -> str:
    return "single" if len(gold) == 1 else "multi"


def export_rows(ratings: list[dict], exclude: set[str] = frozenset()) -> tuple[list[dict], Counter]:
    """Eval rows from ratings, the latest rating of each question winning; questions whose `question_key`
    is in `exclude` (the dev set's) are left out. Returns the rows and a count of what became of each rating."""
    latest: dict[str, dict] = {}
    for r in ratings:  # oldest first: a later rating replaces an earlier one
        latest[question_key(r["question"])] = r
    out, why = [], Counter()
    why["superseded"] = len(ratings) - len(latest)
    for key, r in latest.items():
        if key in exclude:
            why["in the dev set"] += 1
            continue
        row, reason = label(r)
        why[reason] += 1
        if row is not None:
            out.append(row)
    return out, +why
