"""`rag mcp` with the real index and model, through the MCP SDK's stdio client: what an agent waits for.

Prints the seconds to start the server and answer the handshake, the first tool call (which opens the
pipeline: index, embedder and the local model), a second search, and N ask_papers calls (their answers'
first words, so a broken answer shows). The server is `python -m rag mcp` in a subprocess, as a client runs it.

    RAG_INDEX_DIR=/work/main/indexes .venv/bin/python bench/bench_mcp.py [--asks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What are the two subtasks of the I am a Strange Dataset benchmark?",
             "How much more parameter-efficient is LoReFT than prior PEFTs?",
             "Does OCR quality hurt retrieval-augmented generation?"]


async def run(asks: int) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("RAG_") or k in ("HOME", "PATH")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "rag", "mcp"], cwd=str(ROOT),
                                   env={**env, "PYTHONPATH": str(ROOT)})
    t0 = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        print(f"start + handshake          {time.perf_counter() - t0:6.1f} s")
        for label, q in (("first search (opens all)", "state space models"), ("second search", "retrieval augmentation")):
            t = time.perf_counter()
            r = await session.call_tool("search_papers", {"query": q, "k": 3})
            top = json.loads(r.content[0].text)["results"][0]["title"]
            print(f"{label:<26} {time.perf_counter() - t:6.1f} s   top: {top[:60]}")
        for q in QUESTIONS[:asks]:
            t = time.perf_counter()
            r = await session.call_tool("ask_papers", {"question": q})
            a = json.loads(r.content[0].text)
            print(f"ask_papers                 {time.perf_counter() - t:6.1f} s   {a['answer'][:70]!r}"
                  f" cites {[c['n'] for c in a['citations']]}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--asks", type=int, default=2)
    anyio.run(run, p.parse_args().asks)
