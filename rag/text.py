"""Text primitives every stage shares: sentences, words, stopwords, BM25 tokens.

One sentence splitter serves chunking, evidence selection, citation attribution,
the faithfulness metric and demo shortening, so "a sentence" means the same thing
at index time, at answer time and at scoring time. One stopword list serves BM25
and the word-overlap checks for the same reason.

Left out: language detection and stemming beyond a plural 's' (abstracts here are
English, and BM25 plus dense retrieval cover morphology well enough).
"""

from __future__ import annotations

import re

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket and by [n]
# citation markers, which belong to the sentence they close) and then whitespace and an
# upper-case letter, a digit or an opening bracket. Common abbreviations do not end one.
_BOUNDARY = re.compile(r"(?<=[.!?])(?:\s*\[\d+\])*[\"')\]]?\s+(?=[A-Z0-9(\[\"'])")
_ONLY_MARKERS = re.compile(r"(?:[\s,;]*\[\d+\])+[.!?]?\s*")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Fig|Eq|Sec|resp|approx|Dr|Mr|Ms|No)\.|\b[A-Z]\.)$")

WORD = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
STOPWORDS = frozenset("""a an and are as at be by can do does for from has have how in into is it its of on or
that the their these this those to was we were what when which who why will with our via using use used
about than then there they them also such both between over under more most other some any each not no""".split())


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if _ABBREV.search(text[start:m.start()]):
            continue
        end = m.start() + len(m.group(0).rstrip())  # keep a closing quote/bracket and [n] markers
        spans.append((start, end))
        start = m.end()
    if start < len(text.rstrip()):
        if spans and _ONLY_MARKERS.fullmatch(text[start:]):  # "... the end. [1][2]": the markers close it
            spans[-1] = (spans[-1][0], len(text.rstrip()))
        else:
            spans.append((start, len(text.rstrip())))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def sentences(text: str) -> list[str]:
    """The sentences of `text`, as strings."""
    return [text[s:e] for s, e in split_sentences(text)]


def content_words(text: str) -> list[str]:
    """Lower-case words of three letters or more that are not stopwords, in order."""
    return [w for w in WORD.findall(text.lower()) if len(w) > 2 and w not in STOPWORDS]


def word_set(text: str) -> set[str]:
    """Every lower-case word of `text` (stopwords included): what a passage offers to overlap with."""
    return set(WORD.findall(text.lower()))


def tokenize(text: str) -> list[str]:
    """BM25 tokens: lower-case words, stopwords dropped, a plural 's' stripped."""
    out = []
    for tok in re.findall(r"[a-z0-9]+", text.lower()):
        if tok in STOPWORDS:
            continue
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        out.append(tok)
    return out


def strip_markers(text: str) -> str:
    """`text` without [n] citation markers, whitespace collapsed."""
    return " ".join(re.sub(r"\[\d+\]", " ", text).split())
