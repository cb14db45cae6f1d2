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
    assert calibrate.accuracy_f1(rows, raw)[0] == pytest.approx(1 / 3, abs=1e-3)  # the lean says yes to all
    bias = calibrate.fit_bias(rows, ("yes", "no"))
    fitted = [scored_verdict(r["probs"], bias, ("yes", "no")) for r in rows]
    assert calibrate.accuracy_f1(rows, fitted)[0] == 1.0 and 3.0 <= bias["no"] <= 5.5
    assert bias["maybe"] == calibrate.NO_MAYBE
    assert calibrate.accuracy_f1(rows, calibrate.leave_one_out(rows, ("yes", "no")))[0] >= 0.95


def test_no_lean_needs_no_bias_and_empty_rows_are_harmless():
    rows = _rows(30, lean=0.0)
    assert calibrate.fit_bias(rows, ("yes", "no"))["no"] == 0.0
    assert calibrate.fit_bias([], ("yes", "no"))["no"] == 0.0


def test_compare_tables_every_rule():
    table = calibrate.compare(_rows(30, lean=4.5))
    assert [r["rule"].split(",")[0] for r in table][:2] == ["sampled (the model's own verdict)", "argmax P"]
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
