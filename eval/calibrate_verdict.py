"""Score the yes/no verdict's decision rules on train eval reports (no model call).

    rag eval --set eval/results/train-yesno40-verdicts/set.jsonl --program baseline --label train-yesno40
    .venv/bin/python eval/calibrate_verdict.py eval/results/train-yesno40-verdicts [more report dirs]

    # the judge step's readings too: a baseline program that also runs the judge (verdict still sampled)
    .venv/bin/python eval/calibrate_verdict.py --write-probe /tmp/probe.json
    rag eval --set eval/results/train-yesno-all/set.jsonl --program /tmp/probe.json --label train-yesno-all

Reads each report's results (the answers' provenance.verdict_probs and sampled_verdict), and prints the
accuracy and macro-F1 of the sampled verdict, the raw argmax of the label probabilities, and the argmax
with per-label biases fitted on these rows (in-sample, and leave-one-out: the honest estimate), with and
without maybe (rag/calibrate.py). Run it on train reports only; dev is for measuring what ships.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag import calibrate  # noqa: E402
from rag.files import jsonl_objects  # noqa: E402


def write_probe(path: str) -> None:
    """The baseline program with `verdict_source` "both" and no bias: its answers keep the sampled verdict
    and record both the reply's and the judge step's label probabilities."""
    from rag.answer.program import CitedRAG
    from rag.answer.program_files import save_program_file

    program = CitedRAG()
    program.set_decisions({"verdict_source": "both", "verdict_bias": None})
    print(save_program_file(program, path, {"optimizer": "none (probe: records the judge's readings)"}))


def main(paths: list[str]) -> None:
    results = [row for p in paths for _, row in jsonl_objects((Path(p) / "results.jsonl").read_text(encoding="utf-8"))]
    records = calibrate.verdict_records(results)
    print(f"{len(records)} answered yes/no questions with label probabilities (of {len(results)} results)")
    print(f"mean log P by label: {calibrate.lean(records)}")
    for source in ("reply", "judge", "both"):
        rows = calibrate.by_source(records, source)
        if not rows:
            continue
        print(f"\n### verdict source: {source} ({len(rows)} rows)\n")
        print("| rule | accuracy | balanced accuracy | macro-F1 | bias (log-space) |\n|---|---|---|---|---|")
        for r in calibrate.compare(rows):
            print(f"| {r['rule']} | {r['accuracy']:.3f} | {r['balanced']:.3f} | {r['macro_f1']:.3f} | "
                  f"{r['bias'] if r['bias'] is not None else ''} |")
    decisions, table = calibrate.choose_decisions(records)
    print(f"\nchosen (rag optimize --optimizer calibrate --fit-on ...): {decisions}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-probe"]:
        write_probe(sys.argv[2])
    else:
        main(sys.argv[1:] or [str(Path(__file__).resolve().parent / "results" / "train-yesno40-verdicts")])
