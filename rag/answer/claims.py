"""Every claim checked against what it cites.

An answer is split into sentences; each sentence's specific terms (numbers,
names, acronyms: the words a small model gets
wrong when it swaps "method X" for "method Y" or takes a number from elsewhere)
are looked up in the passages the sentence cites, and in the question (the user
may name the method themselves). A term found in neither is a likely
hallucination: the claim is marked unsupported and the term named.

A cited passage must also share at least one of the claim's content words beyond the question's own
words (compared by their first five letters; judged only for a claim that adds two words or more to the
question): a passage that only repeats what was asked (or nothing at all) is not support, whatever the claim's
names are (a poisoned abstract that moves citations to a paper that does not state the answer, issue 23).
Such a claim is unsupported with a `reason` and no `unsupported_terms`.

Three allowances, fitted on train answers that were wrongly declined (eval/results/train-declines-*): a
compound with a plain tail ("DeepSpeed-Chat-style", "APO-aligned") is supported by its name; a short
all-capitals acronym the question itself uses (LLMs, KL) may be repeated though the passage spells it
otherwise; a citation marker cut off by the token limit ("[1") is not a number.

This is a lexical check, on purpose: it costs microseconds, explains itself
("LoRA is in no cited passage"), and catches the errors users reported. It does
not judge paraphrase or logic; a claim can pass it and still be wrong.

Left out: entailment models (no packaged offline NLI model) and checking words
that are not specific (a paraphrase in plain words is not flagged, nor is a
lower-case technical term: without a vocabulary, "fine-tuning" and
"perturb-then-diagonalize" look alike).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field

from rag.text import sentences, strip_control, tokenize

_MARKER = re.compile(r"\[(\d+)\]")
_BROKEN_MARKER = re.compile(r"\[\d+(?![\d\]])")  # "[1" where the token limit cut the marker off
# Lower-case tails that make a compound of a name ("DeepSpeed-Chat-style", "APO-aligned", "LLM-generated"):
# a passage that has the name itself supports the compound.
_COMPOUND_TAILS = frozenset("""style like based aligned generated type specific driven level scale sized free only
augmented enhanced guided tuned trained powered inspired aware""".split())
# A short all-capitals acronym the question itself uses (LLM, LLMs, KL, CoT is not one): the answer may repeat the
# user's word though its passage spells it otherwise ("language models"); a coined name (MoEUT) must still be found.
_QUESTION_ACRONYM = re.compile(r"[A-Z]{2,4}s?")
# Numbers (12, 2.3, 1,920, 74.7%, 10x), words with a capital after the first letter or a digit (LoReFT,
# GPT-4, MERRA-2, S4D), and capitalised words inside a sentence (Transformer, Prithvi).
_NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)\d+(?:[.,]\d+)*(?:\s?%|x\b)?")
_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*(?:[-'][A-Za-z0-9]+)*")
# Capitalised words that are ordinary English at the start of a clause; never specific on their own.
_COMMON = frozenset("""the a an this these those that it its they their there here we our yes no maybe however
both each all some many most one two three four five six seven eight nine ten first second also in on of for to
and or but by with from as at if when while although because papers paper passage passages study studies work
authors results result answer evidence however moreover furthermore additionally finally overall thus""".split())


@dataclass
class Claim:
    """One sentence of an answer and whether its specific terms appear in what it cites."""

    text: str
    cited: list[int] = field(default_factory=list)
    supported: bool = True
    unsupported_terms: list[str] = field(default_factory=list)
    reason: str | None = None  # why it is unsupported, in words (None when supported)

    def to_json(self) -> dict:
        return asdict(self)


def specific_terms(sentence: str) -> list[str]:
    """The terms of `sentence` a claim check looks up: numbers, names, acronyms."""
    text = _BROKEN_MARKER.sub(" ", _MARKER.sub(" ", sentence))
    terms = [m.group(0).strip() for m in _NUMBER.finditer(text)]
    words = list(_WORD.finditer(text))
    for i, m in enumerate(words):
        w = m.group(0)
        inner_capital = any(c.isupper() for c in w[1:]) or any(c.isdigit() for c in w)
        starts_clause = i == 0 or text[:m.start()].rstrip().endswith((".", ":", ";", "!", "?", "(", '"'))
        capitalised = w[0].isupper() and not starts_clause
        if (inner_capital or capitalised) and w.lower() not in _COMMON:
            terms.append(w)
    return list(dict.fromkeys(terms))


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("×", "x").replace("\\%", "%")
    return " ".join(re.sub(r"(?<=\d),(?=\d{3})", "", text).split())


_SMALL_WORDS = frozenset("of the for from and to in on with a an".split())


def _spelled_out(acronym: str, haystack: str) -> bool:
    """An acronym (LLM, RLHF, NLP) counts as found where the text spells it out: consecutive words whose
    initials, small words aside, are its letters ("large language models", "reinforcement learning from
    human feedback")."""
    letters = acronym.lower().removesuffix("s")
    words = [w for w in re.findall(r"[a-z0-9]+", haystack) if w not in _SMALL_WORDS]
    initials = "".join(w[0] for w in words)
    return len(letters) >= 2 and letters in initials


def _found(term: str, haystack: str) -> bool:
    term = re.sub(r"['’]s$", "", term)  # GPT-4's -> GPT-4
    head, _, tail = term.rpartition("-")
    if head and tail in _COMPOUND_TAILS and _found(head, haystack):
        return True
    if re.fullmatch(r"[A-Z]{2,6}s?", term) and _spelled_out(term, haystack):
        return True
    t = _norm(term)
    if re.fullmatch(r"[\d.,]+(?:\s?%|x)?", t):  # a number must match as a number, not inside another
        number = re.escape(t.rstrip("%x ").rstrip())
        return re.search(rf"(?<![\d.]){number}(?![\d]|\.\d)", haystack) is not None
    return re.search(rf"(?<![a-z0-9]){re.escape(t)}(?:e?s)?(?![a-z0-9])", haystack) is not None  # LLM in "LLMs"


def coined_names(text: str) -> list[str]:
    """The coined names in `text` (LoReFT, UniMat, GPT-4, MechGPT): words with a capital after the first letter or
    a digit. A sentence embedder splits such names into word pieces it has no meaning for, so a question about
    one can sit far from the one passage that names it; a plain capitalised word (World, Which) is not one."""
    return [t for t in specific_terms(text)
            if not re.fullmatch(r"[\d.,]+(?:\s?%|x)?", t) and any(c.isupper() or c.isdigit() for c in t[1:])]


def names_found(question: str, texts: list[str]) -> list[str]:
    """The coined names of `question` that one of `texts` contains (an acronym spelled out counts)."""
    hay = [_norm(t) for t in texts]
    return [n for n in coined_names(question) if any(_found(n, h) for h in hay)]


_HOW_MANY = re.compile(r"^\s*(?:[\w ,:]*?\b)?(how (?:many|much)|what (?:share|percentage|fraction"
                       r"|proportion|number))\b", re.IGNORECASE)
_NUMBER_WORD = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|dozens?|hundreds?|"
                          r"thousands?|millions?|billions?|half|twice|double|triple|once)\b", re.IGNORECASE)


def off_question(question: str, answer: str, cited: list[str]) -> str | None:
    """Why `answer` does not answer `question`, whatever its evidence says; None when it may.

    - a question that asks how many / how much gets an answer with no number in it (the model, finding none,
      copies its passage instead);
    - the question names coined things (LoReFT, MechGPT) that the passages the answer cites do not: the answer
      is about something else (a passage on LoRA, for a question comparing LoReFT with LoRA)."""
    if _HOW_MANY.search(question) and not (_NUMBER.search(_MARKER.sub(" ", answer)) or _NUMBER_WORD.search(answer)):
        return "the question asks for a quantity and the answer gives none"
    missing = [n for n in coined_names(question) if n not in names_found(question, cited)]
    if missing:
        return f"no cited passage mentions {', '.join(missing)}"
    return None


def check_claims(answer: str, passages: dict[int, str], question: str = "") -> list[Claim]:
    """One `Claim` per sentence of `answer`; `passages` maps passage number -> the text the model read.

    A sentence is checked against the passages it cites; a sentence that cites none against every
    passage the answer cites (the model often cites once, at the end). Its specific terms must be in
    them, and one of them must share a content word of the sentence beyond `question`'s words."""
    split = [(s, [int(n) for n in _MARKER.findall(s)])
             for line in (answer or "").splitlines() for s in sentences(line.strip().removeprefix("- "))]
    cited_anywhere = sorted({n for _, ns in split for n in ns if n in passages})
    asked = _stems(question)
    acronyms = {t for t in specific_terms(question) if _QUESTION_ACRONYM.fullmatch(t)}
    claims = []
    for sentence, numbers in split:
        valid = [n for n in dict.fromkeys(numbers) if n in passages]
        used = valid or cited_anywhere
        sources = _norm(" ".join(passages[n] for n in used))
        missing = [t for t in specific_terms(sentence) if t not in acronyms and not _found(t, sources)]
        text = " ".join(_MARKER.sub(" ", sentence).split())
        reason = f"{', '.join(missing)} in no cited passage" if missing else _no_shared_word(text, used, passages, asked)
        claims.append(Claim(text, valid, reason is None, missing, reason))
    return claims


def _stems(text: str) -> set[str]:
    """The content words of `text` cut to STEM letters ("reduces", "reduction" -> "reduc"), terminal controls gone."""
    return {w[:STEM] for w in tokenize(strip_control(text)) if w not in _COMMON}


STEM = 5  # letters two words must share to count as one (a cheap stemmer: "improves" and "improvement")
MIN_NEW_WORDS = 2  # a claim that adds fewer words than this to the question is too short to judge by them


def _no_shared_word(claim: str, cited: list[int], passages: dict[int, str], asked: set[str]) -> str | None:
    """Why the passages `cited` do not support `claim` though its terms are there: none of them shares a content
    word of the claim beyond the question's (`asked`, stems); None when one does, or when the claim adds fewer
    than MIN_NEW_WORDS words to the question (a restatement, or one paraphrased verb: nothing to judge by)."""
    said = _stems(claim) - asked
    if not cited or len(said) < MIN_NEW_WORDS:
        return None
    if any(said & _stems(passages[n]) for n in cited):
        return None
    marks = " ".join(f"[{n}]" for n in cited)
    return f"{marks} share{'s' if len(cited) == 1 else ''} no word of the claim beyond the question's"
