"""Pairing two eval reports: the paired bootstrap of their per-question score, per-metric means,
the questions that changed most (compare.md, compare.json, compare.png).

Works for any eval kind: the paired score is each question's metrics["headline"] (for PubMedQA,
correctness 0/1, so the difference is one of accuracy).

Left out: comparing more than two reports at once.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
from pathlib import Path

from rag.errors import EvalError
from rag.evaluation.harness import read_report, slug
from rag.evaluation.kinds import kind_of
from rag.evaluation.metrics import paired_bootstrap
from rag.evaluation.seed import SeedSet


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
    verdicts = [(by_a[i]["metrics"].get("verdict_correct"), by_b[i]["metrics"].get("verdict_correct")) for i in common]
    verdicts = [(x, y) for x, y in verdicts if x is not None and y is not None]
    if verdicts:  # yes/no questions: the headline does not score the verdict, so it is paired on its own
        result["verdict_correct"] = paired_bootstrap([x for x, _ in verdicts], [y for _, y in verdicts])
    if kind.name != SeedSet.name:  # the seed set's compare.json stays as it always was (keys are only added)
        result.update({"benchmark": kind.name, "score": kind.score_name})
        result["a"]["selection"], result["b"]["selection"] = sa.get("selection_text"), sb.get("selection_text")
    stamp = stamp or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_root) / f"{stamp}-compare-{slug(str(sa.get('label')))}-vs-{slug(str(sb.get('label')))}"
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


def verdict_line(result: dict) -> str | None:
    """The paired comparison of yes/no verdicts (seed sets), or None when no question has one in both."""
    v = result.get("verdict_correct")
    if not v:
        return None
    m = result["metrics"].get("verdict_correct", {})
    return (f"yes/no verdicts right: A {m.get('a', float('nan')):.3f}, B {m.get('b', float('nan')):.3f} "
            f"({v['mean_diff']:+.3f}, 95% CI {v['ci_low']:+.3f} to {v['ci_high']:+.3f}, p={v['p_value']:.3f}, "
            f"n={v['n']}{': significant' if v['significant'] else ''})")


def render_compare(result: dict) -> str:
    lines = [f"# {result['a']['label']} (A) vs {result['b']['label']} (B)", "",
             f"A: `{result['a']['path']}` (program {result['a']['program']})  ",
             f"B: `{result['b']['path']}` (program {result['b']['program']})", "",
             *[f"{x.upper()} ran on: {result[x]['selection']}.  " for x in ("a", "b") if result[x].get("selection")],
             f"**{verdict(result)}** (paired bootstrap over questions, 10,000 resamples).", "",
             *([f"{verdict_line(result)}.", ""] if verdict_line(result) else []),
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
