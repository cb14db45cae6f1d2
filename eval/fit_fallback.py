"""The extractive fallback for answers the claim checks decline: fitted on a train report, measured on another.

    .venv/bin/python eval/fit_fallback.py TRAIN_REPORT TRAIN_SET [--measure REPORT SET ...] [--write PROGRAM]

When the claim checks decline the model's answer (`unsupported_claim`, `off_question`), the best evidence
sentences quoted and cited (the extractive answer, rag/answer/extractive.py) may stand in its place, if the
question is close enough to the corpus: `decisions.declined_fallback` in a program file, a minimum best
dense similarity per question shape (no entry: the decline stands). On a labelled question the effect of
that swap is known without running the model: the report holds the declined answer's score, and the
extractive answer is computed (no LM) and scored by the same metrics. Per shape, the threshold that gains
the most headline on TRAIN_REPORT's declines is chosen (ties: the middle of the gap between the last
excluded and the first included similarity; a shape whose best is to fall back everywhere gets 0); a shape
where no threshold gains keeps declining. `--measure` applies those thresholds to other reports (dev) and
prints the paired bootstrap of the headline; `--write` saves a program file with the decisions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag.answer.program import OFF_QUESTION, UNSUPPORTED_CLAIM  # noqa: E402
from rag.evaluation.harness import read_report  # noqa: E402
from rag.evaluation.metrics import paired_bootstrap  # noqa: E402
from rag.evaluation.seed import SeedSet, load_set  # noqa: E402

DECLINES = (UNSUPPORTED_CLAIM, OFF_QUESTION)


def swaps(pipe, report: str, set_path: str) -> list[dict]:
    """Every question of `report`: its headline as run and, for a claim-check decline, the extractive answer's
    headline and the question's best dense similarity."""
    rows = {r["id"]: r for r in load_set(set_path)}
    kind = SeedSet()
    out = []
    for r in read_report(report)[1]:
        reason = ((r.get("prediction") or {}).get("provenance") or {}).get("abstain_reason")
        item = {"id": r["id"], "shape": r.get("shape"), "base": r["metrics"]["headline"], "swap": None, "sim": None,
                "unanswerable": r.get("type") == "unanswerable"}
        if reason in DECLINES:
            question = rows[r["id"]]["question"]
            found = pipe.search(question)
            pred = pipe.ask(question)  # an extractive pipeline: the answer the fallback would give
            item.update(swap=kind.score(pipe, rows[r["id"]], pred, None)["metrics"]["headline"],
                        sim=round(float(found.best_similarity), 4))
        out.append(item)
    return out


def fit(items: list[dict]) -> dict[str, float]:
    """Per shape, the minimum similarity above which falling back gains the most headline (see the module doc)."""
    thresholds = {}
    for shape in sorted({i["shape"] for i in items if i["swap"] is not None}):
        cands = sorted((i for i in items if i["shape"] == shape and i["swap"] is not None), key=lambda i: i["sim"])
        best_gain, best_k = 0.0, None
        for k in range(len(cands)):  # fall back for cands[k:]
            gain = sum(i["swap"] - i["base"] for i in cands[k:])
            if gain > best_gain + 1e-9:
                best_gain, best_k = gain, k
        if best_k is not None:
            thresholds[shape] = 0.0 if best_k == 0 else round((cands[best_k - 1]["sim"] + cands[best_k]["sim"]) / 2, 4)
    return thresholds


def apply(items: list[dict], thresholds: dict[str, float]) -> list[float]:
    return [i["swap"] if i["swap"] is not None and i["shape"] in thresholds and i["sim"] >= thresholds[i["shape"]]
            else i["base"] for i in items]


def report_line(name: str, items: list[dict], thresholds: dict[str, float]) -> str:
    base, new = [i["base"] for i in items], apply(items, thresholds)
    d = paired_bootstrap(base, new)
    swapped = [i for i in items if i["swap"] is not None and i["shape"] in thresholds and i["sim"] >= thresholds[i["shape"]]]
    return (f"{name}: {len(items)} questions, {sum(i['swap'] is not None for i in items)} claim-check declines, "
            f"{len(swapped)} answered from the evidence instead ({sum(i['unanswerable'] for i in swapped)} of them "
            f"unanswerable); headline {sum(base) / len(base):.3f} -> {sum(new) / len(new):.3f} ({d['mean_diff']:+.3f}, "
            f"95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}, p={d['p_value']:.3f})")


def main() -> None:
    from rag.pipeline import Pipeline
    from rag.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_report")
    ap.add_argument("train_set")
    ap.add_argument("--measure", nargs=2, action="append", default=[], metavar=("REPORT", "SET"))
    ap.add_argument("--write", help="save a program file (the baseline's predictors) with these decisions")
    args = ap.parse_args()
    pipe = Pipeline.open(Settings.load().replace(answer="extractive"))
    train = swaps(pipe, args.train_report, args.train_set)
    thresholds = fit(train)
    print(f"fitted on {args.train_report}: declined_fallback {json.dumps(thresholds)}")
    for i in sorted((i for i in train if i["swap"] is not None), key=lambda i: (i["shape"], i["sim"])):
        print(f"  {i['shape']:>8} sim {i['sim']:.3f} {'unanswerable' if i['unanswerable'] else 'answerable  '} "
              f"declined {i['base']:.2f} -> extractive {i['swap']:.2f}")
    print(report_line(f"train ({args.train_report})", train, thresholds))
    for report, set_path in args.measure:
        print(report_line(report, swaps(pipe, report, set_path), thresholds))
    if args.write:
        from rag.answer.program import CitedRAG
        from rag.answer.program_files import save_program_file

        program = CitedRAG()
        program.set_decisions({"declined_fallback": thresholds})
        print(save_program_file(program, args.write, {
            "optimizer": "fallback", "train": {"report": args.train_report, "n": len(train)},
            "declined_fallback": thresholds}))


if __name__ == "__main__":
    main()
