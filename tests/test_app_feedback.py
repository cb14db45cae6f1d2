"""Rating answers in the chat: the like/dislike event and the correction box store rows in the ratings file
(rag/feedback.py), through the handlers, through Gradio's API, and with real clicks in Chromium."""

from __future__ import annotations

import sqlite3
import time
from types import SimpleNamespace

import test_app
from test_app import launch_chromium, needs_chromium

from rag.chat import app
from rag.feedback import FeedbackStore, db_path

fake_pipe, served = test_app.fake_pipe, test_app.served  # the chat tests' fixtures


def _ask(pipe, answers, question: str) -> list:
    """The chat history after asking `question` through the recording pipeline."""
    final, _ = list(app.make_respond(app.recording(pipe, answers))(question, [], 3, "hybrid"))[-1]
    return [{"role": "user", "content": question}, {"role": "assistant", "content": final}]


def test_like_stores_the_whole_result_and_a_correction_updates_it(fake_pipe, tmp_path):
    pipe, _ = fake_pipe
    store, answers = FeedbackStore(db_path(tmp_path)), app.AnswerLog()
    on_like, on_correct = app.make_rating_handlers(store, answers)
    history = _ask(pipe, answers, "What are state space models?")
    row_id, note = on_like(history, SimpleNamespace(index=1, liked=True))
    assert row_id is not None and note.startswith("_Saved: you liked")
    [row] = store.rows()
    assert row["rating"] == 1 and row["question"] == "What are state space models?"
    assert row["result"]["citations"][0]["n"] == 1 and row["result"]["provenance"]["index"] == pipe.index.name
    assert on_correct(row_id, "unsupported_source", "", 1).startswith("_Saved the correction")
    assert (store.rows()[0]["correction"], store.rows()[0]["source_n"]) == ("unsupported_source", 1)
    assert "Not saved" in on_correct(row_id, "unsupported_source", "", 9)  # no source [9]
    assert "Pick what was wrong" in on_correct(row_id, None, "", None)


def test_dislike_of_the_user_message_or_an_unfinished_answer_saves_nothing(fake_pipe, tmp_path):
    pipe, _ = fake_pipe
    store, answers = FeedbackStore(db_path(tmp_path)), app.AnswerLog()
    on_like, on_correct = app.make_rating_handlers(store, answers)
    history = _ask(pipe, answers, "What are state space models?")
    assert on_like(history, SimpleNamespace(index=0, liked=False))[0] is None  # the question itself
    waiting = [{"role": "user", "content": "robots?"}, {"role": "assistant", "content": "_Searching the papers..._"}]
    assert on_like(waiting, SimpleNamespace(index=1, liked=False))[0] is None
    assert on_like(history, SimpleNamespace(index=1, liked=""))[0] is None  # the thumb clicked again
    assert "Rate the answer first" in on_correct(None, "wrong_paper", "", None)
    assert store.rows() == []


def test_the_answer_log_finds_the_rated_one_among_answers_to_the_same_question(fake_pipe):
    pipe, _ = fake_pipe
    answers = app.AnswerLog()
    first = _ask(pipe, answers, "What are state space models?")
    r1 = answers.find("What are state space models?", first[1]["content"])
    answers.add({**r1, "answer": "Something else entirely [1]."})
    assert answers.find("what are  state space models?", first[1]["content"]) is r1
    assert answers.find("never asked", "x") is None


def wait_for_rows(path, n: int, timeout: float = 20.0) -> list[tuple]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            with sqlite3.connect(path) as con:
                rows = con.execute("SELECT question, rating, correction, correction_text, result FROM ratings").fetchall()
            if len(rows) >= n:
                return rows
        time.sleep(0.2)
    raise AssertionError(f"{n} rating rows did not appear in {path}")


@needs_chromium
def test_clicking_like_in_the_browser_stores_the_rating(fake_pipe, served, tmp_path):
    """Real page, real clicks: ask, click 👍 on the answer, then correct it in the box; both land in SQLite."""
    from playwright.sync_api import sync_playwright

    store = FeedbackStore(db_path(tmp_path / "fb"))
    url = served(fake_pipe[0], feedback=store)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(url)
            box = page.get_by_role("textbox").first
            box.fill("What are state space models?")
            box.press("Enter")
            page.wait_for_selector('#chatbot a[href="#src-1"]', timeout=60_000)
            page.locator("#chatbot").get_by_role("button", name="Like").last.click()
            [(question, rating, correction, _, result)] = wait_for_rows(store.path, 1)
            assert (question, rating, correction) == ("What are state space models?", 1, None)
            assert '"citations"' in result and '"provenance"' in result
            page.wait_for_selector("#feedback-note :text('Saved: you liked')", timeout=10_000)

            page.locator("#feedback").get_by_text("Correct an answer").click()
            # first a correction that names no source, the number box never touched (it reaches the server as 0)
            page.locator("#feedback-kind input").click()
            page.get_by_role("option", name="should have said it does not know").click()
            page.locator("#feedback-send").click()
            page.wait_for_selector("#feedback-note :text('Saved the correction: should have said')", timeout=20_000)
            assert (store.rows()[0]["correction"], store.rows()[0]["source_n"]) == ("should_abstain", None)
            page.locator("#feedback-kind input").click()
            page.get_by_role("option", name="the right answer is ...").click()
            page.locator("#feedback-text textarea").fill("diagonal state matrix; HiPPO")
            page.locator("#feedback-n input").fill("1")
            page.locator("#feedback-send").click()
            deadline = time.time() + 20
            while time.time() < deadline and store.rows()[0]["correction"] != "right_answer":  # it replaces the first
                time.sleep(0.2)
            row = store.rows()[0]
            assert (row["correction"], row["correction_text"], row["source_n"]) == (
                "right_answer", "diagonal state matrix; HiPPO", 1)

        finally:
            browser.close()


def test_the_app_has_rating_endpoints_and_its_store_under_the_cache_dir(fake_pipe):
    """The app builds with the feedback panel wired to the chatbot, the store under RAG_CACHE_DIR by default."""
    pipe, _ = fake_pipe
    demo = app.build_app(pipe)
    assert (db_path(pipe.settings.cache_dir)).is_file()
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"rate", "correct", "chat"} <= names
