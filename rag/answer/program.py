"""The DSPy answer program: evidence in, a checked, cited answer out, or an abstention.

`CitedRAG.forward(question)` runs four visible steps:

1. **retrieve** the top papers (`search`, hybrid by default); if no passage is
   even close to the question (best dense cosine below `min_score`, or the program
   file's minimum for the question's shape, both fitted on train) it abstains there,
   without calling the LM; unless a retrieved passage
   has a coined name the question asks about (LoReFT, UniMat: the embedder only
   sees their word pieces, so cosine undersells the match; rag/answer/claims.py);
2. **select_evidence**: the sentences of those papers that bear on the question,
   under a token budget (rag/answer/evidence.py), numbered [1]..[m] per paper;
3. **answer** in the question's shape (rag/answer/shapes.py), with the predictor of that
   shape: `answer` (a specific question: the fact, cited), `yesno` ("Yes: ...",
   "No: ...", "Maybe: ...", with a `verdict`), `list` (the model picks the relevant
   passages; each becomes one line, its paper's title and the evidence that shows
   it, cited: extractive, so it cannot misquote). On engines that can (the local
   llama.cpp one, OpenAI) the reply is constrained by a JSON schema, so it always
   parses, and its logprobs give P(answerable) at the reply's first field;
4. **check and decide**: citations outside 1..m are dropped; an answer with no
   valid citation, or one that says the evidence does not hold the answer, is an
   abstention; every sentence's names and numbers are checked against the
   passages it cites (rag/answer/claims.py), and an answer naming something its evidence
   does not contain is declined (`decline_unsupported`). `threshold` can also
   decline on a low P(answerable); it is off by default, because on this model it
   does not separate answerable from unanswerable questions (eval/README.md has
   the measurement and the rule that was chosen instead).

The reason for an abstention is kept (`abstain_reason`). Field markers inside the
evidence (`[[ ## answer ## ]]`, an injection attempt) are removed before the model
reads it: corpus text is data, never prompt structure. The fixed part of each
prompt (instructions, demos) comes first, so llama.cpp reuses its cached prefix.
Left out: multi-hop retrieval and query rewriting (the chat adds the latter).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from rag.answer.claims import check_claims, names_found, off_question, specific_terms
from rag.answer.knn import DemoPool
from rag.answer.poison import without_instructions
from rag.answer.retrieve import Hit, SearchResult
from rag.answer.shapes import parse_verdict, question_shape
from rag.text import content_words, json_string_so_far, sentences, word_set

ABSTAIN_TEXT = "The papers here do not answer this question."
LOGPROBS_TOP = 5  # alternatives per token asked of an LM that gives logprobs (P(answerable) is read from them)
# Why an answer was declined (provenance.abstain_reason).
NO_CLOSE_PASSAGE, MODEL_DECLINED, LOW_P, UNSUPPORTED_CLAIM, NO_VALID_CITATION, OFF_QUESTION = (
    "no_close_passage", "model_declined", "low_p_answerable", "unsupported_claim", "no_valid_citation",
    "off_question")
CLAIM_CHECK_DECLINES = (UNSUPPORTED_CLAIM, OFF_QUESTION)  # the declines a program's declined_fallback may replace

_FIELD_MARKER = re.compile(r"\[\[\s*#+\s*\w+\s*#+\s*\]\]")
_CITE_GROUP = re.compile(r"\[(\s*\d+(?:\s*[,;]\s*\d+)*\s*)\]")
_ABSTAIN = re.compile(
    r"^\W*(the\s+)?(papers|passages|provided passages|context)[^.]{0,40}\b(do|does)\s+not\s+"
    r"(answer|contain|mention|provide|address|discuss|include)"
    r"|^\W*(i\s+)?(cannot|can't|could not|am unable to)\s+(answer|find|determine)"
    r"|^\W*(there is\s+)?no\s+(information|answer|mention)\b",
    re.IGNORECASE,
)


class CitedAnswer(dspy.Signature):
    """Answer the question using only the numbered evidence from research-paper abstracts.
    First decide whether the evidence states the answer; if it does not, set answerable to false.
    Use the names and numbers exactly as the evidence writes them, and after each claim cite its passage number in
    square brackets, like [1] or [2][3]."""

    passages: str = dspy.InputField(desc="numbered evidence, each '[n] title: sentences'")
    question: str = dspy.InputField()
    answerable: bool = dspy.OutputField(default=True, desc="does the evidence state the answer?")
    answer: str = dspy.OutputField(desc="one or two short sentences (under 50 words) with [n] citations")
    sources: list[int] = dspy.OutputField(desc="numbers of the passages the answer uses; [] if none")


class YesNoAnswer(dspy.Signature):
    """Answer the yes/no question using only the numbered evidence from research-paper abstracts.
    First decide whether the evidence settles it; if it does not, set answerable to false.
    Otherwise state the finding that settles it: what the paper found, in its own names and numbers, citing its
    passage number in square brackets, like [1]; then the verdict that finding gives: yes, no or maybe."""

    passages: str = dspy.InputField(desc="numbered evidence, each '[n] title: sentences'")
    question: str = dspy.InputField()
    answerable: bool = dspy.OutputField(default=True, desc="does the evidence settle the question?")
    finding: str = dspy.OutputField(desc="what the paper found, one or two short sentences (under 50 words) with [n] "
                                         "citations")
    verdict: Literal["yes", "no", "maybe"] | None = dspy.OutputField(
        default=None, desc="the answer to the question that the finding gives")
    sources: list[int] = dspy.OutputField(desc="numbers of the passages the finding uses; [] if none")


class ListAnswer(dspy.Signature):
    """Find the numbered papers that are about what the question asks, using only the evidence from their abstracts.
    If none is, set answerable to false."""

    passages: str = dspy.InputField(desc="numbered evidence, each '[n] title: sentences'")
    question: str = dspy.InputField()
    answerable: bool = dspy.OutputField(default=True, desc="is at least one paper about it?")
    sources: list[int] = dspy.OutputField(desc="numbers of every paper that is about it")


class VerdictJudge(dspy.Signature):
    """Does the finding answer the question with yes, no or maybe? Answer no when the finding shows the opposite of
    what the question suggests (another method wins, it fails, it does not help)."""

    question: str = dspy.InputField()
    finding: str = dspy.InputField(desc="what a paper found")
    verdict: Literal["yes", "no", "maybe"] = dspy.OutputField()


# The predictor that answers each question shape, by attribute name on CitedRAG, and the field each writes
# its text in (what the chat streams; a list answer is rendered from the passages it picks).
PREDICTORS = {"specific": "answer", "yesno": "yesno", "list": "list"}
TEXT_FIELDS = {"answer": "answer", "yesno": "finding"}
SIGNATURES = {"answer": CitedAnswer, "yesno": YesNoAnswer, "list": ListAnswer, "verdict_judge": VerdictJudge}


def recover_fields(reply: str) -> tuple[str, str]:
    """(answer, sources) from a reply the adapter could not parse: a missing sources field, a
    missing end marker, or an answer cut off by the token limit (trimmed to its last full sentence).
    A JSON reply (the schema-held one) cut off by the token limit is read the same way."""
    json_answer = re.search(r'"(?:answer|finding)"\s*:\s*', reply)
    if reply.lstrip().startswith("{") and json_answer:
        answer = json_string_so_far(reply[json_answer.end():])
        sources_m = re.search(r'"sources"\s*:\s*\[([\d,\s]*)\]', reply)
    else:
        answer_m = re.search(r"\[\[\s*##\s*answer\s*##\s*\]\](.*?)(?=\[\[\s*##|\Z)", reply, re.DOTALL)
        sources_m = re.search(r"\[\[\s*##\s*sources\s*##\s*\]\](.*?)(?=\[\[\s*##|\Z)", reply, re.DOTALL)
        answer = (answer_m.group(1) if answer_m else _FIELD_MARKER.sub("", reply)).strip()
    if not sources_m:
        answer = to_last_sentence(answer)
    return answer.strip(), sources_m.group(1).strip() if sources_m else ""


def to_last_sentence(text: str) -> str:
    """`text` without a last sentence that was cut off (by the token limit, or the grammar's length cap)."""
    text = text.strip()
    if re.search(r"[.!?\]]$", text):
        return text
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("]. "))
    return text[: cut + 1] if cut > 0 else text


def format_passages(hits: list[Hit]) -> str:
    """Number the passages [1]..[m] in retrieval order, each its paper's title then its text (the evidence).
    Corpus text is data, not prompt structure: a DSPy field marker inside a title or abstract
    (`[[ ## answer ## ]]`, an injection attempt) is removed, so the passages cannot open or close a field; so is
    a sentence addressed to the model (`rag.answer.poison`), whatever path the passages took."""
    return "\n".join(f"[{i}] {_FIELD_MARKER.sub(' ', h.paper.title)}: {_FIELD_MARKER.sub(' ', without_instructions(h.text))}"
                     for i, h in enumerate(hits, 1))


@dataclass
class Cited:
    """A post-processed answer: text with valid [n] markers and the numbers it cites."""

    answer: str
    numbers: list[int] = field(default_factory=list)
    abstained: bool = False


def map_citations(raw_answer: str, raw_sources: object, passages: list[str]) -> Cited:
    """Clean the model's answer and keep only citations to the given passages (numbered from 1).

    Citations come from, in order of trust: the answer's own [n] markers; else the passages
    that the answer's sentences are copied or paraphrased from (word overlap, see `attribute`);
    else the model's list of sources. An answer that ends up with none is an abstention.
    """
    n_passages = len(passages)
    text = _FIELD_MARKER.sub("", str(raw_answer or "")).strip()
    if ABSTAIN_TEXT in text and text != ABSTAIN_TEXT:
        # A small model sometimes answers and then abstains as well: keep the answer part.
        text = text.replace(ABSTAIN_TEXT, " ").strip()
    numbers: list[int] = []

    def rewrite(m: re.Match) -> str:
        keep = []
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part)
            if 1 <= n <= n_passages:
                keep.append(n)
                if n not in numbers:
                    numbers.append(n)
        return "".join(f"[{n}]" for n in keep)

    for _ in range(10):  # removing a marker can form a new one ("[[9]2]" -> "[2]"): repeat until none changes
        before, text = text, _CITE_GROUP.sub(rewrite, text)
        if text == before:
            break
    text = re.sub(r"[ \t]+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", text)).strip()
    if text and not numbers and not _ABSTAIN.search(text):
        # No inline markers: cite what the text demonstrably comes from, else what the model listed.
        numbers = attribute(text, passages) or [n for n in dict.fromkeys(as_numbers(raw_sources)) if 1 <= n <= n_passages]
        if numbers:
            text = f"{text} {''.join(f'[{n}]' for n in numbers)}"
    if not text or _ABSTAIN.search(text) or not numbers:
        return Cited(ABSTAIN_TEXT, [], True)
    return Cited(text, numbers, False)


# Share of an answer sentence's words that must appear in one passage for it to count as the source.
ATTRIBUTION_MIN_OVERLAP = 0.6


def attribute(answer: str, passages: list[str]) -> list[int]:
    """Passage numbers the answer's sentences come from, by word overlap, in order of first use.

    A sentence is attributed to the passage holding the largest share of its words (stopwords
    and words of 1-2 letters aside) when that share is at least ATTRIBUTION_MIN_OVERLAP.
    """
    bags = [word_set(p) for p in passages]
    found: list[int] = []
    for sentence in sentences(answer):
        words = content_words(sentence)
        if len(words) < 3:
            continue
        shares = [sum(w in bag for w in words) / len(words) for bag in bags]
        best = max(range(len(shares)), key=shares.__getitem__, default=None)
        if best is not None and shares[best] >= ATTRIBUTION_MIN_OVERLAP and best + 1 not in found:
            found.append(best + 1)
    return found


def as_numbers(value: object) -> list[int]:
    """Integers from a list or a text ("[1, 3]", "1 and 3"); what is not a number is skipped."""
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            try:
                out.append(int(v))
            except (TypeError, ValueError):
                continue
        return out
    return [int(x) for x in re.findall(r"\d+", str(value or ""))]


class CompactJSONAdapter(dspy.JSONAdapter):
    """DSPy's JSONAdapter with a short system message and no per-question format reminder.

    It is used only where the engine constrains the reply to the signature's JSON schema, so the
    long format description and the reminder DSPy appends to every question only cost prompt tokens
    (the local model reads ~40 a second): about 130 of them a question."""

    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        inputs = " and ".join(f"`{name}`" + (f" ({f.json_schema_extra.get('desc')})" if _desc(f) else "")
                              for name, f in signature.input_fields.items())
        outputs = "\n".join(f'- "{name}" ({_type_words(f.annotation)})' + (f": {_desc(f)}" if _desc(f) else "")
                             for name, f in signature.output_fields.items())
        return (f"{textwrap.dedent(signature.instructions).strip()}\n\nThe user gives {inputs}. Reply with one JSON "
                f"object with these fields, in this order:\n{outputs}")

    def user_message_output_requirements(self, signature: type[dspy.Signature]) -> None:
        return None


def _desc(field_info: Any) -> str:
    desc = (field_info.json_schema_extra or {}).get("desc") or ""
    return "" if desc.startswith("${") else desc  # DSPy's placeholder for a field without a description


def _type_words(annotation: Any) -> str:
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "text"
    if annotation == list[int]:
        return "list of numbers"
    values = [a for arg in getattr(annotation, "__args__", ()) for a in (getattr(arg, "__args__", ()) or (arg,))]
    return " or ".join(f'"{v}"' if isinstance(v, str) else "null" for v in values if v is not type(None)) or "text"


def answer_adapter(lm: Any) -> Any:
    """The adapter for the answer step: the one configured, else JSON under a schema where the LM can
    constrain its reply to one (the local engine, OpenAI), else DSPy's chat format without a retry."""
    if dspy.settings.adapter is not None:
        return dspy.settings.adapter
    if _supports(lm, "response_format"):
        return CompactJSONAdapter(use_native_function_calling=False)
    # No JSON-adapter retry on a malformed reply: on the local model it doubled the latency, and the
    # reply's answer text is recoverable (recover_fields), its citations then checked as usual.
    return dspy.ChatAdapter(use_json_adapter_fallback=False)


def _supports(lm: Any, param: str) -> bool:
    try:
        return param in lm.supported_params
    except Exception:  # noqa: BLE001 - test doubles and unknown providers declare nothing
        return False


_VALUE_NEXT = re.compile(r"answerable\W*$", re.IGNORECASE)


def p_answerable(tokens: list[dict] | None) -> float | None:
    """From OpenAI-style token logprobs: P(true) / (P(true) + P(false)) at the `answerable` value."""
    text = ""
    for tok in tokens or []:
        word = str(tok.get("token") or "")
        if _VALUE_NEXT.search(text) and re.search(r"\w", word):  # the first word after `answerable":`
            yes = no = 0.0
            alternatives = list(tok.get("top_logprobs") or [])
            if not any(a.get("token") == word for a in alternatives):
                alternatives.append({"token": word, "logprob": tok.get("logprob", -math.inf)})
            for alt in alternatives:
                value = str(alt.get("token") or "").strip(" \t\n\"'").lower()
                p = math.exp(float(alt.get("logprob", -math.inf)))
                if value.startswith(("true", "yes")):
                    yes += p
                elif value.startswith(("false", "no")):
                    no += p
            return yes / (yes + no) if yes + no > 0 else None
        text += word
    return None


# The reply's text just before the verdict's value: JSON ('"verdict": "') or DSPy's chat format ('## verdict ## ]]').
_VERDICT_NEXT = re.compile(r'(?:"verdict"\s*:\s*"?|##\s*verdict\s*##\s*\]\]\s*)$', re.IGNORECASE)
VERDICT_LABELS = ("yes", "no", "maybe")


def verdict_probs(tokens: list[dict] | None) -> dict[str, float] | None:
    """From OpenAI-style token logprobs: P(yes), P(no), P(maybe) at the `verdict` value, normalised over the
    three (a label's mass is the sum over its alternatives at that position: "yes", " yes", '"yes'...).
    None when the reply has no verdict value or its alternatives hold none of the labels."""
    text = ""
    for tok in tokens or []:
        word = str(tok.get("token") or "")
        if _VERDICT_NEXT.search(text) and re.search(r"\w", word):  # the first word after `"verdict":`
            mass = dict.fromkeys(VERDICT_LABELS, 0.0)
            alternatives = list(tok.get("top_logprobs") or [])
            if not any(a.get("token") == word for a in alternatives):
                alternatives.append({"token": word, "logprob": tok.get("logprob", -math.inf)})
            for alt in alternatives:
                value = str(alt.get("token") or "").strip(" \t\n\"'").lower()
                # the token is the label or its first piece ("may" of "maybe"); "null", "not" are no label
                label = next((lab for lab in VERDICT_LABELS if len(value) >= 2 and lab.startswith(value)), None)
                if label is not None:
                    mass[label] += math.exp(float(alt.get("logprob", -math.inf)))
            total = sum(mass.values())
            return {lab: m / total for lab, m in mass.items()} if total > 0 else None
        text += word
    return None


def scored_verdict(probs: dict[str, float], bias: dict[str, float], labels: tuple[str, ...] = VERDICT_LABELS) -> str:
    """The label with the highest log P(label) + bias[label] among `labels` (contextual calibration: the
    biases undo the model's lean towards one label, fitted on train; eval/calibrate_verdict.py)."""
    return max(labels, key=lambda lab: math.log(max(probs.get(lab, 0.0), 1e-12)) + bias.get(lab, 0.0))


VERDICT_SOURCES = ("reply", "judge", "both")
UNSUPPORTED_VERDICTS = ("decline", "keep")  # what a yes/no answer that fails the claim checks becomes
FALLBACK_VERDICTS = ("drop", "keep")  # whether the evidence standing in for a declined yes/no answer keeps its verdict


def decision_probs(source: str, reply: dict[str, float] | None,
                   judge: dict[str, float] | None) -> dict[str, float] | None:
    """The label probabilities a verdict decision reads: the reply's (at its verdict field), the judge step's,
    or with "both" their normalised product (the two readings as independent evidence); whichever exists
    when the other is missing, None when neither does."""
    if source == "reply" or judge is None:
        return reply if source == "reply" or reply is not None else None
    if source == "judge" or reply is None:
        return judge
    joint = {lab: max(reply.get(lab, 0.0), 1e-12) * max(judge.get(lab, 0.0), 1e-12) for lab in VERDICT_LABELS}
    total = sum(joint.values())
    return {lab: v / total for lab, v in joint.items()}


class CitedRAG(dspy.Module):
    """Retrieve, select evidence, decide, answer in the question's shape (see the module doc).

    `search(question)` returns a SearchResult; `select(question, result, shape)` returns the evidence
    passages (without it, the retrieved passages themselves are the evidence); `threshold` is the
    P(answerable) below which the program abstains (None: trust the model's own `answerable` field).
    """

    def __init__(self, search: Callable[[str], SearchResult] | None = None, min_score: float = 0.0, *,
                 select: Callable[[str, SearchResult, str], list[Hit]] | None = None,
                 threshold: float = 0.0, decline_unsupported: bool = True,
                 verdict_bias: dict[str, float] | None = None, verdict_labels: tuple[str, ...] = VERDICT_LABELS) -> None:
        super().__init__()
        # Decisions a program file may set (program_files): None keeps the model's sampled verdict.
        self.verdict_bias = verdict_bias
        self.verdict_labels = tuple(verdict_labels)
        # "reply", "judge" (a second, short call reads the finding against the question) or "both"; with "judge" or
        # "both" the judge's probabilities are recorded (provenance.judge_probs) even when no bias is set
        self.verdict_source = "reply"
        # What a yes/no answer whose finding fails the claim checks becomes: "decline" (an abstention, as every
        # shape) or "keep" (answered: the verdict stands, `claims` name what its evidence lacks), for corpora
        # whose yes/no questions are all answerable, where a decline is always wrong (PubMedQA)
        self.unsupported_verdict = "decline"
        # Per question shape, the best dense similarity from which an answer the claim checks decline is replaced
        # by the extractive answer (its evidence quoted, cited) instead of an abstention; a shape not here keeps
        # the decline. The Pipeline applies it (it holds the index); fitted on train by eval/fit_fallback.py.
        self.declined_fallback: dict[str, float] = {}
        # What verdict that evidence answer gives for a yes/no question: none ("drop") or the declined draft's
        # ("keep": it opens "Yes: The evidence states: ..."); fitted on train with declined_fallback.
        self.fallback_verdict = "drop"
        # Per question shape, the best dense similarity below which the program declines before the model (fitted
        # on train by `rag optimize --optimizer abstain`); a shape not here takes `min_score` (the setting). The
        # Pipeline drops them when RAG_MIN_SCORE is set: a setting the user sets wins over a fitted one.
        self.min_scores: dict[str, float] = {}
        # Demos chosen per question by similarity (rag/answer/knn.py); None: each predictor's own demos.
        self.knn: DemoPool | None = None
        self.search = _Shared(search) if search is not None else None
        self.select = _Shared(select) if select is not None else None
        self.min_score = min_score
        self.threshold = threshold
        self.decline_unsupported = decline_unsupported
        self.answer = dspy.Predict(CitedAnswer)
        self.yesno = dspy.Predict(YesNoAnswer)
        self.list = dspy.Predict(ListAnswer)
        self.verdict_judge = dspy.Predict(VerdictJudge)

    def forward(self, question: str, result: SearchResult | None = None) -> dspy.Prediction:
        """Answer `question`; `result` skips retrieval when the caller already searched."""
        if result is None:
            if self.search is None:
                raise RuntimeError("CitedRAG needs a search function; pass search= when constructing it")
            result = self.search(question)
        shape = question_shape(question)
        retrieved = result.hits
        if not retrieved or (result.best_similarity < self.min_scores.get(shape, self.min_score)
                             and not names_found(question, [f"{h.paper.title} {h.text}" for h in retrieved])):
            return _abstained(retrieved, retrieved, shape, NO_CLOSE_PASSAGE, lm_called=False)
        evidence = (self.select(question, result, shape) if self.select is not None else None) or retrieved
        predictor = getattr(self, PREDICTORS[shape])
        lm = dspy.settings.lm
        config = {"logprobs": True, "top_logprobs": LOGPROBS_TOP} if _supports(lm, "logprobs") else {}
        with dspy.context(adapter=answer_adapter(lm)):
            try:
                knn = self.knn.nearest(shape, result.query_vector) if self.knn is not None else None
                pred = predictor(passages=format_passages(evidence), question=question, config=config,
                                 **({"demos": knn} if knn is not None else {}))
                fields = {name: getattr(pred, name, None) for name in predictor.signature.output_fields}
                tokens = (getattr(pred, "logprobs", None) or {}).get("content")
                p = p_answerable(tokens)
                probs = verdict_probs(tokens) if shape == "yesno" else None
            except AdapterParseError as e:
                answer, sources = recover_fields(str(e.lm_response or ""))
                fields, p, probs = {"answerable": True, "answer": answer, "sources": sources}, None, None
        if p is not None and p < self.threshold:
            return _abstained(evidence, retrieved, shape, LOW_P, p_answerable=p)
        if p is None and fields.get("answerable") is False:  # no logprobs: the model's own word decides
            return _abstained(evidence, retrieved, shape, MODEL_DECLINED)
        verdict, restated, judged = None, False, None
        if shape == "list":
            numbers = [n for n in dict.fromkeys(as_numbers(fields.get("sources"))) if 1 <= n <= len(evidence)]
            lines = "\n".join(f"- {evidence[n - 1].paper.title}: {evidence[n - 1].text} [{n}]" for n in numbers)
            cited = Cited(lines, numbers, False) if numbers else Cited(ABSTAIN_TEXT, [], True)
        else:
            text = fields.get("finding") if shape == "yesno" and fields.get("finding") else fields.get("answer")
            cited = map_citations(to_last_sentence(str(text or "")), fields.get("sources"), [h.text for h in evidence])
            if shape == "yesno" and not cited.abstained:
                if self.verdict_source in ("judge", "both"):
                    judged = self.judge_verdict(question, cited.answer, config)
                used = decision_probs(self.verdict_source, probs, judged)
                if used is not None and self.verdict_bias is not None:
                    chosen = scored_verdict(used, self.verdict_bias, self.verdict_labels)
                    cited.answer, verdict = with_verdict(strip_verdict(cited.answer), chosen)
                else:
                    cited.answer, verdict = with_verdict(cited.answer, fields.get("verdict"))
            if shape == "specific" and not cited.abstained and restates(question, cited.answer):
                quoted = quote_named_evidence(question, evidence, cited.numbers)
                if quoted is not None:
                    cited, restated = quoted, True
        if cited.abstained:
            return _abstained(evidence, retrieved, shape, NO_VALID_CITATION, p_answerable=p)
        claims = check_claims(cited.answer, {n: f"{h.paper.title}: {h.text}" for n, h in enumerate(evidence, 1)},
                              question)
        sampled = fields.get("verdict") if shape == "yesno" else None
        checked = self.decline_unsupported and shape != "list" and not (
            shape == "yesno" and verdict is not None and self.unsupported_verdict == "keep")
        # a declined yes/no answer keeps its label probabilities, so the decisions can be refitted from reports
        seen = {"verdict_probs": probs, "judge_probs": judged, "sampled_verdict": sampled}
        if checked and not all(c.supported for c in claims):
            # A name or number the cited evidence does not contain: on train this is how most answers to
            # unanswerable questions look (the model fills the gap, or repeats the question's own example).
            return _abstained(evidence, retrieved, shape, UNSUPPORTED_CLAIM, p_answerable=p, draft=claims,
                              draft_answer=cited.answer, **seen)
        if checked and off_question(
                question, cited.answer, [f"{evidence[n - 1].paper.title}: {evidence[n - 1].text}" for n in cited.numbers]):
            # An answer that is not about what was asked: no number for "how many", or a passage about something
            # else than the names the question asks about (the model, finding no answer, copies what it has).
            return _abstained(evidence, retrieved, shape, OFF_QUESTION, p_answerable=p, draft=claims,
                              draft_answer=cited.answer, **seen)
        return dspy.Prediction(answer=cited.answer, citations=cited.numbers, abstained=False, hits=evidence,
                               retrieved=retrieved, shape=shape, verdict=verdict, claims=claims, p_answerable=p,
                               abstain_reason=None, lm_called=True, restated=restated, **seen)

    def judge_verdict(self, question: str, finding: str, config: dict | None = None) -> dict[str, float] | None:
        """P(yes / no / maybe) that the judge step reads off `finding` for `question` (None without logprobs)."""
        lm = dspy.settings.lm
        config = config if config is not None else (
            {"logprobs": True, "top_logprobs": LOGPROBS_TOP} if _supports(lm, "logprobs") else {})
        with dspy.context(adapter=answer_adapter(lm)):
            try:
                pred = self.verdict_judge(question=question, finding=_CITE_GROUP.sub("", finding).strip(), config=config)
            except AdapterParseError:
                return None
        return verdict_probs((getattr(pred, "logprobs", None) or {}).get("content"))

    def decisions(self) -> dict:
        """The decision parameters a program file stores beside the predictors' demos and instructions."""
        return {"verdict_bias": self.verdict_bias, "verdict_labels": list(self.verdict_labels),
                "verdict_source": self.verdict_source, "unsupported_verdict": self.unsupported_verdict,
                "declined_fallback": dict(self.declined_fallback), "fallback_verdict": self.fallback_verdict,
                "min_score": dict(self.min_scores),
                **({"knn": self.knn.to_json()} if self.knn is not None else {})}

    def set_decisions(self, decisions: dict) -> None:
        """Apply a program file's decisions (missing keys keep their defaults)."""
        if "verdict_bias" in decisions:
            bias = decisions["verdict_bias"]
            self.verdict_bias = None if bias is None else {k: float(v) for k, v in bias.items()}
        if "verdict_labels" in decisions:
            self.verdict_labels = tuple(decisions["verdict_labels"])
        if "verdict_source" in decisions:
            if decisions["verdict_source"] not in VERDICT_SOURCES:
                raise ValueError(f"verdict_source {decisions['verdict_source']!r} is not one of "
                                 f"{', '.join(VERDICT_SOURCES)}")
            self.verdict_source = str(decisions["verdict_source"])
        if "unsupported_verdict" in decisions:
            if decisions["unsupported_verdict"] not in UNSUPPORTED_VERDICTS:
                raise ValueError(f"unsupported_verdict {decisions['unsupported_verdict']!r} is not one of "
                                 f"{', '.join(UNSUPPORTED_VERDICTS)}")
            self.unsupported_verdict = str(decisions["unsupported_verdict"])
        if "declined_fallback" in decisions:
            self.declined_fallback = _by_shape("declined_fallback", decisions["declined_fallback"])
        if "fallback_verdict" in decisions:
            if decisions["fallback_verdict"] not in FALLBACK_VERDICTS:
                raise ValueError(f"fallback_verdict {decisions['fallback_verdict']!r} is not one of "
                                 f"{', '.join(FALLBACK_VERDICTS)}")
            self.fallback_verdict = str(decisions["fallback_verdict"])
        if "min_score" in decisions:
            self.min_scores = _by_shape("min_score", decisions["min_score"])
        if "knn" in decisions:
            self.knn = None if decisions["knn"] is None else DemoPool.from_json(decisions["knn"])


def _by_shape(name: str, value: Any) -> dict[str, float]:
    """A decision mapping question shapes to a minimum similarity (a finite number), checked."""
    value = value or {}
    if not isinstance(value, dict) or not all(
            shape in PREDICTORS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for shape, v in value.items()):
        raise ValueError(f"{name} must map question shapes ({', '.join(PREDICTORS)}) to a minimum similarity, "
                         f"got {value!r}")
    return {shape: float(v) for shape, v in value.items()}


def strip_verdict(answer: str) -> str:
    """`answer` without a yes / no / maybe opening it ("Yes: the paper finds ..." -> "the paper finds ..."),
    so a scored verdict replaces a sampled one instead of contradicting it."""
    if parse_verdict(answer) is None:
        return answer
    rest = re.sub(r"^\W*\w+(?:\s+(?:really|depends))?\W*", "", answer, count=1)
    return rest[:1].upper() + rest[1:] if rest else answer


# "Which method / what approach / which paper ... ?": a question that asks for a name.
_ASKS_NAME = re.compile(
    r"\b(?:which|what)\s+(?:\w+\s+){0,2}?(?:method|approach|technique|model|framework|benchmark|dataset|paper|system|"
    r"tool|algorithm|architecture|metric|library|package|strategy|procedure|task|language|name)s?\b"
    r"|\bwhat\s+(?:is|are|was|were)\s+(?:it|they|this|that|the\s+\w+)\s+called\b|\bthe\s+name\s+of\b",
    re.IGNORECASE)


def new_names(text: str, question: str) -> list[str]:
    """The names (not numbers) of `text` that `question` does not already hold (rag.answer.claims.specific_terms)."""
    asked = {t.lower() for t in specific_terms(question)}
    return [t for t in specific_terms(text) if t.lower() not in asked and not re.fullmatch(r"[\d.,]+%?", t)]


def restates(question: str, answer: str) -> bool:
    """A name question ("which method ...?") answered without any name beyond the question's own words: the
    1.5B model's restate-the-question failure ("The approach described in [1] edits hidden activations")."""
    if not _ASKS_NAME.search(question):
        return False
    return not new_names(answer, question)


def quote_named_evidence(question: str, evidence: list[Hit], cited: list[int]) -> Cited | None:
    """The evidence sentence that holds a name the question does not and shares most of the question's words,
    quoted and cited: from the passages the answer cited, else from the rest. None when no sentence names
    anything new."""
    words = content_words(question)
    for group in (cited, [n for n in range(1, len(evidence) + 1) if n not in cited]):
        best: tuple[float, int, str] | None = None
        for n in group:
            for sentence in sentences(evidence[n - 1].text):
                if not new_names(sentence, question):
                    continue
                bag = word_set(sentence)
                score = sum(w in bag for w in words) / max(len(words), 1)
                if best is None or score > best[0]:
                    best = (score, n, sentence.strip())
        if best is not None:
            return Cited(f"\"{best[2]}\" [{best[1]}]", [best[1]], False)
    return None


def with_verdict(answer: str, verdict: str | None) -> tuple[str, str | None]:
    """The answer opening with its verdict ("Yes: ..."), and the verdict. When the model's verdict field and
    the answer's first word disagree, the answer (what the user reads) wins."""
    said = parse_verdict(answer)
    if said is not None:
        return answer, said
    if verdict not in ("yes", "no", "maybe"):
        return answer, None
    return f"{verdict.capitalize()}: {answer}", verdict


def _abstained(evidence: list[Hit], retrieved: list[Hit], shape: str, reason: str, *, lm_called: bool = True,
               p_answerable: float | None = None, draft: list | None = None,
               draft_answer: str | None = None, **seen: Any) -> dspy.Prediction:
    """An abstention; `draft_answer` and `draft` (its claims) keep an answer the checks declined
    (provenance.declined_draft: why it was declined, and the data the decline rules are refitted on), and
    `seen` the verdict's label probabilities of a declined yes/no answer (verdict_probs, judge_probs,
    sampled_verdict)."""
    return dspy.Prediction(answer=ABSTAIN_TEXT, citations=[], abstained=True, hits=evidence, retrieved=retrieved,
                           shape=shape, verdict=None, claims=[], p_answerable=p_answerable, lm_called=lm_called,
                           abstain_reason=reason, draft_claims=draft or [],
                           draft_answer=draft_answer, **seen)


class _Shared:
    """A callable that optimisers' deep copies of the program share instead of copying (the
    search function holds the index and the embedder)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class StandaloneQuestion(dspy.Signature):
    """Rewrite the follow-up question as one standalone question about research papers.
    Replace pronouns and vague references ("it", "that paper", "its limitations") with the names they refer to
    in the conversation. Keep it short. If it already stands alone, repeat it unchanged."""

    conversation: str = dspy.InputField(desc="earlier questions and answers, oldest first")
    question: str = dspy.InputField(desc="the follow-up question")
    standalone_question: str = dspy.OutputField()


_rewriter = dspy.Predict(StandaloneQuestion)


def rewrite_question(question: str, history: list[tuple[str, str]], turns: int = 2) -> str:
    """A follow-up rewritten with the last `turns` (question, answer) pairs into a standalone query."""
    convo = "\n".join(f"Q: {q}\nA: {_FIELD_MARKER.sub('', a or '')[:400]}" for q, a in history[-turns:])
    rewritten = str(_rewriter(conversation=convo, question=question).standalone_question or "").strip()
    rewritten = " ".join(rewritten.split())[:500]
    return rewritten or question
