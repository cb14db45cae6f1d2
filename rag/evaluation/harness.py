"""The eval harness: run a labelled set through the pipeline, score it, write a report.

`run_eval` answers every question of a set (see eval/README.md for the format)
with the same `Pipeline.ask` the CLI uses, scores each answer with
`rag.evaluation.metrics`, adds retrieval metrics for dense, BM25 and hybrid search, and
writes `eval/reports/<timestamp>-<label>/`:

- results.jsonl   per question: the label, the prediction, every metric
- summary.json    means overall and per question type, abstention, retrieval,
                  headline with a bootstrap CI, latency, tokens, provenance
- report.md       the same as tables, with the worst questions listed
- metrics.png     metric bars per question type

The report directory is written under a temporary name and renamed when
complete, so a killed run never leaves a report that looks finished. LM calls
go through the disk cache (`make_lm(disk_cache=True)`): a re-run costs nothing.

`compare_reports(a, b)` pairs two reports question by question and bootstraps
the headline difference (compare.md, compare.json, compare.png).

What is specific to one kind of labelled set (how an answer is scored, summed up,
tabled and plotted) is an `EvalKind`: `SeedSet` here (the labelled set of eval/,
the headline score), `rag.evaluation.pubmedqa.PubMedQA` for the external benchmark (accuracy
and macro-F1 over yes/no/maybe). The loop, timing, retrieval tables, provenance,
atomic writing and the paired comparison are shared: every kind puts its
per-question paired score in `metrics["headline"]`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.errors import EvalError, RagError
from rag.evaluation.metrics import retrieval_scores
from rag.evaluation.seed import SeedSet
from rag.files import JSONLineError, jsonl_objects, sha256_file
from rag.pipeline import Answer
from rag.settings import RETRIEVAL_MODES


def retrieval_table(search: Callable[[str, int, str], list[str]], rows: list[dict], k: int = 10) -> dict:
    """Mean recall@1/5/10, MRR@10, nDCG@10 per retrieval mode over the answerable rows.

    `search(question, k, mode)` returns ranked paper ids.
    """
    table: dict[str, dict] = {}
    answerable = [r for r in rows if r["gold_paper_ids"]]
    for mode in RETRIEVAL_MODES:
        scores = [retrieval_scores(search(r["question"], k, mode), r["gold_paper_ids"]) for r in answerable]
        table[mode] = {m: round(statistics.fmean(s[m] for s in scores), 4) for m in scores[0]} if scores else {}
        table[mode]["n"] = len(scores)
    return table


# --- running a set --------------------------------------------------------------------

def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "run"


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="q", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                desc="evaluating")


def run_eval(pipe: Any, rows: list[dict], *, label: str, set_path: str | Path, out_root: str | Path,
             progress: bool = False, judge: Any = None, stamp: str | None = None, kind: Any = None) -> Path:
    """Answer and score every row with `pipe`; write the report directory and return its path.

    `kind` says how rows are scored and reported (default: the seed set, with `judge` if given)."""
    kind = kind or SeedSet(judge)
    out_root = Path(out_root)
    stamp = stamp or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    final = out_root / f"{stamp}-{slug(label)}"
    tmp = out_root / f".{final.name}.tmp"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"cannot write reports under {out_root}: {e.strerror}; pass --out DIR") from None
    engine = getattr(getattr(pipe, "lm", None), "engine", None)
    stats = getattr(engine, "stats", None)
    results: list[dict] = []
    t_start = time.perf_counter()
    bar = _progress(len(rows), progress)
    with open(tmp / "results.jsonl", "w", encoding="utf-8") as out:
        for row in rows:
            before = dict(stats) if stats else None
            t0 = time.perf_counter()
            error = None
            try:
                pred = pipe.ask(row["question"])
            except RagError as e:
                error = str(e)
                pred = Answer.failed(row["question"]).to_json()
            wall = time.perf_counter() - t0
            record = kind.score(pipe, row, pred, error)
            record.update({
                "wall_s": round(wall, 3),
                "lm_s": round(stats["lm_seconds"] - before["lm_seconds"], 3) if stats else round(wall, 3),
                "lm_cached": bool(stats and stats["hits"] > before["hits"]),
            })
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            results.append(record)
            bar.update(1)
            bar.set_postfix({kind.score_name: f"{statistics.fmean(r['metrics']['headline'] for r in results):.3f}"})
    bar.close()

    def ranked(question: str, k: int, mode: str) -> list[str]:
        return [h.paper.id for h in pipe.retriever.search(question, k, mode, pipe.settings.per_paper).hits]

    summary = kind.summarize(results, rows)
    summary.update({
        "label": label, "date": dt.datetime.now().isoformat(timespec="seconds"),
        "set": str(set_path), "set_sha256": sha256_file(set_path),
        "program": pipe.program_label, "lm": pipe.lm_label, "index": pipe.index.name,
        "retrieval_mode": pipe.settings.retrieval, "k": pipe.settings.k,
        "retrieval": retrieval_table(ranked, rows),
        "run_seconds": round(time.perf_counter() - t_start, 1),
        "lm_cache": dict(stats) if stats else None,
    })
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (tmp / "report.md").write_text(kind.render(summary, results), encoding="utf-8")
    kind.plot(summary, tmp / "metrics.png")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_report(path: str | Path) -> tuple[dict, list[dict]]:
    path = Path(path)
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        # Lines end at "\n" only: an answer may hold U+2028 and the like, as json.dumps(ensure_ascii=False) writes it.
        results = [row for _, row in jsonl_objects((path / "results.jsonl").read_text(encoding="utf-8"))]
    except JSONLineError as e:
        raise EvalError(f"report {path} is corrupt (results.jsonl line {e.line}: {e.problem}); re-run `rag eval`") from None
    except FileNotFoundError as e:
        raise EvalError(f"{path} is not a report directory ({Path(e.filename).name} missing); "
                        f"pass a directory written by `rag eval`") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"report {path} is corrupt ({e.msg}); re-run `rag eval`") from None
    return summary, results


def semantic_judge(lm: Any) -> Callable[[dict, dict], float | None]:
    """DSPy's SemanticF1 on `lm` (a strong remote model) as an optional answer judge."""
    import dspy
    from dspy.evaluate import SemanticF1

    metric = SemanticF1(decompositional=True)

    def judge(label: dict, pred: dict) -> float | None:
        if not label.get("answer") or pred.get("abstained"):
            return 0.0 if pred.get("abstained") else None
        with dspy.context(lm=lm):
            try:
                return float(metric(dspy.Example(question=label["question"], response=label["answer"]),
                                    dspy.Prediction(response=pred.get("answer") or "")))
            except Exception as e:  # noqa: BLE001 - a judge failure must not sink the run
                print(f"note: SemanticF1 judge failed on {label['id']}: {e}", file=sys.stderr)
                return None

    return judge
