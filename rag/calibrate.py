"""Calibrating the yes/no verdict: per-label biases fitted on train, scored against sampling.

A 1.5B model's sampled verdict leans to one label whatever the evidence says. The answer program can
instead read the probabilities of the three labels where its verdict goes (or, with `verdict_source`
"judge", from a second short call that reads the finding against the question) and take the label with
the highest log P + bias: contextual calibration (Zhao et al. 2021, "Calibrate Before Use"), the biases
fitted here on labelled train rows and stored in the program file's `decisions`.

- `verdict_records(results)`: (gold, sampled verdict, label probabilities) of each answered yes/no
  question in an eval report's results (the seed set's reference answers open with Yes. / No.; PubMedQA
  rows carry their gold label).
- `fit_bias(records, labels, objective)`: the biases (yes fixed at 0) that maximise, on `records`, the
  balanced accuracy (the mean recall of the gold labels present: the default) or the plain accuracy; ties
  broken by the other, then macro-F1, then the smallest biases; a coarse grid, so a handful of rows cannot
  be fitted to the last decimal.

Why balanced by default: plain accuracy also fits the labelled rows' own mix of labels, and that mix
is the writers' choice, not the users' (the seed train set was written with at least 60 answered "no":
71% of its answered yes/no rows are "no"; dev's are 77% "yes"; PubMedQA's train half 55% "yes"). A bias
fitted for balanced accuracy undoes the model's lean without adding the rows' prior. 5-fold cross-validation
on the train rows, fitted per corpus (eval/README.md, "Verdict biases per corpus, fitted for balance"): seed
train balanced accuracy 0.768 -> 0.810 (accuracy 0.792 -> 0.811), PubMedQA train 0.456 -> 0.481 (0.648 -> 0.667).
Pooling the two corpora's rows did worse on both than either corpus's own fit: fit each corpus on its own.
- `compare(records)`: accuracy, balanced accuracy and macro-F1 of the sampled verdict, the raw argmax, the
  fitted biases (on all rows, and leave-one-out, an honest estimate on unseen rows), with and without maybe.

The other fitted decision, `declined_fallback`: when the claim checks decline the model's answer, the
evidence quoted and cited (the extractive answer) may answer instead, for a question whose best dense
similarity reaches its shape's minimum. `fit_fallback(items)` picks that minimum per shape from train
questions whose decline and extractive answer were both scored (rag.optimize gathers them, from a run or
from eval reports, with no model call); `apply_fallback` gives the headlines the swap would give;
`choose_fallback_verdict` whether that answer keeps the declined yes/no draft's verdict.

The third, `min_score`: per question shape, the best dense similarity below which the program declines
before the model is called (a question whose coined names are found in the passages is never declined so).
`fit_min_score(items)` picks it per shape from a train run that answered every question (RAG_MIN_SCORE=0):
declining a question there scores 1 if it is unanswerable and 0 if not, answering it keeps the headline it
got; `apply_min_score` gives the headlines a set of minimums would give.

Left out: temperature scaling and per-shape biases (one set of biases per program: a program file fitted on
one corpus's rows is that corpus's program).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

from rag.answer.program import VERDICT_LABELS, VERDICT_SOURCES, decision_probs, scored_verdict
from rag.answer.shapes import parse_verdict
from rag.evaluation.metrics import classification_scores

GRID = [x / 4 for x in range(-32, 33)]  # -8 .. 8 in steps of 0.25 (log-space)
NO_MAYBE = -50.0  # a bias that rules "maybe" out
OBJECTIVES = ("balanced", "accuracy")  # what fit_bias maximises first (balanced: the mean recall of the gold labels)


def verdict_records(results: Iterable[dict], probs_key: str = "verdict_probs") -> list[dict]:
    """{"id", "gold", "sampled", "probs", "judge"} for each answered yes/no result with a gold yes/no/maybe
    label and label probabilities (`probs_key` in the prediction's provenance, or a key of the result
    itself); "judge" holds the judge step's probabilities when the run recorded them, else None."""
    out = []
    for r in results:
        pred = r.get("prediction") or {}
        prov = pred.get("provenance") or {}
        gold = r.get("gold") or parse_verdict(r.get("reference"))
        probs = r.get(probs_key) or prov.get(probs_key)
        if gold not in VERDICT_LABELS or pred.get("abstained") or not probs:
            continue
        out.append({"id": r["id"], "gold": gold, "sampled": prov.get("sampled_verdict"), "probs": probs,
                    "judge": prov.get("judge_probs")})
    return out


def by_source(records: Sequence[dict], source: str) -> list[dict]:
    """`records` with "probs" replaced by what a program of `verdict_source` `source` would decide on;
    for judge and both, only the records that hold the judge's reading (a like-for-like comparison)."""
    if source == "reply":
        return list(records)
    return [{**r, "probs": decision_probs(source, r["probs"], r["judge"])} for r in records if r.get("judge")]


def choose_decisions(records: Sequence[dict], objective: str = "balanced",
                     sources: Sequence[str] = VERDICT_SOURCES) -> tuple[dict, dict]:
    """The verdict decisions to ship, chosen on `records` (train rows only), and the table behind the choice.

    Every source of `sources` (reply, judge, both) the records allow, with and without maybe, is fitted for `objective`
    and scored by its leave-one-out `objective` (balanced accuracy or accuracy; then macro-F1); the best is
    kept only if it beats the model's sampled verdict on the same rows, else the sampled verdict stays
    (verdict_bias None). Returns (decisions, calibration) where calibration holds the table, the sampled
    scores and the rows counted."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    sampled = scores_of(records, [r["sampled"] for r in records])
    best = {"verdict_bias": None, "verdict_labels": list(VERDICT_LABELS), "verdict_source": "reply"}
    best_key = _key(sampled, objective)
    table = []
    for source in sources:
        rows = by_source(records, source)
        if not rows:
            continue
        for labels in (VERDICT_LABELS, ("yes", "no")):
            loo = scores_of(rows, leave_one_out(rows, labels, objective))
            table.append({"source": source, "labels": list(labels), "n": len(rows),
                          "loo_accuracy": round(loo["accuracy"], 4), "loo_balanced": round(loo["balanced"], 4),
                          "loo_macro_f1": round(loo["macro_f1"], 4)})
            # judge rows may be fewer than reply rows: compare against the sampled verdict on the same rows
            base = _key(scores_of(rows, [r["sampled"] for r in rows]), objective)
            if _key(loo, objective) > best_key and _key(loo, objective) > base:
                best_key = _key(loo, objective)
                best = {"verdict_bias": fit_bias(rows, labels, objective), "verdict_labels": list(labels),
                        "verdict_source": source}
    calibration = {"rows": len(records), "judged": sum(bool(r.get("judge")) for r in records), "table": table,
                   "objective": objective, "chosen": best, "sampled_accuracy": round(sampled["accuracy"], 4),
                   "sampled_balanced": round(sampled["balanced"], 4), "sampled_macro_f1": round(sampled["macro_f1"], 4),
                   "by_gold": {lab: sum(r["gold"] == lab for r in records) for lab in VERDICT_LABELS}}
    return best, calibration


def _key(scores: dict, objective: str) -> tuple[float, float, float]:
    other = "accuracy" if objective == "balanced" else "balanced"
    return scores[objective], scores[other], scores["macro_f1"]


def scores_of(records: Sequence[dict], predicted: Sequence[str | None]) -> dict[str, float]:
    """Accuracy, balanced accuracy (the mean recall of the gold labels present) and macro-F1."""
    if not records:
        return {"accuracy": 0.0, "balanced": 0.0, "macro_f1": 0.0}
    s = classification_scores([r["gold"] for r in records], list(predicted), VERDICT_LABELS)
    return {"accuracy": s["accuracy"], "balanced": balanced_accuracy(s), "macro_f1": s["macro_f1"]}


def balanced_accuracy(scores: dict) -> float:
    """The mean recall of the gold labels present, from `classification_scores`' result."""
    present = [v["recall"] for v in scores["per_label"].values() if v["support"]]
    return sum(present) / len(present)


def fit_bias(records: Sequence[dict], labels: tuple[str, ...] = VERDICT_LABELS,
             objective: str = "balanced") -> dict[str, float]:
    """Biases (yes = 0) that maximise `objective` on `records` (balanced accuracy or accuracy), then the
    other one, then macro-F1, then closeness to no bias."""
    maybes = GRID if "maybe" in labels else [NO_MAYBE]
    if not records:
        return {"yes": 0.0, "no": 0.0, "maybe": 0.0 if "maybe" in labels else NO_MAYBE}
    logp = np.log(np.maximum(np.array([[r["probs"].get(lab, 0.0) for lab in VERDICT_LABELS] for r in records]), 1e-12))
    gold = np.array([VERDICT_LABELS.index(r["gold"]) for r in records])
    combos = np.array(list(itertools.product(GRID, maybes)))  # (b_no, b_maybe)
    bias = np.column_stack([np.zeros(len(combos)), combos])  # yes, no, maybe
    pred = np.argmax(logp[None, :, :] + bias[:, None, :], axis=2)  # combos x records
    correct = pred == gold[None, :]
    acc = correct.mean(axis=1)
    f1s = []
    for k in range(len(VERDICT_LABELS)):
        tp = (correct & (gold[None, :] == k)).sum(axis=1)
        n_pred, n_gold = (pred == k).sum(axis=1), (gold == k).sum()
        f1s.append(np.where(n_pred + n_gold > 0, 2 * tp / np.maximum(n_pred + n_gold, 1), 0.0))
    f1 = np.mean(f1s, axis=0)
    present = [k for k in range(len(VERDICT_LABELS)) if (gold == k).any()]
    balanced = np.mean([(correct & (gold[None, :] == k)).sum(axis=1) / (gold == k).sum() for k in present], axis=0)
    first, second = (balanced, acc) if objective == "balanced" else (acc, balanced)
    size = np.abs(combos[:, 0]) + (np.abs(combos[:, 1]) if "maybe" in labels else 0)
    best = int(np.lexsort((size, -f1, -second, -first))[0])  # the last key sorts first
    return {"yes": 0.0, "no": float(combos[best, 0]), "maybe": float(combos[best, 1])}


def leave_one_out(records: Sequence[dict], labels: tuple[str, ...] = VERDICT_LABELS,
                  objective: str = "balanced") -> list[str]:
    """Each record's verdict under biases fitted on all the others."""
    return [scored_verdict(r["probs"], fit_bias([x for j, x in enumerate(records) if j != i], labels, objective),
                           labels) for i, r in enumerate(records)]


def compare(records: Sequence[dict], loo: bool = True, objective: str = "balanced") -> list[dict]:
    """One row per decision rule: {"rule", "accuracy", "balanced", "macro_f1", "bias"}."""
    rows = [{"rule": "sampled (the model's own verdict)", **scores_of(records, [r["sampled"] for r in records]),
             "bias": None}]
    if records:
        majority = max(VERDICT_LABELS, key=lambda lab: sum(r["gold"] == lab for r in records))
        rows.append({"rule": f"always {majority} (the majority of these rows)",
                     **scores_of(records, [majority] * len(records)), "bias": None})
    for labels, name in ((VERDICT_LABELS, "yes/no/maybe"), (("yes", "no"), "yes/no")):
        raw = [scored_verdict(r["probs"], {}, labels) for r in records]
        rows.append({"rule": f"argmax P, {name}", **scores_of(records, raw), "bias": {}})
        bias = fit_bias(records, labels, objective)
        fitted = [scored_verdict(r["probs"], bias, labels) for r in records]
        rows.append({"rule": f"argmax P + bias fitted ({objective}) on these rows, {name}",
                     **scores_of(records, fitted), "bias": bias})
        if loo:
            rows.append({"rule": f"argmax P + bias ({objective}), leave-one-out, {name}",
                         **scores_of(records, leave_one_out(records, labels, objective)), "bias": None})
    return rows


def lean(records: Sequence[dict]) -> dict[str, float]:
    """Mean log-probability of each label over `records`: how far the model leans (for notes)."""
    return {lab: round(sum(math.log(max(r["probs"].get(lab, 0.0), 1e-12)) for r in records) / max(len(records), 1), 3)
            for lab in VERDICT_LABELS}


# --- the extractive answer in place of a claim-check decline -------------------------------------


def fit_fallback(items: Sequence[dict]) -> dict[str, float]:
    """Per question shape, the minimum best similarity from which answering with the evidence instead of a
    claim-check decline gains the most headline on `items`; a shape where no minimum gains keeps declining.

    Each item: `shape`, `base` (the headline as declined), and for a claim-check decline `swap` (the extractive
    answer's headline) and `sim` (the question's best dense similarity); items without `swap` are ignored.
    Ties go to the lower minimum (more swaps); the value is the middle of the gap between the last question
    left declined and the first swapped, or 0 when every one of the shape's declines is swapped."""
    thresholds = {}
    for shape in sorted({i["shape"] for i in items if i.get("swap") is not None}):
        cands = sorted((i for i in items if i["shape"] == shape and i.get("swap") is not None), key=lambda i: i["sim"])
        best_gain, best_k = 0.0, None
        for k in range(len(cands)):  # swap cands[k:]
            gain = sum(i["swap"] - i["base"] for i in cands[k:])
            if gain > best_gain + 1e-9:
                best_gain, best_k = gain, k
        if best_k is not None:
            thresholds[shape] = 0.0 if best_k == 0 else round((cands[best_k - 1]["sim"] + cands[best_k]["sim"]) / 2, 4)
    return thresholds


def choose_fallback_verdict(drafts: Sequence[tuple[str, str | None]], own: Sequence[tuple[str, str | None]]) -> str:
    """Whether the evidence standing in for a declined yes/no answer keeps the declined draft's verdict: "keep"
    when, on answerable train questions, the drafts' verdicts (`drafts`: (gold, said) pairs) reach the balanced
    accuracy of the verdicts the program gives undeclined (`own`; 0.5, a coin, without any), else "drop".
    Balanced, as for the biases: the rows' mix of yes and no is the writers' choice, and a verdict that only
    follows the model's lean to "yes" must not win on a yes-heavy set (or lose on a no-heavy one)."""
    if not drafts:
        return "drop"
    return "keep" if verdict_balance(drafts) >= (verdict_balance(own) if own else 0.5) else "drop"


def verdict_balance(pairs: Sequence[tuple[str, str | None]]) -> float:
    """The mean, over the gold labels present, of the share of (gold, said) pairs that said it."""
    return scores_of([{"gold": gold} for gold, _ in pairs], [said for _, said in pairs])["balanced"]


def swapped(item: dict, thresholds: dict[str, float]) -> bool:
    return item.get("swap") is not None and item["shape"] in thresholds and item["sim"] >= thresholds[item["shape"]]


def apply_fallback(items: Sequence[dict], thresholds: dict[str, float]) -> list[float]:
    """Each item's headline with `thresholds` applied: the extractive answer's where it would be swapped in."""
    return [i["swap"] if swapped(i, thresholds) else i["base"] for i in items]


# --- the minimum similarity below which the program declines before the model ------------------------------


def early_declined(item: dict, thresholds: dict[str, float]) -> bool:
    """Whether `thresholds` decline `item` before the model: below its shape's minimum, no name of the question
    found in the passages (`exempt`)."""
    return not item["exempt"] and item["shape"] in thresholds and item["sim"] < thresholds[item["shape"]]


def apply_min_score(items: Sequence[dict], thresholds: dict[str, float]) -> list[float]:
    """Each item's headline with `thresholds` applied: a decline's (1 for an unanswerable question, 0 for an
    answerable one) where it is declined before the model, else the headline it got answered."""
    return [float(i["unanswerable"]) if early_declined(i, thresholds) else i["base"] for i in items]


def fit_min_score(items: Sequence[dict], current: float) -> dict[str, float]:
    """Per question shape, the minimum best similarity that gains the most headline on `items`, `current` (the
    setting) where it gains as much as any.

    Each item: `shape`, `sim` (the question's best dense similarity), `exempt` (a name of the question found in
    the passages: never declined early), `unanswerable`, `base` (its headline as the run answered it) and `early`
    (the run itself declined it before the model: its answered headline is unknown, so no minimum at or below its
    similarity is tried). Declining the k lowest of a shape's other items is tried for every k; when `current` is
    not among the best, ties go to the smaller k (fewer questions declined unread), and the value is the middle of
    the gap between the last question declined and the first answered (for k = 0: the gap above the highest early
    decline, or 0 without one)."""
    thresholds = {}
    for shape in sorted({i["shape"] for i in items}):
        rows = [i for i in items if i["shape"] == shape and not i["exempt"]]
        floor = max((i["sim"] for i in rows if i["early"]), default=None)
        cands = sorted((i for i in rows if not i["early"] and (floor is None or i["sim"] > floor)), key=lambda i: i["sim"])
        best_gain, best_k, gain = 0.0, 0, 0.0
        for k, item in enumerate(cands, start=1):  # decline cands[:k]
            gain += float(item["unanswerable"]) - item["base"]
            if gain > best_gain + 1e-9:
                best_gain, best_k = gain, k
        if floor is None or current > floor:
            at_current = sum(float(i["unanswerable"]) - i["base"] for i in cands if i["sim"] < current)
            if at_current >= best_gain - 1e-9:
                thresholds[shape] = current
                continue
        low = cands[best_k - 1]["sim"] if best_k else floor
        high = cands[best_k]["sim"] if best_k < len(cands) else None
        if low is None:
            thresholds[shape] = 0.0 if high is None or high > 0 else round(high - 1e-3, 4)
        else:
            thresholds[shape] = round((low + high) / 2 if high is not None else low + 1e-3, 4)
    return thresholds
