"""Check every row of eval/questions.jsonl; exit 1 on any problem.

    python3 eval/check_questions.py          # stdlib only; reads the corpus from data/corpus

Checks, per row (each problem is printed with the row's line and id):
- a JSON object with `id`, `question` (non-empty strings), `type` (single, multi, unanswerable), `answer`
  (a string; non-empty for answerable rows), `facts` and `gold_paper_ids` (lists of strings);
  ids unique; `shape` (if present) one of list, yesno, specific; `round` (if present) an int;
  `verdict` (if present) yes or no, and only on yesno rows;
- answerable rows: at least one gold paper (two or more for `multi`), 1 to 3 facts, and every fact found in
  one of the gold abstracts by the metric's own matcher (`fact_found`, see below);
  unanswerable rows: no gold papers and no facts;
- every gold id (and every `about_paper_ids` id, the paper an unanswerable in-domain question is about)
  is a paper of the corpus (`rag.index.corpus.load_seed_pages("data/corpus")`, the ids `rag papers` prints);
- no question shares a run of six words (after the metric's normalisation) with one of its gold abstracts;
  checked for rows with a `shape` (second round on). First-round rows were written from the abstracts
  before this rule existed; the four of them that share a run are listed as a note, not a failure;
- yesno rows with a verdict: the reference answer starts with "Yes." or "No.", and that word agrees with
  `verdict`; third-round (`round` 3) answerable yesno rows must carry a verdict.

Then it prints counts by shape, type and verdict.

The fact matcher is `rag.evaluation.metrics.fact_found` with its `normalize`. rag/evaluation/metrics.py imports numpy at module
level, so this script carries an exact copy of the two functions (keep them in step); when rag.evaluation.metrics can
be imported (numpy installed), the copy is also compared with the real functions on every fact and
question of the set, and any disagreement is a problem.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rag.index.corpus import load_seed_pages  # noqa: E402  (stdlib only)

QUESTIONS = ROOT / "eval" / "questions.jsonl"
CORPUS = ROOT / "data" / "corpus"
TYPES = ("single", "multi", "unanswerable")
SHAPES = ("list", "yesno", "specific")
RUN = 6  # words a question may not share in a row with its gold abstract
# First-round rows known to share a six-word run with their gold abstract (written before the rule).
FIRST_ROUND_RUNS = frozenset({"s1-03", "s1-11", "s1-15", "s1-18"})
_VERDICT_WORD = re.compile(r"^\s*(yes|no)\b\.", re.IGNORECASE)


# --- exact copies of rag.evaluation.metrics.normalize and rag.evaluation.metrics.fact_found ------------------------

def normalize(text: str) -> str:
    """Lower-case, accents and punctuation removed, whitespace collapsed; '10x-50x' -> '10x 50x'."""
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9%.]+", " ", text).replace(". ", " ").split()).strip(" .")


def fact_found(fact: str, answer: str) -> bool:
    """A /regex/ fact is searched case-insensitively; a plain fact must appear after normalisation."""
    if len(fact) > 2 and fact.startswith("/") and fact.endswith("/"):
        return re.search(fact[1:-1], answer, re.IGNORECASE) is not None
    return f" {normalize(fact)} " in f" {normalize(answer)} "


def runs(text: str, n: int = RUN) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check(rows: list[tuple[int, dict]], abstracts: dict[str, str]) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for no, row in rows:
        rid = row.get("id")
        where = f"questions.jsonl:{no} ({rid})"

        def bad(msg: str) -> None:
            problems.append(f"{where}: {msg}")  # noqa: B023 - called within this iteration only

        for key in ("id", "question"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                bad(f"missing or empty {key!r}")
        if not isinstance(rid, str):
            continue
        if rid in seen:
            bad("duplicate id")
        seen.add(rid)
        kind = row.get("type")
        if kind not in TYPES:
            bad(f"type {kind!r} is not one of {', '.join(TYPES)}")
            continue
        answerable = kind != "unanswerable"
        answer = row.get("answer")
        if not isinstance(answer, str) or (answerable and not answer.strip()):
            bad("missing or empty 'answer'")
            answer = ""
        facts, gold = row.get("facts", []), row.get("gold_paper_ids", [])
        if not is_str_list(facts) or not is_str_list(gold):
            bad("'facts' and 'gold_paper_ids' must be lists of strings")
            continue
        shape = row.get("shape")
        if shape is not None and shape not in SHAPES:
            bad(f"shape {shape!r} is not one of {', '.join(SHAPES)}")
        rnd = row.get("round")
        if rnd is not None and (not isinstance(rnd, int) or isinstance(rnd, bool)):
            bad(f"round {rnd!r} is not an integer")
        for g in gold + list(row.get("about_paper_ids") or []):
            if g not in abstracts:
                bad(f"paper {g} is not in the corpus")
        gold_text = [abstracts[g] for g in gold if g in abstracts]
        if answerable:
            if not gold:
                bad(f"a {kind} question needs gold_paper_ids")
            if kind == "multi" and len(gold) < 2:
                bad("a multi question needs two or more gold papers")
            if len(set(gold)) != len(gold):
                bad("a gold paper is listed twice")
            if not 1 <= len(facts) <= 3:
                bad(f"{len(facts)} facts (an answerable question needs 1 to 3)")
            for fact in facts:
                if not fact.strip():
                    bad("an empty fact")
                elif not any(fact_found(fact, text) for text in gold_text):
                    bad(f"fact {fact!r} is in none of its gold abstracts")
        else:
            if gold:
                bad("an unanswerable question cannot have gold_paper_ids")
            if facts:
                bad("an unanswerable question cannot have facts")
        shared = sorted({" ".join(r) for text in gold_text for r in runs(row["question"]) & runs(text)})
        if shared:
            msg = f"question shares a {RUN}-word run with a gold abstract: {shared[0]!r}"
            if shape is None and rid in FIRST_ROUND_RUNS:
                notes.append(f"{where}: {msg} (first round, known)")
            else:
                bad(msg)
        verdict = row.get("verdict")
        if verdict is not None:
            if verdict not in ("yes", "no"):
                bad(f"verdict {verdict!r} is not 'yes' or 'no'")
            if shape != "yesno":
                bad("a verdict on a row whose shape is not yesno")
            m = _VERDICT_WORD.match(answer)
            if not m:
                bad("a yesno answer must start with 'Yes.' or 'No.'")
            elif m.group(1).lower() != verdict:
                bad(f"answer starts with {m.group(1)!r} but verdict is {verdict!r}")
        elif shape == "yesno" and answerable and rnd == 3:
            bad("a third-round yesno question needs a verdict")
    return problems, notes


def compare_with_metric(rows: list[tuple[int, dict]], abstracts: dict[str, str]) -> list[str] | None:
    """Where rag.evaluation.metrics imports, check the copies above agree with it on this set's facts and questions
    (None when it does not import)."""
    try:
        from rag.evaluation import metrics
    except ImportError:
        return None
    out = []
    for _, row in rows:
        texts = [abstracts[g] for g in row.get("gold_paper_ids") or [] if g in abstracts]
        for text in [row.get("question", ""), *texts]:
            if normalize(text) != metrics.normalize(text):
                out.append(f"{row.get('id')}: normalize disagrees with rag.evaluation.metrics.normalize")
            for fact in row.get("facts") or []:
                if fact_found(fact, text) != metrics.fact_found(fact, text):
                    out.append(f"{row.get('id')}: fact_found({fact!r}) disagrees with rag.evaluation.metrics.fact_found")
    return out


def main() -> int:
    rows: list[tuple[int, dict]] = []
    problems: list[str] = []
    for no, line in enumerate(QUESTIONS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"questions.jsonl:{no}: not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"questions.jsonl:{no}: not a JSON object")
            continue
        rows.append((no, row))
    abstracts = {p.id: p.abstract for p in load_seed_pages(CORPUS)}
    found, notes = check(rows, abstracts)
    compared = compare_with_metric(rows, abstracts)
    problems += found + (compared or [])

    data = [r for _, r in rows]
    print(f"{len(data)} questions, {len(abstracts)} papers in the corpus")
    print("by type:    " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.get("type") for r in data).items())))
    print("by shape:   " + ", ".join(f"{k or '(none)'} {v}" for k, v in
                                     sorted(Counter(r.get("shape") or "" for r in data).items())))
    print("by round:   " + ", ".join(f"{k} {v}" for k, v in
                                     sorted(Counter(r.get("round", 1 if "shape" not in r else 2) for r in data).items())))
    print("shape x type:")
    for (shape, kind), n in sorted(Counter((r.get("shape") or "(none)", r.get("type")) for r in data).items()):
        print(f"  {shape:9} {kind:13} {n}")
    verdicts = Counter(r["verdict"] for r in data if r.get("verdict"))
    print("verdicts:   " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) +
          f" (yesno rows without one: {sum(r.get('shape') == 'yesno' and not r.get('verdict') for r in data)})")
    gold = {g for r in data for g in r.get("gold_paper_ids") or []}
    print(f"distinct gold papers: {len(gold)}")
    print("matcher: " + ("the copy agrees with rag.evaluation.metrics on every fact and question" if compared == [] else
                         "rag.evaluation.metrics not importable here (no numpy); the copy of its matcher was used"
                         if compared is None else "the copy DISAGREES with rag.evaluation.metrics (see problems)"))
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
