"""The extractive fallback for answers the claim checks decline: the fit on a train report, shown and measured.

    .venv/bin/python eval/fit_fallback.py TRAIN_REPORT [--measure REPORT ...]

When the claim checks decline the model's answer (`unsupported_claim`, `off_question`), the best evidence
sentences quoted and cited (the extractive answer, rag/answer/extractive.py) may stand in its place, if the
question is close enough to the corpus: `decisions.declined_fallback` in a program file, a minimum best
dense similarity per question shape (no entry: the decline stands). On a labelled question the effect of
that swap is known without running the model: the report holds the declined answer's score, and the
extractive answer is computed (no LM) and scored by the same metrics (rag.optimize.fallback_items; the
fit is rag.calibrate.fit_fallback).

The program file is written by `rag optimize --optimizer fallback --fit-on TRAIN_REPORT`; this script
prints what that fit sees (each decline, its similarity, its two headlines) and `--measure` applies the
thresholds to other reports (dev), offline, with the paired bootstrap of the headline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag.calibrate import apply_fallback, fit_fallback, swapped  # noqa: E402
from rag.evaluation.harness import read_report  # noqa: E402
from rag.evaluation.metrics import paired_bootstrap  # noqa: E402
from rag.optimize import Swap, fallback_items  # noqa: E402


def swaps(pipe, report: str) -> list[dict]:
    """Every question of `report`: its headline as run and, for a claim-check decline, the extractive answer's
    headline and the question's best dense similarity (rag.optimize.fallback_items)."""
    return fallback_items(read_report(report)[1], Swap(pipe))


def report_line(name: str, items: list[dict], thresholds: dict[str, float]) -> str:
    base, new = [i["base"] for i in items], apply_fallback(items, thresholds)
    d = paired_bootstrap(base, new)
    done = [i for i in items if swapped(i, thresholds)]
    return (f"{name}: {len(items)} questions, {sum(i['swap'] is not None for i in items)} claim-check declines, "
            f"{len(done)} answered from the evidence instead ({sum(i['unanswerable'] for i in done)} of them "
            f"unanswerable); headline {sum(base) / len(base):.3f} -> {sum(new) / len(new):.3f} ({d['mean_diff']:+.3f}, "
            f"95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}, p={d['p_value']:.3f})")


def main() -> None:
    from rag.pipeline import Pipeline
    from rag.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_report")
    ap.add_argument("--measure", action="append", default=[], metavar="REPORT")
    args = ap.parse_args()
    pipe = Pipeline.open(Settings.load().replace(answer="extractive"))
    train = swaps(pipe, args.train_report)
    thresholds = fit_fallback(train)
    print(f"fitted on {args.train_report}: declined_fallback {json.dumps(thresholds)}")
    for i in sorted((i for i in train if i["swap"] is not None), key=lambda i: (i["shape"], i["sim"])):
        print(f"  {i['shape']:>8} sim {i['sim']:.3f} {'unanswerable' if i['unanswerable'] else 'answerable  '} "
              f"declined {i['base']:.2f} -> extractive {i['swap']:.2f}")
    print(report_line(f"train ({args.train_report})", train, thresholds))
    for report in args.measure:
        print(report_line(report, swaps(pipe, report), thresholds))


if __name__ == "__main__":
    main()
