"""Eval harness, headline/faithfulness metrics, LM disk cache, optimisation and program files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dspy
import pytest
from dspy.utils.dummies import DummyLM

import rag.answer.program_files
from rag import optimize
from rag.answer.program import ABSTAIN_TEXT, CitedAnswer, CitedRAG
from rag.cli.main import main
from rag.errors import EvalError, ProgramError
from rag.evaluation import seed
from rag.evaluation.metrics import TYPES, abstention_summary, faithfulness, headline, paired_bootstrap, score_row
from rag.files import sha256_file
from rag.lm.cache import DiskCachedEngine

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent

SSM_Q = "How is the state matrix of the long-sequence state space model initialised?"
RET_Q = "By how much does the late interaction engine lower search latency?"
ASTRO_Q = "How many new candidate planets were reported from transit photometry?"
FRANCE_Q = "What is the capital city of France?"
MULTI_Q = "Which papers train models with preferences or rewards, and which recommend music?"

SET = [
    {"id": "q1", "question": SSM_Q, "answer": "It is initialised with HiPPO.", "facts": ["HiPPO"],
     "gold_paper_ids": ["tiny-ssm"], "type": "single"},
    {"id": "q2", "question": RET_Q, "answer": "By seven times on MS MARCO.", "facts": ["seven times", "MS MARCO"],
     "gold_paper_ids": ["tiny-retrieval"], "type": "single"},
    {"id": "q3", "question": ASTRO_Q, "answer": "Twelve.", "facts": ["twelve"],
     "gold_paper_ids": ["tiny-astro"], "type": "single"},
    {"id": "q4", "question": MULTI_Q, "answer": "Reward models for robots; dialogue music recommendation.",
     "facts": ["reward model"], "gold_paper_ids": ["tiny-rl", "tiny-music"], "type": "multi"},
    {"id": "q5", "question": FRANCE_Q, "answer": "", "facts": [], "gold_paper_ids": [], "type": "unanswerable"},
]

GOOD = {
    SSM_Q: {"answer": "The state matrix is initialised with HiPPO [1].", "sources": "[1]"},
    RET_Q: {"answer": "It lowers search latency by seven times on MS MARCO [1].", "sources": "[1]"},
    ASTRO_Q: {"answer": ABSTAIN_TEXT, "sources": "[]"},
    MULTI_Q: {"answer": "Legged robots learn from a learned reward model [1].", "sources": "[1]"},
    FRANCE_Q: {"answer": ABSTAIN_TEXT, "sources": "[]"},
}
BAD = {q: {"answer": ABSTAIN_TEXT, "sources": "[]"} for q in GOOD} | {
    FRANCE_Q: {"answer": "Sourdough bread is fermented at 30 degrees [1].", "sources": "[1]"}}


def write_set(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def env(monkeypatch, tmp_path, fake_models):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    monkeypatch.setattr(rag.answer.program_files, "PROGRAMS_DIR", tmp_path / "programs")
    fake_models.lm = DummyLM(GOOD)
    write_set(tmp_path / "set.jsonl", SET)
    return tmp_path, fake_models


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- metrics ------------------------------------------------------------------------------

def test_faithfulness_separates_supported_from_invented(embedder):
    passages = {1: "Our model uses a diagonal state matrix initialised with HiPPO.",
                2: "Acidity rises fastest at 30 degrees Celsius."}
    embed = embedder.encode
    assert faithfulness("The model uses a diagonal state matrix initialised with HiPPO [1].", passages, embed) == 1.0
    invented = "The model uses a diagonal state matrix [1]. Quantum annealers solve protein folding exactly [1]."
    assert faithfulness(invented, passages, embed) == 0.5
    # A sentence is checked against the passage it cites, not the best of all passages.
    assert faithfulness("Acidity rises fastest at 30 degrees Celsius [1].", passages, embed) == 0.0
    assert faithfulness("Nothing cited here.", passages, embed) is None
    assert faithfulness("", passages, embed) is None


def test_headline_per_question():
    unans = {"type": "unanswerable"}
    single = {"type": "single", "facts": ["a"], "gold_paper_ids": ["p1"], "answer": "a"}
    assert headline(unans, {"abstained": 1.0}) == 1.0 and headline(unans, {"abstained": 0.0}) == 0.0
    assert headline(single, {"abstained": 1.0, "fact_recall": 0.0}) == 0.0
    perfect = {"abstained": 0.0, "fact_recall": 1.0, "citation_f1": 1.0, "faithfulness": 1.0}
    assert headline(single, perfect) == 1.0
    # No faithfulness available: its weight is spread over the rest; no citation at all counts as 0.
    assert headline(single, {"abstained": 0.0, "fact_recall": 1.0, "citation_f1": None, "faithfulness": None}) \
        == pytest.approx(0.5 / 0.8)


def test_score_row_edge_cases(embedder):
    label = SET[0]
    no_cite = score_row(label, {"answer": "It uses HiPPO.", "abstained": False, "citations": [],
                                "passages": [{"n": 1, "paper_id": "tiny-ssm", "text": "HiPPO"}]}, embedder.encode)
    assert no_cite["citation_f1"] == 0.0 and no_cite["faithfulness"] is None and no_cite["fact_recall"] == 1.0
    empty = score_row(label, {"answer": "", "abstained": False, "citations": [], "passages": []}, embedder.encode)
    assert empty["headline"] == 0.0 and empty["fact_recall"] == 0.0


def test_abstention_summary():
    labels = [{"type": "unanswerable"}, {"type": "unanswerable"}, {"type": "single"}, {"type": "single"}]
    preds = [{"abstained": True}, {"abstained": False}, {"abstained": True}, {"abstained": False}]
    s = abstention_summary(labels, preds)
    assert s == {"abstention_precision": 0.5, "abstention_recall": 0.5, "false_abstention_rate": 0.5}
    everything = abstention_summary(labels, [{"abstained": True}] * 4)
    assert everything["abstention_recall"] == 1.0 and everything["false_abstention_rate"] == 1.0
    nothing = abstention_summary(labels, [{"abstained": False}] * 4)
    assert nothing["abstention_precision"] is None and nothing["abstention_recall"] == 0.0


def test_paired_bootstrap():
    a = [0.2, 0.3, 0.1, 0.4, 0.2, 0.3, 0.2, 0.1, 0.3, 0.2]
    clear = paired_bootstrap(a, [x + 0.5 for x in a])
    assert clear["significant"] and clear["ci_low"] == pytest.approx(0.5) and clear["p_value"] == 0.0
    noise = paired_bootstrap(a, [x + (0.1 if i % 2 else -0.1) for i, x in enumerate(a)])
    assert not noise["significant"] and noise["ci_low"] < 0 < noise["ci_high"]
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [])


# --- the labelled set ---------------------------------------------------------------------

@pytest.mark.parametrize("row, message", [
    ('{"id": "a", "question": "q", "type": "single", "gold_paper_ids": []}', "needs gold_paper_ids"),
    ('{"id": "a", "question": "q", "type": "unanswerable", "gold_paper_ids": ["x"]}', "cannot have gold"),
    ('{"id": "a", "question": "q", "type": "open"}', "is not one of"),
    ('{"id": "a", "question": "", "type": "single"}', "missing or empty 'question'"),
    ('{"id": "a", "question": "q", "type": "single", "facts": "HiPPO", "gold_paper_ids": ["x"]}', "list of strings"),
    ("{not json", "not valid JSON"),
])
def test_load_set_errors_name_the_line(tmp_path, row, message):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(SET[0]) + "\n" + row + "\n")
    with pytest.raises(EvalError, match=rf"s\.jsonl:2: .*{message}"):
        seed.load_set(path)


def test_load_set_checks_ids(tmp_path):
    path = write_set(tmp_path / "s.jsonl", [SET[0], SET[0]])
    with pytest.raises(EvalError, match="duplicate id 'q1'"):
        seed.load_set(path)
    with pytest.raises(EvalError, match="gold paper tiny-ssm is not in the corpus"):
        seed.load_set(write_set(tmp_path / "t.jsonl", [SET[0]]), {"other"})
    with pytest.raises(EvalError, match="does not exist"):
        seed.load_set(tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_shipped_eval_sets_are_valid_and_split_by_type(real_search_pipe):
    ids = set(real_search_pipe.index.papers)
    full = seed.load_set(ROOT / "eval" / "questions.jsonl", ids)
    train = seed.load_set(ROOT / "eval" / "train.jsonl", ids)
    dev = seed.load_set(ROOT / "eval" / "dev.jsonl", ids)
    counts = {t: sum(r["type"] == t for r in full) for t in TYPES}
    assert len(full) >= 80 and counts["single"] >= 45 and counts["multi"] >= 12 and counts["unanswerable"] >= 15
    assert {r["id"] for r in train} | {r["id"] for r in dev} == {r["id"] for r in full}
    assert not {r["id"] for r in train} & {r["id"] for r in dev}
    # Third-round questions (written to grow train) are all in train; dev never gets one.
    assert all(r.get("round") == 3 for r in full if r["id"] in {t["id"] for t in train} - {d["id"] for d in dev}
               if r.get("round") == 3) and not any(r.get("round") == 3 for r in dev)
    assert sum(r.get("round") == 3 for r in train) >= 180 and len(train) >= 250
    assert sum(r.get("verdict") == "no" for r in train) >= 60
    earlier = [r for r in full if r.get("round") != 3]
    groups = {(r["type"], r.get("shape")) for r in earlier}
    for group in groups:  # the rest stratified by type (and, for second-round questions, shape): split in half
        n_train, n_dev = (sum((r["type"], r.get("shape")) == group and r.get("round") != 3 for r in s)
                          for s in (train, dev))
        assert abs(n_train - n_dev) <= 1, group
    from rag.evaluation.metrics import fact_found
    from rag.index.corpus import load_corpus

    abstracts = {p.id: p.abstract for p in load_corpus(real_search_pipe.settings.corpus)}
    for r in full:  # every fact of an answerable question is in one of its gold abstracts
        for fact in r["facts"]:
            assert any(fact_found(fact, abstracts[g]) for g in r["gold_paper_ids"]), (r["id"], fact)


# --- the harness end to end ---------------------------------------------------------------

def test_eval_end_to_end_writes_a_report(env, capsys):
    tmp, _ = env
    code, out, err = run(capsys, "eval", "--set", str(tmp / "set.jsonl"), "--out", str(tmp / "reports"),
                         "--label", "good")
    assert code == 0, err
    report = Path(out.strip().splitlines()[-1].removeprefix("report: "))
    assert report.parent == tmp / "reports" and report.name.endswith("-good")
    results = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == ["q1", "q2", "q3", "q4", "q5"]
    by_id = {r["id"]: r for r in results}
    assert by_id["q1"]["metrics"]["fact_recall"] == 1.0 and by_id["q1"]["cited_paper_ids"] == ["tiny-ssm"]
    assert by_id["q2"]["metrics"]["fact_recall"] == 1.0
    assert by_id["q3"]["metrics"]["false_abstention"] == 1.0 and by_id["q3"]["metrics"]["headline"] == 0.0
    assert by_id["q4"]["metrics"]["citation_recall"] == 0.5
    assert by_id["q5"]["metrics"]["headline"] == 1.0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n"] == 5 and summary["n_by_type"] == {"single": 3, "multi": 1, "unanswerable": 1}
    assert summary["headline"] == pytest.approx(sum(r["metrics"]["headline"] for r in results) / 5, abs=1e-4)
    assert summary["abstention"] == {"abstention_precision": 0.5, "abstention_recall": 1.0,
                                     "false_abstention_rate": 0.25}
    assert set(summary["retrieval"]) == {"dense", "bm25", "hybrid"}
    assert summary["retrieval"]["hybrid"]["n"] == 4 and 0 < summary["retrieval"]["hybrid"]["recall@5"] <= 1
    md = (report / "report.md").read_text()
    assert "## Metrics by question type" in md and "| q3 | single | 0.00 |" in md
    assert (report / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp / "reports").glob(".*.tmp"))
    assert "headline" in out and "abstention precision 0.5" in out


def test_eval_compare_says_which_is_better(env, capsys):
    tmp, answers = env
    args = ["eval", "--set", str(tmp / "set.jsonl"), "--out", str(tmp / "reports")]
    answers.lm = DummyLM(BAD)
    code, out, _ = run(capsys, *args, "--label", "bad")
    bad = out.strip().splitlines()[-1].removeprefix("report: ")
    answers.lm = DummyLM(GOOD)
    code, out, _ = run(capsys, *args, "--label", "good")
    good = out.strip().splitlines()[-1].removeprefix("report: ")
    code, out, err = run(capsys, "eval", "--compare", bad, good, "--out", str(tmp / "reports"))
    assert code == 0, err
    assert "B is better than A" in out or "not significant" in out  # 5 questions: the CI may be wide
    cmp_dir = Path(out.strip().splitlines()[-1].removeprefix("report: "))
    result = json.loads((cmp_dir / "compare.json").read_text())
    assert result["n"] == 5 and result["headline"]["mean_diff"] > 0.3
    assert result["metrics"]["headline"]["b"] > result["metrics"]["headline"]["a"]
    assert (cmp_dir / "compare.png").read_bytes()[:4] == b"\x89PNG" and "paired bootstrap" in (cmp_dir / "compare.md").read_text()
    code, _, err = run(capsys, "eval", "--compare", bad, str(tmp))
    assert code == 1 and "not a report directory" in err and "Traceback" not in err


def test_compare_pairs_yes_no_verdicts_apart_from_the_headline(tmp_path):
    # The headline does not score a yes/no answer's verdict: a decisions-only change shows in its own pairing.
    from test_calibrate import _report

    from rag.evaluation.compare import compare_reports, render_compare, verdict_line

    def rows(right: int) -> list[dict]:
        return [{"id": f"q{i}", "metrics": {"headline": 0.8, "verdict_correct": float(i < right) if i < 20 else None}}
                for i in range(25)]

    a = _report(tmp_path / "a", rows(6), {"label": "a"})
    b = _report(tmp_path / "b", rows(18), {"label": "b"})
    _, result = compare_reports(a, b, tmp_path / "out", stamp="x")
    assert result["headline"]["mean_diff"] == 0 and result["verdict_correct"]["n"] == 20
    assert result["verdict_correct"]["mean_diff"] == pytest.approx(0.6) and result["verdict_correct"]["significant"]
    assert "yes/no verdicts right: A 0.300, B 0.900 (+0.600" in verdict_line(result)
    assert "yes/no verdicts right" in render_compare(result)
    no_verdicts = _report(tmp_path / "c", [{"id": "q1", "metrics": {"headline": 1.0}}], {"label": "c"})
    _, result = compare_reports(no_verdicts, no_verdicts, tmp_path / "out", stamp="y")
    assert "verdict_correct" not in result and verdict_line(result) is None


def test_eval_bad_set_is_one_line_error(env, capsys):
    tmp, _ = env
    (tmp / "broken.jsonl").write_text('{"id": "x"}\n')
    code, out, err = run(capsys, "eval", "--set", str(tmp / "broken.jsonl"))
    assert code == 1 and err.count("\n") == 1 and "broken.jsonl:1: missing or empty 'question'" in err


# --- the disk cache -----------------------------------------------------------------------

class CountingEngine:
    """An engine that counts its calls: the cache needs nothing but the engine protocol."""

    model = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        self.calls += 1
        text = f"[[ ## answer ## ]]\nreply {self.calls}\n\n[[ ## completed ## ]]"
        return Response(id=None, model=self.model, message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=7, output_tokens=3, total_tokens=10))

    def stream(self, request):
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_disk_cache_makes_reruns_free(tmp_path):
    engine = CountingEngine()
    cached = DiskCachedEngine(engine, tmp_path / "c.sqlite", "model-sha")
    lm = dspy.LM("local/counting", engine=cached, cache=False, num_retries=0)
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        first = predict(question="q1").answer
        assert predict(question="q1").answer == first and engine.calls == 1
        assert predict(question="q2").answer != first and engine.calls == 2
    assert cached.stats["calls"] == 3 and cached.stats["hits"] == 1
    # A new process (a new cache object on the same file) still hits; another model misses.
    again = DiskCachedEngine(engine, tmp_path / "c.sqlite", "model-sha")
    other = DiskCachedEngine(engine, tmp_path / "c.sqlite", "other-sha")
    with dspy.context(lm=dspy.LM("local/counting", engine=again, cache=False, num_retries=0)):
        assert predict(question="q1").answer == first and engine.calls == 2
    with dspy.context(lm=dspy.LM("local/counting", engine=other, cache=False, num_retries=0)):
        predict(question="q1")
        assert engine.calls == 3
    # An engine that says what it sends (llama.cpp: the body with its grammar) misses when that changes.
    engine.wire = "grammar v1"
    engine.wire_request = lambda request: engine.wire
    wired = DiskCachedEngine(engine, tmp_path / "c.sqlite", "model-sha")
    with dspy.context(lm=dspy.LM("local/counting", engine=wired, cache=False, num_retries=0)):
        predict(question="q1")
        predict(question="q1")
        assert engine.calls == 4  # the first call under the wire form misses once, then hits
        engine.wire = "grammar v2"
        predict(question="q1")
        assert engine.calls == 5


# --- optimisation and program files ---------------------------------------------------

def test_shorten_demo_keeps_cited_passages_renumbered():
    demo = {"question": "q", "passages": "[1] A: a.\n[2] B: " + "b. " * 200 + "\n[3] C: c.\n[4] D: d.",
            "answer": "From B [2] and D [4].", "sources": [2, 4]}
    short = optimize.shorten_demo(demo)
    assert short["answer"] == "From B [2] and D [3]." and short["sources"] == [2, 3]
    lines = short["passages"].splitlines()
    assert [line[:6] for line in lines] == ["[1] A:", "[2] B:", "[3] D:"]
    assert len(lines[1]) <= optimize.DEMO_PASSAGE_CHARS + 10


def test_shorten_demo_keeps_the_sentence_the_answer_came_from():
    filler = " ".join(f"Sentence {i} is about something else entirely." for i in range(20))
    demo = {"question": "q", "passages": f"[1] Paper: {filler} The model reaches 91.5% accuracy on ImageNet.",
            "answer": "It reaches 91.5% accuracy on ImageNet [1].", "sources": [1]}
    short = optimize.shorten_demo(demo)
    assert short["passages"].startswith("[1] Paper: ") and "91.5% accuracy on ImageNet" in short["passages"]
    assert len(short["passages"]) <= optimize.DEMO_PASSAGE_CHARS + 10
    assert optimize.demo_supported(short)


def test_shorten_demo_keeps_what_an_evidence_first_reply_cites_without_markers():
    """The evidence-first program's replies carry no [n] in their text: they cite in `sources`, or (a number past the
    passages) not at all, and the program then cites the passage the sentence was copied from. The demo keeps that
    passage, and it is an answer, not an abstention (bootstrapping kept no demo at all before this)."""
    passages = "[1] A: Apples grow on trees in orchards.\n[2] B: The model reaches an FID of 1.74 on CIFAR-10.\n[3] C: c."
    by_sources = {"question": "q", "passages": passages, "answer": "It reaches an FID of 1.74 on CIFAR-10.",
                  "sources": [2], "answerable": True}
    short = optimize.shorten_demo(by_sources)
    assert short["sources"] == [2] and "FID of 1.74" in short["passages"].splitlines()[1]
    assert not optimize._abstains(short) and optimize.demo_supported(short)
    bad_number = {**by_sources, "sources": [7]}
    short = optimize.shorten_demo(bad_number)
    assert short["sources"] == [2] and "FID of 1.74" in short["passages"] and not optimize._abstains(short)
    assert [d["question"] for d in optimize.select_demos([by_sources, bad_number])] == ["q", "q"]
    # a yes/no reply's finding is what the passages must hold
    finding = {"question": "y", "passages": passages, "finding": "Apples grow on trees in orchards.", "verdict": "yes",
               "sources": [1]}
    short = optimize.shorten_demo(finding)
    assert short["sources"] == [1] and short["passages"].startswith("[1] A: Apples") and optimize.demo_supported(short)
    assert not optimize.demo_supported({**short, "finding": "Pears ripen quickly underground near rivers."})


def test_select_demos_mixes_answers_and_at_most_one_abstention():
    abstain = [{"question": f"u{i}", "passages": "[1] X: x.\n[2] Y: y.",
                "answer": "The papers here do not answer this question.", "sources": []} for i in range(3)]
    answer = [{"question": f"a{i}", "passages": f"[1] P: The value is {i}{'0' * i}.",
               "answer": f"The value is {i}{'0' * i} [1].", "sources": [1]} for i in range(3)]
    unsupported = {"question": "bad", "passages": "[1] Q: nothing here.", "answer": "Zebras migrate north [1].",
                   "sources": [1]}
    chosen = optimize.select_demos(abstain[:2] + [unsupported, answer[2], answer[0]] + abstain[2:] + [answer[1]])
    # the two shortest answers and one abstention, in their original order; the unsupported one dropped
    assert [d["question"] for d in chosen] == ["u0", "a0", "a1"]
    assert optimize.select_demos(abstain) == []  # abstentions alone teach the model to abstain
    # an abstention in other words is still an abstention (as the metric judged it)
    reworded = {"question": "u-other", "passages": "[1] X: x.", "answer": "The passages do not mention the GPU used.",
                "sources": []}
    assert optimize.select_demos([reworded]) == []
    assert [d["question"] for d in optimize.select_demos([reworded, abstain[0], *answer])] == ["u-other", "a0", "a1"]
    assert [d["question"] for d in optimize.select_demos(abstain + [unsupported])] == []
    assert [d["question"] for d in optimize.select_demos(answer)] == ["a0", "a1", "a2"]
    assert optimize.select_demos([]) == []


def test_optimize_bootstrap_round_trip_changes_the_prompt(env, capsys):
    tmp, _ = env
    out_file = tmp / "programs" / "20990101-000000-bootstrap.json"
    code, out, err = run(capsys, "optimize", "--train", str(tmp / "set.jsonl"), "--dev", str(tmp / "set.jsonl"),
                         "--out", str(out_file), "--reports", str(tmp / "reports"))
    assert code == 0, err
    state = json.loads(out_file.read_text())
    prov = state["provenance"]
    assert prov["format"] == rag.answer.program_files.FORMAT and prov["optimizer"] == "bootstrap"
    assert prov["train"]["sha256"] == sha256_file(tmp / "set.jsonl") and prov["train"]["n"] == 5
    assert prov["demos"] >= 1 and 0 <= prov["dev"]["headline"] <= 1 and Path(prov["dev"]["report"]).is_dir()
    assert prov["settings"]["k"] == 6 and prov["settings"]["evidence_tokens"] == 250 and prov["lm"]

    baseline = CitedRAG()
    loaded = CitedRAG()
    assert rag.answer.program_files.load_program(loaded, out_file) == out_file.name
    assert len(loaded.answer.demos) == prov["demos"]
    inputs = {"passages": "[1] T: text", "question": "Q?"}
    adapter = dspy.ChatAdapter()
    before = adapter.format(CitedAnswer, demos=baseline.answer.demos, inputs=inputs)
    after = adapter.format(CitedAnswer, demos=loaded.answer.demos, inputs=inputs)
    assert len(after) > len(before)
    assert loaded.answer.demos[0]["question"] in json.dumps(after)
    # The fixed part (system message, demos) comes before the variable part (passages, question).
    assert after[-1]["content"].count("Q?") == 1 and "Q?" not in after[0]["content"]

    # `auto` (the default) now picks it up, and --program baseline overrides it.
    code, out, _ = run(capsys, "ask", SSM_Q, "--json")
    assert json.loads(out)["provenance"]["program"] == out_file.name
    code, out, _ = run(capsys, "ask", SSM_Q, "--json", "--program", "baseline")
    assert json.loads(out)["provenance"]["program"] == "baseline"


def test_bootstrap_gives_each_question_shape_its_own_demos(env, capsys, monkeypatch):
    """One passing trace per shape is enough: run over all rows at once, bootstrapping stopped at the first
    passing specific answer and the list predictor never got a demo."""
    tmp, _ = env
    monkeypatch.setattr(optimize, "BOOTSTRAP_CANDIDATES", 1)
    monkeypatch.setattr(optimize, "DEMO_MIN_SCORE", 0.3)  # the fake list answer scores below the real bar
    out_file = tmp / "per-shape.json"
    code, _, err = run(capsys, "optimize", "--train", str(tmp / "set.jsonl"), "--dev", "none", "--out", str(out_file))
    assert code == 0, err
    state = json.loads(out_file.read_text())
    assert len(state["answer"]["demos"]) == 1 and len(state["list"]["demos"]) == 1
    assert state["list"]["demos"][0]["question"] == MULTI_Q and state["yesno"]["demos"] == []  # no yes/no row


def test_optimize_fit_on_writes_a_calibrated_program_from_reports_without_the_model(env, capsys, tmp_path):
    from test_calibrate import _report, _result

    tmp, fakes = env
    # the reply always leans yes; the judge reads the gold: the fit should choose a judge-reading source
    results = [_result(i, g, {"yes": 0.8 if g == "yes" else 0.2, "no": 0.2 if g == "yes" else 0.8, "maybe": 0.0})
               for i, g in enumerate(["no", "no", "yes", "no", "yes", "no", "no", "yes", "no", "no"])]
    report = _report(tmp_path / "train-report", results)
    out_file = tmp / "programs" / "20990101-000000-calibrate.json"
    calls = len(fakes.lm.history)
    code, out, err = run(capsys, "optimize", "--optimizer", "calibrate", "--fit-on", str(report), "--dev", "none",
                         "--out", str(out_file))
    assert code == 0, err
    state = json.loads(out_file.read_text())
    assert state["decisions"]["verdict_source"] in ("judge", "both") and state["decisions"]["verdict_bias"]
    prov = state["provenance"]
    assert prov["optimizer"] == "calibrate" and prov["train"]["n"] == 10 and prov["calibration"]["judged"] == 10
    assert prov["calibration"]["sampled_accuracy"] == pytest.approx(0.3)
    assert len(fakes.lm.history) == calls  # no answer was generated: the fit reads the reports
    # limited to the reply's own probabilities (no second call), and declined yes/no answers keeping their verdict
    reply_only = tmp / "programs" / "20990101-000001-calibrate.json"
    code, out, err = run(capsys, "optimize", "--optimizer", "calibrate", "--fit-on", str(report), "--dev", "none",
                         "--verdict-source", "reply", "--unsupported-verdict", "keep", "--out", str(reply_only))
    assert code == 0, err
    decisions = json.loads(reply_only.read_text())["decisions"]
    assert decisions["verdict_source"] == "reply" and decisions["unsupported_verdict"] == "keep"
    assert {t["source"] for t in json.loads(reply_only.read_text())["provenance"]["calibration"]["table"]} == {"reply"}
    # --fit-on fits only the steps that need no model run, and the two verdict flags need it
    code, _, err = run(capsys, "optimize", "--optimizer", "calibrate+bootstrap", "--fit-on", str(report), "--dev",
                       "none", "--out", str(tmp / "x.json"))
    assert code == 1 and "bootstrap runs the model" in err and not (tmp / "x.json").exists()
    code, _, err = run(capsys, "optimize", "--optimizer", "calibrate", "--unsupported-verdict", "keep", "--dev", "none",
                       "--out", str(tmp / "x.json"))
    assert code == 1 and "--unsupported-verdict sets decisions fitted from reports" in err


def _declined(label: dict, headline: float, reason: str = "unsupported_claim") -> dict:
    """A report row (rag eval) whose answer the claim checks declined."""
    return {"id": label["id"], "type": label["type"], "shape": "specific", "question": label["question"],
            "reference": label["answer"], "facts": label["facts"], "gold_paper_ids": label["gold_paper_ids"],
            "prediction": {"abstained": True, "provenance": {"abstain_reason": reason}}, "error": None,
            "metrics": {"headline": headline}}


def test_optimize_fits_the_declined_fallback_from_reports_on_a_saved_program(env, capsys, tmp_path):
    """`rag optimize --optimizer fallback --fit-on REPORT --from auto`: the evidence's own answer to each
    claim-check decline is scored with no model call, the threshold goes into the program's decisions, and the
    starting program's other decisions stay."""
    from test_calibrate import _report

    from rag.answer.program_files import save_program_file

    tmp, fakes = env
    by_id = {r["id"]: r for r in SET}
    answered = {**_declined(by_id["q2"], 0.8), "prediction": {"abstained": False, "provenance": {}}}
    results = [_declined(by_id["q1"], 0.0), _declined(by_id["q5"], 1.0, "off_question"), answered]
    report = _report(tmp_path / "train-report", results)
    shipped = tmp / "programs" / "20990101-000000-calibrate.json"
    start = CitedRAG()
    start.set_decisions({"unsupported_verdict": "keep"})
    save_program_file(start, shipped, {"optimizer": "calibrate"})
    out_file = tmp / "fitted.json"
    calls = len(fakes.lm.history)
    code, out, err = run(capsys, "optimize", "--optimizer", "fallback", "--fit-on", str(report), "--dev", "none",
                         "--from", "auto", "--out", str(out_file))
    assert code == 0, err
    assert len(fakes.lm.history) == calls  # the fit reads the reports; the evidence answers without the model
    state = json.loads(out_file.read_text())
    fit = state["provenance"]["declined_fallback"]
    assert fit["rows"] == 3 and fit["declines"] == 2
    # the HiPPO question's evidence holds its fact and the off-corpus one's does not: swapping gains only there
    assert fit["swapped"] == 1 and set(fit["chosen"]) == {"specific"}
    assert fit["train_headline"]["fallback"] > fit["train_headline"]["declined"]
    assert state["decisions"]["declined_fallback"] == fit["chosen"]
    # no yes/no question: no draft verdict to keep
    assert state["decisions"]["fallback_verdict"] == fit["fallback_verdict"] == "drop"
    assert fit["verdicts_right"] == {"declined_drafts": {"n": 0, "right": 0, "balanced": 0.0, "by_gold": {}},
                                     "answers": {"n": 0, "right": 0, "balanced": 0.0, "by_gold": {}}}
    assert state["decisions"]["unsupported_verdict"] == "keep"  # kept from the program it started from
    assert state["provenance"]["from"] == str(shipped) and state["provenance"]["train"]["n"] == 3
    # a report without headline scores (PubMedQA's) cannot fit it
    pq = _report(tmp_path / "pq", [{"id": "p1", "type": "yesno", "shape": "yesno", "question": "Q?",
                                    "prediction": {"abstained": True}, "metrics": {"accuracy": 1}}])
    code, _, err = run(capsys, "optimize", "--optimizer", "fallback", "--fit-on", str(pq), "--dev", "none",
                       "--out", str(tmp / "y.json"))
    assert code == 1 and "no headline score" in err and not (tmp / "y.json").exists()


def test_report_verdict_outcome_reads_the_declined_drafts_verdict_and_the_answers():
    def row(reference, prediction, type_="single"):
        return {"id": "y", "type": type_, "shape": "yesno", "reference": reference, "prediction": prediction}

    draft = {"abstained": True, "provenance": {"abstain_reason": "off_question",
                                               "declined_draft": {"answer": "No: it does not [1]."}}}
    stood_in = {"abstained": False, "verdict": None,
                "provenance": {"fallback": "extractive", "declined_draft": {"answer": "Yes: it does [1]."}}}
    assert optimize.report_verdict_outcome(row("No. It does not.", draft)) == ("draft", "no", "no")
    assert optimize.report_verdict_outcome(row("No. It does not.", stood_in)) == ("draft", "no", "yes")
    assert optimize.report_verdict_outcome(row("Yes. It does.", {"abstained": False, "verdict": "yes"})) == (
        "own", "yes", "yes")
    assert optimize.report_verdict_outcome(row("Yes. It does.", {"abstained": False, "verdict": None})) == (
        "own", "yes", None)
    assert optimize.report_verdict_outcome(row("Yes. It does.", {"abstained": True, "provenance": {}})) is None
    assert optimize.report_verdict_outcome(row("", draft, "unanswerable")) is None
    assert optimize.report_verdict_outcome({**row("No.", draft), "shape": "specific"}) is None


def test_optimize_fallback_step_fits_on_a_run_of_the_program(env, capsys):
    """The live step: the program answers the train questions; the one whose answer names what its evidence lacks
    is declined by the claim checks, and its evidence answers it better, so the fit falls back there."""
    tmp, fakes = env
    fakes.lm = DummyLM({**GOOD, SSM_Q: {"answerable": "True", "answer": "It is initialised with Zorblax [1].",
                                        "sources": "[1]"}})
    out_file = tmp / "live.json"
    code, out, err = run(capsys, "optimize", "--optimizer", "fallback", "--train", str(tmp / "set.jsonl"),
                         "--dev", "none", "--out", str(out_file))
    assert code == 0, err
    state = json.loads(out_file.read_text())
    fit = state["provenance"]["declined_fallback"]
    assert fit["rows"] == 4 and fit["declines"] == 1 and fit["swapped"] == 1  # the list question is left out
    assert state["decisions"]["declined_fallback"] == {"specific": 0.0} and state["provenance"]["from"] == "baseline"
    # the program then answers the declined question from its evidence
    code, out, err = run(capsys, "ask", SSM_Q, "--json", "--program", str(out_file))
    answer = json.loads(out)
    assert code == 0 and "HiPPO" in answer["answer"] and answer["provenance"]["fallback"] == "extractive"
    assert "Zorblax" in answer["provenance"]["declined_draft"]["answer"]


def test_optimize_fits_the_minimum_similarity_per_shape_from_a_report(env, capsys, tmp_path, monkeypatch):
    """`rag optimize --optimizer abstain+fallback --fit-on REPORT`: a train run that answered every question (the
    off-corpus one wrongly) gives a minimum for its shape that declines it unread and keeps the others answered;
    the fallback step after it fits on the questions left to the model. The program applies the minimum unless
    RAG_MIN_SCORE is set, which wins."""
    from test_calibrate import _report

    tmp, fakes = env
    by_id = {r["id"]: r for r in SET}

    def answered(label, headline):
        return {**_declined(label, headline), "prediction": {"abstained": False, "provenance": {}}}

    results = [answered(by_id["q1"], 1.0), answered(by_id["q2"], 0.8), answered(by_id["q5"], 0.0)]
    report = _report(tmp_path / "train-report", results)
    out_file = tmp / "abstain.json"
    calls = len(fakes.lm.history)
    code, out, err = run(capsys, "optimize", "--optimizer", "abstain+fallback", "--fit-on", str(report),
                         "--dev", "none", "--out", str(out_file))
    assert code == 0, err
    assert len(fakes.lm.history) == calls  # fitted from the report: no model call
    state = json.loads(out_file.read_text())
    fit = state["provenance"]["min_score"]
    assert fit["rows"] == 3 and fit["declined"] == 1 and fit["declined_answerable"] == 0 and fit["setting"] == 0.0
    assert fit["train_headline"] == {"run": 0.6, "min_score": 0.9333}
    floor = state["decisions"]["min_score"]["specific"]
    assert state["decisions"]["min_score"] == fit["chosen"] and floor > 0
    assert state["provenance"]["declined_fallback"]["rows"] == 2  # q5 never reaches the model now
    # the program declines the off-corpus question unread, unless the setting is given
    monkeypatch.delenv("RAG_MIN_SCORE")
    code, out, _ = run(capsys, "ask", FRANCE_Q, "--json", "--program", str(out_file))
    answer = json.loads(out)
    assert code == 0 and answer["abstained"] and answer["provenance"]["abstain_reason"] == "no_close_passage"
    assert len(fakes.lm.history) == calls
    code, out, _ = run(capsys, "ask", SSM_Q, "--json", "--program", str(out_file))
    assert code == 0 and "HiPPO" in json.loads(out)["answer"] and len(fakes.lm.history) == calls + 1
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")
    code, out, _ = run(capsys, "ask", FRANCE_Q, "--json", "--program", str(out_file))
    assert code == 0 and json.loads(out)["provenance"]["abstain_reason"] != "no_close_passage"
    assert len(fakes.lm.history) == calls + 2


def test_optimize_abstain_step_fits_on_a_run_of_the_program(env, capsys, monkeypatch):
    """The live step: the program answers every train question, none declined unread whatever the setting; the
    off-corpus one is answered wrongly (the claim checks flag, not decline, here), so its shape's minimum declines
    it; the others keep being answered."""
    tmp, fakes = env
    monkeypatch.setenv("RAG_DECLINE_UNSUPPORTED", "0")
    fakes.lm = DummyLM({**GOOD, FRANCE_Q: {"answer": "The capital city of France is Paris [1].", "sources": "[1]"}})
    out_file = tmp / "live.json"
    code, out, err = run(capsys, "optimize", "--optimizer", "abstain", "--train", str(tmp / "set.jsonl"),
                         "--dev", "none", "--out", str(out_file))
    assert code == 0, err
    fit = json.loads(out_file.read_text())["provenance"]["min_score"]
    assert fit["rows"] == 5 and fit["declined_in_run"] == 0
    assert fit["declined"] >= 1 and fit["declined_answerable"] == 0
    assert fit["train_headline"]["min_score"] > fit["train_headline"]["run"]


def test_a_program_rejects_a_minimum_that_is_not_per_shape():
    program = CitedRAG()
    program.set_decisions({"min_score": {"specific": 0.4}})
    assert program.min_scores == {"specific": 0.4} and program.decisions()["min_score"] == {"specific": 0.4}
    for bad in ({"essay": 0.4}, {"list": float("nan")}, {"list": True}, {"list": "0.4"}, [0.4]):
        with pytest.raises(ValueError, match="min_score must map question shapes"):
            program.set_decisions({"min_score": bad})


def test_auto_picks_the_newest_program_by_name(env):
    tmp, _ = env
    prog = CitedRAG()
    prog.answer.demos = [dspy.Example(question="q", passages="[1] t", answer="a [1]", sources=[1])]
    for name in ("20260101-000000-bootstrap.json", "20270101-000000-gepa.json", "20250101-000000-mipro.json"):
        rag.answer.program_files.save_program_file(prog, tmp / "programs" / name, {"optimizer": name})
    assert rag.answer.program_files.resolve_program("auto").name == "20270101-000000-gepa.json"
    assert rag.answer.program_files.resolve_program("baseline") is None


def test_auto_passes_over_a_program_fitted_for_another_corpus(env, capsys, tmp_path, caplog):
    """A program written with --for-corpus carries its index's corpus hash; `auto` takes the newest program that
    is for any corpus or for exactly the index's corpus."""
    from test_calibrate import _report, _result

    tmp, _ = env
    save = rag.answer.program_files.save_program_file
    save(CitedRAG(), tmp / "programs" / "20260101-000000-bootstrap.json", {"optimizer": "bootstrap"})
    save(CitedRAG(), tmp / "programs" / "20270101-000000-calibrate.json",
         {"optimizer": "calibrate", "corpus": {"hash": "f" * 64, "path": "elsewhere.jsonl", "papers": 9}})
    with caplog.at_level(logging.INFO, logger="rag.answer.program_files"):
        code, out, err = run(capsys, "ask", SSM_Q, "--json")
    assert code == 0, err
    assert json.loads(out)["provenance"]["program"] == "20260101-000000-bootstrap.json"  # the other corpus's is skipped
    assert "20270101-000000-calibrate.json is fitted for another corpus (ffffffffffff...)" in caplog.text

    report = _report(tmp_path / "r", [_result(i, "no" if i % 3 else "yes") for i in range(6)])
    mine = tmp / "programs" / "20260601-000000-calibrate.json"
    code, _, err = run(capsys, "optimize", "--optimizer", "calibrate", "--fit-on", str(report), "--dev", "none",
                       "--for-corpus", "--out", str(mine))
    assert code == 0, err
    corpus = json.loads(mine.read_text())["provenance"]["corpus"]
    meta = json.loads(next((tmp / "indexes").glob("idx-*/meta.json")).read_text())
    assert corpus["hash"] == meta["corpus_hash"] and corpus["papers"] == meta["n_papers"]
    code, out, _ = run(capsys, "ask", SSM_Q, "--json")
    assert json.loads(out)["provenance"]["program"] == mine.name  # newer than the generic one, and for this corpus
    # an explicit path is taken whatever corpus it was fitted for
    other = str(tmp / "programs" / "20270101-000000-calibrate.json")
    code, out, _ = run(capsys, "ask", SSM_Q, "--json", "--program", other)
    assert code == 0 and json.loads(out)["provenance"]["program"] == "20270101-000000-calibrate.json"


def test_bad_program_files_are_errors(env, capsys, tmp_path):
    good = tmp_path / "good.json"
    rag.answer.program_files.save_program_file(CitedRAG(), good, {"optimizer": "bootstrap"})
    state = json.loads(good.read_text())

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(good.read_text()[:50])
    plain = tmp_path / "plain.json"
    CitedRAG().save(str(plain))  # DSPy's own format: no provenance
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**state, "answer": {**state["answer"], "signature": {
        "instructions": "x", "fields": [{"prefix": "Question:", "description": ""}, {"prefix": "Answer:", "description": ""}]}}}))
    for path, message in ((corrupt, "is corrupt"), (plain, "not a papers-rag program"),
                          (other, "made for another program"), (tmp_path / "none.json", "does not exist")):
        code, out, err = run(capsys, "ask", SSM_Q, "--program", str(path))
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    with pytest.raises(ProgramError):
        rag.answer.program_files.load_program(CitedRAG(), other)


def test_optimize_bad_train_set_fails_before_loading(env, capsys):
    tmp, _ = env
    code, _, err = run(capsys, "optimize", "--train", str(tmp / "nope.jsonl"))
    assert code == 1 and "does not exist" in err


@pytest.mark.parametrize("name", ["mipro", "instructions", "gepa"])
def test_other_optimizers_compile_with_a_dummy_lm(name, embedder, capsys):
    pytest.importorskip("gepa" if name == "gepa" else "optuna")
    rows = [r for r in SET if r["type"] != "unanswerable"] * 2
    rows = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(rows)]

    class Hit:  # the parts of rag.answer.retrieve.Hit the program and metric read
        def __init__(self, pid, text):
            self.paper, self.text, self.score = type("P", (), {"id": pid, "title": pid})(), text, 1.0

    def search(question):
        from rag.answer.retrieve import SearchResult

        return SearchResult([Hit("tiny-ssm", "state matrix initialised with HiPPO")], 1.0)

    lm = DummyLM([{"answer": "The state matrix is initialised with HiPPO [1].", "sources": "[1]",
                   "proposed_instruction": "Answer with citations.", "new_instruction": "Answer with citations.",
                   "observations": "x", "summary": "x", "program_description": "x", "module_description": "x"}] * 400)
    compiled = optimize.compile_program(CitedRAG(search), name, rows, lambda t: embedder.encode(t), lm, progress=True)
    assert isinstance(compiled, CitedRAG) and compiled.answer.lm is None
    if name == "instructions":  # instruction-only: nothing added to the prompt a question reads
        assert not any(p.demos for p in compiled.predictors())
    out, err = capsys.readouterr()
    assert out == ""  # DSPy's print()s do not reach the command's stdout
    assert f"{name}: answers scored" in err and "mean score" in err  # the user sees it move


def test_counted_metric_ticks_once_per_answer_and_keeps_the_mean():
    class Bar:
        n, postfix = 0, ""

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s

    bar = Bar()
    scores = iter([1.0, 0.0, dspy.Prediction(score=0.5, feedback="x")])
    metric = optimize.counted(lambda *a, **kw: next(scores), bar)
    assert metric(None, None) == 1.0 and metric(None, None, None) == 0.0
    assert metric(None, None, None, pred_name="answer", pred_trace=None).feedback == "x"
    assert bar.n == 3 and bar.postfix == "mean score 0.50"


def test_provenance_paths_are_relative_inside_the_project(tmp_path):
    from rag.optimize import portable as _portable
    from rag.settings import ROOT

    assert _portable(ROOT / "eval" / "train.jsonl") == "eval/train.jsonl"  # the same in any clone
    assert _portable(tmp_path / "set.jsonl") == str(tmp_path / "set.jsonl")
