"""How often a "which method / what approach" answer restates the question, before and after the fix.

    rag eval --set eval/results/train-names25/set.jsonl --program baseline --label train-names25
    .venv/bin/python eval/restate_rate.py eval/results/train-names25 [more report dirs]

Reads each report's answered rows whose question asks for a name (rag.answer.program._ASKS_NAME). The
program detects an answer that names nothing beyond the question's own words (`restates`) and replaces
it by the best evidence sentence that does name something, quoted and cited (`provenance.restated`).
So, per report:

- before: answers the model wrote that restate the question (replaced ones + any still restating);
- after: answers as shipped that still restate it (no evidence sentence named anything);
- of the replaced ones, how many now hold a key fact of the reference (the name asked for).

Left out: answers to other shapes (the rule applies to specific questions only).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag.answer.program import _ASKS_NAME, restates  # noqa: E402
from rag.evaluation.harness import read_report  # noqa: E402


def main(paths: list[str]) -> None:
    asked = answered = replaced = still = replaced_with_fact = 0
    for path in paths:
        _, results = read_report(path)
        for r in results:
            q, pred = r["question"], r.get("prediction") or {}
            if not _ASKS_NAME.search(q) or r.get("type") == "unanswerable":
                continue
            asked += 1
            if pred.get("abstained") or not pred.get("answer"):
                continue
            answered += 1
            was_replaced = bool((pred.get("provenance") or {}).get("restated"))
            replaced += was_replaced
            still += restates(q, pred["answer"])
            facts = r.get("facts") or []
            replaced_with_fact += was_replaced and any(f.lower() in pred["answer"].lower() for f in facts)
    before = replaced + still
    print(f"{asked} answerable name questions, {answered} answered")
    if answered:
        print(f"restating the question: before the fix {before}/{answered} ({before / answered:.0%}), "
              f"after {still}/{answered} ({still / answered:.0%})")
        print(f"replaced by a quoted evidence sentence: {replaced}, of which {replaced_with_fact} hold a key fact")


if __name__ == "__main__":
    main(sys.argv[1:])
