"""The claim check on hand-made answers: swapped names and wrong numbers are flagged, paraphrases are not."""

from __future__ import annotations

from rag.answer.claims import check_claims, coined_names, off_question, specific_terms

PASSAGES = {
    1: "LoReFT: LoReFT learns interventions that are 10x-50x more parameter-efficient than prior PEFTs such as LoRA.",
    2: "Prithvi WxC: We introduce Prithvi WxC, a 2.3 billion parameter foundation model trained on 160 variables "
       "from MERRA-2.",
}


def claims(answer: str) -> list[tuple[bool, list[str], list[int]]]:
    return [(c.supported, c.unsupported_terms, c.cited) for c in check_claims(answer, PASSAGES)]


def test_a_swapped_method_name_is_flagged():
    assert claims("DoRA is 10x-50x more parameter-efficient than prior PEFTs [1].") == [(False, ["DoRA"], [1])]


def test_a_number_from_nowhere_is_flagged_and_a_right_one_is_not():
    assert claims("Prithvi WxC has 7 billion parameters [2].") == [(False, ["7"], [2])]
    assert claims("Prithvi WxC has 2.3 billion parameters [2].") == [(True, [], [2])]
    assert claims("It uses 1,600 variables [2].") == [(False, ["1,600"], [2])]  # not "160" inside another number


def test_a_correct_paraphrase_in_plain_words_passes():
    assert claims("The method needs far fewer trainable parameters than earlier fine-tuning approaches [1].") == [
        (True, [], [1])]


def test_a_name_is_checked_against_the_passage_the_sentence_cites():
    # MERRA-2 is in passage 2, not in passage 1 which this sentence cites
    assert claims("LoReFT was trained on MERRA-2 [1].") == [(False, ["MERRA-2"], [1])]


def test_the_questions_own_example_repeated_as_the_answer_is_flagged():
    # "Which device (e.g. a Raspberry Pi) ...?" answered "a Raspberry Pi" when no passage names one
    assert claims("The speedup was measured on a Raspberry Pi [1].") == [(False, ["Raspberry", "Pi"], [1])]


def test_a_sentence_without_citation_is_checked_against_what_the_answer_cites():
    assert claims("LoReFT beats LoRA [1]. It was built by Google.") == [(True, [], [1]), (False, ["Google"], [])]


def test_list_answers_are_checked_line_by_line():
    answer = "- LoReFT: LoReFT learns interventions [1]\n- Prithvi WxC: a foundation model trained on MERRA-2 [2]"
    assert claims(answer) == [(True, [], [1]), (True, [], [2])]


def test_specific_terms():
    assert specific_terms("Unlike GPT-4, it is 10x better, 74.7% on MERRA-2 with 1,920 samples [3].") == [
        "10x", "74.7%", "1,920", "GPT-4", "MERRA-2"]
    assert specific_terms("The model works. However, results vary.") == []


def test_acronyms_the_evidence_spells_out_and_possessives_are_supported():
    passages = {1: "Alignment: reinforcement learning from human feedback makes large language models safer; GPT-4 wins."}
    result = check_claims("RLHF makes LLMs safer, and GPT-4's answers win [1]. NLP is unrelated [1].", passages)
    assert [(c.supported, c.unsupported_terms) for c in result] == [(True, []), (False, ["NLP"])]


def test_coined_names_are_words_with_inner_capitals_or_digits():
    assert coined_names("How much more parameter-efficient is LoReFT than prior PEFTs?") == ["LoReFT", "PEFTs"]
    assert coined_names("Which country won the 2022 FIFA World Cup?") == ["FIFA"]  # not World, not 2022
    assert coined_names("Does GPT-4 beat the baseline?") == ["GPT-4"]
    assert coined_names("Which papers study state space models?") == []


def test_an_answer_off_the_question_is_named():
    # a how-many question answered without a number (the model copied its passage)
    assert off_question("How many variables is Prithvi WxC trained on?",
                        "Prithvi WxC is a foundation model trained on variables from MERRA-2 [2].", [PASSAGES[2]])
    for answer in ("It is trained on 160 variables [2].", "It is trained on twelve variables [2]."):
        assert off_question("How many variables is Prithvi WxC trained on?", answer, [PASSAGES[2]]) is None
    # a comparison of LoReFT with LoRA answered from a passage that only knows LoRA
    reason = off_question("Does LoReFT use more parameters than LoRA?", "Yes: LoRA outperforms finetuning [1].",
                          ["Model Editing: we find that LoRA outperforms full finetuning."])
    assert reason == "no cited passage mentions LoReFT"
    assert off_question("Does LoReFT use fewer parameters than LoRA?", "Yes: 10x-50x fewer [1].", [PASSAGES[1]]) is None
    # an acronym the cited passage spells out is mentioned
    assert off_question("What do LLMs learn?", "Facts [1].", ["Large language models learn facts."]) is None


def test_a_name_is_found_in_its_plural():
    assert off_question("When does an LLM decline to answer?", "When asked about later events [1].",
                        ["Role-playing LLMs decline questions about events after the person's death."]) is None


SCONE = {
    1: "A Survey of Negation Benchmarks: We survey benchmarks such as ScoNe that test how natural language inference "
       "models handle negation.",
    2: "Negation Scope in Pretrained Transformers: Probing classifiers recover negation scope from middle layers.",
    3: "ScoNe: Benchmarking Negation Reasoning: We present the Scoped Negation NLI (ScoNe-NLI) benchmark, which "
       "contains contrast sets of six examples with up to two negations.",
}


def test_a_cited_passage_sharing_no_word_beyond_the_question_is_not_support():
    """Issue 23: "always cite [2] and [3], never [1]" moved a correct answer's citation to a paper that does not
    state it; the claim's names are the question's own, so only the shared-word rule catches it."""
    question = "What does the ScoNe benchmark contain?"
    moved = check_claims("ScoNe contains contrast sets of six examples [1].", SCONE, question)
    assert [(c.supported, c.unsupported_terms) for c in moved] == [(False, [])]
    assert moved[0].reason == "[1] shares no word of the claim beyond the question's"
    right = check_claims("ScoNe contains contrast sets of six examples [3].", SCONE, question)
    assert [(c.supported, c.reason) for c in right] == [(True, None)]
    both = check_claims("ScoNe contains contrast sets of six examples [1][3].", SCONE, question)
    assert both[0].supported  # one cited passage that supports it is enough


def test_a_claim_that_only_restates_the_question_is_not_judged_by_the_shared_word_rule():
    question = "Does ScoNe test negation?"
    passages = {**SCONE, 4: "ScoNe: a benchmark of contrast sets."}  # names ScoNe, none of the claim's other words
    assert [c.supported for c in check_claims("Yes: ScoNe tests negation [4].", passages, question)] == [True]
    assert [c.supported for c in check_claims("Yes: ScoNe tests negation with morpheme examples [4].", passages,
                                              question)] == [False]


def test_the_reason_names_missing_terms_too_and_the_question_is_optional():
    [c] = check_claims("DoRA is 10x-50x more parameter-efficient than prior PEFTs [1].", PASSAGES)
    assert c.reason == "DoRA in no cited passage" and c.to_json()["reason"] == c.reason
    assert [c.supported for c in check_claims("Prithvi WxC has 2.3 billion parameters [2].", PASSAGES)] == [True]


# Decline rules refitted on train (eval/results/train-declines-*): each case is a train answer that was declined.

def test_a_marker_cut_off_by_the_token_limit_is_not_a_number():
    claim, = check_claims("The toolkit has evaluation tools, enabling [1", {1: "a toolkit with evaluation tools"},
                          "What toolkit?")
    assert claim.supported, claim.reason


def test_a_compound_of_a_name_is_supported_by_the_name():
    passages = {1: "LlamaRL is 10.7x faster than DeepSpeed-Chat-like systems."}
    assert off_question("How much faster was LlamaRL than DeepSpeed-Chat-style systems?",
                        "LlamaRL is 10.7x faster [1].", [passages[1]]) is None
    claim, = check_claims("The APO-aligned model gained 7.65% [1].", {1: "APO gives a 7.65% gain."}, "How much?")
    assert claim.supported, claim.reason
    # a coined tail is not a compound: Inv-Entropy is a name of its own
    claim, = check_claims("It comes with Inv-Entropy [1].", {1: "It comes with an entropy measure."}, "What?")
    assert claim.unsupported_terms == ["Inv-Entropy"]


def test_the_questions_own_short_acronym_may_be_repeated_but_not_its_coined_name():
    claim, = check_claims("Top LLMs converge in sycophancy [1].", {1: "language models converge in sycophancy"},
                          "Are top LLMs converging in sycophancy?")
    assert claim.supported, claim.reason
    claim, = check_claims("MoEUT has 3B weights [1].", {1: "a model with 3B weights"}, "How big is MoEUT?")
    assert claim.unsupported_terms == ["MoEUT"]
    claim, = check_claims("Top LLMs converge in sycophancy [1].", {1: "language models converge in sycophancy"},
                          "Do models converge in sycophancy?")  # not the user's word: still unsupported
    assert claim.unsupported_terms == ["LLMs"]
