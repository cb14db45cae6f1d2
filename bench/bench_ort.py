"""ONNX Runtime session variants for the embedder, side by side in one run: speed, agreement, determinism.

The exported fp32 model (rag/index/embed_onnx.py) is run under each variant on the same sample of the seed
index's texts (chunk windows and sentences in the index's proportion), the variants taking turns for
`--rounds` rounds (A B C ... then C B A ...), so the machine's load falls on all alike:

- `default`: what `OnnxEmbedder` runs today (ORT_ENABLE_ALL, batch 64, every core);
- `basic` / `extended`: lower graph optimisation levels;
- `fused`: the graph rewritten by `onnxruntime.transformers.optimizer` (BERT attention, GELU, LayerNorm
  fusions) before the session loads it;
- `batch-16` / `batch-32` / `batch-128`: texts per `session.run` (less padding vs more work per call);
- `threads-1`: one intra-op thread.

Per variant: texts/s (median of rounds), the largest difference of a vector from `default`'s (cosine
1 - dot), and whether encoding the sample twice gives the same bits (vectors must stay deterministic).

    .venv/bin/python bench/bench_ort.py [--sample 400] [--rounds 3]

Left out: int8 (bench/bench_embed.py measures it with the dev retrieval metrics).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fused_model(fp32: Path, out_dir: Path) -> Path:
    """The fp32 model with onnxruntime.transformers' BERT fusions applied (12 heads, 384 hidden: MiniLM-L6)."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384, opt_level=1)
    print(f"fusions: {model.get_fused_operator_statistics()}", file=sys.stderr)
    out = out_dir / "model-fused.onnx"
    model.save_model_to_file(str(out))
    return out


def session(path: Path, level: str = "ORT_ENABLE_ALL", threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from rag.index.corpus import load_corpus
    from rag.index.embed import get_embedder
    from rag.index.store import chunk_papers
    from rag.settings import Settings

    settings = Settings.load()
    units = chunk_papers(load_corpus(settings.corpus), settings)
    rng = np.random.default_rng(0)
    texts = [units.texts[i] for i in sorted(rng.choice(len(units.texts), args.sample, replace=False))]
    emb = get_embedder(settings.embed_model, "onnx", settings.cache_dir)
    fp32 = emb.path
    tmp = Path(tempfile.mkdtemp(prefix="bench-ort-"))
    variants: dict[str, tuple[Any, int]] = {
        "default": (emb.session, 64),
        "basic": (session(fp32, "ORT_ENABLE_BASIC"), 64),
        "extended": (session(fp32, "ORT_ENABLE_EXTENDED"), 64),
        "batch-16": (emb.session, 16),
        "batch-32": (emb.session, 32),
        "batch-128": (emb.session, 128),
        "threads-1": (session(fp32, threads=1), 64),
    }
    try:
        variants["fused"] = (session(fused_model(fp32, tmp)), 64)
    except Exception as e:  # noqa: BLE001 - a bench reports what could not be tried
        print(f"fused: not tried ({type(e).__name__}: {e})", file=sys.stderr)

    def encode(name: str) -> np.ndarray:
        emb.session, emb.batch_size = variants[name]
        return emb.encode(texts)

    base_session = emb.session
    reference = encode("default")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    vectors: dict[str, np.ndarray] = {}
    order = list(variants)
    for r in range(args.rounds):
        for v in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            vectors[v] = encode(v)
            rates[v].append(len(texts) / (time.perf_counter() - t0))
            print(f"round {r + 1} {v:<10} {rates[v][-1]:6.1f} texts/s", file=sys.stderr)
    emb.session, emb.batch_size = base_session, 64
    print(f"\n{len(texts)} texts of the seed index, {args.rounds} interleaved rounds\n")
    print(f"{'variant':<10} {'texts/s':>8} {'vs default':>10} {'max 1-cos':>10} {'same bits twice':>15}")
    for v in variants:
        again = encode(v)
        emb.session, emb.batch_size = base_session, 64
        rate = statistics.median(rates[v])
        diff = float(np.max(1 - np.sum(vectors[v] * reference, axis=1)))
        print(f"{v:<10} {rate:8.1f} {rate / statistics.median(rates['default']):9.2f}x {diff:10.2e} "
              f"{str(bool(np.array_equal(again, vectors[v]))):>15}")


if __name__ == "__main__":
    main()
