"""Today's program against the new one, side by side in one run: latency, first token, prompt size, quality.

The old program is a git ref of this repository (default: the last commit before evidence-first
answering), checked out into a temporary worktree and run in a child process with its own index
directory and its own shipped program; the new one is this checkout, in this process. Questions
alternate between the two (old first on odd questions, new first on even ones), so drift in the
machine's load falls on both alike. Both answer through `ask_stream`, as the chat does, on the
embedded model, with no LM cache.

Per question and side: wall time, time to the first streamed answer token (for an answer with no
streamed text, a list or an abstention, the time its text is first shown), time to the cited evidence the
chat shows first (the `evidence` event; a side without one counts its first text), LM calls, prompt tokens
per call (the size of the prompt), tokens llama.cpp actually read (the rest came from its prompt
cache), and completion tokens. Quality: both sides' answers are scored by this checkout's `rag eval`
(same metrics for both), written as two eval reports, and compared with the paired bootstrap.

    .venv/bin/python bench/bench_answer.py [--set eval/dev.jsonl] [--old REF] [--limit N] [--new-env KEY=VALUE ...]

`--new-env RAG_EVIDENCE_TOKENS=250` measures a setting rather than a commit: `--old HEAD` runs this
checkout unchanged in the child, and the new side runs it with the variable set (the child never sees it).

Reports go to eval/reports/<stamp>-bench-{old,new}/ and the comparison beside them; the table of
figures is printed and saved as bench.json in the new report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OLD_REF = "2989338"  # the last commit before evidence-first answering (the bootstrap-optimised program)

# Runs in the child (old code) and in this process (new code): instrument the llama.cpp engine class, then
# answer questions through ask_stream, timing the first streamed token.
WORKER = r'''
import json, sys, time
try:
    from rag.lm.llama import LlamaCppEngine
except ImportError:
    from rag.lm.llama import LlamaCppEngine
CALLS = []
_chat = LlamaCppEngine.chat
def chat(self, body):
    out = _chat(self, body)
    u, t = out.get("usage", {}), out.get("timings", {})
    CALLS.append((u.get("prompt_tokens", 0), t.get("prompt_n", 0), u.get("completion_tokens", 0)))
    return out
LlamaCppEngine.chat = chat
_stream = LlamaCppEngine.stream
def stream(self, request):
    n = len(CALLS)
    for event in _stream(self, request):
        yield event
    u = getattr(event, "usage", None)
    CALLS.append((getattr(u, "input_tokens", 0), self.last_timings.get("prompt_n", 0), getattr(u, "output_tokens", 0)))
LlamaCppEngine.stream = stream

def answer(pipe, question):
    del CALLS[:]
    t0 = time.perf_counter()
    first = evidence = None
    result = None
    for ev in pipe.ask_stream(question):
        if ev["type"] == "evidence" and evidence is None:
            evidence = time.perf_counter() - t0
        if ev["type"] == "token" and first is None:
            first = time.perf_counter() - t0
        elif ev["type"] == "done":
            result = ev["result"]
    wall = time.perf_counter() - t0
    return {"result": result, "wall_s": wall, "first_s": first if first is not None else wall,
            "evidence_s": evidence if evidence is not None else (first if first is not None else wall),
            "calls": len(CALLS), "prompt_tokens": [c[0] for c in CALLS], "read_tokens": sum(c[1] for c in CALLS),
            "completion_tokens": sum(c[2] for c in CALLS)}
'''

CHILD = WORKER + r'''
from rag.pipeline import Pipeline
from rag.settings import Settings
pipe = Pipeline.open(Settings.load())
print(json.dumps({"ready": pipe.program_label}), flush=True)
for line in sys.stdin:
    print(json.dumps(answer(pipe, json.loads(line)["question"])), flush=True)
'''


def old_tree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="papers-rag-old-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default=str(ROOT / "eval" / "dev.jsonl"))
    ap.add_argument("--old", default=OLD_REF, help="git ref of today's program")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", default=str(ROOT / "eval" / "reports"))
    ap.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment setting for the new side only (repeatable)")
    args = ap.parse_args()
    if any("=" not in kv for kv in args.new_env):
        ap.error("--new-env takes KEY=VALUE")
    new_env = dict(kv.split("=", 1) for kv in args.new_env)

    from rag.evaluation import harness as evaluate
    from rag.evaluation.compare import compare_reports, verdict
    from rag.evaluation.metrics import percentile
    from rag.evaluation.seed import load_set
    from rag.logs import setup
    from rag.pipeline import Pipeline
    from rag.settings import Settings

    setup()
    namespace: dict = {}
    exec(WORKER, namespace)  # noqa: S102 - our own instrumentation, shared verbatim with the child
    rows = load_set(args.set)[: args.limit]
    tree = old_tree(args.old)
    env = {**os.environ, "PYTHONPATH": str(tree), "RAG_INDEX_DIR": str(tree / "indexes"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("RAG_PROGRAM", None)
    os.environ.update(new_env)  # after the child's environment was copied: the new side alone has it
    print(f"old program: {args.old} in {tree} (builds its own index on first start)", file=sys.stderr)
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=tree, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        old_label = json.loads(child.stdout.readline())["ready"]
        pipe = Pipeline.open(Settings.load())
        pipe.warm()
        runs: dict[str, dict] = {"old": {}, "new": {}}
        for i, row in enumerate(rows):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for side in order:
                if side == "old":
                    child.stdin.write(json.dumps({"question": row["question"]}) + "\n")
                    child.stdin.flush()
                    runs["old"][row["id"]] = json.loads(child.stdout.readline())
                else:
                    runs["new"][row["id"]] = namespace["answer"](pipe, row["question"])
            o, n = runs["old"][row["id"]], runs["new"][row["id"]]
            print(f"{i + 1:>3}/{len(rows)} {row['id']:<6} old {o['wall_s']:5.1f}s  new {n['wall_s']:5.1f}s "
                  f"(first {n['first_s']:4.1f}s, {n['calls']} calls)  {row['question'][:60]}", file=sys.stderr)
    finally:
        child.stdin.close()
        child.wait(timeout=60)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)

    class Replay:
        """`run_eval` over answers already given: scored by this checkout's metrics, like any report."""

        def __init__(self, side: str, label: str) -> None:
            self.answers = {rows[i]["question"]: runs[side][r["id"]]["result"] for i, r in enumerate(rows)}
            self.settings, self.index, self.embedder, self.retriever = pipe.settings, pipe.index, pipe.embedder, pipe.retriever
            self.program_label, self.lm_label = label, pipe.lm_label

        def ask(self, question: str) -> dict:
            return self.answers[question]

    stamp = time.strftime("%Y%m%d-%H%M%S")
    reports = {side: evaluate.run_eval(Replay(side, label), rows, label=f"bench-{side}", set_path=args.set,
                                       out_root=args.out, stamp=stamp)
               for side, label in (("old", f"{old_label} @ {args.old}"), ("new", pipe.program_label))}
    compare_path, compared = compare_reports(reports["old"], reports["new"], args.out, stamp=stamp)

    def figures(side: str) -> dict:
        r = list(runs[side].values())
        answered = [x for x in r if x["calls"]]
        sizes = [max(x["prompt_tokens"]) for x in answered]
        return {"latency_p50_s": percentile([x["wall_s"] for x in r], 50),
                "latency_p95_s": percentile([x["wall_s"] for x in r], 95),
                "first_text_p50_s": percentile([x["first_s"] for x in r], 50),
                "first_text_p95_s": percentile([x["first_s"] for x in r], 95),
                # the cited evidence the chat shows before the first token (a side without it: its first text)
                "first_evidence_p50_s": percentile([x.get("evidence_s", x["first_s"]) for x in r], 50),
                "first_evidence_p95_s": percentile([x.get("evidence_s", x["first_s"]) for x in r], 95),
                "prompt_tokens_per_call_p50": percentile(sizes, 50) if sizes else None,
                "tokens_read_p50": percentile([x["read_tokens"] for x in answered], 50) if answered else None,
                "completion_tokens_p50": percentile([x["completion_tokens"] for x in answered], 50) if answered else None,
                "lm_calls_mean": sum(x["calls"] for x in r) / len(r)}

    table = {"old": figures("old"), "new": figures("new"), "n": len(rows), "set": args.set, "old_ref": args.old,
             "new_env": new_env,
             "reports": {k: str(v) for k, v in reports.items()}, "compare": str(compare_path),
             "headline": compared["headline"], "metrics": compared["metrics"],
             # per question and side, for reading the figures by shape
             "runs": {side: {qid: {k: v for k, v in x.items() if k != "result"} for qid, x in r.items()}
                      for side, r in runs.items()}}
    (reports["new"] / "bench.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"\n{len(rows)} questions from {args.set}; old = {old_label} @ {args.old}, new = {pipe.program_label}"
          + "".join(f" {k}={v}" for k, v in new_env.items()))
    print(f"{'':32} {'old':>10} {'new':>10} {'new/old':>8}")
    for key in table["old"]:
        a, b = table["old"][key], table["new"][key]
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        print(f"{key:32} {a if a is None else round(a, 2):>10} {b if b is None else round(b, 2):>10} {ratio:>8}")
    for name, v in compared["metrics"].items():
        print(f"{name:32} {v['a']:>10.3f} {v['b']:>10.3f}   (n={v['n']})")
    print(verdict(compared))
    print(f"reports: {reports['old']} {reports['new']} {compare_path}")


if __name__ == "__main__":
    main()
