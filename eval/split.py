"""Split eval/questions.jsonl once into train.jsonl and dev.jsonl, stratified by type.

    python eval/split.py          # rewrites eval/train.jsonl and eval/dev.jsonl

Within each type (and, for the questions that carry one, each shape) the
questions are ordered by id, shuffled with a fixed seed, and dealt alternately
to dev and train, so each group is split in half (dev gets the odd one).
Deterministic: the same questions always give the same split. Run it
only when questions are added, and never move a question between the halves
after looking at dev results.

Third-round questions (rows with "round": 3) are not dealt at all: every one of them goes to
train, appended after the rows dealt to train, ordered by id. They are left out before the
dealing, so every other row lands exactly where it did before they were added, and dev stays
as it was (the third round was written to grow train only; see eval/README.md).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag.evaluation.metrics import TYPES  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 20261123


# Rounds of questions that go to train whole instead of being split.
TRAIN_ONLY_ROUNDS = frozenset({3})


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Stratified by type, and by shape for the rows that carry one (the second round of questions,
    added after the first split: grouping them apart leaves every first-round question where it was).
    Rows of a train-only round are set aside first and appended to train, ordered by id."""
    train_only = sorted((r for r in rows if r.get("round") in TRAIN_ONLY_ROUNDS), key=lambda r: r["id"])
    rows = [r for r in rows if r.get("round") not in TRAIN_ONLY_ROUNDS]
    train, dev = [], []
    shapes = sorted({r.get("shape") for r in rows if r.get("shape")})
    for kind in TYPES:
        for shape in [None, *shapes]:
            group = sorted((r for r in rows if r["type"] == kind and r.get("shape") == shape), key=lambda r: r["id"])
            random.Random(f"{SEED}-{kind}" if shape is None else f"{SEED}-{kind}-{shape}").shuffle(group)
            for i, row in enumerate(group):
                (dev if i % 2 == 0 else train).append(row)
    return train + train_only, dev


def main() -> None:
    rows = [json.loads(line) for line in (HERE / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    train, dev = split(rows)
    for name, part in (("train", train), ("dev", dev)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        (HERE / f"{name}.jsonl").write_text(text, encoding="utf-8")
        counts = {k: sum(r["type"] == k for r in part) for k in TYPES}
        print(f"{name}: {len(part)} questions {counts}")


if __name__ == "__main__":
    main()
