"""Sentences, chunking (sentence windows over abstracts) and BM25 tokens."""

from __future__ import annotations

from pathlib import Path

from rag.index.chunking import chunk_corpus, chunk_paper
from rag.index.corpus import Paper, load_corpus
from rag.text import MAX_SENTENCE_CHARS, split_sentences, strip_control, tokenize

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


# --- bounded on pathological input --------------------------------------------------

def test_a_text_without_sentence_boundaries_is_cut_into_bounded_pieces():
    words = "lorem ipsum dolor " * 3000  # 54,000 characters, no sentence end
    spans = split_sentences(words)
    assert len(spans) > 50 and all(0 < e - s <= MAX_SENTENCE_CHARS for s, e in spans)
    assert all(words[s] != " " and words[e - 1] != " " for s, e in spans)  # cut at word boundaries, trimmed
    assert " ".join(words[s:e] for s, e in spans) == words.strip()  # nothing lost but the spaces at the cuts
    blob = "x" * 2500  # no whitespace at all: hard cuts
    assert [e - s for s, e in split_sentences(blob)] == [1000, 1000, 500]


def test_long_abstract_chunks_stay_bounded():
    paper = Paper("p", "T", "word " * 100_000)
    chunks = chunk_paper(paper, sentences=3, overlap=1)
    assert chunks and max(len(c.text) for c in chunks) <= 3 * MAX_SENTENCE_CHARS + 2


def test_sentence_splitting_is_linear_on_initials():
    """"A. B. C. ..." (author initials) once took 52 s for 48 KB: every skipped boundary searched the
    whole sentence so far for an abbreviation. 1 MB must now take well under the old 48 KB time."""
    import time

    text = "A. B. C. D. " * 90_000
    t0 = time.perf_counter()
    spans = split_sentences(text)
    assert time.perf_counter() - t0 < 10
    assert all(e - s <= MAX_SENTENCE_CHARS for s, e in spans)


def test_strip_control_removes_terminal_escapes_and_keeps_text():
    evil = ("\x1b[2J\x1b[31mRed title\x1b[0m \x1b]0;pwned\x07x \x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"
            " \x9b31m8-bit\x07 bell\tand\nnewline \x00nul")
    assert strip_control(evil) == "Red title x link 8-bit bell\tand\nnewline nul"
    assert strip_control("Ünïcödé — ok [1]") == "Ünïcödé — ok [1]"
