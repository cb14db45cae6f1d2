"""Offline metrics for answers against labelled questions.

A labelled row carries some of: `facts` (short strings, or regexes written as
`/.../`, that a correct answer must contain), `gold_paper_ids`, `answer` (a
reference answer) and `type` (`single`, `multi`, `unanswerable`). A prediction
is a `rag ask --json` object. Every metric is in [0, 1]; a metric that does not
apply to a row (no facts, no gold papers) is None and left out of the means.

Left out: LM-judged metrics (they need a strong remote model) and faithfulness.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any


def normalize(text: str) -> str:
    """Lower-case, accents and punctuation removed, whitespace collapsed; '10x-50x' -> '10x 50x'."""
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9%.]+", " ", text).replace(". ", " ").split()).strip(" .")


def fact_found(fact: str, answer: str) -> bool:
    """A /regex/ fact is searched case-insensitively; a plain fact must appear after normalisation."""
    if len(fact) > 2 and fact.startswith("/") and fact.endswith("/"):
        return re.search(fact[1:-1], answer, re.IGNORECASE) is not None
    return f" {normalize(fact)} " in f" {normalize(answer)} "


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def score_row(label: dict, pred: dict) -> dict[str, float | None]:
    """Per-question metrics of one prediction against its label."""
    answerable = label.get("type") != "unanswerable"
    abstained = bool(pred.get("abstained"))
    answer = pred.get("answer") or ""
    gold = set(label.get("gold_paper_ids") or [])
    cited = [c["paper_id"] for c in pred.get("citations") or []]
    given = [p["paper_id"] for p in pred.get("passages") or []]
    facts = label.get("facts") or []
    out: dict[str, float | None] = {
        "abstained": float(abstained),
        "correct_abstention": None if answerable else float(abstained),
        "false_abstention": float(abstained) if answerable else None,
        "fact_recall": (sum(fact_found(f, answer) for f in facts) / len(facts)) if facts and answerable else None,
        "token_f1": token_f1(answer, label["answer"]) if label.get("answer") and answerable else None,
        "citation_validity": (sum(c in given for c in cited) / len(cited)) if cited else None,
        "citation_precision": (sum(c in gold for c in cited) / len(cited)) if cited and gold else None,
        "citation_recall": (len(gold & set(cited)) / len(gold)) if gold and answerable else None,
        "retrieval_recall": (len(gold & set(given)) / len(gold)) if gold else None,
    }
    return out


def summarize(rows: Iterable[dict[str, float | None]]) -> dict[str, Any]:
    """Mean of each metric over the rows where it applies, with the count."""
    values: dict[str, list[float]] = {}
    n = 0
    for row in rows:
        n += 1
        for key, value in row.items():
            if value is not None:
                values.setdefault(key, []).append(value)
    summary: dict[str, Any] = {"n": n}
    for key, vals in values.items():
        summary[key] = round(statistics.fmean(vals), 4)
        summary[f"{key}_n"] = len(vals)
    return summary


def has_labels(row: dict) -> bool:
    return any(k in row for k in ("facts", "gold_paper_ids", "type"))


# --- retrieval ------------------------------------------------------------------------

def retrieval_scores(ranked_ids: list[str], gold: Iterable[str], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """recall@k, MRR@10 and nDCG@10 of a ranked list of paper ids against the gold ids."""
    import math

    gold = set(gold)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = len(gold & set(ranked_ids[:k])) / len(gold)
    first = next((i for i, pid in enumerate(ranked_ids[:10], 1) if pid in gold), None)
    out["mrr@10"] = 1.0 / first if first else 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i, pid in enumerate(ranked_ids[:10], 1) if pid in gold)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(gold), 10) + 1))
    out["ndcg@10"] = dcg / ideal
    return out
