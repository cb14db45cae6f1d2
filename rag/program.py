"""The DSPy retrieve-then-answer program and its citation mapping.

`CitedRAG` retrieves the top-k passages, numbers them [1]..[k], and asks the LM
for an answer with inline [n] markers plus the list of passage numbers used.
The raw output is then made checkable:

- leaked DSPy field markers (`[[ ## answer ## ]]`) are stripped (and any in the passages are
  removed before the model sees them: corpus text is data, never prompt structure);
- `[1, 2]` is written as `[1][2]`; markers and sources outside 1..k are dropped;
- an answer with no valid citation, or one that says the passages do not hold
  the answer, becomes an abstention (`abstained=True`) with a plain sentence.

If no passage is even close to the question (best dense cosine below
`min_score`) the program abstains without calling the LM: an out-of-corpus
question costs milliseconds, not a 20-second generation.

The prompt is short on purpose: the local model reads ~40 tokens/s. The fixed
part (instructions) comes first so llama.cpp reuses its cached prefix.
Left out: multi-hop retrieval and query rewriting (the chat adds the latter).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import dspy
from dspy.utils.exceptions import AdapterParseError

from rag.retrieve import Hit, SearchResult
from rag.text import content_words, sentences, word_set

ABSTAIN_TEXT = "The papers here do not answer this question."

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
    """Answer the question using only the numbered passages from research-paper abstracts.
    After each claim, cite its passage number in square brackets, like [1] or [2][3].
    If the passages do not contain the answer, reply exactly "The papers here do not answer this question." and cite nothing."""

    passages: str = dspy.InputField(desc="numbered passages, each '[n] title: text'")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="one to three sentences with [n] citations")
    sources: list[int] = dspy.OutputField(desc="numbers of the passages the answer uses; [] if none")


def recover_fields(reply: str) -> tuple[str, str]:
    """(answer, sources) from a reply the adapter could not parse: a missing sources field, a
    missing end marker, or an answer cut off by the token limit (trimmed to its last full sentence)."""
    answer_m = re.search(r"\[\[\s*##\s*answer\s*##\s*\]\](.*?)(?=\[\[\s*##|\Z)", reply, re.DOTALL)
    sources_m = re.search(r"\[\[\s*##\s*sources\s*##\s*\]\](.*?)(?=\[\[\s*##|\Z)", reply, re.DOTALL)
    answer = (answer_m.group(1) if answer_m else _FIELD_MARKER.sub("", reply)).strip()
    if not sources_m and not re.search(r"[.!?\]]\s*$", answer):
        cut = max(answer.rfind(". "), answer.rfind(".\n"))
        answer = answer[: cut + 1] if cut > 0 else answer
    return answer, sources_m.group(1).strip() if sources_m else ""


def format_passages(hits: list[Hit]) -> str:
    """Number the passages [1]..[k] in retrieval order. Corpus text is data, not prompt structure: a
    DSPy field marker inside a title or abstract (`[[ ## answer ## ]]`, an injection attempt) is removed,
    so the passages cannot open or close a field of the prompt."""
    return "\n".join(f"[{i}] {_FIELD_MARKER.sub(' ', h.paper.title)}: {_FIELD_MARKER.sub(' ', h.text)}"
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
        numbers = attribute(text, passages) or [n for n in dict.fromkeys(_as_ints(raw_sources)) if 1 <= n <= n_passages]
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


def _as_ints(value: object) -> list[int]:
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            try:
                out.append(int(v))
            except (TypeError, ValueError):
                continue
        return out
    return [int(x) for x in re.findall(r"\d+", str(value or ""))]


class CitedRAG(dspy.Module):
    """Retrieve, number the passages, answer with citations, or abstain."""

    def __init__(self, search: Callable[[str], SearchResult] | None = None, min_score: float = 0.0) -> None:
        super().__init__()
        self.search = _Shared(search) if search is not None else None
        self.min_score = min_score
        self.answer = dspy.Predict(CitedAnswer)

    def forward(self, question: str, result: SearchResult | None = None) -> dspy.Prediction:
        """Answer `question`; `result` skips retrieval when the caller already searched."""
        if result is None:
            if self.search is None:
                raise RuntimeError("CitedRAG needs a search function; pass search= when constructing it")
            result = self.search(question)
        hits = result.hits
        if not hits or result.best_similarity < self.min_score:
            return dspy.Prediction(answer=ABSTAIN_TEXT, citations=[], abstained=True, hits=hits, lm_called=False)
        # No JSON-adapter retry on a malformed reply: on the local model it doubles the latency, and
        # the reply's answer text is recoverable (below), the citations then checked as usual.
        adapter = dspy.settings.adapter or dspy.ChatAdapter(use_json_adapter_fallback=False)
        try:
            with dspy.context(adapter=adapter):
                pred = self.answer(passages=format_passages(hits), question=question)
            raw_answer, raw_sources = pred.answer, getattr(pred, "sources", None)
        except AdapterParseError as e:
            raw_answer, raw_sources = recover_fields(str(e.lm_response or ""))
        cited = map_citations(raw_answer, raw_sources, [h.text for h in hits])
        return dspy.Prediction(answer=cited.answer, citations=cited.numbers, abstained=cited.abstained,
                               hits=hits, lm_called=True)


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
