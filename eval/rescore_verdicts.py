"""A program's verdict decisions re-applied to an eval report's answers, with no model call.

    .venv/bin/python eval/rescore_verdicts.py REPORT PROGRAM [--rerun REPORT2 ...] [--label NAME]

The verdict decisions (`decisions` in a program file: the source, the per-label biases, the labels) are
a pure function of the label probabilities every answer's provenance records (`verdict_probs`, and
`judge_probs` when the run asked the judge), so a report of the baseline program answers the question
"what would this program's verdicts have been" exactly: the replies, the evidence and the declines are
the same, only the verdict word changes (the headline of a seed set does not score it). An answer the
program declines has no verdict; for PubMedQA it counts as wrong, as in `rag eval`. With the decision
`unsupported_verdict: keep`, a yes/no answer declined by the claim checks (unsupported_claim,
off_question) keeps its verdict instead: that needs the label probabilities of declined answers, which
reports record since they were added (`--rerun`: a report of some of the same questions, e.g.
`rag eval --ids ...` of the declined ones, run with the same program: their recorded verdict
probabilities and sampled verdicts complete the first report's declined rows; "as run" stays the first
report's).

Prints, for the report's answers as run and re-decided: accuracy, balanced accuracy and macro-F1 over
every question (PubMedQA) or over the yes/no questions with a Yes/No reference (seed sets), per-label
recall and the confusion matrix, and the paired bootstrap of the per-question difference. Use it on dev
and test reports to measure decisions fitted on train (`rag optimize --optimizer calibrate --fit-on`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag.answer.program import VERDICT_LABELS, decision_probs, scored_verdict  # noqa: E402
from rag.answer.program_files import read_program_file  # noqa: E402
from rag.answer.shapes import parse_verdict  # noqa: E402
from rag.calibrate import balanced_accuracy  # noqa: E402
from rag.evaluation.harness import read_report  # noqa: E402
from rag.evaluation.metrics import classification_scores, paired_bootstrap  # noqa: E402


def rows_of(summary: dict, results: list[dict]) -> list[dict]:
    """(id, gold, as run, probs, judge) for every question a verdict is scored on."""
    pubmed = summary.get("benchmark") == "pubmedqa"
    out = []
    for r in results:
        pred = r.get("prediction") or {}
        prov = pred.get("provenance") or {}
        if pubmed:
            gold, said = r["gold"], r.get("predicted")
        else:
            if r.get("metrics", {}).get("verdict_correct") is None:
                continue
            gold = parse_verdict(r.get("reference"))
            said = None if pred.get("abstained") else (pred.get("verdict") or parse_verdict(pred.get("answer")))
        out.append({"id": r["id"], "gold": gold, "said": said, "probs": prov.get("verdict_probs"),
                    "judge": prov.get("judge_probs"), "sampled": prov.get("sampled_verdict"),
                    "abstained": bool(pred.get("abstained")), "reason": prov.get("abstain_reason")})
    return out


CHECKED = ("unsupported_claim", "off_question")  # the declines `unsupported_verdict: keep` undoes


def redecide(row: dict, decisions: dict) -> str | None:
    """The verdict the program's decisions give this answer; the one as run when they set no bias or the
    answer recorded no probabilities (an abstention stays without one)."""
    source = decisions.get("verdict_source", "reply")
    bias = decisions.get("verdict_bias")
    if row["abstained"]:
        if decisions.get("unsupported_verdict") != "keep" or row["reason"] not in CHECKED:
            return None
        if not (row["probs"] or row["sampled"]):
            raise SystemExit(f"question {row['id']} was declined by the claim checks before reports recorded a "
                             f"declined answer's verdict; re-run it (rag eval --ids) and pass that report as --rerun")
        if bias is None or not row["probs"]:
            return row["sampled"]
    elif bias is None or not row["probs"]:
        return row["said"]
    if source != "reply" and row["judge"] is None:
        raise SystemExit(f"question {row['id']} has no judge reading, and the decisions read the verdict from "
                         f"{source}: score a report run with a probe program (eval/calibrate_verdict.py --write-probe)")
    probs = decision_probs(source, row["probs"], row["judge"])
    return scored_verdict(probs, bias, tuple(decisions.get("verdict_labels") or VERDICT_LABELS))


def table(name: str, gold: list[str], pred: list[str | None]) -> str:
    s = classification_scores(gold, pred, VERDICT_LABELS)
    present = [lab for lab in VERDICT_LABELS if s["per_label"][lab]["support"]]
    balanced = balanced_accuracy(s)
    recall = ", ".join(f"{lab} {s['per_label'][lab]['recall']:.2f}" for lab in present)
    confusion = "; ".join(f"{g}: " + " ".join(f"{p} {n}" for p, n in row.items() if n)
                          for g, row in s["confusion"].items() if s["per_label"][g]["support"])
    return (f"| {name} | {s['accuracy']:.3f} | {balanced:.3f} | {s['macro_f1']:.3f} | {recall} | {confusion} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("program")
    ap.add_argument("--rerun", nargs="+", default=[],
                    help="reports of REPORT's declined questions run again: their verdicts' probabilities")
    ap.add_argument("--label", default=None)
    args = ap.parse_args()
    summary, results = read_report(args.report)
    decisions = read_program_file(args.program).get("decisions") or {}
    rows = rows_of(summary, results)
    for path in args.rerun:
        again = {r["id"]: r for r in rows_of(*read_report(path))}
        unknown = sorted(set(again) - {r["id"] for r in rows})
        if unknown:
            sys.exit(f"{path}: questions {', '.join(unknown[:3])} are not in {args.report}")
        for r in rows:  # what a declined answer's rerun recorded of its verdict; "as run" stays the report's
            if r["id"] in again and r["abstained"] and r["reason"] in CHECKED:
                r.update({k: again[r["id"]][k] for k in ("probs", "judge", "sampled")})
    if not rows:
        sys.exit(f"{args.report}: no question with a scored verdict")
    gold = [r["gold"] for r in rows]
    before = [r["said"] for r in rows]
    after = [redecide(r, decisions) for r in rows]
    name = args.label or Path(args.program).stem
    print(f"{args.report}{' + ' + ', '.join(args.rerun) if args.rerun else ''}: {len(rows)} questions "
          f"({sum(r['abstained'] for r in rows)} declined as run), "
          f"decisions of {args.program}: {json.dumps(decisions)}\n")
    print("| verdicts | accuracy | balanced accuracy | macro-F1 | recall by label | confusion (gold: predicted n) |")
    print("|---|---|---|---|---|---|")
    print(table("as run", gold, before))
    print(table(name, gold, after))
    diff = paired_bootstrap([float(b == g) for b, g in zip(before, gold, strict=True)],
                            [float(a == g) for a, g in zip(after, gold, strict=True)])
    print(f"\npaired difference in accuracy: {diff['mean_diff']:+.3f} (95% CI {diff['ci_low']:+.3f} to "
          f"{diff['ci_high']:+.3f}, p={diff['p_value']:.2f}, n={diff['n']}); "
          f"{sum(a != b for a, b in zip(before, after, strict=True))} verdicts changed")


if __name__ == "__main__":
    main()
