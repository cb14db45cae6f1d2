"""The yes/no verdict's calibration: biases fitted on labelled rows undo the model's lean."""

from __future__ import annotations

import random

import dspy
import pytest

from rag import calibrate
from rag.answer.program import scored_verdict


def _rows(n: int, lean: float, seed: int = 0) -> list[dict]:
    """Rows whose probabilities separate yes from no, but all shifted towards yes by `lean` (log-space)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = "no" if i % 3 else "yes"
        signal = rng.uniform(0.5, 2.0) * (1 if gold == "yes" else -1)
        import math

        py, pn = math.exp(signal + lean), math.exp(-signal)
        total = py + pn + 0.05
        rows.append({"id": str(i), "gold": gold, "sampled": "yes", "probs": {"yes": py / total, "no": pn / total,
                                                                           "maybe": 0.05 / total}})
    return rows


def test_a_fitted_bias_undoes_a_lean_the_raw_argmax_keeps():
    rows = _rows(60, lean=4.5)
    raw = [scored_verdict(r["probs"], {}, ("yes", "no")) for r in rows]
    assert calibrate.scores_of(rows, raw)["accuracy"] == pytest.approx(1 / 3, abs=1e-3)  # the lean says yes to all
    bias = calibrate.fit_bias(rows, ("yes", "no"))
    fitted = [scored_verdict(r["probs"], bias, ("yes", "no")) for r in rows]
    assert calibrate.scores_of(rows, fitted)["accuracy"] == 1.0 and 3.0 <= bias["no"] <= 5.5
    assert bias["maybe"] == calibrate.NO_MAYBE
    assert calibrate.scores_of(rows, calibrate.leave_one_out(rows, ("yes", "no")))["accuracy"] >= 0.95


def _noisy(n_yes: int, n_no: int, seed: int = 1) -> list[dict]:
    """Rows whose probabilities carry an honest but noisy signal (no lean): a yes row's log-odds for yes
    are drawn around +1, a no row's around -1, with spread 1.5, so the two overlap."""
    import math

    rng = random.Random(seed)
    rows = []
    for i, gold in enumerate(["yes"] * n_yes + ["no"] * n_no):
        z = rng.gauss(1.0 if gold == "yes" else -1.0, 1.5)
        py = 1 / (1 + math.exp(-z))
        rows.append({"id": str(i), "gold": gold, "sampled": "yes", "probs": {"yes": py, "no": 1 - py, "maybe": 0.0}})
    return rows


def test_the_balanced_objective_does_not_learn_the_rows_label_mix():
    """Fitted for accuracy on rows that are 90% no, the bias learns "say no" (the writers' mix, not the
    model's lean) and fails on rows that are mostly yes; fitted for balanced accuracy it stays near 0."""
    skewed, other = _noisy(20, 180), _noisy(180, 20, seed=2)
    by_acc = calibrate.fit_bias(skewed, ("yes", "no"), "accuracy")
    by_bal = calibrate.fit_bias(skewed, ("yes", "no"))  # balanced is the default
    assert by_acc["no"] >= 1.5 and abs(by_bal["no"]) <= 0.75

    def scores(bias, rows):
        return calibrate.scores_of(rows, [scored_verdict(r["probs"], bias, ("yes", "no")) for r in rows])

    assert scores(by_acc, skewed)["accuracy"] > scores(by_bal, skewed)["accuracy"]  # in-sample accuracy wins ...
    assert scores(by_bal, other)["accuracy"] > scores(by_acc, other)["accuracy"] + 0.1  # ... and fails elsewhere
    assert scores(by_bal, skewed)["balanced"] > scores(by_acc, skewed)["balanced"]
    with pytest.raises(ValueError, match="objective"):
        calibrate.choose_decisions(skewed, objective="f1")


def test_no_lean_needs_no_bias_and_empty_rows_are_harmless():
    rows = _rows(30, lean=0.0)
    assert calibrate.fit_bias(rows, ("yes", "no"))["no"] == 0.0
    assert calibrate.fit_bias([], ("yes", "no"))["no"] == 0.0


def test_compare_tables_every_rule():
    table = calibrate.compare(_rows(30, lean=4.5))
    assert [r["rule"].split(",")[0] for r in table][:3] == ["sampled (the model's own verdict)",
                                                            "always no (the majority of these rows)", "argmax P"]
    assert table[1]["accuracy"] == pytest.approx(20 / 30, abs=1e-3)
    assert table[0]["accuracy"] == pytest.approx(10 / 30, abs=1e-3)  # always yes: right on the yes third
    assert max(r["accuracy"] for r in table) == 1.0


def test_verdict_records_read_reports_of_either_kind():
    seed_row = {"id": "y1", "reference": "No. It fails.", "prediction": {"abstained": False, "provenance": {
        "sampled_verdict": "yes", "verdict_probs": {"yes": 0.7, "no": 0.3, "maybe": 0.0}}}}
    pubmed_row = {"id": "p1", "gold": "maybe", "prediction": {"abstained": False, "provenance": {
        "sampled_verdict": "no", "verdict_probs": {"yes": 0.1, "no": 0.6, "maybe": 0.3}}}}
    abstained = {**seed_row, "id": "y2", "prediction": {"abstained": True, "provenance": {}}}
    got = calibrate.verdict_records([seed_row, pubmed_row, abstained])
    assert [(r["id"], r["gold"], r["sampled"]) for r in got] == [("y1", "no", "yes"), ("p1", "maybe", "no")]


def test_the_calibrate_optimizer_sets_the_decisions(tiny_settings, embedder):
    from fakes import VerdictEngine

    from rag.optimize import compile_program
    from rag.pipeline import Pipeline

    reply = {"answerable": "True", "finding": "Longer fermentation reduces loaf volume [1].", "verdict": "yes",
             "sources": "[1]"}
    lm = dspy.LM("local/verdict", engine=VerdictEngine(reply, {"yes": 0.6, "no": 0.4}), cache=False, num_retries=0)
    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=lm)
    rows = [{"id": f"q{i}", "type": "single", "question": "Does longer sourdough fermentation give bigger loaves?",
             "answer": "No. It reduces loaf volume.", "facts": ["loaf volume"], "gold_paper_ids": ["tiny-bread"]}
            for i in range(4)]
    compiled = compile_program(pipe.program, "calibrate", rows, lambda t: embedder.encode(t), lm)
    # every row is gold no and the model samples yes (accuracy 0): a bias towards no wins, leave-one-out too
    assert compiled.verdict_bias is not None and compiled.verdict_bias["no"] > 0.4
    assert compiled.calibration["sampled_accuracy"] == 0.0 and compiled.calibration["rows"] == 4
    assert pipe.program.verdict_bias is None  # the pipeline's own program is untouched


def test_both_sources_multiply_the_two_readings_and_fall_back_to_whichever_exists():
    from rag.answer.program import decision_probs

    reply, judge = {"yes": 0.8, "no": 0.2, "maybe": 0.0}, {"yes": 0.2, "no": 0.8, "maybe": 0.0}
    both = decision_probs("both", reply, judge)
    assert both["yes"] == pytest.approx(0.5, abs=1e-6) and both["no"] == pytest.approx(0.5, abs=1e-6)
    assert both["maybe"] < 1e-9
    assert decision_probs("reply", reply, judge) is reply and decision_probs("judge", reply, judge) is judge
    assert decision_probs("judge", reply, None) is reply  # no judge reading: the reply's
    assert decision_probs("both", None, judge) is judge and decision_probs("both", None, None) is None


def _with_judge(rows: list[dict], signal: bool) -> list[dict]:
    """`rows` whose reply leans yes whatever the gold says, and a judge that (with `signal`) reads the gold."""
    out = []
    for r in rows:
        right = r["gold"] if signal else "yes"
        judge = {"yes": 0.9 if right == "yes" else 0.1, "no": 0.1 if right == "yes" else 0.9, "maybe": 0.0}
        out.append({**r, "probs": {"yes": 0.95, "no": 0.04, "maybe": 0.01}, "judge": judge})
    return out


def test_choose_decisions_keeps_the_source_that_reads_the_gold_and_only_a_real_gain():
    rows = _with_judge(_rows(30, lean=0.0), signal=True)
    decisions, table = calibrate.choose_decisions(rows)
    assert decisions["verdict_source"] in ("judge", "both") and decisions["verdict_bias"] is not None
    assert {(t["source"], len(t["labels"])) for t in table["table"]} == {
        (s, n) for s in ("reply", "judge", "both") for n in (2, 3)}
    assert table["sampled_accuracy"] == pytest.approx(10 / 30, abs=1e-3) and table["judged"] == 30
    # a reply and a judge that both say yes to everything: nothing beats the sampled verdict by more than
    # the always-no a bias can buy; with the sampled verdict right on every row, nothing is kept at all
    perfect = [{**r, "sampled": r["gold"]} for r in _with_judge(_rows(30, lean=0.0), signal=False)]
    decisions, _ = calibrate.choose_decisions(perfect)
    assert decisions == {"verdict_bias": None, "verdict_labels": ["yes", "no", "maybe"], "verdict_source": "reply"}
    # without judge readings only the reply is scored
    _, table = calibrate.choose_decisions(_rows(30, lean=4.5))
    assert {t["source"] for t in table["table"]} == {"reply"}


def _report(path, results, summary=None):
    import json

    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary or {"n": len(results)}))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    return path


def _result(i: int, gold: str, judge: dict | None = None) -> dict:
    return {"id": f"t{i}", "reference": f"{gold.capitalize()}. Because.", "prediction": {"abstained": False, "provenance": {
        "sampled_verdict": "yes", "verdict_probs": {"yes": 0.9, "no": 0.1, "maybe": 0.0}, "judge_probs": judge}}}


def test_records_from_reports_refuse_dev_questions_and_pubmedqa_test(tmp_path):
    from rag.errors import ProgramError
    from rag.optimize import records_from_reports

    good = _report(tmp_path / "train", [_result(i, "no" if i % 2 else "yes") for i in range(6)])
    assert len(records_from_reports([good], {"d1"})) == 6
    with pytest.raises(ProgramError, match="holds dev questions"):
        records_from_reports([good], {"t3"})
    test = _report(tmp_path / "pq", [_result(9, "no")], {"benchmark": "pubmedqa", "selection": {"split": "test"}})
    with pytest.raises(ProgramError, match="PubMedQA's test half"):
        records_from_reports([good, test], set())
    empty = _report(tmp_path / "empty", [{"id": "x", "reference": "A list.", "prediction": {"abstained": True}}])
    with pytest.raises(ProgramError, match="no answered yes/no question"):
        records_from_reports([empty], set())


def test_rescore_verdicts_reapplies_a_programs_decisions_to_a_report(tmp_path):
    """eval/rescore_verdicts.py: a PubMedQA-style report re-decided from its recorded probabilities; a declined
    answer keeps its verdict only under `unsupported_verdict: keep`, from the --rerun that recorded it."""
    import subprocess
    import sys
    from pathlib import Path

    from rag.answer.program import CitedRAG
    from rag.answer.program_files import save_program_file

    def row(i, gold, said, probs, abstained=False, reason=None):
        prov = {"verdict_probs": probs, "sampled_verdict": said, "judge_probs": None, "abstain_reason": reason}
        return {"id": f"q{i}", "gold": gold, "predicted": None if abstained else said,
                "prediction": {"abstained": abstained, "provenance": prov}}

    lean = {"yes": 0.7, "no": 0.3, "maybe": 0.0}  # the model leans yes; a "no" bias of +1 turns these
    results = [row(0, "no", "yes", lean), row(1, "yes", "yes", {"yes": 0.95, "no": 0.05, "maybe": 0.0}),
               row(2, "no", None, None, abstained=True, reason="unsupported_claim")]
    summary = {"benchmark": "pubmedqa", "selection": {"split": "test"}}
    report = _report(tmp_path / "run", results, summary)
    rerun = _report(tmp_path / "rerun", [row(2, "no", "yes", lean)], summary)
    programs = {}
    for name, decisions in {"bias": {"verdict_bias": {"no": 1.0}, "verdict_labels": ["yes", "no"]},
                            "keep": {"verdict_bias": {"no": 1.0}, "verdict_labels": ["yes", "no"],
                                     "unsupported_verdict": "keep"}}.items():
        program = CitedRAG()
        program.set_decisions(decisions)
        programs[name] = save_program_file(program, tmp_path / f"{name}.json", {"optimizer": "test"})
    script = Path(__file__).resolve().parent.parent / "eval" / "rescore_verdicts.py"

    def rescore(*args):
        proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr

    code, out = rescore(report, programs["bias"], "--rerun", rerun)
    assert code == 0, out
    assert "| as run | 0.333 |" in out and "| bias | 0.667 |" in out  # q0 turns to no; q2 stays declined
    code, out = rescore(report, programs["keep"], "--rerun", rerun)
    assert code == 0 and "| keep | 1.000 |" in out and "2 verdicts changed" in out
    code, out = rescore(report, programs["keep"])  # keep needs the declined answer's recorded verdict
    assert code != 0 and "re-run it (rag eval --ids)" in out


def test_fit_fallback_picks_per_shape_the_similarity_that_gains_most():
    """rag.calibrate.fit_fallback: per shape, fall back from the threshold that gains the most headline on train
    (the middle of the gap), everywhere when every swap gains (0), never where none does; eval/fit_fallback.py
    prints the same fit's figures."""
    import importlib.util
    from pathlib import Path

    from rag.calibrate import apply_fallback, fit_fallback

    spec = importlib.util.spec_from_file_location(
        "fit_fallback", Path(__file__).resolve().parent.parent / "eval" / "fit_fallback.py")
    ff = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ff)

    def item(shape, sim, base, swap, unanswerable=False):
        return {"id": f"{shape}{sim}", "shape": shape, "sim": sim, "base": base, "swap": swap,
                "unanswerable": unanswerable}

    items = [item("specific", 0.35, 1.0, 0.0, True), item("specific", 0.45, 1.0, 0.0, True),
             item("specific", 0.55, 0.0, 1.0), item("specific", 0.65, 0.0, 0.5),
             item("yesno", 0.4, 0.0, 0.5), item("yesno", 0.7, 0.0, 1.0),
             item("list", 0.9, 1.0, 0.0, True),  # a list swap only loses: lists keep declining
             {"id": "x", "shape": "specific", "sim": None, "base": 0.7, "swap": None, "unanswerable": False}]
    thresholds = fit_fallback(items)
    assert thresholds == {"specific": 0.5, "yesno": 0.0}
    assert apply_fallback(items, thresholds) == [1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.7]
    # a tie between swapping more and fewer goes to swapping more (the lower minimum)
    tie = [item("specific", 0.4, 0.0, 0.5), item("specific", 0.6, 0.5, 0.0), item("specific", 0.8, 0.0, 0.5)]
    assert fit_fallback(tie) == {"specific": 0.0}
    line = ff.report_line("t", items, thresholds)
    assert "7 claim-check declines, 4 answered from the evidence instead (0 of them unanswerable)" in line
    assert "headline 0.463 -> 0.838" in line


def test_fit_min_score_picks_per_shape_the_similarity_that_gains_most():
    """rag.calibrate.fit_min_score: per shape, decline unread below the similarity that gains the most headline
    (the middle of the gap), the current setting where it gains as much; a question whose name is in the passages
    is never declined so; nothing below what the run itself declined unread is tried (its answered headline is
    unknown); other ties go to declining fewer."""
    from rag.calibrate import apply_min_score, early_declined, fit_min_score

    def item(shape, sim, base, unanswerable=False, exempt=False, early=False):
        return {"id": f"{shape}{sim}", "shape": shape, "sim": sim, "base": base, "unanswerable": unanswerable,
                "exempt": exempt, "early": early}

    items = [item("specific", 0.30, 0.0, True), item("specific", 0.40, 0.0, True),
             item("specific", 0.42, 0.9, exempt=True),  # a coined name found: answered whatever its similarity
             item("specific", 0.50, 0.8), item("specific", 0.60, 1.0),
             item("list", 0.35, 1.0, True), item("list", 0.45, 0.7),  # declined correctly either way: the setting
             item("yesno", 0.20, 1.0, True, early=True), item("yesno", 0.36, 0.0, True), item("yesno", 0.50, 0.6)]
    thresholds = fit_min_score(items, current=0.38)
    assert thresholds == {"specific": 0.45, "list": 0.38, "yesno": 0.38}
    assert apply_min_score(items, thresholds) == [1.0, 1.0, 0.9, 0.8, 1.0, 1.0, 0.7, 1.0, 1.0, 0.6]
    assert not early_declined(items[2], thresholds) and early_declined(items[1], thresholds)
    # a setting that loses on train gives way: the gap that gains, or just above the run's own early declines
    assert fit_min_score(items, current=0.55) == {"specific": 0.45, "list": 0.0, "yesno": 0.43}
    assert fit_min_score([item("yesno", 0.20, 1.0, True, early=True), item("yesno", 0.30, 0.5)], 0.4) == {"yesno": 0.25}
    # a setting at or below the run's own early declines cannot be scored: the fit chooses among what can
    assert fit_min_score([item("yesno", 0.20, 1.0, True, early=True), item("yesno", 0.30, 0.0, True)], 0.1) \
        == {"yesno": 0.3010}
    # declining an answerable question costs what its answer scored: a loss is never taken
    assert fit_min_score([item("specific", 0.3, 0.4), item("specific", 0.5, 1.0, True)], 0.45) == {"specific": 0.0}
