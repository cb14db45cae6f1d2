"""Answer latency on the embedded local model, and what llama.cpp's prompt cache saves.

Three phases, each on questions not asked before in this process (llama.cpp also
keeps whole earlier prompts in RAM, so a repeated question would be nearly free and
flatter the figures): "cold" with the prompt cache disabled (every prompt token is
read), "warm" with it enabled after another question has warmed the fixed prefix
(instructions), and "repeat", the warm questions asked again. Reports latency,
prompt tokens read vs reused, and read/generation speed, measured in this one run.

    .venv/bin/python bench/bench_ask.py [--n 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rag.lm.llama import local_engine
from rag.pipeline import Pipeline
from rag.settings import Settings

QUESTIONS = [
    "What are the two subtasks of the I am a Strange Dataset benchmark?",
    "How much more parameter-efficient is LoReFT than prior PEFTs?",
    "What did the paper on base versus aligned models find about random number generation?",
    "Does OCR quality hurt retrieval-augmented generation?",
    "What is Prithvi WxC?",
    "What does PLAID do to speed up late-interaction retrieval?",
    "What does dataset cartography use to map a dataset?",
    "How does Baleen handle multi-hop retrieval?",
    "What is active testing in model evaluation?",
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
    n = args.n
    phases = (("cold", False, QUESTIONS[:n]), ("warm", True, QUESTIONS[n:2 * n]), ("repeat", True, QUESTIONS[n:2 * n]))
    rows: dict[str, list] = {}
    for label, cache, questions in phases:
        engine.cache_prompt = cache
        if label == "warm":
            pipe.ask("What is ReFT?")  # warm the shared prefix with a question not measured
        rows[label] = []
        for q in questions:
            out = pipe.ask(q)
            t, prov = engine.last_timings, out["provenance"]
            rows[label].append((prov["latency_s"], prov["prompt_tokens"], t.get("prompt_n", 0), t.get("cache_n", 0)))
            print(f"{label:>6}  {prov['latency_s']:6.1f}s  prompt {prov['prompt_tokens']:5d} "
                  f"(read {t.get('prompt_n', 0)}, cached {t.get('cache_n', 0)})  "
                  f"gen {prov['completion_tokens']:4d} @ {t.get('predicted_per_second', 0):.1f} tok/s  "
                  f"read @ {t.get('prompt_per_second', 0):.1f} tok/s  | {q[:50]}")
    for label, r in rows.items():
        print(f"{label:>6}: mean latency {statistics.mean(x[0] for x in r):.1f}s, "
              f"mean prompt {statistics.mean(x[1] for x in r):.0f} tokens, "
              f"of which reused from cache {statistics.mean(x[3] for x in r):.0f}")
    cold, warm = rows["cold"], rows["warm"]
    print(f"ratio warm/cold mean latency: {statistics.mean(x[0] for x in warm) / statistics.mean(x[0] for x in cold):.2f} "
          f"(different questions; the exact saving is the reused prefix, "
          f"{statistics.mean(x[3] for x in warm) / statistics.mean(x[1] for x in warm):.0%} of the prompt)")


if __name__ == "__main__":
    main()
