"""A burst of concurrent chat requests against a served app: who is answered, who is refused, who waits.

Starts the chat in its own process, then submits N questions at once through
gradio_client and watches every request's messages as they arrive. Reports, all
measured in this one run: answered / refused with an estimate / refused by Gradio
without one / failed; the longest time any request went without a word; the
longest wait for an answer; how the first estimate a waiting request was given
compares with the wait it then had; and the server's RSS (idle, peak, after).

    .venv/bin/python bench/bench_load.py --fake-delay 2 --n 20   # fake embedder and LM (2 s an answer), tiny corpus
    .venv/bin/python bench/bench_load.py --n 20                  # the real app: real index, embedder and local model

The real mode serves `app.py` with the caller's RAG_* settings (RAG_MAX_WAIT bounds the
waits; --max-wait overrides it); the fake mode serves it through tests/fakes.py.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_QUESTIONS = ["How are state space models initialised?", "At what temperature does sourdough acidity rise fastest?",
                  "How much faster is late-interaction search?", "How do robots learn to walk on rough terrain?",
                  "How are exoplanets told apart from eclipsing binaries?", "How are music recommendations made?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def serve(args: argparse.Namespace, port: int, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "RAG_PORT": str(port), "RAG_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    if args.max_wait is not None:
        env["RAG_MAX_WAIT"] = str(args.max_wait)
    if args.fake_delay is not None:
        env.update({"FAKE_LM_DELAY": str(args.fake_delay), "RAG_CORPUS": str(ROOT / "tests/data/tiny.jsonl"),
                    "RAG_INDEX_DIR": str(workdir / "indexes"), "RAG_MIN_SCORE": "0"})
        cmd = [sys.executable, str(ROOT / "tests" / "fakes.py"), "app"]
    else:
        cmd = [sys.executable, str(ROOT / "app.py")]
    proc = subprocess.Popen(cmd, env=env, cwd=str(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start within 10 minutes")


ESTIMATE = re.compile(r"about (\d+) (s|min) to wait")


class Watched:
    """One submitted request: the time each new message was first seen, and how it ended."""

    def __init__(self, job, t0: float) -> None:
        self.job, self.t0 = job, t0
        self.seen: list[tuple[float, str]] = []
        self.final: str | None = None
        self.error: str | None = None
        self.end: float | None = None

    def poll(self, now: float) -> None:
        if self.end is not None:
            return
        outputs = self.job.outputs()
        for out in outputs[len(self.seen):]:
            self.seen.append((now - self.t0, out[0] if isinstance(out, (list, tuple)) else str(out)))
        if self.job.done():
            self.end = now - self.t0
            try:
                self.final = self.job.result(timeout=5)[0]
            except Exception as e:  # noqa: BLE001 - Gradio's own refusals raise here
                self.error = str(e)

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return "refused by Gradio, no estimate" if "queue is full" in self.error.lower() else "failed"
        if self.final and self.final.startswith("**The chat is busy.**"):
            return "refused with an estimate"
        if self.final and "(#src-" in self.final or "do not answer" in (self.final or ""):
            return "answered"
        return "failed"

    def first_word(self) -> float:
        return self.seen[0][0] if self.seen else (self.end or 0.0)

    def estimates(self) -> list[tuple[float, float, float]]:
        """(when, estimate given, seconds it then actually waited) for every wait message this request got."""
        started = next((t for t, m in self.seen if not m.startswith("_Waiting for the model")), None)
        out = []
        for t, message in self.seen:
            m = ESTIMATE.search(message)
            if m and started is not None and t < started:
                out.append((t, int(m.group(1)) * (60 if m.group(2) == "min" else 1), started - t))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="requests in the burst")
    ap.add_argument("--fake-delay", type=float, help="serve the fake LM, sleeping this many seconds an answer")
    ap.add_argument("--max-wait", type=float, help="RAG_MAX_WAIT for the served app")
    ap.add_argument("--timeout", type=float, default=1800, help="give up on the burst after this many seconds")
    args = ap.parse_args()

    from gradio_client import Client

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        t_start = time.perf_counter()
        proc = serve(args, port, Path(tmp))
        mode = f"fake LM, {args.fake_delay:.1f}s an answer" if args.fake_delay is not None else "real app"
        print(f"mode: {mode}; server up in {time.perf_counter() - t_start:.1f}s")
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mb(proc.pid))
                time.sleep(0.25)

        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            idle = rss_mb(proc.pid)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            questions = FAKE_QUESTIONS if args.fake_delay is not None else \
                (ROOT / "bench" / "questions50.txt").read_text().splitlines()
            t0 = time.perf_counter()
            watched = [Watched(client.submit(questions[i % len(questions)], 4, "hybrid", api_name="/chat"), t0)
                       for i in range(args.n)]
            while any(w.end is None for w in watched) and time.perf_counter() - t0 < args.timeout:
                now = time.perf_counter()
                for w in watched:
                    w.poll(now)
                time.sleep(0.1)
            burst = time.perf_counter() - t0
            time.sleep(2)
            after = rss_mb(proc.pid)
            stop.set()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    outcomes = [w.outcome for w in watched]
    print(f"burst of {args.n} in {burst:.1f}s:")
    for name in ("answered", "refused with an estimate", "refused by Gradio, no estimate", "failed"):
        print(f"  {name:<32} {outcomes.count(name)}")
    unfinished = sum(w.end is None for w in watched)
    if unfinished:
        print(f"  still running at --timeout      {unfinished}")
    answered = [w for w in watched if w.outcome == "answered"]
    print(f"longest time without a word:      {max(w.first_word() for w in watched):.1f}s")
    if answered:
        print(f"wait for an answer (submit to final): max {max(w.end for w in answered):.1f}s, "
              f"median {statistics.median(w.end for w in answered):.1f}s")
    refused = [w for w in watched if w.outcome == "refused with an estimate"]
    if refused:
        print(f"refusals came after: max {max(w.end for w in refused):.2f}s")
    # Until an answer has been timed the queue estimates from its first guess (25 s an answer on the local
    # model); after, from the answers it has seen. Report the two apart.
    first_timed = min((w.end for w in answered), default=float("inf"))
    for label, keep in (("before any answer was timed", lambda t: t < first_timed),
                        ("after the first answer", lambda t: t >= first_timed)):
        ratios = [wait / est for w in watched for t, est, wait in w.estimates() if keep(t) and est > 0]
        if ratios:
            print(f"estimates {label}: {len(ratios)} messages, actual wait / estimate median "
                  f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"server RSS: idle {idle:.0f} MB, peak {max(samples or [idle]):.0f} MB, 2 s after the burst {after:.0f} MB")
    bad = [w for w in watched if w.outcome == "failed"]
    for w in bad[:3]:
        print(f"  failed: {w.error or (w.final or '')[:200]!r}")


if __name__ == "__main__":
    main()
