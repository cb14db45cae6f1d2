"""Offline metrics for answers against labelled questions.

A labelled row carries some of: `facts` (short strings, or regexes written as
`/.../`, that a correct answer must contain), `gold_paper_ids`, `answer` (a
reference answer) and `type` (`single`, `multi`, `unanswerable`). A prediction
is a `rag ask --json` object. Every metric is in [0, 1]; a metric that does not
apply to a row (no facts, no gold papers) is None and left out of the means.

The headline score (`headline`) is one number per question in [0, 1]:
- unanswerable: 1 if the program abstained, else 0;
- answerable but abstained: 0;
- answerable and answered: 0.5 fact recall + 0.3 citation F1 + 0.2 faithfulness
  (weights of parts that do not apply, e.g. no facts, are spread over the rest).
Its mean over a set is the set's headline, the optimiser's metric and what
`rag eval --compare` bootstraps.

Faithfulness (`faithfulness`) is a proxy: the share of answer sentences whose
best-matching cited passage scores at least FAITHFUL_MIN on
0.5 * cosine(sentence, passage) + 0.5 * share of the sentence's content words
found in the passage. The threshold is calibrated by eval/calibrate_faithfulness.py
(see eval/README.md).

`classification_scores` is the scorer of a fixed-label benchmark (PubMedQA: yes / no / maybe):
accuracy and macro-F1 as scikit-learn computes them, where a missing prediction (None) is wrong
and belongs to no label.

Left out: LM-judged metrics here; `rag eval --judge` adds DSPy's SemanticF1 on a remote LM.
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from rag.text import content_words, sentences, word_set

# Question types of a labelled set; "unanswerable" ones must be declined.
TYPES = ("single", "multi", "unanswerable")
# Calibrated on the labelled set by eval/calibrate_faithfulness.py; see eval/README.md.
FAITHFUL_MIN = 0.45
HEADLINE_WEIGHTS = {"fact_recall": 0.5, "citation_f1": 0.3, "faithfulness": 0.2}
Embed = Callable[[list[str]], np.ndarray]


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


_MARKER = re.compile(r"\[(\d+)\]")


def support_score(sentence: str, passage: str, cosine: float) -> float:
    """0.5 * embedding cosine + 0.5 * share of the sentence's content words found in the passage."""
    words = content_words(sentence)
    bag = word_set(passage)
    overlap = sum(w in bag for w in words) / len(words) if words else 0.0
    return 0.5 * max(cosine, 0.0) + 0.5 * overlap


def answer_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """(sentence without markers, the passage numbers it cites) for each sentence of an answer."""
    out = []
    for sentence in sentences(answer.strip()):
        numbers = [int(n) for n in _MARKER.findall(sentence)]
        text = " ".join(_MARKER.sub(" ", sentence).split())
        if len(content_words(text)) >= 2:
            out.append((text, numbers))
    return out


def faithfulness(answer: str, passages: dict[int, str], embed: Embed, threshold: float = FAITHFUL_MIN) -> float | None:
    """Share of the answer's sentences supported by a passage it cites (see module doc).

    `passages` maps passage number -> text for the passages given to the model. A sentence is
    checked against the passages it cites itself, else against every passage the answer cites.
    None when there is nothing to check (no sentence, or no valid citation at all).
    """
    sentences = answer_sentences(answer)
    cited_all = sorted({n for _, ns in sentences for n in ns if n in passages})
    if not sentences or not cited_all:
        return None
    keys = sorted(passages)
    vecs = embed([s for s, _ in sentences] + [passages[n] for n in keys])
    svec, pvec = vecs[: len(sentences)], dict(zip(keys, vecs[len(sentences):], strict=True))
    supported = 0
    for (text, numbers), sv in zip(sentences, svec, strict=True):
        candidates = [n for n in numbers if n in passages] or cited_all
        best = max(support_score(text, passages[n], float(np.dot(sv, pvec[n]))) for n in candidates)
        supported += best >= threshold
    return supported / len(sentences)


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def headline(label: dict, scores: dict[str, float | None]) -> float:
    """The per-question headline score (see module doc)."""
    if label.get("type") == "unanswerable":
        return float(scores["abstained"] == 1.0)
    if scores["abstained"] == 1.0:
        return 0.0
    parts = {k: scores.get(k) for k in HEADLINE_WEIGHTS}
    if parts["citation_f1"] is None:
        parts["citation_f1"] = 0.0  # an answer that cites nothing checkable earns no citation credit
    used = {k: v for k, v in parts.items() if v is not None}
    total = sum(HEADLINE_WEIGHTS[k] for k in used)
    return sum(HEADLINE_WEIGHTS[k] * v for k, v in used.items()) / total if total else 0.0


def score_row(label: dict, pred: dict, embed: Embed | None = None) -> dict[str, float | None]:
    """Per-question metrics of one prediction against its label; `embed` adds faithfulness."""
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
    out["citation_f1"] = _f1(out["citation_precision"], out["citation_recall"]) if cited else (
        0.0 if gold and answerable else None)
    out["faithfulness"] = None
    if embed is not None and not abstained and answer:
        texts = {int(p.get("n", i)): p.get("text", "") for i, p in enumerate(pred.get("passages") or [], 1)}
        out["faithfulness"] = faithfulness(answer, texts, embed)
    out.update(claim_scores(label, pred, answer, abstained, answerable))
    out["headline"] = headline(label, out)
    return out


def claim_scores(label: dict, pred: dict, answer: str, abstained: bool, answerable: bool) -> dict[str, float | None]:
    """Claims and verdicts: the share of the answer's claims whose names and numbers appear in what they cite
    (rag.answer.claims, rerun here from the passages so any program's answers are scored alike); whether any claim is
    unsupported; and, for a yes/no question with a Yes or No reference, whether the answer's verdict matches
    (an abstention or an answer without a verdict counts as wrong)."""
    from rag.answer.claims import check_claims
    from rag.answer.shapes import parse_verdict, question_shape

    out: dict[str, float | None] = {"claims_supported": None, "unsupported_claim": None, "verdict_correct": None}
    if answer and not abstained:
        passages = {int(p.get("n", i)): f"{p.get('title', '')}: {p.get('text', '')}"
                    for i, p in enumerate(pred.get("passages") or [], 1)}
        claims = check_claims(answer, passages, label.get("question", ""))
        if claims:
            out["claims_supported"] = sum(c.supported for c in claims) / len(claims)
            out["unsupported_claim"] = float(not all(c.supported for c in claims))
    gold = parse_verdict(label.get("answer")) if answerable else None
    if gold in ("yes", "no") and (label.get("shape") or question_shape(label.get("question", ""))) == "yesno":
        said = None if abstained else (pred.get("verdict") or parse_verdict(answer))
        out["verdict_correct"] = float(said == gold)
    return out


def abstention_summary(labels: Sequence[dict], preds: Sequence[dict]) -> dict[str, float | None]:
    """Precision and recall of abstaining as a detector of unanswerable questions, and the
    false-abstention rate on answerable ones."""
    unans = [bool(p.get("abstained")) for lab, p in zip(labels, preds, strict=True) if lab.get("type") == "unanswerable"]
    ans = [bool(p.get("abstained")) for lab, p in zip(labels, preds, strict=True) if lab.get("type") != "unanswerable"]
    abstained = sum(unans) + sum(ans)
    return {
        "abstention_precision": round(sum(unans) / abstained, 4) if abstained else None,
        "abstention_recall": round(sum(unans) / len(unans), 4) if unans else None,
        "false_abstention_rate": round(sum(ans) / len(ans), 4) if ans else None,
    }


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000,
                     seed: int = 0, alpha: float = 0.05) -> dict[str, float | bool]:
    """Mean of b - a over paired questions, with a percentile bootstrap CI and a two-sided p-value."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty score lists")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_resamples, len(diffs)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {"mean_diff": float(diffs.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(min(p, 1.0)), "significant": bool(lo > 0 or hi < 0), "n": len(diffs)}


def bootstrap_ci(values: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_resamples, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def percentile(values: Iterable[float], pct: float) -> float:
    """The `pct`-th percentile (0-100) with linear interpolation between ranks (numpy's default);
    NaN for no values. The one definition every latency figure in the project uses."""
    v = sorted(values)
    if not v:
        return math.nan
    pos = (len(v) - 1) * pct / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


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


# --- fixed-label classification (PubMedQA) -----------------------------------------------

def classification_scores(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label precision / recall / F1 of predictions against gold labels.

    The same numbers as scikit-learn's `accuracy_score(gold, pred)` and
    `f1_score(gold, pred, labels=labels, average="macro", zero_division=0)`, with None (no
    prediction: an abstention, a failed call, an answer without a verdict) as a value outside
    `labels`: it is wrong, counts against the recall of its gold label, and against no label's
    precision. Macro-F1 is the unweighted mean F1 of `labels`; a label never predicted has
    precision 0 (sklearn's zero_division=0). With no None predictions this is exactly the
    official scorer's `f1_score(average="macro")` over the three PubMedQA labels.
    """
    if len(gold) != len(pred) or not gold:
        raise ValueError("classification_scores needs two equally long, non-empty label lists")
    unknown = sorted({g for g in gold if g not in labels} | {p for p in pred if p is not None and p not in labels})
    if unknown:
        raise ValueError(f"labels {unknown} are not among {list(labels)}")
    per_label: dict[str, dict[str, float | int]] = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        predicted = sum(p == label for p in pred)
        support = sum(g == label for g in gold)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": f1,
                            "support": support, "predicted": predicted}
    macro = statistics.fmean(v["f1"] for v in per_label.values())
    for v in per_label.values():
        v["f1"] = round(v["f1"], 4)
    # rows: gold label; columns: predicted label, and "none" for no prediction
    confusion = {g: {p or "none": sum(x == g and y == p for x, y in zip(gold, pred, strict=True))
                     for p in [*labels, None]} for g in labels}
    return {"n": len(gold), "accuracy": round(sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold), 4),
            "macro_f1": round(macro, 4), "no_prediction": sum(p is None for p in pred),
            "per_label": per_label, "confusion": confusion}


# --- retrieval ------------------------------------------------------------------------

def retrieval_scores(ranked_ids: list[str], gold: Iterable[str], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """recall@k, MRR@10 and nDCG@10 of a ranked list of paper ids against the gold ids."""
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
