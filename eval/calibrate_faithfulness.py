"""Calibrate the faithfulness threshold (rag.evaluation.metrics.FAITHFUL_MIN) on the labelled set.

    .venv/bin/python eval/calibrate_faithfulness.py [--set eval/train.jsonl]

For every answerable question, each sentence of its reference answer (written from
its gold abstract, so it is supported) is scored against:
- positive: the passage retrieval gives the model for its gold paper (or, if not
  retrieved, the gold abstract);
- negative: the passage of the best-ranked non-gold paper for the same question
  (a hard negative: on topic, but not the source).
The score is rag.evaluation.metrics.support_score (0.5 cosine + 0.5 content-word overlap).
The script sweeps thresholds and prints the true- and false-positive rates and the
balanced accuracy; the threshold with the best balanced accuracy is the one to use.
No LM is involved. Calibrate on train only: dev stays untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.evaluation.metrics import answer_sentences, support_score  # noqa: E402
from rag.evaluation.seed import load_set  # noqa: E402
from rag.pipeline import Pipeline  # noqa: E402
from rag.settings import ROOT, Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default=str(ROOT / "eval" / "train.jsonl"))
    args = ap.parse_args()
    pipe = Pipeline.open(Settings.load(), need_lm=False)
    rows = [r for r in load_set(args.set, set(pipe.index.papers)) if r["type"] != "unanswerable" and r.get("answer")]
    pos, neg = [], []
    for r in rows:
        hits = pipe.retriever.search(r["question"], 10, "hybrid", pipe.settings.per_paper).hits
        gold = {g: next((h.text for h in hits if h.paper.id == g), pipe.index.papers[g].abstract)
                for g in r["gold_paper_ids"]}
        other = next((h.text for h in hits if h.paper.id not in gold), None)
        for sentence, _ in answer_sentences(r["answer"]):
            passages = [*gold.values()] + ([other] if other else [])
            vecs = pipe.embedder.encode([sentence, *passages])
            cos = [float(np.dot(vecs[0], v)) for v in vecs[1:]]
            pos.append(max(support_score(sentence, p, c) for p, c in zip(gold.values(), cos, strict=False)))
            if other:
                neg.append(support_score(sentence, other, cos[-1]))
    pos_a, neg_a = np.array(pos), np.array(neg)
    print(f"{len(rows)} questions, {len(pos)} supported sentences, {len(neg)} hard negatives")
    print(f"score: supported mean {pos_a.mean():.3f} (p10 {np.quantile(pos_a, .1):.3f}), "
          f"unsupported mean {neg_a.mean():.3f} (p90 {np.quantile(neg_a, .9):.3f})")
    print("threshold  TPR    FPR    balanced-acc")
    best = (0.0, 0.0)
    for t in np.arange(0.20, 0.81, 0.05):
        tpr, fpr = (pos_a >= t).mean(), (neg_a >= t).mean()
        bal = (tpr + 1 - fpr) / 2
        best = max(best, (bal, round(float(t), 2)))
        print(f"  {t:.2f}     {tpr:.3f}  {fpr:.3f}  {bal:.3f}")
    print(f"best threshold {best[1]:.2f} (balanced accuracy {best[0]:.3f})")


if __name__ == "__main__":
    main()
