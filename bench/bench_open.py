"""Opening a large index: today's fully loaded lists against format 4's lazy rows, side by side in one run.

Builds a SYNTHETIC index of `--n` chunks through `write_index` (no model runs): papers of eight
sentences of Zipf-sampled words from a 50,000-word made-up vocabulary (so BM25 has a realistic long
tail), chunked as `rag index` chunks them (about 4 chunks and 8 sentences a paper), and random
normalised 384-d float32 vectors for every chunk and sentence, the dense index an IVF one as
`bench/bench_ann.py` builds it (`ivf_threshold` 1, sq8). Then opens it twice, each in a fresh process
(so memory figures are that process's alone):

- "lists": the index loaded the way it was before format 4 (every JSONL row decoded into lists and a
  dict, BM25 read whole, every chunk's paper id checked), from the same files;
- "lazy": `load_index` (rows read by offset from the memory-mapped JSONL, BM25 memory-mapped).

For each: time to open, RSS after opening (VmRSS, and RssAnon: what is not file pages the kernel can
drop), query latency p50 over `--queries` questions per mode (`Retriever`, a fake embedder that returns
a random vector per text), evidence selection p50 (and its first call, which builds the lists' runs),
and RSS after the questions. Both columns must return the same hits and evidence (a digest is compared).
Build time excludes embedding; the page cache is warm for both columns (the build just wrote the files).

    PYTHONPATH=. nice -n 19 .venv/bin/python bench/bench_open.py [--n 1000000] [--queries 100] [--dir /tmp/x] [--keep]

At 1,000,000 chunks it writes about 10 GB (vectors: 3 million rows of 384 float32) and takes a while to
build (k-means for the IVF index, BM25); `--n 20000` checks that it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rag.evaluation.metrics import percentile

DIM = 384
VOCAB = 50_000
ZIPF = 1.07
MODES = ("dense", "bm25", "hybrid")


# --- synthetic corpus --------------------------------------------------------------

def vocabulary(seed: int = 0) -> np.ndarray:
    """VOCAB distinct made-up lower-case words of 2-12 letters (rank 0 the most frequent)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    p = np.linspace(2.0, 0.2, len(letters))
    words: dict[str, None] = {}
    while len(words) < VOCAB:
        for length in rng.integers(2, 13, 10_000):
            words.setdefault("".join(rng.choice(letters, length, p=p / p.sum())), None)
    return np.array(list(words)[:VOCAB])


class Words:
    """Zipf-distributed draws from the vocabulary."""

    def __init__(self, seed: int) -> None:
        self.vocab = vocabulary()
        weights = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF
        self.cdf = np.cumsum(weights / weights.sum())
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> list[str]:
        return list(self.vocab[np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), VOCAB - 1)])

    def sentence(self, lo: int = 10, hi: int = 24) -> str:
        words = self.draw(int(self.rng.integers(lo, hi)))
        return " ".join(words).capitalize() + "."


def synthetic_papers(n_chunks: int, seed: int = 1):
    from rag.index.corpus import Paper

    words = Words(seed)
    return [Paper(f"p{i:09d}", " ".join(words.draw(8)).title(), " ".join(words.sentence() for _ in range(8)),
                  ("synthetic",)) for i in range((n_chunks + 3) // 4)]


def random_vectors(path: Path, n: int, seed: int = 2, block: int = 100_000) -> np.ndarray:
    """n random unit rows, written to a memory-mapped .npy at `path` in blocks (never n x 384 in RAM)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for s in range(0, n, block):
        x = rng.standard_normal((min(block, n - s), DIM), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return out


def build(n: int, root: Path) -> tuple[Path, dict]:
    from rag.index.store import chunk_papers, write_index
    from rag.settings import Settings

    settings = Settings.load(env={}, corpus=str(root / "synthetic.jsonl"), index_dir=str(root / "indexes"),
                             ivf_threshold=1, ivf_codec="sq8")
    t = time.perf_counter()
    papers = synthetic_papers(n)
    made = time.perf_counter() - t
    t = time.perf_counter()
    units = chunk_papers(papers, settings)
    chunked = time.perf_counter() - t
    vectors = random_vectors(root / "vectors.npy", len(units.texts))
    t = time.perf_counter()
    path = write_index(root / "indexes", papers, units, vectors, settings)
    written = time.perf_counter() - t
    del vectors
    (root / "vectors.npy").unlink()
    return path, {"papers": len(papers), "chunks": len(units.chunks), "sentences": len(units.sentences),
                  "made_s": made, "chunk_s": chunked, "write_s": written}


# --- one column, in its own process ------------------------------------------------

def status_mb() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process, in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


class FakeEmbedder:
    """A random unit vector per text (the same text, the same vector, in any process)."""

    name, dim = "random-fake", DIM

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            x = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            rows.append(x / np.linalg.norm(x))
        return np.array(rows)


def load_lists(path: Path):
    """The index as `load_index` loaded it before format 4: rows decoded into lists and a dict, BM25
    read whole, every chunk's and sentence's paper checked."""
    import bm25s

    from rag.index.chunking import Chunk
    from rag.index.corpus import Paper
    from rag.index.store import Index, _check_bm25, verify_files
    from rag.index.vectors import open_dense

    def rows(name: str) -> list[dict]:
        with open(path / name, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    meta = json.loads((path / "meta.json").read_text())
    verify_files(path, meta, "")
    papers = [Paper(d["paper_id"], d["title"], d["abstract"], tuple(d["sources"])) for d in rows("papers.jsonl")]
    chunks = [Chunk(**d) for d in rows("chunks.jsonl")]
    sentences = [Chunk(**d) for d in rows("sentences.jsonl")]
    vectors = np.load(path / "sentences.npy", mmap_mode="r")
    dense = open_dense(path / "dense.faiss")
    bm25 = bm25s.BM25.load(str(path / "bm25"), show_progress=False)
    _check_bm25(bm25, len(chunks), path, "")
    by_id = {p.id: p for p in papers}
    assert not any(c.paper_id not in by_id for c in chunks) and not any(s.paper_id not in by_id for s in sentences)
    return Index(path, meta, by_id, chunks, dense, bm25, sentences, vectors)


def measure(path: Path, column: str, queries: int) -> dict:
    import bm25s  # noqa: F401 - imported before the first figure, so it counts in neither column
    import faiss

    from rag.answer.evidence import select_evidence
    from rag.answer.retrieve import Retriever
    from rag.index.store import _check_bm25, load_index
    from rag.settings import Settings

    settings = Settings.load(env={})
    faiss.omp_set_num_threads(settings.search_threads or os.cpu_count())  # as `rag ask` searches
    before = status_mb()
    t = time.perf_counter()
    index = load_index(path) if column == "lazy" else load_lists(path)
    opened = time.perf_counter() - t
    after_open = status_mb()
    t = time.perf_counter()
    _check_bm25(index.bm25, len(index.chunks), path, "")
    bm25_check = time.perf_counter() - t
    words = Words(seed=3)
    questions = [" ".join(words.draw(int(words.rng.integers(3, 9)))) + "?" for _ in range(queries)]
    retriever, digest, out = Retriever(index, FakeEmbedder()), hashlib.sha256(), {}
    for mode in MODES:
        times, results = [], []
        for q in questions:
            t = time.perf_counter()
            result = retriever.search(q, k=settings.k, mode=mode)
            times.append((time.perf_counter() - t) * 1000)
            results.append(result)
            digest.update(repr([(h.paper.id, h.text, round(h.score, 9)) for h in result.hits]).encode())
        out[f"{mode}_p50_ms"] = percentile(times, 50)
    out.update(bm25_parts(index, questions, settings))
    times = []
    for q, result in zip(questions, results, strict=True):  # the hybrid results
        t = time.perf_counter()
        hits = select_evidence(index, result, q, budget=settings.evidence_tokens)
        times.append((time.perf_counter() - t) * 1000)
        digest.update(repr([(h.paper.id, h.text) for h in hits]).encode())
    end = status_mb()
    return {"open_s": opened, "bm25_check_s": bm25_check, "evidence_p50_ms": percentile(times, 50),
            "evidence_first_ms": times[0], **out,
            "anon_open_mb": after_open["RssAnon"] - before["RssAnon"], "rss_open_mb": after_open["VmRSS"] - before["VmRSS"],
            "anon_end_mb": end["RssAnon"] - before["RssAnon"], "rss_end_mb": end["VmRSS"] - before["VmRSS"],
            "anon_base_mb": before["RssAnon"], "digest": digest.hexdigest()}


def bm25_parts(index, questions: list[str], settings) -> dict:
    """Where a BM25 query's time goes: bm25s scoring every chunk, then picking the best `depth` of those
    scores, by the full stable sort the retriever used before (old) and by `top_indices` (now), on the same
    scores; both must pick the same chunks."""
    from rag.answer.retrieve import CANDIDATES, top_indices
    from rag.text import tokenize

    depth = min(len(index.chunks), max(CANDIDATES, settings.k * settings.per_paper * 4))
    vocab = index.bm25.vocab_dict
    score_ms, sort_ms, top_ms = [], [], []
    for q in questions:
        tokens = [t for t in tokenize(q) if t in vocab]
        if not tokens:
            continue
        t = time.perf_counter()
        scores = index.bm25.get_scores(tokens)
        score_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        old = np.argsort(-scores, kind="stable")[:depth]
        sort_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        new = top_indices(scores, depth)
        top_ms.append((time.perf_counter() - t) * 1000)
        assert old.tolist() == new.tolist()
    return {"bm25_score_p50_ms": percentile(score_ms, 50), "bm25_sort_p50_ms": percentile(sort_ms, 50),
            "bm25_top_p50_ms": percentile(top_ms, 50)}


def column(path: Path, name: str, queries: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, __file__, "--measure", name, "--path", str(path), "--queries", str(queries)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"the {name} column failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# --- report ------------------------------------------------------------------------

ROWS = [
    ("open (load_index)", "open_s", "{:.3f} s"),
    ("  BM25 check (_check_bm25, again)", "bm25_check_s", "{:.3f} s"),
    ("RssAnon after open", "anon_open_mb", "+{:,.0f} MB"),
    ("VmRSS after open", "rss_open_mb", "+{:,.0f} MB"),
    ("query p50, dense", "dense_p50_ms", "{:.2f} ms"),
    ("query p50, bm25", "bm25_p50_ms", "{:.2f} ms"),
    ("query p50, hybrid", "hybrid_p50_ms", "{:.2f} ms"),
    ("  BM25 scoring (bm25s), p50", "bm25_score_p50_ms", "{:.2f} ms"),
    ("  best scores: full sort (old), p50", "bm25_sort_p50_ms", "{:.2f} ms"),
    ("  best scores: top_indices, p50", "bm25_top_p50_ms", "{:.2f} ms"),
    ("evidence selection p50", "evidence_p50_ms", "{:.2f} ms"),
    ("evidence selection, first call", "evidence_first_ms", "{:.2f} ms"),
    ("RssAnon after the questions", "anon_end_mb", "+{:,.0f} MB"),
    ("VmRSS after the questions", "rss_end_mb", "+{:,.0f} MB"),
]


def disk(path: Path) -> tuple[int, int]:
    """Bytes of the index, and of the files format 4 added (offsets, ids, runs)."""
    sizes = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    added = sum(v for k, v in sizes.items() if k.endswith(".offsets.npy") or k.startswith(("paper_", "chunk_runs",
                                                                                           "sentence_runs")))
    return sum(sizes.values()), added


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="chunks in the synthetic index")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dir", help="where to build (default: a temporary directory, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the built index")
    ap.add_argument("--measure", choices=["lists", "lazy"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.path), args.measure, args.queries)))
        return

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-open-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        path, built = build(args.n, root)
        total, added = disk(path)
        print(f"synthetic index: {built['papers']:,} papers, {built['chunks']:,} chunks, {built['sentences']:,} "
              f"sentences; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"build (no embedding): chunking {built['chunk_s']:.1f} s, write_index {built['write_s']:.1f} s "
              f"(IVF, BM25, JSONL, offsets, runs, checksums); papers made in {built['made_s']:.1f} s")
        print(f"disk: {total / 1e6:,.1f} MB, of which offsets, ids and runs {added / 1e6:,.1f} MB")
        cols = {name: column(path, name, args.queries) for name in ("lists", "lazy")}
        print(f"\n{'':34s} {'lists (before)':>16s} {'lazy (format 4)':>16s}")
        for label, key, fmt in ROWS:
            print(f"{label:34s} {fmt.format(cols['lists'][key]):>16s} {fmt.format(cols['lazy'][key]):>16s}")
        print(f"(RssAnon of the process before opening: {cols['lazy']['anon_base_mb']:,.0f} MB; {args.queries} "
              f"questions per mode)")
        same = cols["lists"]["digest"] == cols["lazy"]["digest"]
        print(f"hits and evidence identical in both columns: {'yes' if same else 'NO'}")
        if not same:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept: {root}")


if __name__ == "__main__":
    main()
