"""Derive data/pubmedqa/ (a corpus and a questions file) from PubMedQA's original PQA-L files.

    python eval/pubmedqa_convert.py                      # reads /work/shared/data/pubmedqa
    python eval/pubmedqa_convert.py --src DIR --out DIR  # DIR holds ori_pqal.json and test_ground_truth.json

The originals come from github.com/pubmedqa/pubmedqa (commit 1cbae8e, MIT licence; Jin et al.,
EMNLP 2019). Two files are written, one JSON object a line, ordered by PubMed id (as a number):

- `corpus.jsonl`: what a user would index (`rag index --corpus data/pubmedqa/corpus.jsonl`):
  `id` = `pmid<PMID>`, a neutral `title` ("PubMed <PMID>": never the question, which is often the
  paper's own title reworded), and `abstract` = the `CONTEXTS` joined by spaces. The conclusion
  (`LONG_ANSWER`) is the answer to the question and is never written here.
- `questions.jsonl`: `id` (the PMID, as the official scorer keys it), `split` (`test`: the official
  500 of test_ground_truth.json; `train`: the other 500, the only ones anything may be tuned on),
  `question`, `final_decision` (yes / no / maybe), `long_answer` (the conclusion, for reading
  reports) and `gold_paper_id` (the corpus id of the question's own abstract).

Deterministic: the same originals always give byte-identical files (tests/test_pubmedqa.py checks
the committed files against this script when the originals are present).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/work/shared/data/pubmedqa")
OUT = ROOT / "data" / "pubmedqa"
LABELS = ("yes", "no", "maybe")


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def convert(ori: dict[str, dict], test: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(corpus rows, question rows) from the parsed ori_pqal.json and test_ground_truth.json."""
    unknown = sorted(set(test) - set(ori))
    if unknown:
        raise ValueError(f"test_ground_truth.json names PMIDs missing from ori_pqal.json: {unknown[:5]}")
    corpus, questions = [], []
    for pmid in sorted(ori, key=int):
        item = ori[pmid]
        decision = item["final_decision"]
        if decision not in LABELS:
            raise ValueError(f"PMID {pmid}: final_decision {decision!r} is not one of {LABELS}")
        if pmid in test and test[pmid] != decision:
            raise ValueError(f"PMID {pmid}: test_ground_truth.json says {test[pmid]!r}, ori_pqal.json {decision!r}")
        corpus.append({"id": f"pmid{pmid}", "title": f"PubMed {pmid}",
                       "abstract": " ".join(_clean(c) for c in item["CONTEXTS"] if _clean(c))})
        questions.append({"id": pmid, "split": "test" if pmid in test else "train", "question": _clean(item["QUESTION"]),
                          "final_decision": decision, "long_answer": _clean(item["LONG_ANSWER"]),
                          "gold_paper_id": f"pmid{pmid}"})
    return corpus, questions


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def derive(src: Path) -> dict[str, str]:
    """File name -> content of every derived file, from the originals in `src`."""
    ori = json.loads((src / "ori_pqal.json").read_text(encoding="utf-8"))
    test = json.loads((src / "test_ground_truth.json").read_text(encoding="utf-8"))
    corpus, questions = convert(ori, test)
    return {"corpus.jsonl": to_jsonl(corpus), "questions.jsonl": to_jsonl(questions)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SOURCE, help=f"original PQA-L files (default {SOURCE})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the derived files go (default {OUT})")
    args = parser.parse_args(argv)
    if not (args.src / "ori_pqal.json").is_file():
        print(f"error: {args.src}/ori_pqal.json not found; pass --src with the PubMedQA data directory", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in derive(args.src).items():
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, args.out / name)  # atomic: a reader never sees half a file
        print(f"{args.out / name}: {text.count(chr(10))} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
