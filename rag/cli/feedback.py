"""`rag feedback list|stats|export`: the chat's ratings (rag/feedback.py), read while the chat runs.

`export` writes them as labelled rows of the eval set's format for `rag eval --set` and `rag optimize
--train`, optionally after the rows of a written set (`--merge eval/train.jsonl`); questions of the dev
set are never exported.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from rag.cli.common import clean, print_json, say, settings_from
from rag.errors import RagError
from rag.settings import ROOT


def _store(args: argparse.Namespace):
    from rag.feedback import FeedbackStore, db_path

    path = Path(args.db) if args.db else db_path(settings_from(args).cache_dir)
    if not path.is_file():
        raise RagError(f"no ratings yet: {path} does not exist (rate answers in the chat, or pass --db)")
    return FeedbackStore(path)


def _list(args: argparse.Namespace) -> int:
    from rag.feedback import RATINGS

    rows = _store(args).rows()
    rows = rows[-args.limit:] if args.limit else rows
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        fix = f" [{r['correction']}{' ' + str(r['source_n']) if r['source_n'] else ''}]" if r["correction"] else ""
        print(f"{r['id']:>5} {r['time']} {RATINGS[r['rating']]:<7}{fix} {textwrap.shorten(clean(r['question']), 80)}")
        if r["correction_text"]:
            print(f"      right answer: {textwrap.shorten(clean(r['correction_text']), 90)}")
    say(f"{len(rows)} ratings")
    return 0


def _stats(args: argparse.Namespace) -> int:
    s = _store(args).stats()
    if args.json:
        print_json(s)
        return 0
    print(f"{s['ratings']} ratings of {s['questions']} questions: {s['likes']} liked, {s['dislikes']} disliked")
    for kind, n in sorted(s["corrections"].items()):
        print(f"  {kind}: {n}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from rag.evaluation.seed import load_set
    from rag.feedback import export_rows, question_key
    from rag.files import atomic_write

    if not args.output:
        raise RagError("export needs -o OUT.jsonl, the file to write")
    dev = None if args.dev == "none" else (args.dev or str(ROOT / "eval/dev.jsonl"))
    exclude = {question_key(r["question"]) for r in load_set(dev)} if dev else set()
    merged = load_set(args.merge) if args.merge else []
    exclude |= {question_key(r["question"]) for r in merged}  # the written label wins over a rating
    rows, why = export_rows(_store(args).rows(), exclude)
    out = [*merged, *rows]
    if not out:
        raise RagError("no rating makes a labelled row yet (like an answer, or correct one); "
                       "see `rag feedback stats`")
    atomic_write(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    merged_note = f" after the {len(merged)} rows of {args.merge}" if merged else ""
    say(f"wrote {len(rows)} feedback rows{merged_note} to {args.output} "
        f"({', '.join(f'{n} {k}' for k, n in sorted(why.items()))})")
    return 0


# Action -> what runs it.
ACTIONS = {"list": _list, "stats": _stats, "export": _export}


def cmd_feedback(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
