"""Demos chosen per question by similarity (rag/answer/knn.py, `rag optimize --optimizer knn`)."""

import json

import numpy as np
import pytest
from test_eval import FRANCE_Q, RET_Q, SSM_Q, env, run  # noqa: F401 - env is a fixture

from rag import optimize
from rag.answer.knn import DemoPool, decode_vector, encode_vector


def _demo(question: str, vector: list[float], answer: str = "It is X [1].") -> dict:
    return {"passages": "[1] T: X is it.", "question": question, "answerable": True, "answer": answer,
            "sources": [1], "vector": encode_vector(np.array(vector) / np.linalg.norm(vector))}


def test_vectors_round_trip_as_float16():
    v = np.random.default_rng(0).normal(size=384).astype(np.float32)
    v /= np.linalg.norm(v)
    back = decode_vector(encode_vector(v))
    assert back.shape == (384,) and np.abs(back - v).max() < 1e-3


def test_nearest_picks_the_most_similar_demo_of_the_shape():
    pool = DemoPool({"specific": [_demo("A?", [1, 0, 0]), _demo("B?", [0, 1, 0]), _demo("C?", [0.7, 0.7, 0])]}, k=2)
    picked = pool.nearest("specific", np.array([0.0, 1.0, 0.0]))
    assert [d.question for d in picked] == ["C?", "B?"]  # the nearest last, next to the question
    assert "vector" not in picked[0] and picked[0].answerable is True
    assert pool.nearest("yesno", np.array([0.0, 1.0, 0.0])) is None  # no pool: the predictor's own demos
    assert pool.nearest("specific", None) is None and pool.nearest("specific", np.ones(5)) is None
    assert DemoPool.from_json(json.loads(json.dumps(pool.to_json()))).sizes() == {"specific": 3}


@pytest.mark.parametrize("bad, message", [
    ({"demos": {"table": []}}, "unknown question shape"),
    ({"demos": {"specific": [{"question": "Q?"}]}}, "lacks 'passages'"),
    ({"demos": {}, "k": 0}, "at least 1"),
    ([], "knn must be"),
])
def test_bad_pools_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        DemoPool.from_json(bad)


def _fit_knn(tmp, capsys):
    out_file = tmp / "knn.json"
    code, out, err = run(capsys, "optimize", "--optimizer", "knn", "--train", str(tmp / "set.jsonl"), "--dev", "none",
                         "--out", str(out_file))
    assert code == 0, err
    return out_file


def test_knn_step_pools_passing_traces_and_each_question_reads_its_nearest(env, capsys):  # noqa: F811
    """The live step: the program answers the train questions; its passing answers and its correct decline become
    the pool. Asked again, each question's prompt holds the one demo nearest it, not the others."""
    tmp, fakes = env
    out_file = _fit_knn(tmp, capsys)
    state = json.loads(out_file.read_text())
    fit = state["provenance"]["knn"]
    assert fit["rows"] == 5 and fit["k"] == 1 and fit["declines"] >= 1
    pool = state["decisions"]["knn"]
    questions = {d["question"]: d for d in pool["demos"]["specific"]}
    assert {SSM_Q, RET_Q, FRANCE_Q} <= set(questions) and pool["embedder"]
    assert questions[FRANCE_Q]["answerable"] is False and questions[SSM_Q]["answer"].endswith("[1].")
    assert "HiPPO" in questions[SSM_Q]["passages"]  # cut to the evidence the answer cites, which holds its name

    for question, other in ((SSM_Q, RET_Q), (RET_Q, SSM_Q)):
        code, out, err = run(capsys, "ask", question, "--json", "--program", str(out_file))
        assert code == 0, err
        prompt = json.dumps(fakes.lm.history[-1]["messages"])
        assert prompt.count(question) == 2 and other not in prompt  # its own trace is its nearest; one demo
    # the baseline's prompt holds no demo
    run(capsys, "ask", SSM_Q, "--json", "--program", "baseline")
    assert json.dumps(fakes.lm.history[-1]["messages"]).count(SSM_Q) == 1


def test_a_pool_embedded_by_another_model_is_refused_in_one_line(env, capsys):  # noqa: F811
    tmp, _ = env
    out_file = _fit_knn(tmp, capsys)
    state = json.loads(out_file.read_text())
    state["decisions"]["knn"]["embedder"] = "another-model"
    out_file.write_text(json.dumps(state))
    code, _, err = run(capsys, "ask", SSM_Q, "--program", str(out_file))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "another-model" in errors[0] and "--optimizer knn" in errors[0], err
    state["decisions"]["knn"] = {"demos": {"specific": [{"question": "Q?"}]}}
    out_file.write_text(json.dumps(state))
    code, _, err = run(capsys, "ask", SSM_Q, "--program", str(out_file))
    assert code == 1 and "could not be loaded" in err and "Traceback" not in err


def test_knn_demo_skips_rows_that_cannot_teach():
    passages = [{"n": 1, "title": "T", "text": "The matrix is initialised with HiPPO."},
                {"n": 2, "title": "U", "text": "Unrelated."}]
    row = {"id": "a", "question": "How is it initialised?", "shape": "specific", "error": None,
           "metrics": {"headline": 1.0},
           "prediction": {"shape": "specific", "abstained": False, "answer": "It is initialised with HiPPO [2].",
                          "citations": [{"n": 2}], "passages": passages, "provenance": {}}}
    assert optimize.knn_demo(row) is None  # the passage it cites does not hold the name it gives
    good = {**row, "prediction": {**row["prediction"], "answer": "It is initialised with HiPPO [1].",
                                  "citations": [{"n": 1}]}}
    assert optimize.knn_demo(good) == {"passages": "[1] T: The matrix is initialised with HiPPO.",
                                       "question": "How is it initialised?", "answerable": True,
                                       "answer": "It is initialised with HiPPO [1].", "sources": [1]}
    assert optimize.knn_demo({**good, "metrics": {"headline": 0.5}}) is None  # under DEMO_MIN_SCORE
    extractive = {**good["prediction"], "provenance": {"fallback": "extractive"}}
    assert optimize.knn_demo({**good, "prediction": extractive}) \
        is None  # the evidence's answer, not the model's
    yesno = {**good, "shape": "yesno", "prediction": {**good["prediction"], "shape": "yesno", "verdict": "yes",
                                                       "answer": "Yes: it is initialised with HiPPO [1]."}}
    assert optimize.knn_demo(yesno)["finding"] == "It is initialised with HiPPO [1]."
    assert optimize.knn_demo({**yesno, "metrics": {"headline": 1.0, "verdict_correct": 0}}) is None
