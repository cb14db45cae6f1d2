"""llama.cpp settings on the embedded model, side by side in one run, measured with llama.cpp's own timings.

First the answer requests of a fixed dev sample are recorded: the real program answers each question once
(`Pipeline.ask`, the current settings), and every chat-completion body it sends llama.cpp is kept. Then
each variant (a fresh model load with one change to llama.cpp's parameters: flash attention, batch sizes,
KV cache type, threads, prompt-lookup / n-gram speculative decoding) replays the same bodies in the same
order, prompt cache on as in use, and the baseline replays them too in this phase, so every variant is
timed under the same conditions. Variants and baseline alternate per round (`--rounds`), so drift in the
machine's load falls on all alike.

Per variant: wall time per call (p50, p95), tokens read (llama.cpp's `prompt_n`: the prompt tokens not
reused from its cache) and their speed, tokens written and their speed, speculative drafts accepted, and
how many replies differ from the baseline's (greedy decoding: an exact-output variant changes nothing but
speed; one that differs needs a dev eval before it is kept).

    .venv/bin/python bench/bench_llama.py [--n 6] [--variants flash,ngram] [--rounds 1]

Left out: quality scoring (identical replies need none; a variant that changes replies is flagged).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _spec(kind: str, **opts: int) -> Callable[[Any], None]:
    def apply(params: Any) -> None:
        import xllamacpp

        params.speculative.types = [getattr(xllamacpp.common_speculative_type, f"COMMON_SPECULATIVE_TYPE_{kind}")]
        for name, value in opts.items():
            target, attr = name.split("__")
            setattr(getattr(params.speculative, target), attr, value)
    return apply


def _flash(params: Any) -> None:
    import xllamacpp

    params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED


def _kv_q8(params: Any) -> None:
    import xllamacpp

    _flash(params)  # a quantised V cache needs flash attention
    params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_Q8_0


def _batch(n: int) -> Callable[[Any], None]:
    def apply(params: Any) -> None:
        params.n_batch = params.n_ubatch = n
    return apply


def _threads(n: int) -> Callable[[Any], None]:
    def apply(params: Any) -> None:
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = n
    return apply


# Variant name -> the one change it makes to xllamacpp's CommonParams (rag.lm.llama.server_params gives the rest).
VARIANTS: dict[str, Callable[[Any], None]] = {
    "baseline": lambda params: None,
    "flash": _flash,
    "kv-q8": _kv_q8,
    "ubatch-256": _batch(256),
    "threads-1": _threads(1),
    "ngram-simple": _spec("NGRAM_SIMPLE"),  # llama.cpp's defaults: a 12-token match, drafts of up to 48
    # Prompt-lookup sizes (HF's prompt_lookup_num_tokens uses a 3-gram and 10-token drafts): on a CPU a
    # rejected 48-token draft costs like reading 48 prompt tokens, so shorter drafts may pay better.
    "ngram-n3m8": _spec("NGRAM_SIMPLE", ngram_simple__size_n=3, ngram_simple__size_m=8),
    "ngram-n4m16": _spec("NGRAM_SIMPLE", ngram_simple__size_n=4, ngram_simple__size_m=16),
    "ngram-n2m4": _spec("NGRAM_SIMPLE", ngram_simple__size_n=2, ngram_simple__size_m=4),
    "ngram-mod": _spec("NGRAM_MOD"),
    "ngram-map-k": _spec("NGRAM_MAP_K"),
}


def record(n: int) -> tuple[list[dict], list[str]]:
    """The chat bodies the real program sends for the first `n` answerable dev questions, and the questions."""
    from rag.evaluation.seed import load_set
    from rag.lm.llama import LlamaCppEngine
    from rag.pipeline import Pipeline
    from rag.settings import Settings

    bodies: list[dict] = []
    chat = LlamaCppEngine.chat

    def recording(self: Any, body: dict) -> dict:
        if body.get("max_tokens", 0) > 1:  # not the warm-up of a fixed prefix
            bodies.append(json.loads(json.dumps(body)))
        return chat(self, body)

    LlamaCppEngine.chat = recording
    try:
        pipe = Pipeline.open(Settings.load())
        rows = [r for r in load_set(ROOT / "eval" / "dev.jsonl") if r.get("type") != "unanswerable"]
        asked = []
        for row in rows:
            if len(bodies) >= n:
                break
            asked.append(row["question"])
            pipe.ask(row["question"])
    finally:
        LlamaCppEngine.chat = chat
    return bodies[:n], asked


def replay(variant: str, bodies: list[dict]) -> list[dict]:
    """Load the model with `variant`'s change and send it `bodies` in order; per call: wall time, timings, reply."""
    import rag.lm.llama as llama
    from rag.lm.gguf import local_model_path
    from rag.settings import Settings

    settings = Settings.load()
    base = llama.server_params

    def params(*args: Any, **kwargs: Any) -> Any:
        p = base(*args, **kwargs)
        VARIANTS[variant](p)
        return p

    llama.server_params = params
    try:
        engine = llama.LlamaCppEngine(local_model_path(settings.cache_dir), settings.n_ctx, settings.threads, 600.0)
    finally:
        llama.server_params = base
    out = []
    try:
        for body in bodies:
            t0 = time.perf_counter()
            reply = engine.chat(body)
            out.append({"wall_s": time.perf_counter() - t0, "timings": reply.get("timings", {}),
                        "text": reply["choices"][0]["message"].get("content") or ""})
    finally:
        del engine
        gc.collect()
    return out


def summarise(calls: list[dict], baseline: list[dict]) -> dict:
    walls = sorted(c["wall_s"] for c in calls)
    t = [c["timings"] for c in calls]

    def total(key: str) -> float:
        return sum(float(x.get(key) or 0) for x in t)

    return {
        "p50_s": statistics.median(walls), "p95_s": walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))],
        "read": int(total("prompt_n")), "read_tps": total("prompt_n") / (total("prompt_ms") / 1000 or 1),
        "written": int(total("predicted_n")), "write_tps": total("predicted_n") / (total("predicted_ms") / 1000 or 1),
        "drafted": int(total("draft_n")), "accepted": int(total("draft_n_accepted")),
        "differ": sum(c["text"] != b["text"] for c, b in zip(calls, baseline, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6, help="answer calls recorded from dev and replayed per variant")
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "baseline"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    names = ["baseline"] + [v for v in args.variants.split(",") if v and v != "baseline"]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    from rag.logs import setup

    setup()
    t0 = time.perf_counter()
    bodies, asked = record(args.n)
    print(f"recorded {len(bodies)} answer calls from {len(asked)} dev questions in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)
    runs: dict[str, list[dict]] = {v: [] for v in names}
    for r in range(args.rounds):
        for v in (names if r % 2 == 0 else names[::-1]):
            t1 = time.perf_counter()
            runs[v].extend(replay(v, bodies))
            print(f"round {r + 1} {v:<13} {time.perf_counter() - t1:5.0f}s", file=sys.stderr)
    base = runs["baseline"]
    table = {v: summarise(runs[v], base) for v in names}
    print(f"\n{len(bodies)} calls x {args.rounds} round(s), prompt cache on, same bodies in the same order\n")
    print(f"{'variant':<13} {'p50 s':>6} {'p95 s':>6} {'read':>6} {'read t/s':>8} {'written':>7} {'write t/s':>9} "
          f"{'drafted':>7} {'accepted':>8} {'differ':>6} {'p50 vs base':>11}")
    for v, s in table.items():
        print(f"{v:<13} {s['p50_s']:6.2f} {s['p95_s']:6.2f} {s['read']:6d} {s['read_tps']:8.1f} {s['written']:7d} "
              f"{s['write_tps']:9.1f} {s['drafted']:7d} {s['accepted']:8d} {s['differ']:6d} "
              f"{s['p50_s'] / table['baseline']['p50_s']:10.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"calls": len(bodies), "rounds": args.rounds, "questions": asked,
                                               "variants": table}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
