"""Sentences, chunking (sentence windows over abstracts) and BM25 tokens."""

from __future__ import annotations

from pathlib import Path

from rag.chunking import chunk_corpus, chunk_paper
from rag.corpus import Paper, load_corpus
from rag.text import split_sentences, tokenize

ROOT = Path(__file__).resolve().parent.parent


def test_sentence_split_keeps_abbreviations_and_numbers():
    text = "We use e.g. BERT and GPT. Accuracy improves by 3.5% (see Fig. 2). Done! Next?"
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == [
        "We use e.g. BERT and GPT.", "Accuracy improves by 3.5% (see Fig. 2).", "Done!", "Next?"]


def test_windows_overlap_and_offsets_point_into_the_abstract():
    abstract = " ".join(f"Sentence number {i} is here." for i in range(7))
    paper = Paper("p1", "T", abstract)
    chunks = chunk_paper(paper, sentences=3, overlap=1)
    assert [c.text.count("Sentence") for c in chunks] == [3, 3, 3]
    assert chunks[0].text.endswith("2 is here.") and chunks[1].text.startswith("Sentence number 2")
    for c in chunks:
        assert abstract[c.start:c.end] == c.text
        assert c.paper_id == "p1"
    assert [c.id for c in chunks] == ["p1#0", "p1#1", "p1#2"]


def test_short_abstract_is_one_chunk():
    assert len(chunk_paper(Paper("p", "T", "One sentence only."), 3, 1)) == 1


def test_every_sentence_of_the_real_corpus_is_in_some_chunk():
    papers = load_corpus(ROOT / "data" / "corpus")
    chunks = chunk_corpus(papers, 3, 1)
    by_paper: dict[str, list] = {}
    for c in chunks:
        by_paper.setdefault(c.paper_id, []).append(c)
    for p in papers:
        for s, e in split_sentences(p.abstract):
            assert any(c.start <= s and e <= c.end for c in by_paper[p.id]), p.title


def test_bm25_tokenizer():
    assert tokenize("The State-Space Models of 2024") == ["state", "space", "model", "2024"]


def test_citation_markers_stay_with_the_sentence_they_close():
    text = "LoReFT is efficient. [1] It beats PEFTs [2]. Both hold [1], [2]"
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "LoReFT is efficient. [1]", "It beats PEFTs [2].", "Both hold [1], [2]"]
    text = "The end of the answer. [1][2]"
    assert [text[s:e] for s, e in split_sentences(text)] == ["The end of the answer. [1][2]"]
