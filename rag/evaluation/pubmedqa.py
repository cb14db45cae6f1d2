"""PubMedQA (PQA-L), an external expert-labelled benchmark, run through the product.

The 1,000 abstracts of PQA-L are a user's corpus (`data/pubmedqa/corpus.jsonl`, indexed with the
normal `rag index --corpus` path) and its questions (`data/pubmedqa/questions.jsonl`) are asked
with `Pipeline.ask`, as a user asks them: retrieval over all 1,000 abstracts, then the answer
program. `rag eval --set pubmedqa` runs them through the shared eval harness (`rag.evaluation.harness`) with
the `PubMedQA` kind defined here, which scores the answer's verdict against the expert label.

- Splits: `test` is the official 500-question test split, for reporting only; `train` is the other
  500, the only part anything may be tuned on. Nothing here tunes anything.
- Selection: by default a fixed, seeded, label-stratified subset of `SUBSET` questions of the
  chosen split (500 take over an hour on the local model); `full=True` takes all 500. Every report
  table names the selection (`describe`).
- Verdict: the answer's `verdict` field when it holds yes / no / maybe, else
  `rag.answer.shapes.parse_verdict` on the answer text. An abstention, a failed call or an answer without
  a verdict has none, and counts as wrong (every PubMedQA question is answerable).
- Official metrics: accuracy and macro-F1 over yes / no / maybe (`rag.evaluation.metrics.classification_scores`,
  scikit-learn's definitions; a missing verdict is wrong and belongs to no label). Also: how often
  retrieval ranks the question's own abstract first (R@1) or in the top 5 (R@5), how often the
  answer cites it, abstention and verdict rates, and latency (p50, p95).
- The paired per-question score is correctness (0/1) in `metrics["headline"]`, so
  `rag eval --compare A B` bootstraps the difference in accuracy unchanged.

Left out: the published systems' setting (handed the right abstract; ours must find it among
1,000), PQA-U / PQA-A, and any tuning (see eval/README.md for what may be tuned on).
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

from rag.answer.shapes import parse_verdict
from rag.errors import EvalError
from rag.evaluation.common import cell, fmt, jsonl_rows, retrieval_lines
from rag.evaluation.metrics import bootstrap_ci, classification_scores, percentile
from rag.settings import ROOT

SET_NAME = "pubmedqa"  # `rag eval --set pubmedqa`
DATA_DIR = ROOT / "data" / "pubmedqa"
CORPUS = DATA_DIR / "corpus.jsonl"
QUESTIONS = DATA_DIR / "questions.jsonl"
LABELS = ("yes", "no", "maybe")
SPLITS = ("test", "train")
SUBSET = 200
SEED = 20190913  # PubMedQA's release date; fixed once, never tuned
# Published reference points on the official 500-question test split, reasoning-required setting
# (question + the abstract without its conclusion). Accuracy from Jin et al. (EMNLP 2019); macro-F1
# from the leaderboard at pubmedqa.github.io; the majority class's macro-F1 is computed (all "yes").
REFERENCE = (
    {"system": "majority class (always yes)", "accuracy": 0.552, "macro_f1": 0.2371},
    {"system": "BioBERT, multi-phase fine-tuning (Jin et al. 2019)", "accuracy": 0.6808, "macro_f1": 0.5272},
    {"system": "single human annotator (Jin et al. 2019)", "accuracy": 0.780, "macro_f1": 0.7219},
)
SETTING = ("The published systems are handed the question's own abstract (without its conclusion); "
           "the product must first retrieve it among all 1,000 PQA-L abstracts, then answer from the "
           "passages it retrieved.")
# Per-question metrics, all 0/1; "correct" is also the paired score (metrics["headline"]).
RATES = ("correct", "verdict_given", "abstained", "cites_gold", "gold_in_passages", "recall@1", "recall@5")
RATE_NAMES = {"correct": "accuracy", "verdict_given": "verdict given", "abstained": "abstained",
              "cites_gold": "cites its own abstract", "gold_in_passages": "own abstract among the passages",
              "recall@1": "retrieval R@1", "recall@5": "retrieval R@5"}


# --- the questions --------------------------------------------------------------------

def load_questions(path: str | Path | None = None) -> list[dict]:
    """The PubMedQA questions file (default `QUESTIONS`; eval/pubmedqa_convert.py writes it), checked;
    each row also gets `gold_paper_ids` (its own abstract) for the shared retrieval table."""
    path = Path(path or QUESTIONS)
    if not path.exists():  # a FIFO or a device is jsonl_rows's to refuse
        raise EvalError(f"{path} does not exist; it ships with the repository (re-derive it with "
                        f"`python eval/pubmedqa_convert.py`, see data/pubmedqa/README.md)")
    rows, seen = [], set()
    for where, row in jsonl_rows(path, ("id", "question", "gold_paper_id"),
                                 "re-derive the file with eval/pubmedqa_convert.py"):
        if row.get("split") not in SPLITS or row.get("final_decision") not in LABELS:
            raise EvalError(f"{where}: split must be one of {SPLITS} and final_decision one of {LABELS}")
        if row["id"] in seen:
            raise EvalError(f"{where}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        rows.append({**row, "gold_paper_ids": [row["gold_paper_id"]]})
    if not rows:
        raise EvalError(f"{path} holds no questions")
    return rows


def stratified_subset(rows: list[dict], n: int, seed: int = SEED) -> list[dict]:
    """`n` rows drawn so that each label keeps its share (largest remainder), in the rows' order.

    Deterministic: within each label, rows are ordered by id and shuffled with a seed of their own."""
    if n >= len(rows):
        return list(rows)
    counts = {label: sum(r["final_decision"] == label for r in rows) for label in LABELS}
    exact = {label: n * c / len(rows) for label, c in counts.items()}
    quota = {label: int(x) for label, x in exact.items()}
    for label in sorted(LABELS, key=lambda lab: (quota[lab] - exact[lab], LABELS.index(lab)))[: n - sum(quota.values())]:
        quota[label] += 1
    keep: set[str] = set()
    for label in LABELS:
        group = sorted((r["id"] for r in rows if r["final_decision"] == label), key=_id_key)
        random.Random(f"{seed}-{label}").shuffle(group)
        keep.update(group[: quota[label]])
    return [r for r in rows if r["id"] in keep]


def select(rows: list[dict], split: str = "test", *, full: bool = False, limit: int | None = None) -> tuple[list[dict], dict]:
    """The questions of one split to run (the fixed stratified subset, or all with `full`), and a
    description of the selection for the report."""
    if split not in SPLITS:
        raise EvalError(f"unknown PubMedQA split {split!r}; use test (report) or train (tune)")
    part = [r for r in rows if r["split"] == split]
    chosen = part if full else stratified_subset(part, SUBSET)
    if limit is not None:
        if limit < 1:
            raise EvalError(f"--limit must be at least 1, got {limit}")
        chosen = chosen[:limit]
    selection = {"split": split, "split_n": len(part), "full": full, "subset": None if full else SUBSET,
                 "seed": None if full else SEED, "limit": limit, "n": len(chosen)}
    return chosen, selection


def describe(selection: dict) -> str:
    """'test split, the fixed stratified 200-question subset (seed ...) of 500' and the like."""
    s = selection
    if s["full"] or s["subset"] is None or s["subset"] >= s["split_n"]:
        what = f"{s['split']} split, all {s['split_n']} questions"
    else:
        what = (f"{s['split']} split, the fixed label-stratified {s['subset']}-question subset "
                f"(seed {s['seed']}) of {s['split_n']}")
    if s.get("limit") is not None and s["limit"] < (s["split_n"] if s["full"] else s["subset"]):
        what += f", first {s['limit']} only (--limit {s['limit']})"
    if s.get("ids"):
        what += f", only {len(s['ids'])} chosen questions (--ids)"
    if s["split"] == "train":
        what += "; the tuning half, not comparable with published test figures"
    return what


def selection_tag(selection: dict) -> str:
    """Short name of a selection for report labels: test200, test500, train200, test200-first5."""
    tag = f"{selection['split']}{selection['split_n'] if selection['full'] else selection['subset']}"
    return tag + (f"-first{selection['n']}" if selection.get("limit") is not None else "")


def check_corpus(rows: list[dict], paper_ids: set[str]) -> None:
    """Every question's own abstract must be in the index being searched."""
    missing = [r["gold_paper_id"] for r in rows if r["gold_paper_id"] not in paper_ids]
    if missing:
        raise EvalError(f"{len(missing)} PubMedQA abstracts (e.g. {missing[0]}) are not in the index; "
                        f"run over {CORPUS} (`rag index --corpus {CORPUS}`)")


def read_verdict(pred: dict) -> tuple[str | None, str | None]:
    """(verdict, where it came from: "field" or "answer") of a `rag ask --json` object; (None, None)
    for an abstention, a failed answer, or an answer that gives no yes / no / maybe."""
    if pred.get("abstained") or pred.get("answer") is None:
        return None, None
    field = str(pred.get("verdict") or "").strip().lower()
    if field in LABELS:
        return field, "field"
    parsed = parse_verdict(pred.get("answer"))
    return (parsed, "answer") if parsed else (None, None)


def _id_key(pmid: str) -> tuple[int, str]:
    return (int(pmid), pmid) if pmid.isdigit() else (0, pmid)


# --- the eval kind --------------------------------------------------------------------

class PubMedQA:
    """The `rag.evaluation.kinds.EvalKind` of PubMedQA: scores, summary, report and plot (see the module doc)."""

    name = SET_NAME
    score_name = "accuracy"
    metrics = RATES

    def __init__(self, selection: dict | None = None) -> None:
        self.selection = selection

    def score(self, pipe: Any, row: dict, pred: dict, error: str | None) -> dict:
        verdict, source = read_verdict(pred) if not error else (None, None)
        gold_paper = row["gold_paper_id"]
        ranked = [h.paper.id for h in pipe.search(row["question"], 10).hits]
        rank = ranked.index(gold_paper) + 1 if gold_paper in ranked else None
        cited = [c["paper_id"] for c in pred.get("citations") or []]
        given = [p["paper_id"] for p in pred.get("passages") or []]
        correct = float(verdict == row["final_decision"])
        metrics = {"headline": correct, "correct": correct, "verdict_given": float(verdict is not None),
                   "abstained": float(bool(pred.get("abstained"))), "cites_gold": float(gold_paper in cited),
                   "gold_in_passages": float(gold_paper in given), "recall@1": float(rank == 1),
                   "recall@5": float(rank is not None and rank <= 5)}
        return {
            "id": row["id"], "split": row["split"], "question": row["question"],
            "gold": row["final_decision"], "predicted": verdict, "verdict_source": source,
            "answer": pred.get("answer"), "abstained": pred.get("abstained"), "reference": row.get("long_answer"),
            "gold_paper_id": gold_paper, "gold_rank": rank, "cited_paper_ids": cited, "passage_paper_ids": given,
            "prediction": pred, "error": error, "metrics": metrics,
        }

    def summarize(self, results: list[dict], rows: list[dict]) -> dict:
        scores = classification_scores([r["gold"] for r in results], [r["predicted"] for r in results], LABELS)
        lo, hi = bootstrap_ci([r["metrics"]["correct"] for r in results])
        lm, wall = [r["lm_s"] for r in results], [r["wall_s"] for r in results]
        prov = [r["prediction"].get("provenance") or {} for r in results]
        by_source = {s: sum(r["verdict_source"] == s for r in results) for s in ("field", "answer")}
        return {
            "benchmark": SET_NAME,
            "selection": self.selection,
            "selection_text": describe(self.selection) if self.selection else None,
            "n": len(results),
            "n_by_label": {label: sum(r["gold"] == label for r in results) for label in LABELS},
            "errors": sum(1 for r in results if r["error"]),
            "accuracy": scores["accuracy"],
            "accuracy_ci95": [round(lo, 4), round(hi, 4)],
            "macro_f1": scores["macro_f1"],
            # the majority class of these questions, always predicted: the floor on this selection
            "majority_here": _majority(results),
            "classification": scores,
            "rates": _rates(results),
            "by_label": {label: _rates([r for r in results if r["gold"] == label]) for label in LABELS
                         if any(r["gold"] == label for r in results)},
            "verdict_source": by_source,
            "latency": {
                # lm_s is the model's generation time (taken from the cache entry on a cache hit)
                "lm_p50_s": round(percentile(lm, 50), 2), "lm_p95_s": round(percentile(lm, 95), 2),
                "lm_mean_s": round(statistics.fmean(lm), 2),
                "wall_p50_s": round(percentile(wall, 50), 2), "wall_p95_s": round(percentile(wall, 95), 2),
            },
            "tokens": {
                "prompt_mean": round(statistics.fmean(p.get("prompt_tokens") or 0 for p in prov), 1),
                "completion_mean": round(statistics.fmean(p.get("completion_tokens") or 0 for p in prov), 1),
            },
            "reference": list(REFERENCE),
            "setting": SETTING,
        }

    def render(self, summary: dict, results: list[dict]) -> str:
        return render_report(summary, results)

    def plot(self, summary: dict, path: Path) -> None:
        plot_report(summary, path)

    def compare_extra(self, a: list[dict], b: list[dict]) -> dict:
        f1 = [classification_scores([r["gold"] for r in x], [r["predicted"] for r in x], LABELS)["macro_f1"]
              for x in (a, b)]
        return {"macro_f1": {"a": f1[0], "b": f1[1], "n": len(a)}}

    # --- what `rag eval --set pubmedqa` needs of it -------------------------------------------

    corpus = CORPUS  # its own 1,000 abstracts

    def select(self, spec: str | None, *, split: str | None = None, full: bool = False,
               limit: int | None = None) -> tuple[list[dict], Path]:
        """The questions to run (see `select`); this kind remembers the selection for its report."""
        rows, self.selection = select(load_questions(), split or "test", full=full, limit=limit)
        return rows, QUESTIONS

    def check(self, rows: list[dict], path: Path, paper_ids: set[str]) -> None:
        check_corpus(rows, paper_ids)

    def label(self, program: str, retrieval: str) -> str:
        return f"pubmedqa-{selection_tag(self.selection)}-{program.removesuffix('.json')}-{retrieval}"

    def describe(self, n: int) -> str:
        return f"PubMedQA, {describe(self.selection)}: {n} questions"

    def summary_lines(self, summary: dict) -> list[str]:
        return summary_lines(summary)


def _rates(results: list[dict]) -> dict[str, float]:
    return {m: round(statistics.fmean(r["metrics"][m] for r in results), 4) for m in RATES} | {"n": len(results)}


def _majority(results: list[dict]) -> dict:
    gold = [r["gold"] for r in results]
    top = max(LABELS, key=gold.count)
    scores = classification_scores(gold, [top] * len(gold), LABELS)
    return {"label": top, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}


# --- the report -----------------------------------------------------------------------

def render_report(summary: dict, results: list[dict], wrong: int = 15) -> str:
    s = summary
    where = s.get("selection_text") or f"{s['n']} questions"
    c, rates, lat = s["classification"], s["rates"], s["latency"]
    lines = [f"# PubMedQA report: {s['label']}", "",
             f"{s['n']} questions of PubMedQA PQA-L: **{where}**; from `{s['set']}` (sha256 "
             f"{s['set_sha256'][:12]}), {s['date']}.  ",
             f"Program `{s['program']}`, LM `{s['lm']}`, retrieval {s['retrieval_mode']} k={s['k']} over all "
             f"1,000 PQA-L abstracts, index `{s['index']}`.  ",
             f"**Accuracy {s['accuracy']:.3f}** (95% bootstrap CI {s['accuracy_ci95'][0]:.3f} to "
             f"{s['accuracy_ci95'][1]:.3f}), **macro-F1 {s['macro_f1']:.3f}**; errors: {s['errors']}.", "",
             f"## Official metrics ({where})", "",
             "| system | accuracy | macro-F1 | setting |", "|---|---|---|---|",
             f"| **this run** | **{s['accuracy']:.3f}** | **{s['macro_f1']:.3f}** | retrieves among 1,000, then answers |",
             f"| majority class of these questions (always {s['majority_here']['label']}) | "
             f"{s['majority_here']['accuracy']:.3f} | {s['majority_here']['macro_f1']:.3f} | |"]
    for ref in s["reference"]:
        lines.append(f"| {ref['system']} (published, all 500 test) | {ref['accuracy']:.3f} | {ref['macro_f1']:.3f} "
                     f"| handed the abstract |")
    lines += ["", s["setting"], "",
              "Accuracy and macro-F1 as scikit-learn computes them (the official scorer) over yes / no / maybe. "
              f"An answer with no verdict ({c['no_prediction']} here: abstained, failed, or not opening with "
              "yes / no / maybe) counts as wrong: it lowers accuracy and the recall of its gold label and "
              "counts against no label's precision; macro-F1 is the mean F1 of the three labels.", "",
              f"## The product's behaviour ({where})", "",
              "| | " + " | ".join(RATE_NAMES[m] for m in RATES) + " | n |",
              "|---|" + "---|" * (len(RATES) + 1),
              "| all | " + " | ".join(fmt(rates[m]) for m in RATES) + f" | {rates['n']} |"]
    for label, r in s["by_label"].items():
        lines.append(f"| gold {label} | " + " | ".join(fmt(r[m]) for m in RATES) + f" | {r['n']} |")
    src = s["verdict_source"]
    lines += ["", f"Verdicts read from the answer's `verdict` field: {src['field']}; parsed from the answer "
                  f"text: {src['answer']}. Every question is answerable: any abstention is wrong.", "",
              f"## Per label ({where})", "",
              "| label | precision | recall | F1 | gold | predicted |", "|---|---|---|---|---|---|"]
    for label, v in c["per_label"].items():
        lines.append(f"| {label} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} | "
                     f"{v['predicted']} |")
    lines += ["", "Confusion (rows: gold; columns: the answer's verdict, `none` for no verdict):", "",
              "| gold \\ predicted | " + " | ".join([*LABELS, "none"]) + " |", "|---|" + "---|" * (len(LABELS) + 1)]
    for label, row in c["confusion"].items():
        lines.append(f"| {label} | " + " | ".join(str(row[p]) for p in [*LABELS, "none"]) + " |")
    lines += ["", f"## Retrieval of the question's own abstract among 1,000 ({where}; k=10 papers)", "",
              *retrieval_lines(s["retrieval"])]
    tok = s["tokens"]
    lines += ["", "## Cost", "",
              f"LM time per question: p50 {lat['lm_p50_s']}s, p95 {lat['lm_p95_s']}s (mean {lat['lm_mean_s']}s); "
              f"wall per question: p50 {lat['wall_p50_s']}s, p95 {lat['wall_p95_s']}s (cached answers are fast; "
              f"LM time is the model's generation time, kept in the cache entry). Prompt tokens mean "
              f"{tok['prompt_mean']}, completion tokens mean {tok['completion_mean']}.", ""]
    misses = [r for r in results if not r["metrics"]["correct"]]
    lines += [f"## Wrong answers (first {min(wrong, len(misses))} of {len(misses)}, by id)", "",
              "| id | gold | verdict | own abstract rank | question | answer |", "|---|---|---|---|---|---|"]
    for r in sorted(misses, key=lambda r: _id_key(r["id"]))[:wrong]:
        lines.append(f"| {r['id']} | {r['gold']} | {r['predicted'] or 'none'} | {r['gold_rank'] or '>10'} | "
                     f"{cell(r['question'], 100)} | {cell(r['error'] or r['answer'], 160)} |")
    return "\n".join(lines) + "\n"


def plot_report(summary: dict, path: Path) -> None:
    """Rates per gold label beside the published accuracies; the confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cm) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.4, 1]})
    groups = ["all", *summary["by_label"]]
    width = 0.8 / len(groups)
    for i, group in enumerate(groups):
        data = summary["rates"] if group == "all" else summary["by_label"][group]
        ax.bar([x + i * width for x in range(len(RATES))], [data[m] for m in RATES], width,
               label=group if group == "all" else f"gold {group}")
    for ref, style in zip(summary["reference"], (":", "--", "-."), strict=False):
        ax.axhline(ref["accuracy"], color="grey", linestyle=style, linewidth=1,
                   label=f"published accuracy, {ref['system'].split(' (')[0]}: {ref['accuracy']:.3f}")
    ax.set_xticks([x + width * (len(groups) - 1) / 2 for x in range(len(RATES))],
                  [RATE_NAMES[m] for m in RATES], rotation=25, ha="right")
    ax.set_ylim(0, 1.4)  # room above the bars for the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share of questions")
    ax.set_title(f"{summary['label']}: accuracy {summary['accuracy']:.3f}, macro-F1 {summary['macro_f1']:.3f} "
                 f"(n={summary['n']})", fontsize=9)
    ax.legend(fontsize=7, ncols=2, loc="upper left")
    confusion = summary["classification"]["confusion"]
    cols = [*LABELS, "none"]
    grid = [[confusion[g][p] for p in cols] for g in LABELS]
    cm.imshow(grid, cmap="Blues")
    top = max(max(row) for row in grid) or 1
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            cm.text(j, i, str(v), ha="center", va="center", fontsize=9, color="white" if v > top / 2 else "black")
    cm.set_xticks(range(len(cols)), cols)
    cm.set_yticks(range(len(LABELS)), LABELS)
    cm.set_xlabel("verdict")
    cm.set_ylabel("gold")
    cm.set_title("confusion", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_lines(summary: dict) -> list[str]:
    """The few lines `rag eval --set pubmedqa` prints."""
    s, r, lat = summary, summary["rates"], summary["latency"]
    return [f"PubMedQA ({s.get('selection_text') or s['n']}): accuracy {s['accuracy']:.3f} "
            f"(95% CI {s['accuracy_ci95'][0]:.3f}-{s['accuracy_ci95'][1]:.3f}), macro-F1 {s['macro_f1']:.3f}, "
            f"n={s['n']}, errors={s['errors']}",
            f"  verdict given {r['verdict_given']:.3f}, abstained {r['abstained']:.3f}, "
            f"cites its own abstract {r['cites_gold']:.3f}; retrieval R@1 {r['recall@1']:.3f}, R@5 {r['recall@5']:.3f}",
            f"  LM time per question p50 {lat['lm_p50_s']}s, p95 {lat['lm_p95_s']}s",
            "  published, handed the abstract (accuracy / macro-F1): "
            + "; ".join(f"{ref['system'].split(' (')[0]} {ref['accuracy']:.3f} / {ref['macro_f1']:.3f}"
                        for ref in s["reference"])]
