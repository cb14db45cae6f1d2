"""Embedding speed and retrieval quality per backend (torch, ONNX, ONNX int8), and local vs Ray, in one run.

Per backend: the model's load time (and the one-off ONNX export, when not cached),
a full build of the seed index in a temporary directory (every chunk and sentence
embedded: throughput in texts/s over the whole build, and chunks/s measured on the
chunk texts alone), then the dev set's retrieval metrics (`rag.evaluation.harness.retrieval_table`
on eval/dev.jsonl: recall@1/5/10, MRR@10 per retrieval mode) on that index.

Then the backends take turns embedding one sample (`--rounds`, A B C A B C ...): the
machine is shared, and its load can change during the minutes of the builds above, so
this interleaved figure is the fair speed comparison.

Then local vs Ray on this machine: the same sample of texts embedded by the local
model (all cores in one process) and by `RayEmbedder` (one actor per core, one
thread each), with Ray's start-up counted separately. From the per-core rate on Ray
it projects the wall time for 2.5M abstracts on N workers, assuming linear scaling
(embedding is independent per text; nothing is shared but the driver's collection of
vectors) and the seed corpus's ratio of texts per abstract.

    .venv/bin/python bench/bench_embed.py [--backends torch onnx onnx-int8] [--ray-texts 1500]

`--exports` instead compares the default backend's graphs, old and new, in one run: the
graph of EXPORT_VERSION 1 (the dynamo exporter, unfused, 64 texts a run) against today's
(fused attention / layer norms / GELU, `BATCH_SIZE` texts a run). Both embed every text
of the seed corpus, taking turns (`--rounds`); then each builds the whole index (`rag
index`'s work) and the dev set's retrieval is scored on both.

    .venv/bin/python bench/bench_embed.py --exports [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rag.answer.retrieve import Retriever
from rag.evaluation.harness import retrieval_table
from rag.evaluation.seed import load_set
from rag.index.corpus import load_corpus
from rag.index.embed import get_embedder, model_dir
from rag.index.store import build_index, chunk_papers, load_index
from rag.settings import ROOT, Settings

ABSTRACTS = 2_500_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", nargs="*", default=["torch", "onnx", "onnx-int8"], help="none: only local vs Ray")
    ap.add_argument("--ray-texts", type=int, default=1500, help="texts embedded for local vs Ray (0: skip Ray)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (0: skip)")
    ap.add_argument("--sample", type=int, default=500, help="texts per interleaved round")
    ap.add_argument("--skip-builds", action="store_true", help="only the interleaved throughput (and Ray)")
    ap.add_argument("--ray-backend", default=None, help="backend for local vs Ray (default: the fastest measured)")
    ap.add_argument("--exports", action="store_true", help="only old vs new ONNX graph and batch size (default backend)")
    args = ap.parse_args()

    base = Settings.load()
    papers = load_corpus(base.corpus)
    units = chunk_papers(papers, base)
    texts_per_abstract = len(units.texts) / len(papers)
    dev = load_set(ROOT / "eval" / "dev.jsonl")
    print(f"seed corpus: {len(papers)} papers, {len(units.chunks)} chunks + {len(units.sentences)} sentences "
          f"= {len(units.texts)} texts ({texts_per_abstract:.1f} per abstract); dev set: {len(dev)} questions")
    if args.exports:
        exports(base, papers, units, dev, args.rounds or 1)
        return
    rates: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory(dir=base.index_dir if base.index_dir else None) as tmp:
        for backend in [] if args.skip_builds else args.backends:
            s = base.replace(embed_backend=backend, index_dir=f"{tmp}/{backend}")
            export = 0.0
            if backend != "torch":
                from rag.index.embed_onnx import onnx_model_path

                t = time.perf_counter()
                onnx_model_path(model_dir(s.embed_model), s.embed_model, backend, s.cache_dir)
                export = time.perf_counter() - t
            t = time.perf_counter()
            emb = get_embedder(s.embed_model, backend, s.cache_dir)
            load = time.perf_counter() - t
            t = time.perf_counter()
            emb.encode(units.chunk_texts)
            chunk_rate = len(units.chunk_texts) / (time.perf_counter() - t)
            t = time.perf_counter()
            index = load_index(build_index(papers, emb, s), settings=s)
            build = time.perf_counter() - t
            rate = len(units.texts) / build
            rates[backend] = rate
            retriever = Retriever(index, emb)

            def ranked(question: str, k: int, mode: str, r=retriever, pp=s.per_paper) -> list[str]:
                return [h.paper.id for h in r.search(question, k, mode, pp).hits]

            table = retrieval_table(ranked, dev)
            rows.append((backend, export, load, chunk_rate, build, rate, table))
            print(f"{backend:>9}: export {export:5.1f}s (0 when cached)  load {load:4.1f}s  chunks {chunk_rate:5.1f}/s  "
                  f"full build {build:6.1f}s = {rate:5.1f} texts/s  "
                  + "  ".join(f"{m} R@5 {v['recall@5']:.3f} MRR {v['mrr@10']:.3f}" for m, v in table.items()), flush=True)
    ref = rows[0] if rows else None
    for backend, _, _, chunk_rate, _, rate, table in rows[1:]:
        print(f"{backend} vs {ref[0]}: {rate / ref[5]:.2f}x texts/s, {chunk_rate / ref[3]:.2f}x chunks/s; R@5 change "
              + ", ".join(f"{m} {table[m]['recall@5'] - ref[6][m]['recall@5']:+.3f}" for m in table))

    if args.rounds and len(args.backends) > 1:
        interleaved(base, units.texts, args)
    if args.ray_texts:
        ray_vs_local(base, units.texts, args, rates, texts_per_abstract)


def interleaved(base: Settings, texts: list[str], args) -> None:
    """Throughput with the backends taking turns on one sample (A B C A B C ...), so a change in the
    machine's load during the run hits every backend alike; the median round per backend."""
    sample = [texts[i] for i in np.random.default_rng(1).choice(len(texts), min(args.sample, len(texts)), replace=False)]
    embedders = {b: get_embedder(base.embed_model, b, base.cache_dir) for b in args.backends}
    times: dict[str, list[float]] = {b: [] for b in embedders}
    for _ in range(args.rounds):
        for b, emb in embedders.items():
            t = time.perf_counter()
            emb.encode(sample)
            times[b].append(time.perf_counter() - t)
    ref = args.backends[0]
    print(f"\ninterleaved, {len(sample)} texts x {args.rounds} rounds (median round):")
    for b, ts in times.items():
        med = float(np.median(ts))
        print(f"  {b:>9}: {len(sample) / med:5.1f} texts/s ({' '.join(f'{t:.1f}' for t in ts)} s)  "
              f"{float(np.median(times[ref])) / med:.2f}x {ref}")


def exports(base: Settings, papers, units, dev, rounds: int) -> None:
    """Old (EXPORT_VERSION 1: dynamo graph, unfused, 64 texts a run) vs new (fused, BATCH_SIZE) on the seed corpus."""
    from rag.index import embed_onnx
    from rag.index.embed_onnx import BATCH_SIZE, OnnxEmbedder, _export_graph

    with tempfile.TemporaryDirectory() as tmp:
        old_path = Path(tmp) / "v1.onnx"
        _export_graph(model_dir(base.embed_model), old_path, fusable=False)
        new = OnnxEmbedder(model_dir(base.embed_model), base.embed_model, "onnx", base.cache_dir)
        old = OnnxEmbedder(model_dir(base.embed_model), base.embed_model, "onnx", base.cache_dir, batch_size=64)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        old.session = ort.InferenceSession(str(old_path), options, providers=["CPUExecutionProvider"])
        embedders = {"v1 unfused, 64 a run": old, f"v{embed_onnx.EXPORT_VERSION} fused, {BATCH_SIZE} a run": new}
        texts = units.texts
        tokens = sum(len(e.ids) for e in _unpadded(new.tokenizer, texts))
        print(f"{len(texts)} texts, {tokens:,} tokens (no padding); {rounds} interleaved rounds, every text each time")
        times: dict[str, list[float]] = {k: [] for k in embedders}
        vectors = {}
        for _ in range(rounds):
            for k, emb in embedders.items():
                t = time.perf_counter()
                vectors[k] = emb.encode(texts)
                times[k].append(time.perf_counter() - t)
        (ka, va), (kb, vb) = vectors.items()
        cos = np.sum(va * vb, axis=1)
        for k, ts in times.items():
            med = float(np.median(ts))
            print(f"  {k:>22}: {med:6.1f}s = {len(texts) / med:6.1f} texts/s, {tokens / med:6.0f} tokens/s "
                  f"(rounds {' '.join(f'{t:.1f}' for t in ts)})")
        print(f"  speed-up {float(np.median(times[ka])) / float(np.median(times[kb])):.2f}x; vectors: max |diff| "
              f"{float(np.abs(va - vb).max()):.1e}, min cosine {float(cos.min()):.7f}")
        for k, emb in embedders.items():
            s = base.replace(index_dir=f"{tmp}/{k.split()[0]}")
            t = time.perf_counter()
            index = load_index(build_index(papers, emb, s), settings=s)
            build = time.perf_counter() - t
            retriever = Retriever(index, emb)

            def ranked(question: str, k: int, mode: str, r=retriever, pp=s.per_paper) -> list[str]:
                return [h.paper.id for h in r.search(question, k, mode, pp).hits]

            table = retrieval_table(ranked, dev)
            print(f"  {k:>22}: full build {build:6.1f}s  "
                  + "  ".join(f"{m} R@5 {v['recall@5']:.3f} MRR {v['mrr@10']:.3f}" for m, v in table.items()), flush=True)


def _unpadded(tokenizer, texts: list[str]):
    tokenizer.no_padding()
    try:
        return tokenizer.encode_batch(texts)
    finally:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")


def ray_vs_local(base: Settings, texts: list[str], args, rates: dict[str, float], texts_per_abstract: float) -> None:
    import ray

    from rag.distributed import PROJECT, RayEmbedder, quiet_ray

    backend = args.ray_backend or (max(rates, key=rates.get) if rates else base.embed_backend)
    s = base.replace(embed_backend=backend)
    sample = [texts[i] for i in np.random.default_rng(0).choice(len(texts), min(args.ray_texts, len(texts)), replace=False)]
    emb = get_embedder(s.embed_model, backend, s.cache_dir)
    t = time.perf_counter()
    local = emb.encode(sample)
    local_s = time.perf_counter() - t
    quiet_ray()
    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT)}})
    start = time.perf_counter() - t
    try:
        workers = int(ray.cluster_resources()["CPU"])
        remote = RayEmbedder(s)
        t = time.perf_counter()
        got = remote.encode(sample)
        ray_s = time.perf_counter() - t
        # steady state: the actors are started and the model loaded; a second pass is the embedding alone
        t = time.perf_counter()
        remote.encode(sample)
        ray_warm = time.perf_counter() - t
    finally:
        ray.shutdown()
    cos = float(np.min(np.sum(local * got, axis=1)))
    print(f"\nlocal vs Ray, {len(sample)} texts, backend {backend}, {workers} CPUs:")
    print(f"  local (1 process, all cores): {local_s:6.1f}s = {len(sample) / local_s:5.1f} texts/s")
    print(f"  Ray start {start:.1f}s; {workers} actors, first pass (actor start + model load + embedding) {ray_s:6.1f}s "
          f"= {len(sample) / ray_s:5.1f} texts/s; second pass {ray_warm:6.1f}s = {len(sample) / ray_warm:5.1f} texts/s "
          f"({len(sample) / ray_warm / workers:5.1f} per core); min cosine Ray vs local {cos:.6f}")
    per_core = len(sample) / ray_warm / workers
    total = ABSTRACTS * texts_per_abstract
    print(f"  projection, {ABSTRACTS:,} abstracts x {texts_per_abstract:.1f} texts = {total / 1e6:.1f}M texts at "
          f"{per_core:.1f} texts/s per worker core, linear scaling:")
    for n in (2, 16, 64, 256):
        hours = total / (per_core * n) / 3600
        print(f"    {n:4d} cores: {hours:8.1f} h ({hours / 24:5.1f} days)")


if __name__ == "__main__":
    main()
