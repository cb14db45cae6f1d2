"""The eval harness: run a labelled set through the pipeline, score it, write a report.

`run_eval` answers every question of a set (see eval/README.md for the format)
with the same `Pipeline.ask` the CLI uses, scores each answer with
`rag.metrics`, adds retrieval metrics for dense, BM25 and hybrid search, and
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
the headline score), `rag.pubmedqa.PubMedQA` for the external benchmark (accuracy
and macro-F1 over yes/no/maybe). The loop, timing, retrieval tables, provenance,
atomic writing and the paired comparison are shared: every kind puts its
per-question paired score in `metrics["headline"]`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rag.errors import RagError
from rag.metrics import (
    TYPES,
    abstention_summary,
    bootstrap_ci,
    has_labels,
    paired_bootstrap,
    percentile,
    retrieval_scores,
    score_row,
    summarize,
)
from rag.pipeline import Answer
from rag.retrieve import MODES
from rag.shapes import SHAPES, question_shape

REPORT_METRICS = ("headline", "fact_recall", "token_f1", "citation_validity", "citation_precision",
                  "citation_recall", "citation_f1", "faithfulness", "claims_supported", "unsupported_claim",
                  "verdict_correct", "retrieval_recall", "correct_abstention", "false_abstention", "semantic_f1")


class EvalError(RagError):
    """A labelled set or report that cannot be used."""


class EvalKind(Protocol):
    """What one kind of labelled set adds to the shared harness (see the module doc)."""

    name: str  # written to summary.json as "benchmark" (the seed set writes none)
    score_name: str  # what the paired per-question score, metrics["headline"], is called in reports
    metrics: tuple[str, ...]  # per-question metrics `compare_reports` tables, in order

    def score(self, pipe: Any, row: dict, pred: dict, error: str | None) -> dict:
        """The results.jsonl record of one answered row, with its "metrics" (timing is added after)."""

    def summarize(self, results: list[dict], rows: list[dict]) -> dict: ...

    def render(self, summary: dict, results: list[dict]) -> str: ...

    def plot(self, summary: dict, path: Path) -> None: ...

    def compare_extra(self, a: list[dict], b: list[dict]) -> dict:
        """Set-level metrics of two reports' shared questions ({name: {"a", "b", "n"}}), for compare."""


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


def kind_of(summary: dict) -> EvalKind:
    """The kind of set a report was run on, from its summary.json."""
    if summary.get("benchmark") == "pubmedqa":
        from rag.pubmedqa import PubMedQA  # imported here: rag.pubmedqa builds on this module

        return PubMedQA()
    return SeedSet()


# --- the labelled set -----------------------------------------------------------------

def jsonl_rows(path: Path, required: tuple[str, ...], fix: str) -> Iterator[tuple[str, dict]]:
    """("file:line", row) for each non-blank line of a JSONL file, each row a JSON object whose `required`
    keys are non-empty strings; a problem is an EvalError naming its line (`fix` says what to do about bad JSON)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise EvalError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{where}: not valid JSON ({e.msg}); {fix}") from None
        if not isinstance(row, dict):
            raise EvalError(f"{where}: expected a JSON object")
        for key in required:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise EvalError(f"{where}: missing or empty {key!r}")
        yield where, row


def load_set(path: str | Path, paper_ids: set[str] | None = None) -> list[dict]:
    """Read and check a labelled JSONL set; every problem names its line."""
    path = Path(path)
    if not path.is_file():
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


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- retrieval ------------------------------------------------------------------------

def retrieval_table(search: Callable[[str, int, str], list[str]], rows: list[dict], k: int = 10) -> dict:
    """Mean recall@1/5/10, MRR@10, nDCG@10 per retrieval mode over the answerable rows.

    `search(question, k, mode)` returns ranked paper ids.
    """
    table: dict[str, dict] = {}
    answerable = [r for r in rows if r["gold_paper_ids"]]
    for mode in MODES:
        scores = [retrieval_scores(search(r["question"], k, mode), r["gold_paper_ids"]) for r in answerable]
        table[mode] = {m: round(statistics.fmean(s[m] for s in scores), 4) for m in scores[0]} if scores else {}
        table[mode]["n"] = len(scores)
    return table


# --- running a set --------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "run"


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="q", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                desc="evaluating")


def run_eval(pipe: Any, rows: list[dict], *, label: str, set_path: str | Path, out_root: str | Path,
             progress: bool = False, judge: Any = None, stamp: str | None = None, kind: EvalKind | None = None) -> Path:
    """Answer and score every row with `pipe`; write the report directory and return its path.

    `kind` says how rows are scored and reported (default: the seed set, with `judge` if given)."""
    kind = kind or SeedSet(judge)
    out_root = Path(out_root)
    stamp = stamp or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    final = out_root / f"{stamp}-{_slug(label)}"
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
        "set": str(set_path), "set_sha256": file_sha256(set_path),
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


def _shape(result: dict) -> str:
    """A result's question shape: the labelled one, else what the rules say (rag.shapes)."""
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

def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


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
            lines.append(f"| {m} | {_fmt(s['metrics'].get(m))} | "
                         + " | ".join(_fmt(s["by_type"][t].get(m)) for t in s["by_type"]) + " |")
    if s.get("by_shape"):
        shapes = list(s["by_shape"])
        lines += ["", "## Metrics by question shape (list / yes-no / specific; labelled, else by rag.shapes)", "",
                  "| metric | " + " | ".join(f"{t} (n={s['by_shape'][t]['n']})" for t in shapes) + " |",
                  "|---|" + "---|" * len(shapes)]
        for m in REPORT_METRICS:
            if any(m in s["by_shape"][t] for t in shapes):
                lines.append(f"| {m} | " + " | ".join(_fmt(s["by_shape"][t].get(m)) for t in shapes) + " |")
    a = s["abstention"]
    lines += ["", "## Abstention", "",
              "| precision | recall (on unanswerable) | false-abstention rate (on answerable) |", "|---|---|---|",
              f"| {_fmt(a['abstention_precision'])} | {_fmt(a['abstention_recall'])} | "
              f"{_fmt(a['false_abstention_rate'])} |", "",
              "## Retrieval (answerable questions, k=10 papers)", "",
              "| mode | recall@1 | recall@5 | recall@10 | MRR@10 | nDCG@10 |", "|---|---|---|---|---|---|"]
    for mode, r in s["retrieval"].items():
        lines.append(f"| {mode} | " + " | ".join(_fmt(r.get(m)) for m in
                                                 ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")) + " |")
    lat, tok = s["latency"], s["tokens"]
    lines += ["", "## Cost", "",
              f"LM time per question: mean {lat['lm_mean_s']}s, p95 {lat['lm_p95_s']}s "
              f"(mean {lat['lm_mean_s_when_called']}s over questions that reached the LM); "
              f"prompt tokens mean {tok['prompt_mean']}, completion tokens mean {tok['completion_mean']}.", "",
              f"## Worst {worst} questions (by headline)", "",
              "| id | type | headline | question | answer |", "|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["metrics"]["headline"], r["id"]))[:worst]:
        answer = (r["error"] or r["answer"] or "").replace("|", "\\|").replace("\n", " ")[:160]
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


def read_report(path: str | Path) -> tuple[dict, list[dict]]:
    path = Path(path)
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        results = [json.loads(line) for line in (path / "results.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    except FileNotFoundError as e:
        raise EvalError(f"{path} is not a report directory ({Path(e.filename).name} missing); "
                        f"pass a directory written by `rag eval`") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"report {path} is corrupt ({e.msg}); re-run `rag eval`") from None
    return summary, results


def compare_reports(a: str | Path, b: str | Path, out_root: str | Path, stamp: str | None = None) -> tuple[Path, dict]:
    """Pair two reports by question id; bootstrap the headline difference (b - a).

    Works for any kind of set: the paired score is each question's metrics["headline"] (for
    PubMedQA, correctness 0/1, so the difference is one of accuracy)."""
    (sa, ra), (sb, rb) = read_report(a), read_report(b)
    kind = kind_of(sa)
    if kind_of(sb).name != kind.name:
        raise EvalError(f"{a} is a {kind.name} report and {b} a {kind_of(sb).name} report; "
                        f"compare two runs of the same set")
    by_a, by_b = {r["id"]: r for r in ra}, {r["id"]: r for r in rb}
    common = [i for i in by_a if i in by_b]
    if not common:
        raise EvalError(f"reports {a} and {b} share no question ids; compare runs of the same set")
    if sa.get("set_sha256") != sb.get("set_sha256"):
        print(f"note: the two reports were run on different sets; comparing the {len(common)} shared questions",
              file=sys.stderr)
    heads_a = [by_a[i]["metrics"]["headline"] for i in common]
    heads_b = [by_b[i]["metrics"]["headline"] for i in common]
    boot = paired_bootstrap(heads_a, heads_b)
    per_metric = {}
    for m in kind.metrics:
        pairs = [(by_a[i]["metrics"].get(m), by_b[i]["metrics"].get(m)) for i in common]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if pairs:
            per_metric[m] = {"a": round(statistics.fmean(x for x, _ in pairs), 4),
                             "b": round(statistics.fmean(y for _, y in pairs), 4), "n": len(pairs)}
    per_metric.update(kind.compare_extra([by_a[i] for i in common], [by_b[i] for i in common]))
    changed = sorted(common, key=lambda i: by_b[i]["metrics"]["headline"] - by_a[i]["metrics"]["headline"])
    result = {
        "a": {"path": str(a), "label": sa.get("label"), "program": sa.get("program"), "latency": sa.get("latency")},
        "b": {"path": str(b), "label": sb.get("label"), "program": sb.get("program"), "latency": sb.get("latency")},
        "n": len(common), "headline": boot, "metrics": per_metric,
        "worse": [i for i in changed if by_b[i]["metrics"]["headline"] < by_a[i]["metrics"]["headline"]][:10],
        "better": [i for i in reversed(changed) if by_b[i]["metrics"]["headline"] > by_a[i]["metrics"]["headline"]][:10],
    }
    if kind.name != SeedSet.name:  # the seed set's compare.json stays as it always was
        result.update({"benchmark": kind.name, "score": kind.score_name})
        result["a"]["selection"], result["b"]["selection"] = sa.get("selection_text"), sb.get("selection_text")
    stamp = stamp or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_root) / f"{stamp}-compare-{_slug(str(sa.get('label')))}-vs-{_slug(str(sb.get('label')))}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "compare.md").write_text(render_compare(result), encoding="utf-8")
    plot_compare(result, out / "compare.png")
    return out, result


def verdict(result: dict) -> str:
    h = result["headline"]
    score = result.get("score", "headline")
    sign = "better" if h["mean_diff"] > 0 else "worse"
    if h["significant"]:
        return (f"B is {sign} than A by {h['mean_diff']:+.3f} {score} (95% CI {h['ci_low']:+.3f} to "
                f"{h['ci_high']:+.3f}, p={h['p_value']:.3f}, n={h['n']}): significant")
    return (f"difference {h['mean_diff']:+.3f} {score} (95% CI {h['ci_low']:+.3f} to {h['ci_high']:+.3f}, "
            f"p={h['p_value']:.3f}, n={h['n']}): not significant at 95%")


def render_compare(result: dict) -> str:
    lines = [f"# {result['a']['label']} (A) vs {result['b']['label']} (B)", "",
             f"A: `{result['a']['path']}` (program {result['a']['program']})  ",
             f"B: `{result['b']['path']}` (program {result['b']['program']})", "",
             *[f"{x.upper()} ran on: {result[x]['selection']}.  " for x in ("a", "b") if result[x].get("selection")],
             f"**{verdict(result)}** (paired bootstrap over questions, 10,000 resamples).", "",
             "| metric | A | B | B - A | n |", "|---|---|---|---|---|"]
    for m, v in result["metrics"].items():
        lines.append(f"| {m} | {v['a']:.3f} | {v['b']:.3f} | {v['b'] - v['a']:+.3f} | {v['n']} |")
    la, lb = result["a"].get("latency") or {}, result["b"].get("latency") or {}
    if la and lb:
        lines.append(f"| LM seconds per question | {la['lm_mean_s']} | {lb['lm_mean_s']} | "
                     f"{lb['lm_mean_s'] - la['lm_mean_s']:+.2f} | |")
    lines += ["", f"Most improved: {', '.join(result['better']) or 'none'}.  ",
              f"Most worsened: {', '.join(result['worse']) or 'none'}."]
    return "\n".join(lines) + "\n"


def plot_compare(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(result["metrics"])
    fig, ax = plt.subplots(figsize=(max(8, len(metrics) * 1.1), 4.5))
    xs = range(len(metrics))
    ax.bar([x - 0.2 for x in xs], [result["metrics"][m]["a"] for m in metrics], 0.4, label=f"A: {result['a']['label']}")
    ax.bar([x + 0.2 for x in xs], [result["metrics"][m]["b"] for m in metrics], 0.4, label=f"B: {result['b']['label']}")
    h = result["headline"]
    ax.set_xticks(list(xs), metrics, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{result.get('score', 'headline')} B - A = {h['mean_diff']:+.3f} "
                 f"(95% CI {h['ci_low']:+.3f} to {h['ci_high']:+.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
