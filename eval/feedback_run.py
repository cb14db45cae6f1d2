"""Rate answers in the real chat, as a user would, and store them: the feedback loop run for real.

    .venv/bin/python eval/feedback_run.py --n 30 --store /tmp/fb.sqlite      # ~6 min on 2 cores
    rag feedback export --db /tmp/fb.sqlite -o /tmp/fb.jsonl --dev eval/dev.jsonl
    rag optimize --optimizer bootstrap --train /tmp/fb.jsonl                  # then compare on dev

Launches the real app (real index, the embedded model, the program `--program` names) on a loopback
port, opens it in Chromium, and for each of `--n` train questions (a fixed sample, every shape): types
it, waits for the final answer, then clicks 👍 or 👎 on it the way a user who knows the answer would,
and for a 👎 sends the correction a user would write. The scripted user knows the answer from the
question's label (eval/train.jsonl), so:

- an unanswerable question: 👍 when the chat declined, else 👎 with "should have said it does not know";
- an answerable one declined: 👎 with "the right answer is ..." and its key facts;
- an answerable one answered: 👍 when at least half its key facts are in the answer's text, else 👎
  with "the right answer is ..." and the facts, naming the source [n] of a gold paper when the panel shows one
  (without one, the export keeps the answer's own citations as its papers, or skips a declined answer).

Dev questions are never asked (dev measures what ships). Prints one line per question and the counts.

Left out: rating individual sources ("this source does not support it"); a human's judgement.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.feedback import FeedbackStore  # noqa: E402

DECLINED = "the papers here do not answer this"  # what the chat shows for a declined question (chat.app.final_message)
DONE = """() => { const m = [...document.querySelectorAll('#chatbot .bot')].pop();
    const t = m ? m.innerText : '';
    const busy = /Loading content|Searching the papers|Writing the answer|Reading the conversation|while the model writes/;
    return /[A-Za-z]{2,}/.test(t) && !busy.test(t) && m.dataset.settled === t; }"""
MARK = """() => { const m = [...document.querySelectorAll('#chatbot .bot')].pop(); if (m) m.dataset.settled = m.innerText; }"""


def sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows, shapes mixed: a fixed shuffle, taken round-robin over question types."""
    rng = random.Random(seed)
    by_type: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by_type.setdefault(r["type"], []).append(r)
    for group in by_type.values():
        rng.shuffle(group)
    out = []
    while len(out) < n and any(by_type.values()):
        for t in sorted(by_type):
            if by_type[t] and len(out) < n:
                out.append(by_type[t].pop())
    return out


def judge(row: dict, text: str) -> tuple[bool, str | None, str | None]:
    """(like?, correction kind, correction text) of the scripted user for the visible answer `text`."""
    declined = DECLINED in text.lower()
    if row["type"] == "unanswerable":
        return (True, None, None) if declined else (False, "should_abstain", None)
    facts = row.get("facts") or []
    if not declined and facts and sum(f.lower() in text.lower() for f in facts) * 2 >= len(facts):
        return True, None, None
    return False, "right_answer", "; ".join(facts) or row.get("answer")


def gold_source(page, titles: list[str]) -> int | None:
    """The number [n] of the first source in the panel that is one of the gold papers (by title)."""
    for n in range(1, 13):
        box = page.locator(f"#src-{n}")
        if not box.count():
            return None
        text = box.first.inner_text()
        if any(t and t in text for t in titles):
            return n
    return None


def ask_and_rate(page, row: dict, titles: list[str]) -> tuple[bool, str | None, float]:
    box = page.get_by_role("textbox").first
    box.fill(row["question"])
    t0 = time.perf_counter()
    box.press("Enter")
    deadline = time.time() + 240
    while time.time() < deadline:  # the final answer: no status line, and unchanged for 2 s
        page.evaluate(MARK)
        page.wait_for_timeout(2000)
        if page.evaluate(DONE):
            break
    seconds = time.perf_counter() - t0
    text = page.locator("#chatbot .bot").last.inner_text()
    like, kind, correction = judge(row, text)
    page.locator("#chatbot").get_by_role("button", name="Like" if like else "Dislike").last.click()
    page.wait_for_selector("#feedback-note :text('Saved: you')", timeout=20_000)
    if kind:
        page.locator("#feedback").get_by_text("Correct an answer").click()
        page.locator("#feedback-kind input").click()
        from rag.feedback import CORRECTIONS

        page.get_by_role("option", name=CORRECTIONS[kind]).click()
        if correction:
            page.locator("#feedback-text textarea").fill(correction)
        source = gold_source(page, titles) if kind == "right_answer" else None
        page.locator("#feedback-n input").fill(str(source) if source else "")
        page.locator("#feedback-send").click()
        page.wait_for_selector("#feedback-note :text('Saved the correction'), #feedback-note :text('Not saved')",
                               timeout=20_000)
        page.locator("#feedback").get_by_text("Correct an answer").click()  # fold it again
    return like, kind, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", required=True, help="the ratings file (SQLite) to write")
    ap.add_argument("--program", default="baseline")
    ap.add_argument("--port", type=int, default=7871)
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from rag.chat import app
    from rag.pipeline import Pipeline
    from rag.settings import Settings

    train = [json.loads(line) for line in (ROOT / "eval/train.jsonl").read_text(encoding="utf-8").splitlines() if line]
    dev = {json.loads(line)["question"] for line in (ROOT / "eval/dev.jsonl").read_text(encoding="utf-8").splitlines() if line}
    rows = sample([r for r in train if r["question"] not in dev], args.n, args.seed)
    pipe = Pipeline.open(Settings.load(program=args.program))
    papers = pipe.index.papers
    store = FeedbackStore(args.store)
    demo = app.build_app(pipe, feedback=store)
    app.launch(demo, "127.0.0.1", args.port, prevent_thread_lock=True)
    counts = {"like": 0, "dislike": 0}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(f"http://127.0.0.1:{args.port}/")
            for i, row in enumerate(rows, 1):
                titles = [papers[p].title for p in row.get("gold_paper_ids") or [] if p in papers]
                like, kind, seconds = ask_and_rate(page, row, titles)
                counts["like" if like else "dislike"] += 1
                print(f"{i:>2} {row['id']:<14} {row['type']:<12} {'like' if like else 'dislike':<8} {kind or '':<15} "
                      f"{seconds:5.1f}s  {row['question'][:60]}", flush=True)
            browser.close()
    finally:
        demo.close()
    stats = store.stats()
    print(f"{counts['like']} liked, {counts['dislike']} disliked; the store holds {stats}")


if __name__ == "__main__":
    main()
