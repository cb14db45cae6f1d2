"""Question shapes (list / yes-no / specific) and yes/no/maybe verdicts read off answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.answer.shapes import parse_verdict, question_shape

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("question,shape", [
    ("Which papers study state space models?", "list"),
    ("What work here is about protein folding?", "list"),
    ("What recent papers look at tokenizer-free models?", "list"),
    ("List the studies on model merging", "list"),
    ("Is there work arguing that long context is overrated?", "yesno"),
    ("Has anyone checked whether LLMs can grade essays?", "yesno"),
    ("Can a model learn to use tools from a few examples?", "yesno"),
    ("Does OCR quality hurt retrieval-augmented generation?", "yesno"),
    ("Do deeper LLMs compose new computations, or do they spread the same ones over more layers?", "specific"),
    ("Is the gain from data or from model size?", "yesno"),
    ("What are the two subtasks of the I am a Strange Dataset benchmark?", "specific"),
    ("Which model was best on the benchmark?", "specific"),
    ("How much more parameter-efficient is LoReFT than prior PEFTs?", "specific"),
    # titles before the question, as in PubMedQA (and as people write)
    ("Biliary atresia: should all patients undergo a portoenterostomy?", "yesno"),
    ("Multidisciplinary breast cancer clinics. Do they work?", "yesno"),
    ("Juvenile ankylosing spondylitis--is it the same disease as adult ankylosing spondylitis?", "yesno"),
    ("Inhibin: a new circulating marker of hydatidiform mole?", "yesno"),
    ("Sourdough starters: which flour works best?", "specific"),
])
def test_question_shapes(question, shape):
    assert question_shape(question) == shape


def test_labelled_set_shapes_agree_with_the_rules():
    """Every row of the labelled set that carries a `shape` is classified the same way by the rules."""
    rows = [json.loads(line) for line in (ROOT / "eval" / "questions.jsonl").read_text().splitlines() if line.strip()]
    labelled = [r for r in rows if "shape" in r]
    wrong = [(r["id"], r["shape"], question_shape(r["question"])) for r in labelled
             if question_shape(r["question"]) != r["shape"]]
    assert not wrong, wrong


@pytest.mark.parametrize("answer,verdict", [
    ("Yes, it does [1].", "yes"), ("Yes: Paper A argues this [2].", "yes"), ("yes.", "yes"),
    ("**Yes** - they find it helps [1]", "yes"), ("Indeed, the study shows ...", "yes"),
    ("No: the paper finds it does not help [2].", "no"), ("No. [1]", "no"), ("Not really; ...", "no"),
    ("Maybe: the results are mixed [1].", "maybe"), ("Possibly, for small models.", "maybe"),
    ("It is unclear from the abstract.", "maybe"), ("Partially [3].", "maybe"),
    ("The papers here do not answer this question.", None), ("Nothing is said about that.", None),
    ("Notably, the method wins.", None), ("Yesterday's models ...", None), ("", None), (None, None),
])
def test_parse_verdict(answer, verdict):
    assert parse_verdict(answer) == verdict
