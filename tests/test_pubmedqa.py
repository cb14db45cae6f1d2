"""PubMedQA: the derived corpus and questions, the selection, the verdict, the official metrics,
and `rag eval --set pubmedqa` end to end (keyword embedder, DummyLM) with `--compare`."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from dspy.utils.dummies import DummyLM

from rag.answer.program import ABSTAIN_TEXT
from rag.cli.main import main
from rag.errors import EvalError
from rag.evaluation import pubmedqa
from rag.evaluation.metrics import classification_scores
from rag.index.corpus import load_corpus
from rag.text import sentences

ROOT = Path(__file__).resolve().parent.parent
LABELS = pubmedqa.LABELS


def _converter():
    spec = importlib.util.spec_from_file_location("pubmedqa_convert", ROOT / "eval" / "pubmedqa_convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return _jsonl(pubmedqa.CORPUS)


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return pubmedqa.load_questions()


# --- the converter and the committed files -------------------------------------------------

def test_converter_keeps_the_conclusion_out_and_orders_by_pmid():
    convert = _converter().convert
    item = {"QUESTION": "Does  X help Y?", "CONTEXTS": ["Background  text.", "", "Results\ntext."],
            "LONG_ANSWER": "CONCLUSION-ONLY sentence: X helps Y.", "final_decision": "yes"}
    ori = {"100": item, "9": {**item, "final_decision": "no"}, "10": {**item, "final_decision": "maybe"}}
    corpus, questions = convert(ori, {"10": "maybe"})
    assert [r["id"] for r in corpus] == ["pmid9", "pmid10", "pmid100"]
    assert corpus[0] == {"id": "pmid9", "title": "PubMed 9", "abstract": "Background text. Results text."}
    assert "CONCLUSION-ONLY" not in json.dumps(corpus) and "help" not in json.dumps(corpus)
    assert [(q["id"], q["split"], q["final_decision"]) for q in questions] == \
        [("9", "train", "no"), ("10", "test", "maybe"), ("100", "train", "yes")]
    assert questions[0]["question"] == "Does X help Y?" and questions[0]["gold_paper_id"] == "pmid9"
    assert questions[0]["long_answer"] == "CONCLUSION-ONLY sentence: X helps Y."
    with pytest.raises(ValueError, match="says 'yes'"):
        convert(ori, {"10": "yes"})
    with pytest.raises(ValueError, match="missing from ori_pqal"):
        convert(ori, {"11": "yes"})


@pytest.mark.skipif(not (_converter().SOURCE / "ori_pqal.json").is_file(),
                    reason="the original PubMedQA files are not on this machine")
def test_committed_files_are_the_converters_output():
    converter = _converter()
    derived = converter.derive(converter.SOURCE)
    for name, text in derived.items():
        assert (pubmedqa.DATA_DIR / name).read_text(encoding="utf-8") == text, name
    ori = json.loads((converter.SOURCE / "ori_pqal.json").read_text(encoding="utf-8"))
    by_id = {r["id"]: r for r in _jsonl(pubmedqa.CORPUS)}
    for pmid, item in ori.items():  # the abstract is the contexts and nothing else
        assert by_id[f"pmid{pmid}"]["abstract"] == " ".join(" ".join(c.split()) for c in item["CONTEXTS"])


def test_corpus_is_1000_neutral_rows_without_conclusions(corpus, questions):
    assert len(corpus) == 1000 and len({r["id"] for r in corpus}) == 1000
    for row in corpus:
        assert set(row) == {"id", "title", "abstract"}
        pmid = re.fullmatch(r"pmid(\d+)", row["id"]).group(1)
        assert row["title"] == f"PubMed {pmid}"  # neutral: never the question
    assert [r["id"] for r in corpus] == [q["gold_paper_id"] for q in questions]  # one abstract per question
    by_id = {r["id"]: r["abstract"] for r in corpus}
    repeated = set()
    for q in questions:
        abstract = by_id[q["gold_paper_id"]]
        assert q["long_answer"] and q["long_answer"] not in abstract, q["id"]
        if any(len(s.split()) >= 6 and s in abstract for s in sentences(q["long_answer"])):
            repeated.add(q["id"])
    # One conclusion repeats a results sentence of its own abstract word for word (it is in CONTEXTS)
    assert repeated == {"24519615"}
    # The corpus is a user's file: the normal loader reads it unchanged.
    papers = load_corpus(pubmedqa.CORPUS)
    assert [(p.id, p.title, p.abstract) for p in papers] == [(r["id"], r["title"], r["abstract"]) for r in corpus]


def test_splits_and_the_fixed_subset(questions):
    test = [q for q in questions if q["split"] == "test"]
    assert len(questions) == 1000 and len(test) == 500
    assert {lab: sum(q["final_decision"] == lab for q in test) for lab in LABELS} == {"yes": 276, "no": 169, "maybe": 55}
    chosen, selection = pubmedqa.select(questions, "test")
    assert len(chosen) == 200 and {q["split"] for q in chosen} == {"test"}
    assert {lab: sum(q["final_decision"] == lab for q in chosen) for lab in LABELS} == {"yes": 110, "no": 68, "maybe": 22}
    again, _ = pubmedqa.select(pubmedqa.load_questions(), "test")
    assert [q["id"] for q in again] == [q["id"] for q in chosen]  # fixed: the same 200 every time
    assert "stratified 200-question subset" in pubmedqa.describe(selection) and "of 500" in pubmedqa.describe(selection)
    full, selection = pubmedqa.select(questions, "test", full=True)
    assert len(full) == 500 and pubmedqa.describe(selection) == "test split, all 500 questions"
    train, selection = pubmedqa.select(questions, "train", limit=7)
    assert len(train) == 7 and {q["split"] for q in train} == {"train"}
    assert "first 7 only" in pubmedqa.describe(selection) and "tuning half" in pubmedqa.describe(selection)
    assert pubmedqa.selection_tag(selection) == "train200-first7"
    with pytest.raises(EvalError, match="--limit must be at least 1"):
        pubmedqa.select(questions, "test", limit=0)


def test_bad_questions_file_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "1", "split": "dev", "question": "q?", "final_decision": "yes", "gold_paper_id": "pmid1"}\n')
    with pytest.raises(EvalError, match=r"q\.jsonl:1: split must be one of"):
        pubmedqa.load_questions(path)
    with pytest.raises(EvalError, match="does not exist"):
        pubmedqa.load_questions(tmp_path / "none.jsonl")


# --- the verdict and the official metrics --------------------------------------------------

@pytest.mark.parametrize("pred, expected", [
    ({"answer": "Yes, statins reduce AF after CABG [1].", "abstained": False}, ("yes", "answer")),
    ({"answer": "No: mortality did not differ [2].", "abstained": False}, ("no", "answer")),
    ({"answer": "Maybe; the evidence is mixed [1].", "abstained": False}, ("maybe", "answer")),
    ({"answer": "**No.** The trial found no benefit [1].", "abstained": False}, ("no", "answer")),
    ({"answer": "It is unclear whether it helps [1].", "abstained": False}, ("maybe", "answer")),
    ({"answer": "Statins reduced AF in 16% versus 33% [1].", "abstained": False}, (None, None)),
    ({"answer": "The answer is yes [1].", "abstained": False}, (None, None)),  # a verdict must open the answer
    ({"answer": "Yes, it helps [1].", "abstained": False, "verdict": "no"}, ("no", "field")),  # the field wins
    ({"answer": "The results support it [1].", "abstained": False, "verdict": "Maybe"}, ("maybe", "field")),
    ({"answer": "Yes, it helps [1].", "abstained": False, "verdict": None}, ("yes", "answer")),
    ({"answer": ABSTAIN_TEXT, "abstained": True, "verdict": None}, (None, None)),
    ({"answer": "Yes [1].", "abstained": True, "verdict": "yes"}, (None, None)),  # an abstention is no verdict
    ({"answer": None, "abstained": None}, (None, None)),  # a failed call
])
def test_read_verdict(pred, expected):
    assert pubmedqa.read_verdict(pred) == expected


@pytest.mark.parametrize("gold, pred", [
    (["yes", "no", "maybe", "yes", "no", "yes"], ["yes", "no", "yes", "no", "no", "yes"]),
    (["yes", "no", "maybe", "yes", "no", "yes", "maybe"], ["yes", None, None, "no", "no", None, "maybe"]),
    (["yes", "yes", "no", "maybe"], ["yes", "yes", "yes", "yes"]),  # no and maybe never predicted
    (["no", "no", "maybe"], [None, None, None]),  # nothing predicted at all
])
def test_classification_scores_match_sklearn(gold, pred):
    metrics = pytest.importorskip("sklearn.metrics")
    ours = classification_scores(gold, pred, LABELS)
    as_sklearn = [p if p is not None else "none" for p in pred]  # a value outside the three labels
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(gold, as_sklearn), abs=1e-4)
    assert ours["macro_f1"] == pytest.approx(
        metrics.f1_score(gold, as_sklearn, labels=list(LABELS), average="macro", zero_division=0), abs=1e-4)
    p, r, f, support = metrics.precision_recall_fscore_support(gold, as_sklearn, labels=list(LABELS), zero_division=0)
    for i, label in enumerate(LABELS):
        v = ours["per_label"][label]
        assert (v["precision"], v["recall"], v["f1"], v["support"]) == \
            pytest.approx((p[i], r[i], f[i], support[i]), abs=1e-4)
    assert ours["no_prediction"] == pred.count(None)
    assert sum(ours["confusion"][g]["none"] for g in LABELS) == pred.count(None)
    if None not in pred and set(gold) | set(pred) == set(LABELS):  # the official call, unchanged
        assert ours["macro_f1"] == pytest.approx(metrics.f1_score(gold, pred, average="macro"), abs=1e-4)


def test_classification_scores_by_hand():
    s = classification_scores(["yes", "no", "maybe", "yes"], ["yes", None, "yes", "yes"], LABELS)
    # yes: P 2/3, R 1, F1 0.8; no: 0 (missed); maybe: 0 (missed) -> macro 0.8 / 3
    assert s["accuracy"] == 0.5 and s["macro_f1"] == pytest.approx(0.2667, abs=1e-4)
    assert s["confusion"]["no"] == {"yes": 0, "no": 0, "maybe": 0, "none": 1}
    with pytest.raises(ValueError):
        classification_scores(["yes"], ["perhaps"], LABELS)


# --- rag eval --set pubmedqa end to end ---------------------------------------------------------

@pytest.fixture
def pqa_env(monkeypatch, tmp_path_factory, tmp_path, fake_models):
    """The real PubMedQA corpus indexed with the keyword embedder (once per session), a fake LM."""
    index_dir = tmp_path_factory.getbasetemp() / "pubmedqa-keyword-index"
    monkeypatch.setenv("RAG_INDEX_DIR", str(index_dir))
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    rows, _ = pubmedqa.select(pubmedqa.load_questions(), "test", limit=5)
    return tmp_path, fake_models, rows


def _other(label: str) -> str:
    return next(x for x in LABELS if x != label)


def _answers(rows: list[dict], good: bool) -> dict:
    """DummyLM replies by question. `good`: a right verdict, a wrong one, an abstention, an answer with
    no verdict, and one whose verdict comes only from the `verdict` field (`_with_verdict_field`).
    Otherwise every answer opens with a wrong verdict."""
    if not good:
        texts = [f"{_other(r['final_decision']).capitalize()}, by the data [1]." for r in rows]
    else:
        texts = [f"{rows[0]['final_decision'].capitalize()}: the study shows it [1].",
                 f"{_other(rows[1]['final_decision']).capitalize()}, it does not [1].",
                 # (the fourth repeats its question: a claim whose cited passage shares none of its words
                 # beyond the question's would be declined as unsupported)
                 ABSTAIN_TEXT, f"{rows[3]['question'].rstrip('?')} [1].", "The results speak to it [1]."]
    return {r["question"]: {"answer": t, "sources": "[]" if t == ABSTAIN_TEXT else "[1]"}
            for r, t in zip(rows, texts, strict=True)}


def _with_verdict_field(monkeypatch, rows: list[dict]) -> None:
    """Make the fifth answer carry a `verdict` field, as the program of issue 12 will."""
    from rag.pipeline import Pipeline

    real_ask = Pipeline.ask

    def ask(self, question):
        result = real_ask(self, question)
        if question == rows[4]["question"]:
            result["verdict"] = rows[4]["final_decision"]
        return result

    monkeypatch.setattr(Pipeline, "ask", ask)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _report(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].removeprefix("report: "))


def test_eval_pubmedqa_end_to_end(pqa_env, capsys, monkeypatch):
    tmp, models, rows = pqa_env
    models.lm = DummyLM(_answers(rows, good=True))
    _with_verdict_field(monkeypatch, rows)
    code, out, err = run(capsys, "eval", "--set", "pubmedqa", "--limit", "5", "--out", str(tmp / "reports"))
    assert code == 0, err
    report = _report(out)
    assert report.parent == tmp / "reports" and report.name.endswith("-pubmedqa-test200-first5-baseline-hybrid")
    results = _jsonl(report / "results.jsonl")
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert [r["predicted"] for r in results] == [
        rows[0]["final_decision"], _other(rows[1]["final_decision"]), None, None, rows[4]["final_decision"]]
    # the program itself gives a verdict field for an answered yes/no question (rag.answer.program.with_verdict)
    assert [r["verdict_source"] for r in results] == ["field", "field", None, None, "field"]
    assert [r["metrics"]["correct"] for r in results] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert [r["metrics"]["headline"] for r in results] == [1.0, 0.0, 0.0, 0.0, 1.0]  # the paired score
    assert [r["metrics"]["abstained"] for r in results] == [0.0, 0.0, 1.0, 0.0, 0.0]
    for r in results:
        assert r["gold"] == next(q["final_decision"] for q in rows if q["id"] == r["id"])
        assert r["reference"] and r["gold_paper_id"] == f"pmid{r['id']}"
        # the answer cites passage [1]: it cites its own abstract exactly when that passage is it
        cited = r["metrics"]["abstained"] == 0.0
        assert r["metrics"]["cites_gold"] == float(cited and r["passage_paper_ids"][0] == r["gold_paper_id"])
        assert r["metrics"]["recall@1"] == float(r["gold_rank"] == 1)
        assert r["metrics"]["recall@5"] >= r["metrics"]["recall@1"]
        assert r["metrics"]["gold_in_passages"] == float(r["gold_paper_id"] in r["passage_paper_ids"])

    summary = json.loads((report / "summary.json").read_text())
    gold, pred = [r["gold"] for r in results], [r["predicted"] for r in results]
    assert summary["benchmark"] == "pubmedqa" and summary["n"] == 5 and summary["errors"] == 0
    assert summary["selection"] == {"split": "test", "split_n": 500, "full": False, "subset": 200,
                                    "seed": pubmedqa.SEED, "limit": 5, "n": 5}
    assert summary["accuracy"] == 0.4 and summary["macro_f1"] == classification_scores(gold, pred, LABELS)["macro_f1"]
    assert summary["rates"]["verdict_given"] == 0.6 and summary["rates"]["abstained"] == 0.2
    assert summary["verdict_source"] == {"field": 3, "answer": 0}
    assert summary["classification"]["no_prediction"] == 2
    assert set(summary["retrieval"]) == {"dense", "bm25", "hybrid"} and summary["retrieval"]["hybrid"]["n"] == 5
    assert summary["retrieval"]["hybrid"]["recall@1"] == summary["rates"]["recall@1"]  # the same search, k=10
    assert summary["retrieval"]["hybrid"]["recall@5"] >= 0.6  # the questions share their abstracts' words
    assert {"lm_p50_s", "lm_p95_s", "wall_p50_s", "wall_p95_s"} <= set(summary["latency"])
    assert summary["index"].startswith("idx-") and summary["set"].endswith("data/pubmedqa/questions.jsonl")

    md = (report / "report.md").read_text()
    where = "test split, the fixed label-stratified 200-question subset"
    assert md.count(where) >= 5  # every table names the selection
    assert "| **this run** | **0.400** |" in md and "| single human annotator" in md and "0.780" in md
    assert "handed the question's own abstract" in md and "counts as wrong" in md
    assert "| gold \\ predicted | yes | no | maybe | none |" in md
    assert (report / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp / "reports").glob(".*.tmp"))
    assert "accuracy 0.400" in out and "BioBERT" in out


def test_eval_ids_runs_only_those_questions_and_says_so(pqa_env, capsys):
    tmp, models, rows = pqa_env
    models.lm = DummyLM(_answers(rows, good=False))
    ids = f"{rows[3]['id']},{rows[1]['id']}"
    code, out, err = run(capsys, "eval", "--set", "pubmedqa", "--limit", "5", "--ids", ids, "--out", str(tmp / "reports"))
    assert code == 0, err
    report = _report(out)
    assert [r["id"] for r in _jsonl(report / "results.jsonl")] == [rows[1]["id"], rows[3]["id"]]  # the set's order
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n"] == 2 and summary["selection"]["ids"] == [rows[1]["id"], rows[3]["id"]]
    assert "first 5 only (--limit 5), only 2 chosen questions (--ids)" in summary["selection_text"]
    code, out, err = run(capsys, "eval", "--set", "pubmedqa", "--limit", "5", "--ids", f"{rows[1]['id']},nope")
    assert code == 1 and "--ids: nope not in the selected questions" in err and "Traceback" not in err


def test_eval_pubmedqa_compare(pqa_env, capsys):
    tmp, models, rows = pqa_env
    args = ["eval", "--set", "pubmedqa", "--limit", "5", "--out", str(tmp / "reports")]
    models.lm = DummyLM(_answers(rows, good=False))
    code, out, err = run(capsys, *args, "--label", "wrong")
    assert code == 0, err
    wrong = _report(out)
    models.lm = DummyLM(_answers(rows, good=True))
    code, out, err = run(capsys, *args, "--label", "better", "--no-cache")
    assert code == 0, err
    better = _report(out)
    code, out, err = run(capsys, "eval", "--compare", str(wrong), str(better), "--out", str(tmp / "reports"))
    assert code == 0, err
    assert "+0.200 accuracy" in out and "macro_f1" in out
    result = json.loads((_report(out) / "compare.json").read_text())
    assert result["benchmark"] == "pubmedqa" and result["score"] == "accuracy" and result["n"] == 5
    assert result["headline"]["mean_diff"] == pytest.approx(0.2)
    assert result["metrics"]["correct"] == {"a": 0.0, "b": 0.2, "n": 5}
    assert result["metrics"]["verdict_given"] == {"a": 1.0, "b": 0.4, "n": 5}
    assert result["metrics"]["macro_f1"]["a"] == 0.0 and result["metrics"]["macro_f1"]["b"] > 0
    assert (_report(out) / "compare.png").read_bytes()[:4] == b"\x89PNG"
    md = (_report(out) / "compare.md").read_text()
    assert "A ran on: test split, the fixed label-stratified 200-question subset" in md and "| macro_f1 |" in md

    # a seed-set report with the same ids cannot be paired with a PubMedQA one
    seed = tmp / "seed-report"
    seed.mkdir()
    (seed / "summary.json").write_text(json.dumps({"label": "seed", "set_sha256": "x"}))
    (seed / "results.jsonl").write_text("".join(json.dumps({"id": r["id"], "metrics": {"headline": 1.0}}) + "\n"
                                                for r in rows))
    code, _, err = run(capsys, "eval", "--compare", str(seed), str(better), "--out", str(tmp / "reports"))
    assert code == 1 and "compare two runs of the same set" in err and "Traceback" not in err


def test_eval_pubmedqa_usage_errors(pqa_env, capsys):
    tmp, _, _ = pqa_env
    for argv, message in ((["--full"], "apply to --set pubmedqa only"),
                          (["--set", "pubmedqa", "--corpus", str(ROOT / "tests" / "data" / "tiny.jsonl")],
                           "runs over its own corpus"),
                          (["--set", "pubmedqa", "--limit", "0"], "--limit must be at least 1"),
                          (["--set", "pubmedqa", "--judge", "openai/gpt-4o-mini"], "drop --judge")):
        code, out, err = run(capsys, "eval", *argv, "--out", str(tmp / "reports"))
        assert code == 1 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp / "reports").exists()  # each failed before any model or index work
