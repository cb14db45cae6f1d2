"""Text primitives every stage shares: sentences, words, stopwords, BM25 tokens.

One sentence splitter serves chunking, evidence selection, citation attribution,
the faithfulness metric and demo shortening, so "a sentence" means the same thing
at index time, at answer time and at scoring time. One stopword list serves BM25
and the word-overlap checks for the same reason.

The splitter runs in linear time on any input and never returns a piece longer
than MAX_SENTENCE_CHARS: a text without sentence boundaries (a pasted table, a
run-on abstract) is cut at word boundaries, or hard-cut where there are none, so
one pathological abstract cannot make a chunk or a prompt unbounded.
`strip_control` makes corpus or model text safe to print on a terminal.

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

# Longest "sentence" any stage sees. The embedder reads ~256 word pieces (about 1,000 characters) of a
# text anyway; a real sentence of the shipped corpus is at most ~650 characters (one of 1,190 is six
# sentences glued without spaces).
MAX_SENTENCE_CHARS = 1000
# Longest abbreviation _ABBREV matches ("approx."), plus the character before it that \b looks at.
_ABBREV_REACH = 16

# Terminal control sequences and characters (tab and newline aside).
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"               # CSI: colours, cursor moves, screen clears
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"      # OSC, ended by BEL or ST: window titles, hyperlinks
    r"|\x1b[@-_]"                            # other two-byte ESC sequences
    r"|\x9b[0-?]*[ -/]*[@-~]"                # 8-bit CSI
    r"|\x9d[^\x07\x1b\x9c]*[\x07\x9c]?"        # 8-bit OSC
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")         # any other C0 or C1 control character

WORD = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
STOPWORDS = frozenset("""a an and are as at be by can do does for from has have how in into is it its of on or
that the their these this those to was we were what when which who why will with our via using use used
about than then there they them also such both between over under more most other some any each not no""".split())


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`, none longer than `max_chars`."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        # Only the few characters before the boundary can hold an abbreviation: searching the whole
        # sentence so far made "A. B. C. ..." (initials, author lists) quadratic.
        if _ABBREV.search(text, max(start, m.start() - _ABBREV_REACH), m.start()):
            continue
        end = m.start() + len(m.group(0).rstrip())  # keep a closing quote/bracket and [n] markers
        spans.append((start, end))
        start = m.end()
    if start < len(text.rstrip()):
        if spans and _ONLY_MARKERS.fullmatch(text[start:]):  # "... the end. [1][2]": the markers close it
            spans[-1] = (spans[-1][0], len(text.rstrip()))
        else:
            spans.append((start, len(text.rstrip())))
    return [piece for s, e in spans if text[s:e].strip() for piece in _cut(text, s, e, max_chars)]


def _cut(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """The span text[start:end] in pieces of at most `limit` characters, cut after the last whitespace
    in each window (or hard-cut when a window has none in its second half), each piece trimmed."""
    pieces = []
    while end - start > limit:
        cut = max(text.rfind(" ", start, start + limit), text.rfind("\n", start, start + limit))
        if cut <= start + limit // 2:
            cut = start + limit
        stop = cut
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        if stop > start:
            pieces.append((start, stop))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if start < end and text[start:end].strip():
        pieces.append((start, end))
    return pieces


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


def strip_control(text: str) -> str:
    """`text` without terminal escape sequences and control characters (tab and newline kept): safe to
    print on a terminal whatever a corpus row or a model wrote."""
    return _CONTROL.sub("", text)


def json_string_so_far(raw: str) -> str:
    """The text of a JSON string value as far as it has streamed in (`raw` starts at the value): no opening
    quote, escapes decoded, and nothing from its closing quote on (DSPy's listener passes some of what follows)."""
    body = raw.lstrip()
    if not body.startswith('"'):
        return ""
    out, i = [], 1
    while i < len(body):
        c = body[i]
        if c == '"':
            break
        if c == "\\":
            if i + 1 >= len(body):
                break  # an escape cut in two: wait for the rest
            nxt = body[i + 1]
            if nxt == "u":
                if i + 6 > len(body):
                    break
                try:
                    out.append(chr(int(body[i + 2:i + 6], 16)))
                except ValueError:
                    pass
                i += 6
                continue
            out.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
