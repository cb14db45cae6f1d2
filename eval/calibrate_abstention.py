"""Choose the abstention decision and its threshold on train: which rule, and where to cut.

Run the train set once with every question answered and P(answerable) recorded:

    RAG_ANSWERABLE_THRESHOLD=0 rag eval --set eval/train.jsonl --program baseline --label train-t0
    .venv/bin/python eval/calibrate_abstention.py eval/reports/<that report>

Then, offline, for each rule and threshold t, a question is declined when its score is below t; a
declined question scores 1 if it is unanswerable and 0 if not, an answered one keeps the headline
it got in the run (an unanswerable one answered scores 0). The rules compared:

- `logprob`: P(answerable) read from the model's logprobs on the answer prompt (the program's judge);
- `similarity`: the best dense cosine of the question to any chunk (retrieval's own signal);
- `evidence`: the best evidence-sentence score (rag.answer.evidence.score_sentences);
- `logprob+similarity`: their mean, each scaled to [0, 1] over the set;
- `claims`: decline an answer (not a list: its lines are quotes) with a name or number found in no
  passage it cites (rag.answer.claims), no threshold; and each score rule combined with it ("... or claims").

It prints each rule's best train headline, abstention recall and false-abstention rate, and the
threshold that reaches it (ties: the threshold nearest the middle of the tied range). Only train is
used; dev is never read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.answer.evidence import score_sentences  # noqa: E402
from rag.answer.shapes import question_shape  # noqa: E402
from rag.evaluation.harness import read_report  # noqa: E402
from rag.evaluation.metrics import claim_scores  # noqa: E402
from rag.pipeline import Pipeline  # noqa: E402
from rag.settings import Settings  # noqa: E402


def outcome(rows: list[dict], scores: list[float | None], t: float, also: list[bool] | None = None) -> dict:
    """Headline, abstention recall and false-abstention rate when declining every score below `t`
    (and every row flagged in `also`)."""
    heads, declined_unans, declined_ans = [], [], []
    for i, (r, s) in enumerate(zip(rows, scores, strict=True)):
        unanswerable = r["type"] == "unanswerable"
        declined = bool(r["abstained"]) or (s is not None and s < t) or bool(also and also[i])
        heads.append(float(declined) if unanswerable else (0.0 if declined else r["metrics"]["headline"]))
        (declined_unans if unanswerable else declined_ans).append(declined)
    return {"headline": statistics.fmean(heads),
            "abstention_recall": statistics.fmean(declined_unans) if declined_unans else None,
            "false_abstention": statistics.fmean(declined_ans) if declined_ans else None}


def best_threshold(rows: list[dict], scores: list[float | None], also: list[bool] | None = None) -> tuple[float, dict]:
    candidates = sorted({round(s, 4) for s in scores if s is not None} | {0.0})
    grid = [0.0] + [(a + b) / 2 for a, b in zip(candidates, candidates[1:], strict=False)] + [candidates[-1] + 1e-3]
    results = [(t, outcome(rows, scores, t, also)) for t in grid]
    top = max(r["headline"] for _, r in results)
    tied = [t for t, r in results if abs(r["headline"] - top) < 1e-9]
    t = tied[len(tied) // 2]
    return t, outcome(rows, scores, t, also)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report", help="a `rag eval` report of the train set run with RAG_ANSWERABLE_THRESHOLD=0")
    args = ap.parse_args()
    summary, rows = read_report(args.report)
    if "train" not in Path(summary["set"]).name:
        raise SystemExit(f"{summary['set']} is not the train set: calibrate on train only")
    pipe = Pipeline.open(Settings.load(), need_lm=False)
    sims, evid = [], []
    for r in rows:
        res = pipe.retriever.search(r["question"], pipe.settings.k, pipe.settings.retrieval, pipe.settings.per_paper)
        sims.append(res.best_similarity)
        scored = score_sentences(pipe.index, res, r["question"])
        evid.append(max((s.score for s in scored), default=0.0))
    probs = [(r["prediction"].get("provenance") or {}).get("p_answerable") for r in rows]

    def scaled(values: list[float | None]) -> list[float | None]:
        known = [v for v in values if v is not None]
        lo, hi = min(known), max(known)
        return [None if v is None else (v - lo) / (hi - lo or 1) for v in values]

    combined = [None if p is None else (p + s) / 2 for p, s in zip(scaled(probs), scaled(sims), strict=True)]
    unsupported = [not r["abstained"] and question_shape(r["question"]) != "list" and bool(
        claim_scores({"question": r["question"]}, r["prediction"], r["answer"] or "", False, True)["unsupported_claim"])
        for r in rows]
    n_unans = sum(r["type"] == "unanswerable" for r in rows)
    print(f"{len(rows)} train questions ({n_unans} unanswerable) from {args.report}")
    print(f"as run (threshold 0): {json.dumps(outcome(rows, probs, 0.0))}")
    res = outcome(rows, probs, 0.0, unsupported)
    print(f"{'claims':>30}: no threshold        headline {res['headline']:.3f}  abstention recall "
          f"{res['abstention_recall']:.3f}  false abstention {res['false_abstention']:.3f}")
    for name, scores in (("logprob", probs), ("similarity", sims), ("evidence", evid), ("logprob+similarity", combined)):
        for also, suffix in ((None, ""), (unsupported, " or claims")):
            t, res = best_threshold(rows, scores, also)
            print(f"{name + suffix:>30}: best threshold {t:.4f}  headline {res['headline']:.3f}  abstention recall "
                  f"{res['abstention_recall']:.3f}  false abstention {res['false_abstention']:.3f}")
    print("\nP(answerable) by type (median): " + ", ".join(
        f"{kind} {statistics.median([p for p, r in zip(probs, rows, strict=True) if r['type'] == kind and p is not None]):.3f}"
        for kind in sorted({r["type"] for r in rows})))


if __name__ == "__main__":
    main()
