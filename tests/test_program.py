"""The program with DummyLM: citation mapping, invalid numbers, abstention, provenance."""

from __future__ import annotations

import dspy
import pytest
from dspy.utils import DummyLM

from rag.answer.program import ABSTAIN_TEXT, CitedRAG, format_passages, map_citations, recover_fields
from rag.errors import RagError
from rag.pipeline import MAX_QUESTION_CHARS, Pipeline, validate_question

# --- citation mapping ------------------------------------------------------------

P2, P3, P4 = (["an unrelated passage"] * n for n in (2, 3, 4))


def test_markers_map_to_passages_in_order():
    c = map_citations("SSMs scale linearly [2]. They use HiPPO [1][2].", [2, 1], P3)
    assert c.numbers == [2, 1] and not c.abstained
    assert c.answer == "SSMs scale linearly [2]. They use HiPPO [1][2]."


def test_invalid_numbers_are_dropped_from_text_and_citations():
    c = map_citations("A claim [7]. Another [2, 9] and [0].", [7, 2], P3)
    assert c.numbers == [2]
    assert c.answer == "A claim. Another [2] and."


def test_a_marker_formed_by_removing_an_invalid_one_is_checked_too():
    # found by hypothesis: "[[9]2]" with one passage left "[2]" behind once "[9]" was dropped
    c = map_citations("Claim [1] [[9]2].", [], ["one passage"])
    assert c.numbers == [1] and c.answer == "Claim [1]."


def test_grouped_markers_are_split():
    assert map_citations("Both [1, 3].", [], P3).answer == "Both [1][3]."


def test_sources_without_markers_are_cited_at_the_end():
    c = map_citations("The subtasks are generation and verification.", [1, 5], P4)
    assert c.numbers == [1] and c.answer == "The subtasks are generation and verification. [1]"
    assert map_citations("Plain.", "[2]", P4).numbers == [2]  # sources given as text


def test_uncited_answers_are_attributed_to_the_passage_they_come_from():
    passages = ["Sourdough acidity rises fastest at 30 degrees Celsius during fermentation.",
                "LoReFT learns interventions that are 10x-50x more parameter-efficient than prior PEFTs.",
                "Robots learn to walk on rough terrain."]
    # the model copied passage 2 but listed no sources (seen with the local model)
    c = map_citations("LoReFT learns interventions that are 10x-50x more parameter-efficient than prior "
                      f"state-of-the-art PEFTs. {ABSTAIN_TEXT}", [], passages)
    assert not c.abstained and c.numbers == [2] and c.answer.endswith("PEFTs. [2]")
    # attribution beats a wrong source list; unrelated text is attributed to nothing
    assert map_citations("Acidity rises fastest at 30 degrees during sourdough fermentation.", [3], passages).numbers == [1]
    assert map_citations("Quantum chromodynamics describes gluons binding quarks.", [], passages).abstained


def test_leaked_field_markers_are_stripped():
    c = map_citations("[[ ## answer ## ]]\nIt works [1].\n[[ ## completed ## ]]", [1], P2)
    assert c.answer == "It works [1]."


@pytest.mark.parametrize("answer,sources", [
    (ABSTAIN_TEXT, []),
    ("The passages do not contain information about the training hardware.", [1]),
    ("I cannot answer this from the passages.", []),
    ("No information is given about that.", []),
    ("A confident answer with no citation at all.", []),
    ("", [1]),
    ("Claim [9].", [9]),  # every citation invalid
])
def test_abstentions(answer, sources):
    c = map_citations(answer, sources, P4)
    assert c.abstained and c.numbers == [] and c.answer == ABSTAIN_TEXT


def test_a_stray_abstention_after_an_answer_is_removed():
    c = map_citations(f"LoReFT is 10x-50x more parameter-efficient [1]. {ABSTAIN_TEXT}", [1], P2)
    assert not c.abstained and c.answer == "LoReFT is 10x-50x more parameter-efficient [1]."


def test_a_negative_finding_is_not_an_abstention():
    c = map_citations("The study finds SAEs do not outperform simple baselines [2].", [2], P3)
    assert not c.abstained and c.numbers == [2]


# --- the module with DummyLM on the tiny index -------------------------------------

@pytest.fixture
def pipe(tiny_settings, embedder):
    def open_with(answers, **changes):
        lm = DummyLM(answers)
        return Pipeline.open(tiny_settings.replace(**changes), embedder=embedder, lm=lm), lm
    return open_with


def test_ask_maps_citations_to_papers(pipe):
    p, lm = pipe([{"answer": "They use a diagonal state matrix initialised with HiPPO [1].", "sources": "[1]"}])
    out = p.ask("How are state space models initialised?")
    assert out["abstained"] is False
    assert out["citations"] == [{"n": 1, "paper_id": "tiny-ssm",
                                 "title": "Structured State Space Models for Long Sequences"}]
    assert [x["n"] for x in out["passages"]] == list(range(1, len(out["passages"]) + 1))
    assert out["passages"][0]["paper_id"] == "tiny-ssm"
    prov = out["provenance"]
    assert prov["program"] == "baseline" and prov["index"].startswith("idx-") and prov["latency_s"] >= 0
    # the prompt really carried the numbered passages and the question
    prompt = lm.history[-1]["messages"][-1]["content"]
    assert "[1] Structured State Space Models for Long Sequences:" in prompt
    assert "How are state space models initialised?" in prompt


def test_ask_drops_citations_to_passages_that_were_not_given(pipe):
    p, _ = pipe([{"answer": "Fermentation raises acidity [1][12].", "sources": "[1, 12]"}], k=2)
    out = p.ask("sourdough fermentation acidity")
    assert [c["n"] for c in out["citations"]] == [1]
    assert "[12]" not in out["answer"]


def test_a_reply_missing_its_sources_field_is_recovered_without_a_second_call(pipe):
    # What the local model does when it rambles into the token limit: answer text, no sources field.
    p, lm = pipe([{"answer": "Acidity rises fastest at 30 degrees Celsius during sourdough fermentation. Longer fer"}])
    out = p.ask("At what temperature does sourdough acidity rise fastest?")
    assert len(lm.history) == 1  # no JSON-adapter retry
    assert out["abstained"] is False and out["citations"][0]["paper_id"] == "tiny-bread"
    assert out["answer"] == "Acidity rises fastest at 30 degrees Celsius during sourdough fermentation. [1]"


def test_recover_fields():
    assert recover_fields("[[ ## answer ## ]]\nIt is X [2].\n\n[[ ## sources ## ]]\n[2]") == ("It is X [2].", "[2]")
    assert recover_fields("[[ ## answer ## ]]\nFirst sentence. Second cut o") == ("First sentence.", "")
    assert recover_fields("just text, no markers.") == ("just text, no markers.", "")
    # a compact JSON reply cut off by the token limit, for either text field
    assert recover_fields('{"answerable":true,"answer":"It is X [1]. Then \\"Y\\" was cut o') == ("It is X [1].", "")
    assert recover_fields('{"answerable":true,"finding":"It helps [2].","verdict":"yes","sources":[2]}') == (
        "It helps [2].", "2")


def test_ask_abstains_when_the_model_says_so(pipe):
    p, _ = pipe([{"answer": ABSTAIN_TEXT, "sources": "[]"}])
    out = p.ask("What GPU trained the exoplanet classifier?")
    assert out["abstained"] is True and out["citations"] == [] and out["answer"] == ABSTAIN_TEXT
    assert out["passages"]  # the closest passages are still reported


def test_far_questions_abstain_without_calling_the_model(pipe):
    p, lm = pipe([{"answer": "should never be used [1]", "sources": "[1]"}], min_score=0.5)
    out = p.ask("quantum chromodynamics lattice gauge theory")
    assert out["abstained"] is True and lm.history == []
    assert out["provenance"]["prompt_tokens"] == 0


def test_prompt_puts_fixed_instructions_before_passages(pipe):
    p, lm = pipe([{"answer": "x [1]", "sources": "[1]"}])
    p.ask("state space models")
    messages = lm.history[-1]["messages"]
    assert messages[0]["role"] == "system" and "square brackets" in messages[0]["content"]
    assert "Structured State Space" not in messages[0]["content"]  # passages only in the variable part


def test_format_passages_numbers_from_one(pipe):
    p, _ = pipe([])
    hits = p.search("robots reward", k=2).hits
    text = format_passages(hits)
    assert text.startswith("[1] ") and "\n[2] " in text


@pytest.mark.parametrize("question,match", [
    ("", "empty"), ("   \n\t", "empty"), ("x" * (MAX_QUESTION_CHARS + 1), "limit is 2,000"),
    ("what\x00is this", "control characters"), ("bell\x07", "U\\+0007"), (None, "must be text"),
])
def test_bad_questions(question, match):
    with pytest.raises(RagError, match=match):
        validate_question(question)


def test_question_whitespace_is_normalised():
    assert validate_question("  what   is\nReFT? ") == "what is ReFT?"


def test_module_without_search_fails_clearly():
    with pytest.raises(RuntimeError, match="search function"):
        CitedRAG()(question="x")


def test_program_has_one_predictor_per_question_shape_to_optimise():
    # one per shape, and the yes/no verdict's judge step (used when a program file says so)
    assert [name for name, _ in CitedRAG().named_predictors()] == ["answer", "yesno", "list", "verdict_judge"]
    assert all(isinstance(p, dspy.Predict) for _, p in CitedRAG().named_predictors())


# --- the decision step, shapes and claims ----------------------------------------------

from fakes import JudgedEngine  # noqa: E402

from rag.answer.program import p_answerable  # noqa: E402


def judged(tiny_settings, embedder, p_true, reply, **changes):
    engine = JudgedEngine(p_true, reply)
    lm = dspy.LM("local/judged", engine=engine, cache=False, num_retries=0)
    return Pipeline.open(tiny_settings.replace(**changes), embedder=embedder, lm=lm), engine


GOOD = {"answerable": "True", "answer": "Acidity rises fastest at 30 degrees Celsius [1].", "sources": "[1]"}


def test_p_answerable_is_read_from_the_answer_calls_own_logprobs(tiny_settings, embedder):
    pipe, engine = judged(tiny_settings, embedder, 0.1, GOOD)
    out = pipe.ask("At what temperature does sourdough acidity rise fastest?")
    assert engine.calls == 1 and engine.requests[0].config.logprobs is not None
    assert out["provenance"]["p_answerable"] == pytest.approx(0.1, abs=1e-3)
    assert out["abstained"] is False and out["answer"] == GOOD["answer"]  # the threshold is off by default
    assert out["provenance"]["abstain_reason"] is None


def test_a_set_threshold_declines_a_low_p_answerable(tiny_settings, embedder):
    pipe, engine = judged(tiny_settings, embedder, 0.1, GOOD, answerable_threshold=0.5)
    out = pipe.ask("At what temperature does sourdough acidity rise fastest?")
    assert out["abstained"] is True and out["answer"] == ABSTAIN_TEXT and out["claims"] == []
    assert out["provenance"]["abstain_reason"] == "low_p_answerable" and out["passages"]
    pipe, _ = judged(tiny_settings, embedder, 0.9, {**GOOD, "answerable": "False"}, answerable_threshold=0.5)
    assert pipe.ask("At what temperature does sourdough acidity rise fastest?")["abstained"] is False


def test_without_logprobs_the_models_own_answerable_field_decides(pipe):
    p, lm = pipe([{"answerable": "False", "answer": "Something [1].", "sources": "[1]"}])
    out = p.ask("How are state space models initialised?")
    assert out["abstained"] is True and out["provenance"]["p_answerable"] is None and len(lm.history) == 1


@pytest.mark.parametrize("tokens,p", [
    (["```", "json", "\n", "{\n", " ", ' "', "answer", "able", '":', (" true", [(" true", -0.16), (" false", -1.93)])],
     0.854),
    (["[[", " ##", " answerable", " ##", " ]]", "\n", ("False", [("False", -0.3), ("True", -1.4)])], 0.250),
    (['{"', "answerable", '":', ("true", [("true", -0.01)])], 1.0),
    (['{"', "answer", '":', ' "', "x"], None),  # no answerable field
])
def test_p_answerable_is_read_at_the_fields_value(tokens, p):
    content = []
    for t in tokens:
        word, top = t if isinstance(t, tuple) else (t, [])
        content.append({"token": word, "logprob": top[0][1] if top else -0.01,
                        "top_logprobs": [{"token": w, "logprob": lp} for w, lp in top]})
    assert (p_answerable(content) is None) if p is None else p_answerable(content) == pytest.approx(p, abs=1e-3)


def test_list_questions_are_answered_one_line_per_paper_from_the_evidence(pipe):
    p, _ = pipe([{"answerable": "True", "sources": "[1, 9]"}])
    out = p.ask("Which papers study state space models?")
    assert out["shape"] == "list" and not out["abstained"]
    assert out["answer"].startswith("- Structured State Space Models for Long Sequences: ")
    assert out["answer"].endswith("[1]") and out["answer"].count("\n") == 0  # [9] was never given
    assert out["passages"][0]["text"] in out["answer"] and all(c["supported"] for c in out["claims"])


def test_yes_no_questions_open_with_their_verdict(pipe):
    p, _ = pipe([{"answerable": "True", "finding": "The paper finds acidity peaks at 30 degrees [1].", "verdict": "no",
                  "sources": "[1]"}])
    out = p.ask("Does sourdough acidity rise fastest at 50 degrees Celsius?")
    assert out["shape"] == "yesno" and out["verdict"] == "no"
    assert out["answer"] == "No: The paper finds acidity peaks at 30 degrees [1]."


SWAPPED = {"answerable": "True", "answer": "They initialise the state matrix with LegS-Fourier from S5 [1].",
           "sources": "[1]"}


def test_an_answer_naming_what_its_evidence_lacks_is_declined(pipe):
    p, _ = pipe([SWAPPED])
    out = p.ask("How are state space models initialised?")
    assert out["abstained"] is True and out["provenance"]["abstain_reason"] == "unsupported_claim"
    draft = out["provenance"]["declined_draft"]  # what was withheld, and why
    assert draft["answer"] == SWAPPED["answer"]
    assert {t for c in draft["claims"] for t in c["unsupported_terms"]} == {"LegS-Fourier", "S5"}


def test_a_declined_answer_close_enough_to_the_corpus_is_replaced_by_its_evidence(pipe):
    """decisions.declined_fallback: per shape, the similarity from which the extractive answer (the evidence
    quoted, cited) stands in for an answer the claim checks declined; the model's draft is kept beside it."""
    q = "How are state space models initialised?"
    p, _ = pipe([SWAPPED])
    p.program.set_decisions({"declined_fallback": {"specific": 0.0}})
    out = p.ask(q)
    assert out["abstained"] is False and "LegS-Fourier" not in out["answer"]
    assert out["citations"] and all(c["supported"] for c in out["claims"])
    prov = out["provenance"]
    assert prov["fallback"] == "extractive" and prov["lm"] == "extractive" and prov["lm_error"] is None
    assert prov["abstain_reason"] is None and prov["declined_draft"]["answer"] == SWAPPED["answer"]
    assert out["answer"] == p.extractive(q, p.search(q)).answer
    # the streamed path (the chat) ends in the same answer
    p, _ = pipe([SWAPPED])
    p.program.set_decisions({"declined_fallback": {"specific": 0.0}})
    done = [e for e in p.ask_stream(q) if e["type"] == "done"][0]["result"]
    assert done["answer"] == out["answer"] and done["provenance"]["fallback"] == "extractive"
    # below the shape's similarity, or for a shape without one, the decline stands
    for limits in ({"specific": 1.01}, {"yesno": 0.0}):
        p, _ = pipe([SWAPPED])
        p.program.set_decisions({"declined_fallback": limits})
        declined = p.ask(q)
        assert declined["abstained"] is True and declined["provenance"]["fallback"] is None
    with pytest.raises(ValueError, match="declined_fallback"):
        p.program.set_decisions({"declined_fallback": {"essay": 0.5}})
    assert p.program.decisions()["declined_fallback"] == {"yesno": 0.0}


def test_with_declining_off_the_swapped_name_is_reported_as_an_unsupported_claim(pipe):
    p, _ = pipe([SWAPPED], decline_unsupported=0)
    out = p.ask("How are state space models initialised?")
    assert out["abstained"] is False and out["provenance"]["declined_draft"] is None
    claim, = out["claims"]
    assert claim["cited"] == [1] and claim["supported"] is False
    assert set(claim["unsupported_terms"]) == {"LegS-Fourier", "S5"}


def test_warm_reads_each_predictors_fixed_prefix_once(tiny_settings, embedder):
    from fakes import FakeEngine, fake_lm

    class Warmable(FakeEngine):
        def __init__(self):
            super().__init__()
            self.warmed = []

        def warm(self, messages):
            self.warmed.append(messages)

    engine = Warmable()
    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(engine))
    assert pipe.warm() == 3 and len(engine.warmed) == 3
    systems = [m[0]["content"] for m in engine.warmed]
    assert len(set(systems)) == 3 and all("Structured State Space" not in s for s in systems)  # instructions only
    assert engine.calls == 0  # warming is not answering


def test_a_how_many_answer_without_a_number_is_declined_as_off_the_question(pipe):
    p, _ = pipe([{"answerable": "True", "answer": "The paper measures sourdough fermentation dynamics [1].",
                  "sources": "[1]"}])
    out = p.ask("How many degrees make sourdough acidity rise fastest?")
    assert out["abstained"] is True and out["provenance"]["abstain_reason"] == "off_question"


def test_a_far_question_is_declined_before_the_model_unless_a_passage_has_its_coined_name(pipe):
    answer = {"answerable": "True", "answer": "The state matrix is initialised with HiPPO [1].", "sources": "[1]"}
    p, lm = pipe([answer], min_score=0.99)  # every passage is "far" by cosine
    far = p.ask("How are state space models initialised?")
    assert far["provenance"]["abstain_reason"] == "no_close_passage" and not lm.history
    named = p.ask("What initialises the HiPPO state matrix?")  # the embedder sees word pieces; the passage has it
    assert named["abstained"] is False and len(lm.history) == 1


# --- verdicts scored from the label probabilities; answers that name what was asked --------------------

from fakes import VerdictEngine  # noqa: E402

from rag.answer.program import (  # noqa: E402
    quote_named_evidence,
    restates,
    scored_verdict,
    strip_verdict,
    verdict_probs,
)
from rag.answer.retrieve import Hit  # noqa: E402
from rag.index.corpus import Paper  # noqa: E402

YESNO = {"answerable": "True", "finding": "Longer fermentation reduces loaf volume [1].", "verdict": "yes",
         "sources": "[1]"}
YESNO_Q = "Does longer sourdough fermentation give bigger loaves?"


def verdict_pipe(tiny_settings, embedder, probs, reply=YESNO, bias=None):
    lm = dspy.LM("local/verdict", engine=VerdictEngine(reply, probs), cache=False, num_retries=0)
    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=lm)
    pipe.program.set_decisions({"verdict_bias": bias})
    return pipe


def test_without_biases_the_sampled_verdict_stands_and_the_label_probabilities_are_reported(tiny_settings, embedder):
    out = verdict_pipe(tiny_settings, embedder, {"yes": 0.6, "no": 0.3, "maybe": 0.1}).ask(YESNO_Q)
    assert out["verdict"] == "yes" and out["answer"].startswith("Yes: Longer fermentation")
    prov = out["provenance"]
    assert prov["sampled_verdict"] == "yes" and prov["verdict_probs"] == pytest.approx(
        {"yes": 0.6, "no": 0.3, "maybe": 0.1}, abs=1e-3)


def test_a_bias_against_the_models_lean_turns_the_verdict(tiny_settings, embedder):
    # The model leans to yes (0.6 vs 0.3); a fitted bias of +1 for no (log-space) makes no win: log .3 + 1 > log .6
    out = verdict_pipe(tiny_settings, embedder, {"yes": 0.6, "no": 0.3, "maybe": 0.1},
                       bias={"yes": 0.0, "no": 1.0, "maybe": -5.0}).ask(YESNO_Q)
    assert out["verdict"] == "no" and out["answer"].startswith("No: Longer fermentation")
    assert out["provenance"]["sampled_verdict"] == "yes"
    # a finding that itself opens with the sampled verdict is not left contradicting the scored one
    reply = {**YESNO, "finding": "Yes, longer fermentation reduces loaf volume [1]."}
    out = verdict_pipe(tiny_settings, embedder, {"yes": 0.6, "no": 0.3, "maybe": 0.1}, reply=reply,
                       bias={"no": 1.0}).ask(YESNO_Q)
    assert out["verdict"] == "no" and out["answer"].startswith("No: Longer fermentation") and "Yes" not in out["answer"]


def test_a_yes_no_answer_that_fails_the_checks_is_declined_or_keeps_its_verdict(tiny_settings, embedder):
    """`unsupported_verdict`: decline (default) withholds a yes/no answer naming what its evidence lacks, and
    still records the verdict's label probabilities (decisions are refitted from reports); keep answers with
    the verdict and names the unsupported terms in its claims (corpora whose yes/no questions all have an answer)."""
    probs = {"yes": 0.3, "no": 0.6, "maybe": 0.1}
    reply = {**YESNO, "finding": "Longer fermentation with LegS-Fourier reduces loaf volume [1]."}
    declined = verdict_pipe(tiny_settings, embedder, probs, reply=reply).ask(YESNO_Q)
    assert declined["abstained"] is True and declined["verdict"] is None
    prov = declined["provenance"]
    assert prov["abstain_reason"] == "unsupported_claim" and prov["sampled_verdict"] == "yes"
    assert prov["verdict_probs"] == pytest.approx(probs, abs=1e-3)
    pipe = verdict_pipe(tiny_settings, embedder, probs, reply=reply, bias={"no": 0.0})
    pipe.program.set_decisions({"unsupported_verdict": "keep"})
    kept = pipe.ask(YESNO_Q)
    assert kept["abstained"] is False and kept["verdict"] == "no" and kept["answer"].startswith("No: Longer")
    assert [t for c in kept["claims"] for t in c["unsupported_terms"]] == ["LegS-Fourier"]
    assert pipe.program.decisions()["unsupported_verdict"] == "keep"
    with pytest.raises(ValueError, match="unsupported_verdict"):
        pipe.program.set_decisions({"unsupported_verdict": "maybe"})
    # other shapes are declined whatever it says
    p = Pipeline.open(tiny_settings, embedder=embedder, lm=DummyLM([SWAPPED]))
    p.program.set_decisions({"unsupported_verdict": "keep"})
    assert p.ask("How are state space models initialised?")["abstained"] is True


def test_the_evidence_standing_in_for_a_declined_yes_no_answer_keeps_its_verdict_when_the_program_says_so(
        tiny_settings, embedder):
    """`fallback_verdict`: drop (default) gives the stand-in evidence answer no verdict; keep opens it with the
    declined draft's ("No: The evidence states ..."). Either way the draft's label readings stay on record."""
    probs = {"yes": 0.3, "no": 0.6, "maybe": 0.1}
    reply = {**YESNO, "finding": "Longer fermentation with LegS-Fourier reduces loaf volume [1]."}
    answers = {}
    for choice in ("drop", "keep"):
        pipe = verdict_pipe(tiny_settings, embedder, probs, reply=reply, bias={"no": 0.0})
        pipe.program.set_decisions({"declined_fallback": {"yesno": 0.0}, "fallback_verdict": choice})
        answers[choice] = pipe.ask(YESNO_Q)
        prov = answers[choice]["provenance"]
        assert prov["fallback"] == "extractive" and prov["declined_draft"]["answer"].startswith("No: Longer")
        assert prov["verdict_probs"] == pytest.approx(probs, abs=1e-3) and prov["sampled_verdict"] == "yes"
    assert answers["drop"]["verdict"] is None and answers["drop"]["answer"].startswith("The evidence states")
    assert answers["keep"]["verdict"] == "no"
    assert answers["keep"]["answer"] == "No: " + answers["drop"]["answer"]
    assert pipe.program.decisions()["fallback_verdict"] == "keep"
    with pytest.raises(ValueError, match="fallback_verdict"):
        pipe.program.set_decisions({"fallback_verdict": "yes"})


def test_choose_fallback_verdict_keeps_the_drafts_verdicts_when_they_are_as_balanced():
    from rag.calibrate import choose_fallback_verdict, verdict_balance

    yes, no = ("yes", "yes"), ("no", "no")  # (gold, said): right
    yes_no, no_yes = ("yes", "no"), ("no", "yes")  # wrong
    assert verdict_balance([yes, yes, no_yes]) == 0.5 and verdict_balance([yes, ("yes", None), no]) == 0.75
    assert choose_fallback_verdict([yes, no, no_yes], [yes, yes_no, no]) == "keep"  # 0.75 against 0.75
    assert choose_fallback_verdict([yes, no_yes, no_yes], [yes, no, yes_no]) == "drop"  # 0.5 against 0.75
    # a draft that says yes to everything is right on a yes-heavy set and still no better than a coin
    assert choose_fallback_verdict([yes, yes, yes, no_yes], [yes, no, yes_no, no]) == "drop"
    assert choose_fallback_verdict([], [yes]) == "drop"
    assert choose_fallback_verdict([yes, no], []) == "keep" and choose_fallback_verdict([yes, no_yes], []) == "keep"
    assert choose_fallback_verdict([yes_no, no_yes], []) == "drop"  # worse than a coin


def test_scored_verdict_and_its_labels():
    probs = {"yes": 0.5, "no": 0.2, "maybe": 0.3}
    assert scored_verdict(probs, {}) == "yes"
    assert scored_verdict(probs, {"no": 1.0}) == "no"
    assert scored_verdict(probs, {"yes": -2.0}, ("yes", "no")) == "no"  # maybe not allowed
    assert strip_verdict("Yes, the paper finds X.") == "The paper finds X."
    assert strip_verdict("Not really: it fails.") == "It fails."
    assert strip_verdict("The paper finds X.") == "The paper finds X."


@pytest.mark.parametrize("tokens,want", [
    # JSON, the quote its own token, then the label ("maybe" split into pieces)
    (['{"', "answerable", '":', "true", ',"', "finding", '":"', "X", '","', "verdict", '":"',
      ("no", [("no", -0.2), ("yes", -1.8), ("may", -3.0)])], {"no": 0.7919, "yes": 0.1599, "maybe": 0.0482}),
    # the label with its quote in one token, "null" no label
    (['{"', "verdict", '":', ('"yes', [('"yes', -0.1), ("null", -2.0), ('"no', -2.5)])],
     {"yes": 0.9167, "no": 0.0832, "maybe": 0.0}),
    # DSPy's chat format
    (["[[", " ##", " verdict", " ##", " ]]", "\n", ("Maybe", [("Maybe", -0.5), ("No", -1.0)])],
     {"maybe": 0.6225, "no": 0.3775, "yes": 0.0}),
    # the word "verdict" inside the finding's text is not the field
    (['{"', "finding", '":"', "the", " verdict", " is", " unclear", '"}'], None),
])
def test_verdict_probabilities_are_read_at_the_fields_value(tokens, want):
    content = []
    for t in tokens:
        word, top = (t, []) if isinstance(t, str) else t
        content.append({"token": word, "logprob": top[0][1] if top else -0.01,
                        "top_logprobs": [{"token": w, "logprob": lp} for w, lp in top]})
    got = verdict_probs(content)
    assert got is None if want is None else got == pytest.approx(want, abs=1e-3)


def test_a_name_question_answered_without_a_name_is_caught():
    q = "Which method edits a model's hidden representations instead of its weights?"
    assert restates(q, "The approach described in [1] edits hidden representations instead of weights [1].")
    assert not restates(q, "LoReFT edits hidden representations instead of weights [1].")
    assert not restates("How does it edit representations?", "It edits hidden representations [1].")  # no name asked
    assert restates("What is the benchmark called?", "The benchmark is described in the paper [2].")


def test_a_restated_answer_is_replaced_by_the_evidence_sentence_that_names_it(pipe):
    p, _ = pipe([{"answerable": "True", "answer": "The benchmark described in [1] measures long sequences [1].",
                  "sources": "[1]"}])
    out = p.ask("Which benchmark do the state space models reach strong accuracy on?")
    assert out["provenance"]["restated"] is True and out["abstained"] is False
    assert "Long Range Arena" in out["answer"] and out["answer"].startswith('"') and out["citations"]
    # nothing to quote: the answer stays as it was
    hits = [Hit(1, (), Paper("x", "T", "no names at all here."), 0.5)]  # a passage of no chunks: its text is empty
    assert quote_named_evidence("Which method works?", hits, [1]) is None


def test_decisions_travel_in_the_program_file(tmp_path, tiny_settings, embedder):
    from rag.answer.program_files import load_program, read_program_file, save_program_file

    pipe = verdict_pipe(tiny_settings, embedder, {"yes": 0.5, "no": 0.5}, bias={"yes": 0.0, "no": 0.7, "maybe": -9.0})
    pipe.program.verdict_labels = ("yes", "no")
    pipe.program.unsupported_verdict = "keep"
    pipe.program.min_scores = {"list": 0.45}
    path = save_program_file(pipe.program, tmp_path / "p.json", {"optimizer": "calibrate"})
    assert read_program_file(path)["decisions"] == {"verdict_bias": {"yes": 0.0, "no": 0.7, "maybe": -9.0},
                                                    "verdict_labels": ["yes", "no"], "verdict_source": "reply",
                                                    "unsupported_verdict": "keep", "declined_fallback": {},
                                                    "fallback_verdict": "drop", "min_score": {"list": 0.45}}
    fresh = verdict_pipe(tiny_settings, embedder, {"yes": 0.5, "no": 0.5})
    assert fresh.program.verdict_bias is None and fresh.program.unsupported_verdict == "decline"
    load_program(fresh.program, path)
    assert fresh.program.verdict_bias == {"yes": 0.0, "no": 0.7, "maybe": -9.0}
    assert fresh.program.verdict_labels == ("yes", "no") and fresh.program.unsupported_verdict == "keep"
    assert fresh.program.min_scores == {"list": 0.45}


def test_the_judge_step_reads_the_finding_when_the_program_says_so(tiny_settings, embedder):
    # The answer's own verdict field leans yes; the judge call (same fake engine: its verdict alternatives) says
    # what `probs` say. With verdict_source "judge" two calls are made and the judge's probabilities decide.
    pipe = verdict_pipe(tiny_settings, embedder, {"yes": 0.2, "no": 0.8}, bias={})
    pipe.program.set_decisions({"verdict_source": "judge"})
    out = pipe.ask(YESNO_Q)
    assert pipe.lm.engine.calls == 2 and out["verdict"] == "no" and out["answer"].startswith("No: ")
