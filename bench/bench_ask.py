"""Answer latency on the embedded local model, and what llama.cpp's prompt cache saves.

Asks each question twice: once with the prompt cache disabled (every prompt token
is read) and once with it enabled after a different question has warmed the fixed
prefix (instructions). Reports latency, prompt tokens, tokens read vs reused from
the cache, and generation speed, all measured in this one run.

    .venv/bin/python bench/bench_ask.py [--n 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rag.lm import local_engine
from rag.pipeline import Pipeline
from rag.settings import Settings

QUESTIONS = [
    "What are the two subtasks of the I am a Strange Dataset benchmark?",
    "How much more parameter-efficient is LoReFT than prior PEFTs?",
    "What did the paper on base versus aligned models find about random number generation?",
    "Does OCR quality hurt retrieval-augmented generation?",
    "What is Prithvi WxC?",
    "What does PLAID do to speed up late-interaction retrieval?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    settings = Settings.load()
    t0 = time.perf_counter()
    pipe = Pipeline.open(settings)
    engine = local_engine(settings)
    print(f"open (index, embedder, model load): {time.perf_counter() - t0:.1f}s")
    rows = {"cold": [], "warm": []}
    for label, cache in (("cold", False), ("warm", True)):
        engine.cache_prompt = cache
        if cache:
            pipe.ask("What is ReFT?")  # warm the shared prefix with a different question
        for q in QUESTIONS[: args.n]:
            out = pipe.ask(q)
            t = engine.last_timings
            rows[label].append((out["provenance"]["latency_s"], out["provenance"]["prompt_tokens"],
                                t.get("prompt_n", 0), t.get("cache_n", 0), t.get("predicted_per_second", 0.0),
                                t.get("prompt_per_second", 0.0)))
            print(f"{label:>4}  {out['provenance']['latency_s']:6.1f}s  prompt {out['provenance']['prompt_tokens']:5d} "
                  f"(read {t.get('prompt_n', 0)}, cached {t.get('cache_n', 0)})  "
                  f"gen {out['provenance']['completion_tokens']:4d} @ {t.get('predicted_per_second', 0):.1f} tok/s  "
                  f"read @ {t.get('prompt_per_second', 0):.1f} tok/s  | {q[:50]}")
    cold = statistics.mean(r[0] for r in rows["cold"])
    warm = statistics.mean(r[0] for r in rows["warm"])
    print(f"mean latency: cold prompt {cold:.1f}s, warm prefix {warm:.1f}s, ratio warm/cold {warm / cold:.2f}")
    print(f"mean tokens reused from cache (warm): {statistics.mean(r[3] for r in rows['warm']):.0f}")


if __name__ == "__main__":
    main()
