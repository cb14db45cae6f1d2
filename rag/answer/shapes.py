"""The shape of a question, and the verdict of a yes/no answer.

Users ask three kinds of question, and each is answered in its own shape:

- `list`: "Which papers study X?", "What work here is about Y?" -> one line per
  relevant paper, with the sentence that shows it, cited;
- `yesno`: "Is there work arguing ...?", "Has anyone checked whether ...?",
  "Does X help Y?" -> "Yes: ..." / "No: ..." / "Maybe: ...", cited;
- `specific`: everything else -> the fact, cited.

The shape is told by rules on the question's first words: free, instant and
measured on the labelled set (`tests/test_shapes.py`, and the eval report's
per-shape table). `parse_verdict` reads yes / no / maybe off the start of an
answer in any common phrasing, for answers written by a model that was not
asked for a separate verdict field.

Left out: a learned classifier (the rules are right on the labelled set; a
model call would cost seconds for nothing).
"""

from __future__ import annotations

import re

SHAPES = ("list", "yesno", "specific")

_PAPERS = r"(?:papers?|work|studies|study|articles?|publications?|research)\b"
# "Which papers ...", "What work here ...", "... which papers here would help?", "List the studies ...",
# "Are there papers on ...?", "Are any of these papers about ...?", "... Please list them."
_LIST = re.compile(
    rf"\b(?:which|what)\s+(?:\w+\s+){{0,2}}?{_PAPERS}"
    rf"|^\s*(?:list|name|find|show)\s+(?:\w+\s+){{0,3}}?{_PAPERS}"
    rf"|^\s*(?:are|were)\s+(?:there|any)\s+(?:\w+\s+){{0,3}}?{_PAPERS}"
    r"|\blist them\b",
    re.IGNORECASE)
# An auxiliary verb opening the question or its main clause: "Is there ...", "Does X ...", "Has anyone ...",
# "If each model learns from the last, are they doomed ...?"
_YESNO = re.compile(r"(?:^|,)\s*(?:is|are|was|were|do|does|did|can|could|has|have|had|will|would|should|may|might|must"
                    r"|isn't|aren't|doesn't|don't|didn't|can't|hasn't|haven't)\b", re.IGNORECASE)
# A question word anywhere means the question asks for a thing, not a yes or no.
_WH = re.compile(r"\b(?:what|which|who|whom|whose|when|where|why|how)\b", re.IGNORECASE)
# "Is it A, or B?" asks to choose, not to confirm.
_EITHER_OR = re.compile(r",\s*or\b|\bor\s+(?:do|does|did|is|are|was|were|can|will|would|just|rather|instead)\b",
                        re.IGNORECASE)
# "Yes", "No", "Maybe" (and their common variants) opening an answer.
_VERDICT = re.compile(
    r"^\W*(?:(?P<yes>yes|yeah|yep|correct|true|indeed)|(?P<no>no|nope|not really|false|incorrect)"
    r"|(?P<maybe>maybe|possibly|perhaps|partly|partially|it depends|unclear|it is unclear|mixed))\b",
    re.IGNORECASE)


def question_shape(question: str) -> str:
    """`list`, `yesno` or `specific` (see the module doc)."""
    if _LIST.search(question):
        return "list"
    # the question's start, or the main clause after one opening clause or title ("Biliary atresia: should ...?")
    opening = ",".join(re.split(r"\s*(?:[,:;.]|--|—|–)\s+|(?<=\w)--", question, maxsplit=2)[:2])
    verbless = question.rstrip().endswith("?") and not _WH.search(question)  # "Inhibin: a new marker of X?"
    if (_YESNO.search(opening) or verbless) and not _EITHER_OR.search(question):
        return "yesno"
    return "specific"


def parse_verdict(answer: str | None) -> str | None:
    """'yes', 'no' or 'maybe' when the answer opens with one of them (in any common phrasing), else None."""
    m = _VERDICT.search(answer or "")
    if m is None:
        return None
    return next(name for name in ("yes", "no", "maybe") if m.group(name))
