"""Prompt optimisation of the cited-answer program with DSPy, and optimised program files.

`optimize()` compiles `CitedRAG` against a labelled train set with one of:

- `bootstrap`: BootstrapFewShot, once per question shape on that shape's train questions (in a fixed,
  type-interleaved order): keeps the first BOOTSTRAP_CANDIDATES traces whose headline score is at least
  DEMO_MIN_SCORE (a yes/no one also needs the right verdict: `make_demo_metric`); `select_demos` then keeps
  MAX_DEMOS of them, answers first and at most one abstention.
- `mipro`: MIPROv2 with a small explicit budget (instruction candidates proposed
  by the LM, demo sets, a few Optuna trials on minibatches of a held-out part of
  the train set).
- `instructions`: MIPROv2 instruction-only (no demos, so nothing is added to the prompt a question
  reads): the LM proposes INSTRUCTION_CANDIDATES instructions per predictor (the current one is
  candidate 0), and Optuna tries INSTRUCTION_TRIALS combinations on minibatches of a fixed, held-out
  part of train (INSTRUCTION_VAL questions), fully scoring the best every few trials.
- `gepa`: GEPA, reflective instruction evolution from the metric's textual
  feedback (missing facts, wrong or missing citations, should have abstained).
- `knn`: demos chosen per question by similarity (rag/answer/knn.py): the program's passing traces on
  train (answers and correct declines, from a run or from `--fit-on` reports), shortened to what they
  cite, each with its question's embedding; at answer time the nearest KNN_K of the question's shape.
- `calibrate`: the yes/no verdict's decisions (label source, labels, biases; rag.calibrate).
- `fallback`: `declined_fallback`, per question shape the best similarity from which the evidence,
  quoted and cited, answers in place of a claim-check decline (rag.calibrate.fit_fallback).
- `abstain`: `min_score`, per question shape the best similarity below which the program declines before
  the model (rag.calibrate.fit_min_score), fitted on a run that answered every question (RAG_MIN_SCORE=0);
  the steps after it fit on the questions it leaves to the model.

Steps chain with "+" (`bootstrap+fallback`), each on the program the one before it compiled. `calibrate`,
`fallback`, `abstain` and `knn` fit from a run of the program on train, or (`--fit-on`) from train eval reports with no
model call; `--from` starts from a saved program instead of the baseline, keeping its demos and decisions.

Demos are shortened before saving (`shorten_demo`): each keeps only the passages
its answer cites (their sentences that hold the answer) plus one distractor, renumbered.
On the local model every prompt token costs time, and DSPy puts demos in the
fixed part of the prompt (system message and earlier turns, before the
passages and question), so llama.cpp's prompt cache reads them once.

`optimize_and_save` is the whole `rag optimize` run: compile on train, save the
program file with its provenance (`rag.answer.program_files`), then score it on dev and
record the dev score in that provenance.

Left out: fine-tuning, optimising the follow-up rewriter.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy

from rag import calibrate
from rag.answer.claims import check_claims
from rag.answer.knn import DEMO_FIELDS, DemoPool, encode_vector
from rag.answer.program import (
    ABSTAIN_TEXT,
    CLAIM_CHECK_DECLINES,
    NO_CLOSE_PASSAGE,
    PREDICTORS,
    VERDICT_SOURCES,
    CitedRAG,
    as_numbers,
    map_citations,
    names_found,
    strip_verdict,
)
from rag.answer.program_files import load_program, save_program_file
from rag.answer.shapes import parse_verdict, question_shape
from rag.errors import ProgramError
from rag.evaluation.harness import read_report, run_eval
from rag.evaluation.metrics import TYPES, score_row
from rag.files import sha256_file
from rag.pipeline import Answer
from rag.settings import ROOT
from rag.text import content_words, sentences

log = logging.getLogger(__name__)

DEMO_MIN_SCORE = 0.7
MAX_DEMOS = 3
BOOTSTRAP_CANDIDATES = 6  # traces bootstrapped, of which select_demos keeps MAX_DEMOS
DEMO_PASSAGE_CHARS = 320


# --- examples and the metric ----------------------------------------------------------

def to_examples(rows: list[dict]) -> list[dspy.Example]:
    return [dspy.Example(question=r["question"], label=r).with_inputs("question") for r in rows]


def interleave(rows: list[dict]) -> list[dict]:
    """Rows in a fixed order alternating question types, so early bootstrap traces mix them."""
    by_type: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by_type.setdefault(r["type"], []).append(r)
    out: list[dict] = []
    while any(by_type.values()):
        for t in TYPES:
            if by_type.get(t):
                out.append(by_type[t].pop(0))
    return out


def make_metric(embed: Any):
    """The optimiser's metric: the headline score of one prediction (see rag.evaluation.metrics)."""

    def metric(example: dspy.Example, pred: Any, trace: Any = None) -> float:
        return score_row(example.label, Answer.from_prediction(example.question, pred).to_json(), embed=embed)["headline"]

    return metric


def gold_verdict(label: dict) -> str | None:
    """The yes / no / maybe a labelled row's reference gives (its `verdict`, else the answer's opening word);
    None for an unanswerable row or a reference without one."""
    if label.get("type") == "unanswerable":
        return None
    return label.get("verdict") or parse_verdict(label.get("answer") or "")


def make_demo_metric(embed: Any):
    """The bootstrap's bar for a demo: the headline, but 0 for a yes/no answer whose verdict is wrong. The headline
    does not score the verdict, and the model says "yes" to most questions: without this, the passing yes/no traces
    are mostly "yes" to questions whose answer is "no", and they would teach exactly that."""
    headline = make_metric(embed)

    def metric(example: dspy.Example, pred: Any, trace: Any = None) -> float:
        gold = gold_verdict(example.label)
        if gold and question_shape(example.question) == "yesno" and getattr(pred, "verdict", None) != gold:
            return 0.0
        return headline(example, pred, trace)

    return metric


def feedback(label: dict, scores: dict, pred: dict) -> str:
    """Textual feedback for GEPA's reflection: what the answer got wrong, in plain words."""
    if label["type"] == "unanswerable":
        return ("Correct: the passages do not answer this and the answer abstained." if scores["abstained"]
                else "Wrong: the passages do not answer this question; the answer should have been exactly "
                     "'The papers here do not answer this question.'")
    if scores["abstained"]:
        return (f"Wrong: the answer abstained, but the passages do answer it. Expected: {label.get('answer')}")
    notes = []
    missing = [f for f in label["facts"] if f not in (pred.get("answer") or "")]
    if scores.get("fact_recall") is not None and scores["fact_recall"] < 1:
        notes.append(f"The answer misses key facts ({'; '.join(missing[:3])}). Reference: {label.get('answer')}")
    if not pred.get("citations"):
        notes.append("Every claim must cite the passage it comes from with [n].")
    elif (scores.get("citation_precision") or 0) < 1:
        notes.append("Some citations point at passages from papers that do not hold the answer.")
    if scores.get("faithfulness") is not None and scores["faithfulness"] < 1:
        notes.append("Some sentences are not supported by the passage they cite; stay close to the passage text.")
    return " ".join(notes) or "Good: correct, cited and supported."


def make_feedback_metric(embed: Any):
    def metric(gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None):
        d = Answer.from_prediction(gold.question, pred).to_json()
        scores = score_row(gold.label, d, embed=embed)
        return dspy.Prediction(score=scores["headline"], feedback=feedback(gold.label, scores, d))

    return metric


# --- short demos ----------------------------------------------------------------------

_PASSAGE = re.compile(r"^\[(\d+)\] (.*)$")


def _cut(text: str, limit: int = DEMO_PASSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > limit // 3 else text[:limit].rsplit(" ", 1)[0] + " ..."


def _focus(passage: str, answer: str, limit: int = DEMO_PASSAGE_CHARS) -> str:
    """The passage's title and the sentences that hold the answer's words, in order, within `limit`.

    Cutting a cited passage to its first sentences would often cut away the very
    sentence the answer came from, and the demo would teach unsupported answers."""
    title, sep, body = passage.partition(": ")
    if not sep or len(passage) <= limit:
        return _cut(passage, limit)
    wanted = set(content_words(re.sub(r"\[\d+\]", " ", answer)))
    parts = sentences(body)
    ranked = sorted(range(len(parts)), key=lambda i: (-sum(w in wanted for w in set(content_words(parts[i]))), i))
    keep, size = [], len(title) + 2
    for i in ranked:
        if size + len(parts[i]) + 1 > limit and keep:
            continue
        keep.append(i)
        size += len(parts[i]) + 1
    text = " ".join(parts[i] for i in sorted(keep))
    return f"{title}: {_cut(text, limit - len(title) - 2)}"


def shorten_demo(demo: dict, distractors: int = 1, limit: int = DEMO_PASSAGE_CHARS) -> dict:
    """Keep the cited passages (their sentences that hold the answer, within `limit` characters each) plus
    `distractors` others (one more when none is cited), renumbered. Cited: the answer's (or a yes/no reply's
    finding's) [n] markers, then the reply's own `sources`, which is where the evidence-first program's replies
    cite (their text has no markers); failing both, the passages its sentences are copied from (`attribute`)."""
    passages: dict[int, str] = {}
    for line in str(demo.get("passages", "")).splitlines():
        m = _PASSAGE.match(line)
        if m:
            passages[int(m.group(1))] = m.group(2)
    text_fields = [f for f in ("answer", "finding") if f in demo]
    answer = " ".join(str(demo[f] or "") for f in text_fields)
    marked = [int(x) for x in re.findall(r"\[(\d+)\]", answer)]
    cited = [n for n in dict.fromkeys(marked + as_numbers(demo.get("sources"))) if n in passages]
    if not cited and answer.strip():  # as the program cites such a reply: the passages its sentences come from
        numbered = sorted(passages)
        via = map_citations(answer, [], [passages[n] for n in numbered])
        cited = [] if via.abstained else [numbered[i - 1] for i in via.numbers]
    others = [n for n in passages if n not in cited]
    keep = cited + others[: distractors if cited else distractors + 1]
    if not passages:
        return dict(demo)
    order = sorted(keep)
    renumber = {old: new for new, old in enumerate(order, 1)}
    short = dict(demo)
    short["passages"] = "\n".join(
        f"[{renumber[n]}] {_focus(passages[n], answer, limit) if n in cited else _cut(passages[n], limit)}"
        for n in order)
    for f in text_fields:
        short[f] = re.sub(r"\[(\d+)\]", lambda m: f"[{renumber.get(int(m.group(1)), int(m.group(1)))}]",
                          str(demo[f] or ""))
    if "sources" in short:
        short["sources"] = [renumber[n] for n in cited]
    return short


def demo_supported(demo: dict) -> bool:
    """A shortened demo still holds its answer: the answer's (or finding's) content words appear in its passages."""
    body = demo.get("answer") if "answer" in demo else demo.get("finding", "")
    words = content_words(re.sub(r"\[\d+\]", " ", str(body or "")))
    if not words or _abstains(demo):
        return True
    text = str(demo.get("passages", "")).lower()
    return sum(w in text for w in words) / len(words) >= 0.6


def _abstains(demo: dict) -> bool:
    """The demo's answer is an abstention as the program and the metric judge it (any phrasing). A list
    demo (no answer text: its lines are rendered from the passages it picks) abstains when it picks none."""
    if str(demo.get("answerable")).lower() == "false":
        return True
    if "answer" not in demo:
        return not as_numbers(demo.get("sources"))
    passages = [m.group(2) for m in map(_PASSAGE.match, str(demo.get("passages", "")).splitlines()) if m]
    return map_citations(str(demo.get("answer", "")), demo.get("sources"), passages).abstained


def select_demos(demos: list[dict], k: int = MAX_DEMOS) -> list[dict]:
    """At most `k` shortened, supported demos, mixing answers and abstentions.

    Bootstrapping keeps the first traces that pass, and on the local model the
    first to pass are mostly abstentions (an easy full score); a demo set of only
    abstentions teaches the model to abstain (MIPROv2's program, left with one
    abstention demo, abstained on 62% of answerable dev questions). Keep at most
    one abstention and only beside an answered demo, the answered ones first
    (shortest first: prompt length is latency), in their original order."""
    short = [d for d in (shorten_demo(d) for d in demos) if demo_supported(d)]
    answered = sorted((d for d in short if not _abstains(d)), key=lambda d: len(json.dumps(d)))
    if not answered:
        return []
    abstain = [d for d in short if _abstains(d)]
    picked = {id(d) for d in (answered[: k - 1] + abstain[:1] if abstain else answered[:k])}
    return [d for d in short if id(d) in picked]


# --- optimising -----------------------------------------------------------------------

def counted(metric: Any, bar: Any) -> Any:
    """`metric`, ticking `bar` (a tqdm) once per scored answer with the running mean score: the
    optimisers run quietly for tens of minutes, and this is how the user sees them move."""
    seen: list[float] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = metric(*args, **kwargs)
        seen.append(float(getattr(result, "score", result)))
        bar.set_postfix_str(f"mean score {sum(seen) / len(seen):.2f}", refresh=False)
        bar.update(1)
        return result

    return wrapped


def check_steps(optimizer: str) -> list[str]:
    """The steps of `optimizer` ("bootstrap+fallback"); ProgramError naming the choices for an unknown one."""
    steps = optimizer.split("+")
    for step in steps:
        if step not in COMPILERS:
            raise ProgramError(f"unknown optimizer {step!r}; use one of {', '.join(COMPILERS)}, or several joined "
                               f"by + (e.g. bootstrap+fallback)")
    return steps


def compile_program(program: CitedRAG, optimizer: str, train_rows: list[dict], embed: Any, lm: Any,
                    *, seed: int = 0, progress: bool = False, swap: Swap | None = None) -> CitedRAG:
    """Compile `program` with `optimizer` on `train_rows`; demos come back shortened. `optimizer` may chain
    steps with "+" ("bootstrap+calibrate": demos first, then the verdict's decisions on the result). The
    `fallback` and `abstain` steps need `swap` (see `Swap`)."""
    if {"fallback", "abstain"} & set(check_steps(optimizer)) and swap is None:
        raise ProgramError("the fallback and abstain steps search the index: they need it (Swap)")
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"{optimizer}: answers scored", unit="answer", disable=not progress, file=sys.stderr)
    try:
        return _compile(program, optimizer, train_rows, embed, lm, seed, bar, swap)
    finally:
        bar.close()


def _bootstrap(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any) -> CitedRAG:
    """BootstrapFewShot once per question shape, on that shape's rows, with `make_demo_metric`'s bar (a yes/no
    trace must have the right verdict): each shape's predictor gets its own candidates (run over all rows at
    once, the first few passing traces, mostly specific answers and early declines, ended it before a yes/no
    or list answer was tried). A shape none of whose answers passes keeps the demos it had."""
    compiled = program.deepcopy()
    for shape, name in PREDICTORS.items():
        subset = [r for r in rows if question_shape(r["question"]) == shape]
        if not subset:
            continue
        opt = dspy.BootstrapFewShot(metric=counted(make_demo_metric(embed), bar), metric_threshold=DEMO_MIN_SCORE,
                                    max_bootstrapped_demos=BOOTSTRAP_CANDIDATES, max_labeled_demos=0, max_rounds=1)
        found = getattr(opt.compile(program, trainset=to_examples(subset)), name).demos
        if found:
            getattr(compiled, name).demos = found
    return compiled


def _mipro(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any) -> CitedRAG:
    # A budget for 2 CPU cores: 3 instruction candidates, 2 demo sets, 6 trials on minibatches of 8.
    train, val = rows[: len(rows) // 2], rows[len(rows) // 2:]
    opt = dspy.MIPROv2(metric=counted(make_metric(embed), bar), auto=None, num_candidates=3, max_bootstrapped_demos=2,
                       max_labeled_demos=0, num_threads=1, seed=seed, verbose=False, metric_threshold=DEMO_MIN_SCORE)
    return opt.compile(program, trainset=to_examples(train), valset=to_examples(val), num_trials=6,
                       minibatch_size=min(8, len(val)), minibatch_full_eval_steps=3,
                       data_aware_proposer=False, view_data_batch_size=3)


INSTRUCTION_CANDIDATES = 3  # per predictor, the current instruction included
INSTRUCTION_TRIALS = 8
INSTRUCTION_VAL = 48  # held-out train questions; each trial answers a minibatch of them
INSTRUCTION_MINIBATCH = 16


def instruction_split(rows: list[dict], val_size: int = INSTRUCTION_VAL) -> tuple[list[dict], list[dict]]:
    """(proposal rows, validation rows) of the type-interleaved `rows`: every sixth row, up to `val_size`,
    scores the candidates; the rest inform the proposer. Fixed, so a rerun scores the same questions."""
    val_ids = {id(r) for r in rows[1::6][:val_size]}
    return [r for r in rows if id(r) not in val_ids], [r for r in rows if id(r) in val_ids]


def _instructions(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any) -> CitedRAG:
    """MIPROv2 instruction-only. The proposer sees neither the program's source nor a data summary (on a
    1.5B model those are long calls that wander); it sees the signature and one of MIPROv2's prompting tips."""
    train, val = instruction_split(rows)
    opt = dspy.MIPROv2(metric=counted(make_metric(embed), bar), auto=None, num_candidates=INSTRUCTION_CANDIDATES,
                       max_bootstrapped_demos=0, max_labeled_demos=0, num_threads=1, seed=seed, verbose=False,
                       metric_threshold=DEMO_MIN_SCORE)
    return opt.compile(program, trainset=to_examples(train), valset=to_examples(val), num_trials=INSTRUCTION_TRIALS,
                       minibatch_size=min(INSTRUCTION_MINIBATCH, len(val)), minibatch_full_eval_steps=4,
                       program_aware_proposer=False, data_aware_proposer=False, fewshot_aware_proposer=False)


KNN_PASSAGE_CHARS = 240  # a KNN demo is read with every question: its passages are cut harder than fixed demos'


def _shape(row: dict) -> str | None:
    """A report row's question shape, as its answer recorded it."""
    return (row.get("prediction") or {}).get("shape") or row.get("shape")


def knn_demo(row: dict) -> dict | None:
    """The reply one eval result row (report format) shows, as a demo of its shape's predictor, its passages cut to
    the ones the answer cites (`shorten_demo` with no distractor); a decline shows its first passage and
    `answerable: false`. None for a row that cannot teach: an error, a score under DEMO_MIN_SCORE, a wrong verdict,
    an answer the evidence stood in for (not the model's reply), or one its cut passages do not hold."""
    pred, shape, metrics = row.get("prediction") or {}, _shape(row), row.get("metrics") or {}
    passages = {int(p["n"]): f"{p['title']}: {p['text']}" for p in pred.get("passages") or []}
    if (row.get("error") or shape not in DEMO_FIELDS or not passages or (metrics.get("headline") or 0) < DEMO_MIN_SCORE
            or metrics.get("verdict_correct") == 0 or (pred.get("provenance") or {}).get("fallback")):
        return None
    demo: dict[str, Any] = {"question": row["question"], "verdict": None}
    if pred.get("abstained"):
        demo.update(passages=f"[1] {_cut(passages[min(passages)], KNN_PASSAGE_CHARS)}", answerable=False,
                    answer=ABSTAIN_TEXT, finding=ABSTAIN_TEXT, sources=[])
    else:
        if shape == "yesno" and pred.get("verdict") not in ("yes", "no", "maybe"):
            return None
        short = shorten_demo({"passages": "\n".join(f"[{n}] {t}" for n, t in sorted(passages.items())),
                              "answer": str(pred.get("answer") or ""), "sources": []},
                             distractors=0, limit=KNN_PASSAGE_CHARS)
        if not short["sources"]:
            return None  # no valid citation to teach
        text = strip_verdict(short["answer"]) if shape == "yesno" else short["answer"]
        demo.update(passages=short["passages"], answerable=True, answer=text, finding=text,
                    verdict=pred.get("verdict"), sources=short["sources"])
        shown = {int(m.group(1)): m.group(2) for m in map(_PASSAGE.match, demo["passages"].splitlines()) if m}
        if shape != "list" and not (demo_supported(demo)
                                    and all(c.supported for c in check_claims(text, shown, row["question"]))):
            return None  # the cut passages must still hold every name and number the demo's answer gives
    return {f: demo[f] for f in DEMO_FIELDS[shape]}


def with_knn(program: CitedRAG, results: list[dict], embed: Any, reports: list[str] | None = None) -> CitedRAG:
    """A copy of `program` choosing its demos per question from the passing traces in `results` (eval result rows),
    and the pool's make-up in `.knn_fit` (it goes into the program file's provenance)."""
    demos: dict[str, tuple] = {}  # question -> (shape, id, demo), the first passing trace of each question
    for r in results:
        demo = knn_demo(r)
        if demo is not None and r["question"] not in demos:
            demos[r["question"]] = (_shape(r), r.get("id"), demo)
    if not demos:
        raise ProgramError("no passing answer or correct decline to make a demo of; run `rag eval` on train first")
    pool: dict[str, list[dict]] = {}
    for (shape, rid, demo), vector in zip(demos.values(), embed(list(demos)), strict=True):
        pool.setdefault(shape, []).append({**demo, "id": rid, "vector": encode_vector(vector)})
    program = program.deepcopy()
    program.knn = DemoPool(pool)
    declines = sum(d["answerable"] is False for shape_demos in pool.values() for d in shape_demos)
    program.knn_fit = {"k": program.knn.k, "rows": len(results), "demos": program.knn.sizes(), "declines": declines,
                       **({"reports": reports} if reports else {})}
    log.info("knn demo pool from %d train rows: %s", len(results), program.knn_fit)
    return program


def _knn(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any) -> CitedRAG:
    """Run `program` (its fixed demos, no KNN ones) on the train rows and keep its passing traces as the pool."""
    base = program.deepcopy()
    base.knn = None
    results = []
    for row in rows:
        answer = Answer.from_prediction(row["question"], base(question=row["question"])).to_json()
        metrics = score_row(row, answer, embed=embed)
        bar.set_postfix_str(f"mean score {metrics['headline']:.2f}", refresh=False)
        bar.update(1)
        results.append({"id": row["id"], "question": row["question"], "shape": answer["shape"], "prediction": answer,
                        "metrics": metrics})
    return with_knn(program, results, embed)


def _gepa(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any) -> CitedRAG:
    train, val = rows[: len(rows) // 2], rows[len(rows) // 2:]
    opt = dspy.GEPA(metric=counted(make_feedback_metric(embed), bar), max_metric_calls=60, reflection_lm=lm,
                    reflection_minibatch_size=3, num_threads=1, seed=seed, track_stats=False)
    return opt.compile(program, trainset=to_examples(train), valset=to_examples(val))


def _calibrate(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any) -> CitedRAG:
    """The yes/no verdict's decisions: run `program` on the answerable yes/no train rows, read the label
    probabilities at the reply's verdict and from the judge step, and keep the source, labels and biases
    whose leave-one-out accuracy on these rows is best (rag.calibrate.choose_decisions); the sampled
    verdict when none beats it."""
    program = program.deepcopy()
    program.verdict_bias = None
    records = []
    for row in rows:
        gold = gold_verdict(row)
        if gold is None or question_shape(row["question"]) != "yesno":
            continue
        pred = program(question=row["question"])
        bar.update(1)
        if pred.abstained or not pred.verdict_probs:
            continue
        judge = pred.judge_probs or program.judge_verdict(row["question"], strip_verdict(pred.answer))
        records.append({"id": row["id"], "gold": gold, "sampled": pred.sampled_verdict, "probs": pred.verdict_probs,
                        "judge": judge})
    return calibrated(program, records)


def calibrated(program: CitedRAG, records: list[dict], sources: list[str] | None = None,
               verdict_sources: Sequence[str] = VERDICT_SOURCES) -> CitedRAG:
    """A copy of `program` with the verdict decisions chosen on `records` among `verdict_sources` (see
    rag.calibrate.choose_decisions) and the table behind them in `.calibration` (it goes into the program
    file's provenance)."""
    decisions, table = calibrate.choose_decisions(records, sources=verdict_sources)
    log.info("verdict calibration on %d yes/no train rows: %s", len(records), table)
    program = program.deepcopy()
    program.set_decisions(decisions)
    program.calibration = {**table, **({"reports": sources} if sources else {})}
    return program


def train_results(paths: Sequence[str | Path], dev_ids: set[str]) -> list[dict]:
    """The results of train eval reports, for fitting decisions without running the model again. A report
    holding a dev question, or of PubMedQA's test half, is refused: what ships is chosen on train and measured
    on dev and test."""
    results: list[dict] = []
    for path in paths:
        summary, rows = read_report(path)
        split = (summary.get("selection") or {}).get("split")
        if summary.get("benchmark") == "pubmedqa" and split != "train":
            raise ProgramError(f"report {path} is of PubMedQA's {split} half; fit on `rag eval --set pubmedqa "
                               f"--split train` reports only")
        leaked = sorted({r["id"] for r in rows} & dev_ids)
        if leaked:
            raise ProgramError(f"report {path} holds dev questions ({', '.join(leaked[:3])}); fit on train reports "
                               f"only (dev measures what ships)")
        results += rows
    return results


def records_from_reports(paths: Sequence[str | Path], dev_ids: set[str],
                         results: list[dict] | None = None) -> list[dict]:
    """The verdict records (rag.calibrate.verdict_records) of train eval reports (see `train_results`; `results`:
    those reports' results, already read)."""
    records = calibrate.verdict_records(results if results is not None else train_results(paths, dev_ids))
    if not records:
        raise ProgramError(f"no answered yes/no question with label probabilities in {', '.join(map(str, paths))}; "
                           f"run `rag eval` on a train set with the local model first")
    return records


def check_fit_on(optimizer: str, paths: Sequence[str | Path], dev_ids: set[str]) -> list[dict]:
    """Every step can fit from reports, and the reports are train reports that hold what those steps read;
    returns their results."""
    steps = check_steps(optimizer)
    model_steps = [step for step in steps if step not in FIT_FROM_REPORTS]
    if model_steps:
        raise ProgramError(f"--fit-on fits {' and '.join(FIT_FROM_REPORTS)} from eval reports; {model_steps[0]} "
                           f"runs the model: drop --fit-on, or run it first and fit on its program with --from")
    results = train_results(paths, dev_ids)
    if "calibrate" in steps:
        records_from_reports(paths, dev_ids, results)
    return results


# --- the extractive answer in place of a claim-check decline ---------------------------------

class Swap:
    """What the evidence's own answer (rag/answer/extractive.py: no model call) would score on a labelled
    question, and the question's best dense similarity: the two things `declined_fallback` is fitted on."""

    def __init__(self, pipe: Any):
        self.pipe = pipe

    def __call__(self, label: dict) -> tuple[float, float]:
        q = label["question"]
        found = self.pipe.search(q)
        answer = Answer.from_prediction(q, self.pipe.extractive(q, found)).to_json()
        score = score_row(label, answer, embed=lambda texts: self.pipe.embedder.encode(texts))["headline"]
        return score, round(float(found.best_similarity), 4)

    def reach(self, question: str) -> tuple[float, bool]:
        """The question's best dense similarity, and whether a name it asks about is in the retrieved passages
        (such a question is never declined before the model: CitedRAG.forward)."""
        found = self.pipe.search(question)
        return (round(float(found.best_similarity), 4),
                bool(names_found(question, [f"{h.paper.title} {h.text}" for h in found.hits])))


def declined_by_checks(pred: dict) -> bool:
    """A report row's prediction that the claim checks declined, whether or not the evidence then stood in."""
    prov = pred.get("provenance") or {}
    return prov.get("abstain_reason") in CLAIM_CHECK_DECLINES or bool(prov.get("fallback") == "extractive"
                                                          and prov.get("declined_draft"))


def _item(label: dict, shape: str, base: float, declined: bool, swap: Swap) -> dict:
    item = {"id": label["id"], "shape": shape, "base": base, "swap": None, "sim": None,
            "unanswerable": label["type"] == "unanswerable"}
    if declined:
        item["swap"], item["sim"] = swap(label)
    return item


def verdict_outcome(label: dict, declined: bool, draft: str | None, abstained: bool,
                    verdict: str | None) -> tuple[str, str, str | None] | None:
    """("draft" or "own", gold, said) of one answerable yes/no train question with a gold verdict: the verdict
    of the draft the claim checks declined, or of the answer given; None for anything else."""
    gold = gold_verdict(label)
    if gold is None:
        return None
    if declined:
        said = parse_verdict(draft or "")
        return None if said is None else ("draft", gold, said)
    return None if abstained else ("own", gold, verdict)


def report_verdict_outcome(r: dict) -> tuple[str, str, str | None] | None:
    """`verdict_outcome` of a report row."""
    pred = r.get("prediction") or {}
    if r.get("shape") != "yesno" or r.get("error"):
        return None
    declined = declined_by_checks(pred)
    draft = ((pred.get("provenance") or {}).get("declined_draft") or {}).get("answer")
    # an answer the evidence stood in for had no verdict of its own in this run unless it kept the draft's
    return verdict_outcome({"answer": r.get("reference"), "type": r.get("type")}, declined, draft,
                           bool(pred.get("abstained")), pred.get("verdict"))


def _verdicts_right(pairs: list[tuple[str, str | None]]) -> dict:
    return {"n": len(pairs), "right": sum(said == gold for gold, said in pairs),
            "balanced": round(calibrate.verdict_balance(pairs), 4),
            "by_gold": {lab: [sum(s == g for g, s in pairs if g == lab), sum(g == lab for g, _ in pairs)]
                        for lab in sorted({g for g, _ in pairs})}}


def fallback_items(results: list[dict], swap: Swap) -> list[dict]:
    """One item per report row (rag.calibrate.fit_fallback): its headline as declined, and for a claim-check
    decline the extractive answer's headline and the question's similarity. A row the evidence already
    answered in place of a decline counts as the decline it was (an abstention's headline)."""
    items = []
    for r in results:
        if r.get("error"):
            continue
        label = {"id": r["id"], "question": r["question"], "type": r["type"], "answer": r.get("reference"),
                 "facts": r.get("facts") or [], "gold_paper_ids": r.get("gold_paper_ids") or []}
        if "headline" not in (r.get("metrics") or {}):
            raise ProgramError(f"report row {r['id']} has no headline score: fit the fallback on `rag eval` reports "
                               f"of a labelled set (eval/train.jsonl), not PubMedQA's")
        declined = declined_by_checks(r.get("prediction") or {})
        base = (1.0 if r["type"] == "unanswerable" else 0.0) if declined else r["metrics"]["headline"]
        items.append({**_item(label, r["shape"], base, declined, swap), "verdict": report_verdict_outcome(r)})
    return items


def _fallback(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any,
              swap: Swap) -> CitedRAG:
    """`declined_fallback` fitted on a run of `program` over the train rows (list questions have no fallback)."""
    program = program.deepcopy()
    program.declined_fallback = {}
    metric, items = make_metric(embed), []
    for row in rows:
        shape = question_shape(row["question"])
        if shape == "list":
            continue
        example = to_examples([row])[0]
        pred = program(question=row["question"])
        bar.update(1)
        declined = bool(pred.abstained and pred.abstain_reason in CLAIM_CHECK_DECLINES)
        verdict = verdict_outcome(row, declined, getattr(pred, "draft_answer", None), bool(pred.abstained),
                                  getattr(pred, "verdict", None)) if shape == "yesno" else None
        items.append({**_item(row, shape, metric(example, pred), declined, swap), "verdict": verdict})
    return with_fallback(program, items)


def with_fallback(program: CitedRAG, items: list[dict], reports: list[str] | None = None) -> CitedRAG:
    """A copy of `program` with `declined_fallback` fitted on `items`, and what it was fitted on in
    `.fallback_fit` (it goes into the program file's provenance)."""
    thresholds = calibrate.fit_fallback(items)
    base, new = [i["base"] for i in items], calibrate.apply_fallback(items, thresholds)
    outcomes = [i["verdict"] for i in items if i.get("verdict")]
    drafts = [(gold, said) for kind, gold, said in outcomes if kind == "draft"]
    own = [(gold, said) for kind, gold, said in outcomes if kind == "own"]
    program = program.deepcopy()
    program.set_decisions({"declined_fallback": thresholds,
                           "fallback_verdict": calibrate.choose_fallback_verdict(drafts, own)})
    n = max(len(items), 1)
    program.fallback_fit = {
        "rows": len(items), "declines": sum(i["swap"] is not None for i in items),
        "swapped": sum(calibrate.swapped(i, thresholds) for i in items),
        "chosen": thresholds, "train_headline": {"declined": round(sum(base) / n, 4), "fallback": round(sum(new) / n, 4)},
        "fallback_verdict": program.fallback_verdict,
        "verdicts_right": {"declined_drafts": _verdicts_right(drafts), "answers": _verdicts_right(own)},
        **({"reports": reports} if reports else {})}
    log.info("declined_fallback on %d train rows: %s", len(items), program.fallback_fit)
    return program


# --- the minimum similarity below which the program declines before the model ---------------------

def min_score_items(results: list[dict], swap: Swap) -> list[dict]:
    """One item per report row (rag.calibrate.fit_min_score): its headline as answered, its similarity, whether
    the run declined it before the model (below the run's own minimum: its answered headline is unknown)."""
    items = []
    for r in results:
        if r.get("error"):
            continue
        if "headline" not in (r.get("metrics") or {}):
            raise ProgramError(f"report row {r['id']} has no headline score: fit the minimums on `rag eval` reports "
                               f"of a labelled set (eval/train.jsonl), not PubMedQA's")
        sim, exempt = swap.reach(r["question"])
        early = ((r.get("prediction") or {}).get("provenance") or {}).get("abstain_reason") == NO_CLOSE_PASSAGE
        items.append({"id": r["id"], "shape": r["shape"], "sim": sim, "exempt": exempt, "early": early,
                      "unanswerable": r["type"] == "unanswerable", "base": r["metrics"]["headline"]})
    return items


def _abstain(program: CitedRAG, rows: list[dict], embed: Any, lm: Any, seed: int, bar: Any,
             swap: Swap) -> CitedRAG:
    """`min_score` per shape, fitted on a run of `program` over the train rows that declines none before the model."""
    run = program.deepcopy()
    run.min_score, run.min_scores = -1.0, {}
    metric, items = make_metric(embed), []
    for row in rows:
        pred = run(question=row["question"])
        bar.update(1)
        sim, exempt = swap.reach(row["question"])
        items.append({"id": row["id"], "shape": question_shape(row["question"]), "sim": sim, "exempt": exempt,
                      "early": False, "unanswerable": row["type"] == "unanswerable",
                      "base": metric(to_examples([row])[0], pred)})
    return with_min_score(program, items, program.min_score)


def with_min_score(program: CitedRAG, items: list[dict], current: float, reports: list[str] | None = None) -> CitedRAG:
    """A copy of `program` with `min_score` per shape fitted on `items` (`current`, the setting, kept for a shape
    where no other minimum gains), and what it was fitted on in `.min_score_fit` (it goes into the program file's
    provenance)."""
    thresholds = calibrate.fit_min_score(items, current)
    program = program.deepcopy()
    program.set_decisions({"min_score": thresholds})
    n = max(len(items), 1)
    declined = [i for i in items if calibrate.early_declined(i, thresholds)]
    program.min_score_fit = {
        "rows": len(items), "declined_in_run": sum(i["early"] for i in items), "declined": len(declined),
        "declined_answerable": sum(not i["unanswerable"] for i in declined), "setting": current, "chosen": thresholds,
        "train_headline": {"run": round(sum(i["base"] for i in items) / n, 4),
                           "min_score": round(sum(calibrate.apply_min_score(items, thresholds)) / n, 4)},
        **({"reports": reports} if reports else {})}
    log.info("min_score on %d train rows: %s", len(items), program.min_score_fit)
    return program


# The optimisers, by name (`rag optimize --optimizer`): (program, train rows, embed, lm, seed, bar) -> compiled;
# `fallback` and `abstain` also take the Swap.
COMPILERS: dict[str, Callable[..., CitedRAG]] = {"bootstrap": _bootstrap, "mipro": _mipro,
                                                 "instructions": _instructions, "gepa": _gepa, "knn": _knn,
                                                 "calibrate": _calibrate, "fallback": _fallback, "abstain": _abstain}
FIT_FROM_REPORTS = ("calibrate", "fallback", "knn", "abstain")  # the steps `--fit-on` can fit without running the model
SEARCHING = ("fallback", "abstain")  # the steps that also take the Swap (they search the index)


def _compile(program: CitedRAG, optimizer: str, train_rows: list[dict], embed: Any, lm: Any, seed: int,
             bar: Any, swap: Swap | None = None) -> CitedRAG:
    rows = interleave(train_rows)
    # DSPy's proposers print() their internals (program source, proposed instructions) to
    # stdout, which is the command's output: they go to stderr with --verbose, else nowhere.
    chatter = sys.stderr if log.isEnabledFor(logging.INFO) else io.StringIO()
    compiled = program
    with dspy.context(lm=lm, max_history_size=20, max_trace_size=20), contextlib.redirect_stdout(chatter):
        for step in optimizer.split("+"):
            extra = {"swap": swap} if step in SEARCHING else {}
            compiled = COMPILERS[step](compiled, rows, embed, lm, seed, bar, **extra)
    for predictor in compiled.predictors():
        demos = select_demos([d.toDict() if hasattr(d, "toDict") else dict(d) for d in predictor.demos])
        # A trace keeps everything the prediction had; the label and the reply's logprobs are not demo fields.
        predictor.demos = [dspy.Example(**{k: v for k, v in d.items() if k not in ("label", "logprobs")}) for d in demos]
        predictor.lm = None
    return compiled


def describe(program: CitedRAG) -> dict:
    """Instructions length and demo count of the answer predictor (for notes and logs)."""
    p = program.answer
    return {"demos": len(p.demos), "instructions_chars": len(p.signature.instructions)}


def timed_compile(*args, **kwargs) -> tuple[CitedRAG, float]:
    t0 = time.perf_counter()
    compiled = compile_program(*args, **kwargs)
    return compiled, time.perf_counter() - t0


def portable(path: str | Path) -> str:
    """`path` relative to the project root when inside it, so provenance reads the same in any clone."""
    p = Path(str(path)).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def optimize_and_save(pipe: Any, optimizer: str, train: list[dict], train_path: str | Path, out: Path, *,
                      dev: list[dict] | None = None, dev_path: str | Path | None = None,
                      reports: str | Path, seed: int = 0, progress: bool = False,
                      fit_on: list[str | Path] | None = None, verdict_sources: Sequence[str] = VERDICT_SOURCES,
                      unsupported_verdict: str | None = None, start: Path | None = None,
                      for_corpus: bool = False, say: Callable[[str], None] = log.info) -> tuple[Path, dict | None]:
    """Compile `pipe`'s program with `optimizer` on `train`, save it to `out` with its provenance,
    then (with `dev`) score it on dev and add the dev score to the provenance. `start` (a program file)
    is compiled instead of the baseline, its demos and decisions kept unless a step refits them. With
    `fit_on` (steps calibrate and fallback only) the decisions are fitted on those train eval reports
    instead of new runs; calibrate chooses among `verdict_sources`, and `unsupported_verdict` (decline or
    keep) is then set as given, not fitted. `for_corpus`: the program applies to the index's corpus only
    (`provenance.corpus`; `auto` passes it over for any other corpus).

    Returns the program path and the dev report's path (None without dev). `pipe` should run the
    baseline program on a disk-cached LM; its program is replaced by the compiled one.
    """
    embed = lambda texts: pipe.embedder.encode(texts)  # noqa: E731
    # without --dev, --fit-on loads no model, nor needs one: the pipeline then holds no program (the decisions
    # are the only state those steps set)
    base = pipe.program if pipe.program is not None else CitedRAG()
    if start is not None:
        load_program(base, start)
    if fit_on:
        t0 = time.perf_counter()
        dev_ids = {r["id"] for r in dev or []}
        results = check_fit_on(optimizer, fit_on, dev_ids)
        compiled, sources = base, [portable(p) for p in fit_on]
        for step in optimizer.split("+"):
            if step == "knn":
                say(f"Choosing demos from {len(results)} answers of {len(fit_on)} train report(s) ...")
                compiled = with_knn(compiled, results, embed, sources)
            elif step == "abstain":
                say(f"Fitting the minimum similarity per shape on {len(results)} questions of {len(fit_on)} train "
                    f"report(s) (no model call) ...")
                items = min_score_items(results, Swap(pipe))
                compiled = with_min_score(compiled, items, pipe.settings.min_score, sources)
                early = {i["id"] for i in items if calibrate.early_declined(i, compiled.min_scores)}
                results = [r for r in results if r["id"] not in early]  # the later steps fit on what the model reads
            elif step == "calibrate":
                records = records_from_reports(fit_on, dev_ids, results)
                say(f"Fitting the verdict decisions on {len(records)} answered yes/no questions of {len(fit_on)} "
                    f"train report(s) ...")
                compiled = calibrated(compiled, records, sources, verdict_sources)
                if unsupported_verdict:
                    compiled.set_decisions({"unsupported_verdict": unsupported_verdict})
            else:
                say(f"Fitting declined_fallback on {len(results)} questions of {len(fit_on)} train report(s): the "
                    f"evidence's own answer to each claim-check decline, scored (no model call) ...")
                compiled = with_fallback(compiled, fallback_items(results, Swap(pipe)), sources)
        seconds = time.perf_counter() - t0
        n_rows = len(results)
    else:
        say(f"Optimising with {optimizer} on {len(train)} questions ({pipe.lm_label}); "
            f"each question the model answers takes ~20s locally ...")
        compiled, seconds = timed_compile(base, optimizer, train, embed, pipe.lm, seed=seed, progress=progress,
                                          swap=Swap(pipe))
    s = pipe.settings
    provenance = {
        "optimizer": optimizer, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": seed,
        "optimizer_seconds": round(seconds, 1), "lm": pipe.lm_label, "index": pipe.index.name,
        "settings": {"k": s.k, "retrieval": s.retrieval, "per_paper": s.per_paper, "min_score": s.min_score,
                     "evidence_tokens": s.evidence_tokens, "answerable_threshold": s.answerable_threshold,
                     "max_tokens": s.max_tokens, "temperature": s.temperature},
        "from": portable(start) if start is not None else "baseline",
        **({"corpus": {"hash": pipe.index.meta["corpus_hash"], "path": portable(pipe.index.meta["corpus"]),
                       "papers": pipe.index.meta["n_papers"]}} if for_corpus else {}),
        "train": ({"reports": [portable(p) for p in fit_on], "n": n_rows} if fit_on else
                  {"path": portable(train_path), "sha256": sha256_file(train_path), "n": len(train)}),
        **describe(compiled),
    }
    if getattr(compiled, "calibration", None):
        provenance["calibration"] = compiled.calibration
    if getattr(compiled, "fallback_fit", None):
        provenance["declined_fallback"] = compiled.fallback_fit
    if getattr(compiled, "min_score_fit", None):
        provenance["min_score"] = compiled.min_score_fit
    if getattr(compiled, "knn_fit", None):
        compiled.knn.embedder = s.embed_model
        provenance["knn"] = compiled.knn_fit
    save_program_file(compiled, out, provenance)
    chosen = getattr(compiled, "calibration", {}).get("chosen")
    fallback = getattr(compiled, "fallback_fit", None)
    floors = getattr(compiled, "min_score_fit", None)
    say(f"compiled in {seconds:.0f}s: {provenance['demos']} demos"
        + (f"; a pool of {sum(compiled.knn.sizes().values())} demos chosen per question" if compiled.knn else "")
        + (f"; verdict decisions {chosen}" if chosen else "")
        + (f"; declined_fallback {json.dumps(fallback['chosen'])} (train headline {fallback['train_headline']['declined']}"
           f" -> {fallback['train_headline']['fallback']})" if fallback else "")
        + (f"; min_score {json.dumps(floors['chosen'])} (train headline {floors['train_headline']['run']} -> "
           f"{floors['train_headline']['min_score']})" if floors else "") + f"; saved {out}")
    if dev is None:
        return out, None
    pipe.program, pipe.program_label = compiled, out.name
    if s.is_set("min_score") and compiled.min_scores:  # as Pipeline.open runs it: a given RAG_MIN_SCORE wins
        pipe.program = compiled.deepcopy()
        pipe.program.min_scores = {}
    say(f"Scoring it on {len(dev)} dev questions ...")
    report = run_eval(pipe, dev, label=f"{out.stem}-dev", set_path=dev_path, out_root=reports,
                               progress=progress)
    summary, _ = read_report(report)
    provenance["dev"] = {"path": portable(dev_path), "sha256": summary["set_sha256"], "headline": summary["headline"],
                         "headline_ci95": summary["headline_ci95"], "report": portable(report),
                         "lm_mean_s": summary["latency"]["lm_mean_s"]}
    save_program_file(compiled, out, provenance)
    return out, report
