"""Split abstracts into overlapping sentence windows.

A chunk is `chunk_sentences` consecutive sentences; consecutive chunks of one
abstract share `chunk_overlap` sentences, so a fact that straddles a boundary is
whole in at least one chunk. Each chunk keeps the character offsets of its span
in the abstract (so the UI can highlight it) and is embedded with the paper
title in front, because abstracts rarely repeat their title's key terms.

`sentence_units` cuts an abstract into single sentences for the evidence store:
the model reads chosen sentences, not whole windows (see rag/answer/evidence.py).

Left out: token-based windows and cross-paper chunks. Abstracts are short
(~150-300 words), so sentence windows are both cheap and readable.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.index.corpus import Paper
from rag.text import split_sentences


@dataclass(frozen=True)
class Chunk:
    """A window of one abstract."""

    id: str
    paper_id: str
    text: str
    start: int
    end: int

    def to_json(self) -> dict:
        return {"id": self.id, "paper_id": self.paper_id, "text": self.text, "start": self.start, "end": self.end}


def chunk_paper(paper: Paper, sentences: int = 3, overlap: int = 1) -> list[Chunk]:
    """Sentence windows over one abstract; a short abstract is one chunk."""
    spans = split_sentences(paper.abstract)
    if not spans:
        return []
    step = sentences - overlap
    chunks = []
    for i, first in enumerate(range(0, max(len(spans) - overlap, 1), step)):
        window = spans[first:first + sentences]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(f"{paper.id}#{i}", paper.id, paper.abstract[start:end], start, end))
        if first + sentences >= len(spans):
            break
    return chunks


def sentence_units(paper: Paper) -> list[Chunk]:
    """Each sentence of the abstract as a one-sentence chunk (`<paper id>.s<i>`): the evidence store's rows."""
    return [Chunk(f"{paper.id}.s{i}", paper.id, paper.abstract[s:e], s, e)
            for i, (s, e) in enumerate(split_sentences(paper.abstract))]


def chunk_corpus(papers: list[Paper], sentences: int = 3, overlap: int = 1) -> list[Chunk]:
    """All chunks of all papers, in corpus order."""
    return [c for p in papers for c in chunk_paper(p, sentences, overlap)]


def embedding_text(paper: Paper, chunk: Chunk) -> str:
    """What gets embedded (and BM25-indexed) for a chunk: the title, then the window."""
    return f"{paper.title}\n{chunk.text}"
