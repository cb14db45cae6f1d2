"""The real packaged models on the real corpus: all-MiniLM-L6-v2 and the embedded Qwen GGUF.

Slow (an index build of ~1 minute, then ~20-30 s a question on 2 cores), so marked
`slow`; `make test` still runs them. They build their own index in a temporary
directory, and use the shared model cache (the GGUF is joined once per machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.pipeline import Pipeline
from rag.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(real_settings) -> Settings:
    return real_settings


@pytest.fixture(scope="module")
def search_pipe(real_search_pipe) -> Pipeline:
    return real_search_pipe


@pytest.fixture(scope="module")
def pipe(settings, search_pipe) -> Pipeline:
    return Pipeline.open(settings)  # index already built by search_pipe


def test_real_index_holds_the_whole_corpus(search_pipe):
    meta = search_pipe.index.meta
    assert meta["n_papers"] == 441 and meta["embed_dim"] == 384
    assert meta["n_chunks"] == len(search_pipe.index.chunks) == search_pipe.index.dense.ntotal > 441


KNOWN = [
    ("What are the two subtasks of the I am a Strange Dataset benchmark?",
     "I am a Strange Dataset: Metalinguistic Tests for Language Models"),
    ("Do base language models beat aligned ones at generating random numbers?",
     "Base Models Beat Aligned Models at Randomness and Creativity"),
    ("How much more parameter-efficient are representation interventions than LoRA-style PEFTs?",
     "ReFT: Representation Finetuning for Language Models"),
    ("Does OCR quality hurt retrieval-augmented generation?",
     "OCR Hinders RAG: Evaluating the Cascading Impact of OCR on Retrieval-Augmented Generation"),
    ("a foundation model for weather and climate", "Prithvi WxC: Foundation Model for Weather and Climate"),
]


@pytest.mark.parametrize("question,title", KNOWN)
def test_known_questions_find_their_paper_in_the_top_3_with_hybrid(search_pipe, question, title):
    hits = search_pipe.search(question, k=3, mode="hybrid").hits
    assert title in [h.paper.title for h in hits]


@pytest.mark.parametrize("mode", ["dense", "bm25"])
def test_each_single_mode_finds_most_known_papers(search_pipe, mode):
    # Each alone misses some: dense misses the paraphrased ReFT question (no shared key term),
    # which is why hybrid is the default.
    found = sum(title in [h.paper.title for h in search_pipe.search(q, k=3, mode=mode).hits] for q, title in KNOWN)
    assert found >= 4


def test_out_of_corpus_questions_are_far_from_every_passage(search_pipe):
    for q in ("How do I bake sourdough bread?", "Who won the 2022 football world cup?"):
        assert search_pipe.search(q, k=1).best_similarity < search_pipe.settings.min_score
    assert search_pipe.search("state space models", k=1).best_similarity > search_pipe.settings.min_score


@pytest.mark.parametrize("question,title,expect", [
    ("What are the two subtasks of the I am a Strange Dataset benchmark?",
     "I am a Strange Dataset: Metalinguistic Tests for Language Models", ["generation", "verification"]),
    ("What did the paper on base versus aligned models find about random number generation?",
     "Base Models Beat Aligned Models at Randomness and Creativity", ["7"]),
    ("How much more parameter-efficient is LoReFT than prior PEFTs?",
     "ReFT: Representation Finetuning for Language Models", ["10x", "50x"]),
])
def test_real_answers_cite_the_right_paper(pipe, question, title, expect):
    out = pipe.ask(question)
    assert out["abstained"] is False, out["answer"]
    assert title in [c["title"] for c in out["citations"]], out
    for word in expect:
        assert word.lower() in out["answer"].lower(), out["answer"]
    # every [n] in the text is a citation, and every citation points at a passage that was given
    ns = {c["n"] for c in out["citations"]}
    assert ns <= {p["n"] for p in out["passages"]}
    assert all(f"[{n}]" in out["answer"] for n in ns)
    prov = out["provenance"]
    assert prov["lm"] == "local/qwen2.5-coder-1.5b-instruct-q4_k_m"
    assert prov["prompt_tokens"] > 100 and prov["completion_tokens"] > 0


def test_replies_are_json_under_the_schema_on_the_real_model(pipe):
    pipe.ask("How much more parameter-efficient is LoReFT than prior PEFTs?")
    reply = pipe.lm.history[-1]["outputs"][0]
    text = reply["text"] if isinstance(reply, dict) else reply
    data = json.loads(text)  # the grammar makes it parse: no recovered half-replies, no leaked field markers
    assert list(data) == ["answerable", "answer", "sources"] and isinstance(data["sources"], list)


def test_the_abstention_decision_on_the_real_model(pipe):
    answerable = pipe.ask("What are the two subtasks of the I am a Strange Dataset benchmark?")
    assert answerable["abstained"] is False and answerable["provenance"]["abstain_reason"] is None
    assert 0 <= answerable["provenance"]["p_answerable"] <= 1  # read from the answer call's own logprobs
    # close to a paper, so retrieval alone does not decline it; the abstract names no software package, and
    # the model's draft fills the gap with a name no cited passage has
    unanswerable = pipe.ask("Which DFT software package was used to compute the decomposition energies when "
                            "evaluating UniMat?")
    assert unanswerable["abstained"] is True, unanswerable["answer"]
    assert unanswerable["provenance"]["abstain_reason"] in ("unsupported_claim", "no_valid_citation")
    # its paper is close by name only (the embedder sees MechGPT as word pieces); the abstract gives no count,
    # and the model's draft, with no number in it, is not an answer to "how many"
    count = pipe.ask("How many question-answer pairs were distilled to fine-tune MechGPT?")
    assert count["abstained"] is True and count["provenance"]["abstain_reason"] in (
        "off_question", "unsupported_claim", "no_valid_citation"), count["answer"]
    far = pipe.ask("What is a good recipe for sourdough bread?")
    assert far["abstained"] is True and far["provenance"]["abstain_reason"] == "no_close_passage"
    assert far["provenance"]["prompt_tokens"] == 0  # declined without calling the model


def test_list_and_yes_no_questions_are_answered_in_their_shape(pipe):
    listed = pipe.ask("Which papers study state space models?")
    assert listed["shape"] == "list" and listed["abstained"] is False
    lines = listed["answer"].splitlines()
    assert len(lines) >= 2 and all(line.startswith("- ") and line.endswith("]") for line in lines)
    assert sum("state space" in c["title"].lower() for c in listed["citations"]) >= 2
    yes = pipe.ask("Does OCR quality hurt retrieval-augmented generation?")
    assert yes["shape"] == "yesno" and yes["verdict"] == "yes" and yes["answer"].lower().startswith("yes")
    assert "OCR Hinders RAG" in " ".join(c["title"] for c in yes["citations"])


def test_out_of_corpus_question_is_abstained(pipe):
    out = pipe.ask("Who won the 2022 football world cup?")
    assert out["abstained"] is True and out["citations"] == []
    assert out["answer"] == "The papers here do not answer this question."


def test_rag_ask_json_end_to_end(settings, pipe):
    """The console command, in a fresh process, on the real models."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "RAG_INDEX_DIR": settings.index_dir,
           "RAG_CACHE_DIR": settings.cache_dir}
    proc = subprocess.run([sys.executable, "-m", "rag", "ask", "--json",
                           "What are the two subtasks of the I am a Strange Dataset benchmark?"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no logs, no warnings, no llama.cpp chatter by default
    data = json.loads(proc.stdout)
    assert data["citations"][0]["title"].startswith("I am a Strange Dataset")
    # a fresh clone answers with the newest optimised program it ships (programs/*.json) that applies to this
    # corpus (one fitted for another corpus, PubMedQA's, is passed over), else the baseline, and says which
    shipped = sorted((Path(__file__).parents[1] / "programs").glob("*.json"), reverse=True)
    corpus = pipe.index.meta["corpus_hash"]
    usable = [p.name for p in shipped if json.loads(p.read_text())["provenance"].get("corpus", {}).get("hash")
              in (None, corpus)]
    assert data["provenance"]["program"] == (usable[0] if usable else "baseline")
