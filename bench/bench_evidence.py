"""How much of the answer the chosen evidence keeps, and at what length, against today's passages.

For each answerable question of a labelled set (train by default: this is where the evidence
parameters are chosen), retrieval runs once; then the model's reading is built two ways:
"passages" (the k best papers' best two chunks each, what the program read before evidence
selection) and "evidence" (rag.answer.evidence.select_evidence under a token budget) for a grid of
parameters. Reported: the share of the question's facts found in what the model would read (by
the metric's own matcher), the share of gold papers present, and tokens (chars / 4). No LM call.

    .venv/bin/python bench/bench_evidence.py [--set eval/train.jsonl] [--grid] [--budgets 150,200,250,300]

`--budgets` measures today's selection at each budget, by question shape: the facts a smaller budget
loses, against the tokens (and so the seconds of prompt reading) it saves.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from rag.answer.evidence import evidence_tokens, select_evidence
from rag.answer.shapes import question_shape
from rag.evaluation.metrics import fact_found, percentile
from rag.evaluation.seed import load_set
from rag.pipeline import Pipeline
from rag.settings import ROOT, Settings


def reading(hits) -> str:
    return "\n".join(f"{h.paper.title}: {h.text}" for h in hits)


def measure(rows, make_hits) -> dict:
    facts, golds, tokens = [], [], []
    by_shape: dict[str, list[float]] = {}
    for r in rows:
        hits = make_hits(r)
        text = reading(hits)
        if r["facts"]:
            facts.append(sum(fact_found(f, text) for f in r["facts"]) / len(r["facts"]))
            by_shape.setdefault(r.get("shape") or question_shape(r["question"]), []).append(facts[-1])
        golds.append(len(set(r["gold_paper_ids"]) & {h.paper.id for h in hits}) / len(r["gold_paper_ids"]))
        tokens.append(evidence_tokens(hits))
    return {"facts": statistics.fmean(facts), "gold": statistics.fmean(golds),
            "tokens_p50": percentile(tokens, 50), "tokens_p95": percentile(tokens, 95),
            "facts_by_shape": {k: (round(statistics.fmean(v), 3), len(v)) for k, v in sorted(by_shape.items())}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default=str(ROOT / "eval" / "train.jsonl"))
    ap.add_argument("--grid", action="store_true", help="search the parameter grid (on train)")
    ap.add_argument("--budgets", help="comma-separated evidence budgets to measure with today's weights")
    args = ap.parse_args()
    budgets = args.budgets.split(",") if args.budgets else []
    if not all(b.strip().isdigit() and int(b) > 0 for b in budgets):
        ap.error(f"--budgets takes positive whole numbers separated by commas, got {args.budgets!r}")
    pipe = Pipeline.open(Settings.load(), need_lm=False)
    rows = [r for r in load_set(args.set, set(pipe.index.papers)) if r["type"] != "unanswerable"]
    searched: dict[tuple, object] = {}

    def search(q: str, k: int, per_paper: int = 2):
        if (q, k, per_paper) not in searched:
            searched[(q, k, per_paper)] = pipe.retriever.search(q, k, "hybrid", per_paper)
        return searched[(q, k, per_paper)]

    print(f"{len(rows)} answerable questions from {args.set}")
    base = measure(rows, lambda r: search(r["question"], 4).hits)
    print(f"passages k=4 (before)                 facts {base['facts']:.3f}  gold {base['gold']:.3f}  "
          f"tokens p50 {base['tokens_p50']:.0f} p95 {base['tokens_p95']:.0f}")
    if args.grid:
        grid = itertools.product((6,), (250, 300), (0.0, 0.3), (0.0, 0.05), (0.0, 0.5, 1.0, 2.0))
    elif args.budgets:
        grid = [(6, int(b), None, None, None) for b in budgets]
    else:
        grid = [(6, 250, None, None, None)]
    results = []
    for k, budget, lw, rw, cw in grid:
        kw = {} if lw is None else {"lexical_weight": lw, "rank_weight": rw, "context_weight": cw}
        m = measure(rows, lambda r, k=k, budget=budget, kw=kw: select_evidence(
            pipe.index, search(r["question"], k), r["question"], budget=budget,
            shape=r.get("shape") or question_shape(r["question"]), **kw))
        results.append(((k, budget, lw, rw, cw), m))
        print(f"evidence k={k} budget={budget} lex={lw} rank={rw} context={cw}   facts {m['facts']:.3f}  gold {m['gold']:.3f}  "
              f"tokens p50 {m['tokens_p50']:.0f} p95 {m['tokens_p95']:.0f}  "
              f"(tokens {m['tokens_p50'] / base['tokens_p50']:.2f}x of before)  by shape {m['facts_by_shape']}")
    if args.grid:
        best = max(results, key=lambda x: (round(x[1]["facts"], 3), x[1]["gold"], -x[1]["tokens_p50"]))
        print("best on this set:", best)


if __name__ == "__main__":
    main()
