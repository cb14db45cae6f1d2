"""The seed set: the labelled questions of eval/ (eval/README.md), as an eval kind.

Rows carry facts, gold papers and a type (single, multi, unanswerable); each answer is scored by
`rag.evaluation.metrics.score_row` and the set's figure is the headline (with a bootstrap CI). This
module reads and checks a set, scores, sums up, tables and plots its runs, and prints their summary;
`score_output` scores a `rag batch --eval` output the same way.

Left out: the loop that runs a set (rag/evaluation/harness.py) and comparisons (compare.py).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.answer.shapes import SHAPES, question_shape
from rag.errors import EvalError
from rag.evaluation.common import cell, fmt, jsonl_rows, retrieval_lines
from rag.evaluation.metrics import (
    TYPES,
    abstention_summary,
    bootstrap_ci,
    has_labels,
    percentile,
    score_row,
    summarize,
)
from rag.settings import ROOT

REPORT_METRICS = ("headline", "fact_recall", "token_f1", "citation_validity", "citation_precision",
                  "citation_recall", "citation_f1", "faithfulness", "claims_supported", "unsupported_claim",
                  "verdict_correct", "retrieval_recall", "correct_abstention", "false_abstention", "semantic_f1")
DEFAULT_SET = ROOT / "eval" / "dev.jsonl"


class SeedSet:
    """The labelled set of eval/ (eval/README.md): facts, gold papers, unanswerable questions, headline."""

    name = "seed"
    score_name = "headline"
    metrics = REPORT_METRICS

    def __init__(self, judge: Callable[[dict, dict], float | None] | None = None) -> None:
        self.judge = judge

    def score(self, pipe: Any, row: dict, pred: dict, error: str | None) -> dict:
        scores = score_row(row, pred, embed=lambda texts: pipe.embedder.encode(texts))
        if self.judge is not None and row["type"] != "unanswerable" and not error:
            scores["semantic_f1"] = self.judge(row, pred)
        return {
            "id": row["id"], "type": row["type"], "shape": row.get("shape") or question_shape(row["question"]),
            "question": row["question"],
            "reference": row.get("answer"), "facts": row["facts"], "gold_paper_ids": row["gold_paper_ids"],
            "answer": pred.get("answer"), "abstained": pred.get("abstained"),
            "cited_paper_ids": [c["paper_id"] for c in pred.get("citations") or []],
            "passage_paper_ids": [p["paper_id"] for p in pred.get("passages") or []],
            "prediction": pred, "error": error, "metrics": scores,
        }

    def summarize(self, results: list[dict], rows: list[dict]) -> dict:
        return summarize_results(results, rows)

    def render(self, summary: dict, results: list[dict]) -> str:
        return render_report(summary, results)

    def plot(self, summary: dict, path: Path) -> None:
        plot_by_type(summary, path)

    def compare_extra(self, a: list[dict], b: list[dict]) -> dict:
        return {}

    # --- what `rag eval --set PATH` needs of it ---------------------------------------------

    corpus = None  # the user's corpus (RAG_CORPUS)

    def select(self, spec: str | None, *, split: str | None = None, full: bool = False,
               limit: int | None = None) -> tuple[list[dict], Path]:
        """The rows of the set at `spec` (default eval/dev.jsonl), checked, and its path; before anything loads."""
        if split or full:
            raise EvalError("--split and --full apply to --set pubmedqa only")
        path = Path(spec) if spec else DEFAULT_SET
        rows = load_set(path)
        if limit is not None:
            if limit < 1:
                raise EvalError(f"--limit must be at least 1, got {limit}")
            rows = rows[:limit]
        return rows, path

    def check(self, rows: list[dict], path: Path, paper_ids: set[str]) -> None:
        """Every gold paper must be in the index being searched."""
        load_set(path, paper_ids)

    def label(self, program: str, retrieval: str) -> str:
        return f"{program.removesuffix('.json')}-{retrieval}"

    def describe(self, n: int) -> str:
        return f"{n} questions"

    def summary_lines(self, s: dict) -> list[str]:
        """The few lines `rag eval` prints."""
        m, a = s["metrics"], s["abstention"]
        keys = ("fact_recall", "token_f1", "citation_validity", "citation_precision", "citation_recall",
                "faithfulness")
        return [f"headline {s['headline']:.3f} (95% CI {s['headline_ci95'][0]:.3f}-{s['headline_ci95'][1]:.3f}), "
                f"n={s['n']}, errors={s['errors']}",
                "  " + ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m),
                f"  abstention precision {a['abstention_precision']}, recall {a['abstention_recall']}, "
                f"false-abstention rate {a['false_abstention_rate']}",
                "  retrieval " + "; ".join(f"{mode} R@5 {r.get('recall@5')} MRR {r.get('mrr@10')}"
                                           for mode, r in s["retrieval"].items()),
                f"  LM time per question {s['latency']['lm_mean_s']}s (p95 {s['latency']['lm_p95_s']}s), "
                f"prompt tokens {s['tokens']['prompt_mean']}"]


def load_set(path: str | Path, paper_ids: set[str] | None = None) -> list[dict]:
    """Read and check a labelled JSONL set; every problem names its line."""
    path = Path(path)
    if not path.exists():  # a FIFO or a device is jsonl_rows's to refuse
        raise EvalError(f"eval set {path} does not exist; see eval/README.md (e.g. --set eval/dev.jsonl)")
    rows: list[dict] = []
    seen: set[str] = set()
    for where, row in jsonl_rows(path, ("id", "question", "type"), "fix or remove the line"):
        if row["type"] not in TYPES:
            raise EvalError(f"{where}: type {row['type']!r} is not one of {', '.join(TYPES)}")
        for key in ("facts", "gold_paper_ids"):
            value = row.setdefault(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise EvalError(f"{where}: {key!r} must be a list of strings")
        if row["type"] == "unanswerable" and row["gold_paper_ids"]:
            raise EvalError(f"{where}: an unanswerable question cannot have gold_paper_ids")
        if row["type"] != "unanswerable" and not row["gold_paper_ids"]:
            raise EvalError(f"{where}: a {row['type']} question needs gold_paper_ids")
        if paper_ids is not None:
            missing = [g for g in row["gold_paper_ids"] if g not in paper_ids]
            if missing:
                raise EvalError(f"{where}: gold paper {missing[0]} is not in the corpus; the set was written "
                                f"for another corpus or the id is wrong (see `rag papers`)")
        if row["id"] in seen:
            raise EvalError(f"{where}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        rows.append(row)
    if not rows:
        raise EvalError(f"eval set {path} holds no questions")
    return rows


def _shape(result: dict) -> str:
    """A result's question shape: the labelled one, else what the rules say (rag.answer.shapes)."""
    return result.get("shape") or question_shape(result["question"])


def summarize_results(results: list[dict], rows: list[dict]) -> dict:
    """Means overall and per type, abstention rates, headline CI, latency and token totals."""
    preds = [r["prediction"] for r in results]
    heads = [r["metrics"]["headline"] for r in results]
    lo, hi = bootstrap_ci(heads)
    lm_times = [r["lm_s"] for r in results]
    called = [r for r in results if (r["prediction"].get("provenance") or {}).get("completion_tokens")]
    prov = [r["prediction"].get("provenance") or {} for r in results]
    return {
        "n": len(results),
        "n_by_type": {t: sum(r["type"] == t for r in results) for t in TYPES},
        "errors": sum(1 for r in results if r["error"]),
        "headline": round(statistics.fmean(heads), 4),
        "headline_ci95": [round(lo, 4), round(hi, 4)],
        "metrics": summarize(r["metrics"] for r in results),
        "by_type": {t: summarize(r["metrics"] for r in results if r["type"] == t)
                    for t in TYPES if any(r["type"] == t for r in results)},
        "by_shape": {shape: summarize(r["metrics"] for r in results if _shape(r) == shape)
                     for shape in SHAPES if any(_shape(r) == shape for r in results)},
        "abstention": abstention_summary(rows, preds),
        "latency": {
            # lm_s is the model's generation time, taken from the cache entry on a cache hit.
            "lm_mean_s": round(statistics.fmean(lm_times), 2),
            "lm_p95_s": round(percentile(lm_times, 95), 2),
            "lm_mean_s_when_called": round(statistics.fmean(r["lm_s"] for r in called), 2) if called else None,
            "wall_mean_s": round(statistics.fmean(r["wall_s"] for r in results), 2),
        },
        "tokens": {
            "prompt_mean": round(statistics.fmean(p.get("prompt_tokens") or 0 for p in prov), 1),
            "completion_mean": round(statistics.fmean(p.get("completion_tokens") or 0 for p in prov), 1),
        },
    }


def score_output(path: str | Path) -> dict:
    """Metrics of a `rag batch` output whose rows carried labels (facts, gold_paper_ids, type):
    the same `score_row` as a `rag eval` run, without the embedder (so no faithfulness)."""
    scored = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if has_labels(rec) and not rec.get("error"):
                label = {**rec, "answer": rec.get("input_answer")}
                scored.append(score_row(label, rec))
    if not scored:
        raise EvalError("--eval: no answered row carries facts, gold_paper_ids or type; nothing to score")
    return summarize(scored)


# --- reports --------------------------------------------------------------------------

def render_report(summary: dict, results: list[dict], worst: int = 10) -> str:
    s = summary
    lines = [f"# Eval report: {s['label']}", "",
             f"{s['n']} questions from `{s['set']}` (sha256 {s['set_sha256'][:12]}), {s['date']}.  ",
             f"Program `{s['program']}`, LM `{s['lm']}`, retrieval {s['retrieval_mode']} k={s['k']}, "
             f"index `{s['index']}`.  ",
             f"**Headline {s['headline']:.3f}** (95% bootstrap CI {s['headline_ci95'][0]:.3f} to "
             f"{s['headline_ci95'][1]:.3f}); errors: {s['errors']}.", "",
             "## Metrics by question type", "",
             "| metric | all | " + " | ".join(s["by_type"]) + " |",
             "|---|---|" + "---|" * len(s["by_type"])]
    for m in REPORT_METRICS:
        if m in s["metrics"]:
            lines.append(f"| {m} | {fmt(s['metrics'].get(m))} | "
                         + " | ".join(fmt(s["by_type"][t].get(m)) for t in s["by_type"]) + " |")
    if s.get("by_shape"):
        shapes = list(s["by_shape"])
        lines += ["", "## Metrics by question shape (list / yes-no / specific; labelled, else by rag.answer.shapes)", "",
                  "| metric | " + " | ".join(f"{t} (n={s['by_shape'][t]['n']})" for t in shapes) + " |",
                  "|---|" + "---|" * len(shapes)]
        for m in REPORT_METRICS:
            if any(m in s["by_shape"][t] for t in shapes):
                lines.append(f"| {m} | " + " | ".join(fmt(s["by_shape"][t].get(m)) for t in shapes) + " |")
    a = s["abstention"]
    lines += ["", "## Abstention", "",
              "| precision | recall (on unanswerable) | false-abstention rate (on answerable) |", "|---|---|---|",
              f"| {fmt(a['abstention_precision'])} | {fmt(a['abstention_recall'])} | "
              f"{fmt(a['false_abstention_rate'])} |", "",
              "## Retrieval (answerable questions, k=10 papers)", "",
              *retrieval_lines(s["retrieval"])]
    lat, tok = s["latency"], s["tokens"]
    lines += ["", "## Cost", "",
              f"LM time per question: mean {lat['lm_mean_s']}s, p95 {lat['lm_p95_s']}s "
              f"(mean {lat['lm_mean_s_when_called']}s over questions that reached the LM); "
              f"prompt tokens mean {tok['prompt_mean']}, completion tokens mean {tok['completion_mean']}.", "",
              f"## Worst {worst} questions (by headline)", "",
              "| id | type | headline | question | answer |", "|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["metrics"]["headline"], r["id"]))[:worst]:
        answer = cell(r["error"] or r["answer"], 160)
        question = r["question"].replace("|", "\\|")[:100]
        lines.append(f"| {r['id']} | {r['type']} | {r['metrics']['headline']:.2f} | {question} | {answer} |")
    return "\n".join(lines) + "\n"


def plot_by_type(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in REPORT_METRICS if m in summary["metrics"]]
    types = list(summary["by_type"])
    fig, ax = plt.subplots(figsize=(max(8, len(metrics) * 1.1), 4.5))
    width = 0.8 / (len(types) + 1)
    for i, group in enumerate(["all", *types]):
        data = summary["metrics"] if group == "all" else summary["by_type"][group]
        values = [data.get(m) or 0.0 for m in metrics]
        ax.bar([x + i * width for x in range(len(metrics))], values, width, label=group)
    ax.set_xticks([x + width * len(types) / 2 for x in range(len(metrics))], metrics, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean (0-1)")
    ax.set_title(f"{summary['label']}: headline {summary['headline']:.3f}")
    ax.legend(ncols=len(types) + 1, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
