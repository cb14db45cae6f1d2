"""The Gradio chat: rendering and escaping, the respond loop, the served app, and a real browser.

The browser tests drive Debian's Chromium with Playwright (never `playwright install`).
`make test` installs chromium; where it is missing these tests skip with a loud reason.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from rag.chat import app
from rag.chat.waiting import AnswerQueue
from rag.pipeline import Pipeline

CHROMIUM = "/usr/bin/chromium"
# Headless, as root, and quiet on a closed network (no background connections, updates or sync).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def launch_chromium(playwright):
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="!!! BROWSER TEST SKIPPED: /usr/bin/chromium is missing; `apt-get install -y chromium` (make test does) !!!")


# --- rendering ------------------------------------------------------------------------

def test_markdown_and_html_in_model_text_are_neutralised():
    evil = 'Look ![x](http://evil.example/x.png) <script>alert(1)</script> <img src=x onerror=alert(1)> **bold**'
    out = app.md_escape(evil)
    assert "<script>" not in out and "<img" not in out and "![x](" not in out and "**bold**" not in out
    assert "&lt;script&gt;" in out


def test_answer_links_only_valid_citations():
    out = app.render_answer("SSMs scale [1]. Also [3] and [9].", 3)
    assert "[\\[1\\]](#src-1)" in out and "[\\[3\\]](#src-3)" in out
    assert "#src-9" not in out


def test_sources_panel_escapes_corpus_text_and_highlights_the_passage(tiny_settings, embedder):
    pipe = Pipeline.open(tiny_settings, embedder=embedder, need_lm=False)
    hit = pipe.search("sourdough fermentation acidity", k=1).hits[0]
    object.__setattr__(hit.paper, "title", "<img src=x onerror=alert(1)>")
    html_out = app.render_sources([hit], cited={1}, query="sourdough?")
    assert "<img" not in html_out and "&lt;img src=x" in html_out
    assert 'id="src-1"' in html_out and 'class="src cited"' in html_out and "<mark>" in html_out
    assert "Searched for: <em>sourdough?</em>" in html_out


def test_history_pairs_from_messages():
    history = [{"role": "user", "content": "What is ReFT?"},
               {"role": "assistant", "content": "ReFT edits representations \\[1\\].\n\n<sub>stats</sub>"},
               {"role": "user", "content": "and LoRA?"}]
    assert app.history_pairs(history) == [("What is ReFT?", "ReFT edits representations [1].")]


def test_parse_auth():
    assert app.parse_auth("") is None
    assert app.parse_auth("ann:s3cret:x") == ("ann", "s3cret:x")
    with pytest.raises(app.RagError, match="user:password"):
        app.parse_auth("nopassword")


# --- the respond loop with the fake LM --------------------------------------------------

@pytest.fixture
def fake_pipe(tiny_settings, embedder):
    from fakes import FakeEngine, fake_lm

    engine = FakeEngine()
    return Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(engine)), engine


def test_respond_streams_status_tokens_then_the_checked_answer(fake_pipe):
    pipe, _ = fake_pipe
    steps = list(app.make_respond(pipe)("How are state space models initialised?", [], 3, "hybrid"))
    texts = [t for t, _ in steps]
    assert texts[0] == "_Searching the papers\\.\\.\\._"
    assert len(steps) > 4  # status, passages, several streamed tokens, final
    final, panel = steps[-1]
    assert "(#src-1)" in final and "tokens" in final
    assert 'id="src-1"' in panel and "Structured State Space Models" in panel


def test_follow_up_is_rewritten_and_the_query_shown(fake_pipe):
    pipe, _ = fake_pipe
    history = [{"role": "user", "content": "What are state space models?"},
               {"role": "assistant", "content": "Sequence models with a state matrix \\[1\\]."}]
    final, panel = list(app.make_respond(pipe)("what about its limitations?", history, 3, "hybrid"))[-1]
    assert "Searched for: <em>standalone: what about its limitations?</em>" in panel


def test_lm_failure_shows_an_error_and_the_app_keeps_serving(fake_pipe):
    pipe, _ = fake_pipe
    respond = app.make_respond(pipe)
    final, _ = list(respond("please FAIL now", [], 3, "hybrid"))[-1]
    assert final.startswith("**Error:** LM call failed")
    final, _ = list(respond("sourdough acidity", [], 3, "hybrid"))[-1]
    assert "(#src-1)" in final


def test_abstention_offers_the_closest_papers(tiny_settings, embedder):
    from fakes import fake_lm

    pipe = Pipeline.open(tiny_settings.replace(min_score=0.99), embedder=embedder, lm=fake_lm())
    final, _ = list(app.make_respond(pipe)("state space models", [], 3, "hybrid"))[-1]
    assert final.startswith("The papers here do not answer this.\n\nYou may mean: Structured State Space Models")


def test_over_long_question_gets_the_limit_message(fake_pipe):
    pipe, engine = fake_pipe
    final, _ = list(app.make_respond(pipe)("x" * 2001, [], 3, "hybrid"))[-1]
    assert final.startswith("Your question is 2,001 characters; the limit is 2,000") and engine.calls == 0


# --- the served app --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(request):
    """Launch build_app(pipe) on a free loopback port; closed after the test."""
    demos = []

    def serve(pipe: Pipeline, auth=None, **kwargs) -> str:
        port = free_port()
        demo = app.build_app(pipe, **kwargs)
        app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, auth=auth)
        demos.append(demo)
        return f"http://127.0.0.1:{port}/"

    yield serve
    for demo in demos:
        demo.close()


def test_gradio_client_gets_cited_answers_and_limits(fake_pipe, served):
    from gradio_client import Client

    url = served(fake_pipe[0])
    client = Client(url, verbose=False)
    answer, panel = client.predict("What are state space models?", 3, "hybrid", api_name="/chat")
    assert "(#src-1)" in answer and "Structured State Space Models" in panel
    answer, _ = client.predict("x" * 2500, 3, "hybrid", api_name="/chat")
    assert answer.startswith("Your question is 2,500 characters; the limit is 2,000")
    table = client.predict("sourdough", api_name="/papers")
    assert [row[0] for row in table["data"]] == ["Sourdough Fermentation Dynamics"]


def test_a_burst_is_told_its_place_and_refused_up_front_beyond_the_wait_limit(tiny_settings, embedder, served):
    from fakes import FakeEngine, fake_lm
    from gradio_client import Client

    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(FakeEngine(delay=1.0)))
    waits = AnswerQueue(slots=1, max_wait=2.5, typical_s=1.0)
    client = Client(served(pipe, waits=waits), verbose=False)
    # digit-free questions: the fake LM echoes the question, and a number in no passage would be declined
    jobs = [client.submit(f"robots {w}", 3, "hybrid", api_name="/chat") for w in "abcdefgh"]
    finals = [job.result(timeout=120)[0] for job in jobs]
    refused = [f for f in finals if f.startswith("**The chat is busy.**")]
    answered = [f for f in finals if "(#src-" in f]
    assert refused and answered and len(refused) + len(answered) == 8, finals
    assert all("questions are ahead of yours: about" in r and "Please try again" in r for r in refused)
    told = [o[0] for job in jobs for o in job.outputs() if o[0].startswith("_Waiting for the model: ")]
    assert told and all(" ahead of yours, about " in t for t in told)
    assert len(waits) == 0  # every place was given back
    # and it still serves afterwards
    assert "(#src-" in client.predict("sourdough", 3, "hybrid", api_name="/chat")[0]


def test_gradios_own_queue_still_caps_open_requests(tiny_settings, embedder, served):
    from fakes import FakeEngine, fake_lm
    from gradio_client import Client

    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(FakeEngine(delay=0.4)))
    client = Client(served(pipe, queue_max=2, waits=AnswerQueue(max_wait=3600)), verbose=False)
    # digit-free questions: the fake LM echoes the question, and a number in no passage would be declined
    jobs = [client.submit(f"robots {w}", 3, "hybrid", api_name="/chat") for w in "abcdefgh"]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=60)[0])
        except Exception as e:  # noqa: BLE001 - the refused ones raise in the client
            outcomes.append(f"refused: {e}")
    assert any("queue is full" in o.lower() for o in outcomes) and any("(#src-" in o for o in outcomes)


def test_a_waiting_question_is_told_its_place_then_answered(fake_pipe):
    pipe, engine = fake_pipe
    waits = AnswerQueue(slots=1, typical_s=20)
    holder = waits.enter()
    list(holder.wait())  # someone else's answer is being written
    steps = app.make_respond(pipe, waits)("How are state space models initialised?", [], 3, "hybrid")
    assert next(steps)[0] == "_Waiting for the model: 1 question ahead of yours, about 20 s to wait._"
    assert engine.calls == 0
    holder.done()
    final, panel = list(steps)[-1]
    assert "(#src-1)" in final and engine.calls == 1


def test_a_question_over_the_wait_limit_is_refused_at_once(fake_pipe):
    pipe, engine = fake_pipe
    waits = AnswerQueue(slots=1, max_wait=60, typical_s=45)
    list(waits.enter().wait())  # one being answered (it has just started)
    waits.enter()  # one waiting: 45 + 45 s > 60 s
    steps = list(app.make_respond(pipe, waits)("state space models", [], 3, "hybrid"))
    assert len(steps) == 1 and engine.calls == 0
    assert steps[0][0] == ("**The chat is busy.** 2 questions are ahead of yours: about 90 s of answering, more than "
                           "the 60 s this chat lets a question wait. Please try again in a few minutes.")


def test_a_bad_question_is_answered_without_waiting_in_line(fake_pipe):
    pipe, _ = fake_pipe
    waits = AnswerQueue(slots=1, max_wait=1, typical_s=45)
    list(waits.enter().wait())  # the model is busy
    final, _ = list(app.make_respond(pipe, waits)("x" * 2001, [], 3, "hybrid"))[-1]
    assert final.startswith("Your question is 2,001 characters")
    final, _ = list(app.make_respond(pipe, waits)("\u200b\u200b", [], 3, "hybrid"))[-1]
    assert final.startswith("**Error:** the question is empty")


def test_wait_durations_read_naturally():
    assert [app.duration(s) for s in (0, 12, 44, 89, 91, 150, 600)] == [
        "5 s", "15 s", "45 s", "90 s", "95 s", "3 min", "10 min"]


# --- nothing phones home -----------------------------------------------------------------------

def test_gradio_analytics_and_hub_telemetry_are_off_before_gradio_is_imported():
    import subprocess
    import sys

    code = ("import app, gradio.analytics as a, huggingface_hub.constants as c; "
            "print(a.analytics_enabled(), c.HF_HUB_OFFLINE, c.HF_HUB_DISABLE_TELEMETRY)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])},
                          cwd=str(Path(__file__).parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"]


def serve_in_subprocess(tmp_path: Path, port: int, **env: str):
    """`python app.py` with the fake embedder and LM, in its own process (stopped by the caller)."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(root), "RAG_PORT": str(port),
           "RAG_CORPUS": str(root / "tests/data/tiny.jsonl"), "RAG_INDEX_DIR": str(tmp_path / "idx"),
           "RAG_MIN_SCORE": "0", **env}
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "fakes.py"), "app"], env=env, cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"the app did not start: {proc.stderr.read()}")


def test_the_served_app_touches_no_other_host(tmp_path):
    """Start the chat as `python app.py` does, load its page, answer a question: every connection and name
    lookup of that process goes to loopback (recorded by an audit hook inside it)."""
    import httpx
    from gradio_client import Client

    log, port = tmp_path / "net.log", free_port()
    proc = serve_in_subprocess(tmp_path, port, FAKE_NET_LOG=str(log))
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "papers-rag" in page.text
        answer, _ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            "What are state space models?", 3, "hybrid", api_name="/chat")
        assert "(#src-1)" in answer
        time.sleep(2)  # a version-check or telemetry thread would have run by now
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not log.exists() or log.read_text() == "", log.read_text()


def test_basic_auth_when_configured(fake_pipe, served):
    from gradio_client import Client

    url = served(fake_pipe[0], auth=("ann", "s3cret"))
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises a plain ValueError/HTTP error
        Client(url, auth=("ann", "wrong"), verbose=False)
    answer, _ = Client(url, auth=("ann", "s3cret"), verbose=False).predict("robots", 3, "hybrid", api_name="/chat")
    assert "(#src-" in answer


def _browser_ask(url: str, question: str, shot: Path, timeout_ms: int) -> dict:
    """Type a question, wait for the final answer, click [1]; return timings and what was visible."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(url)
            box = page.get_by_role("textbox").first
            box.fill(question)
            t0 = time.perf_counter()
            box.press("Enter")
            # the first text (the cited evidence, then the streamed answer) replaces the status line
            page.wait_for_function("""() => { const m = [...document.querySelectorAll('#chatbot .bot')].pop();
                const t = m ? m.innerText : '';
                const status = /Loading content|Searching the papers|Writing the answer|Reading the conversation/;
                return /[A-Za-z]{2,}/.test(t) && !status.test(t);
            }""", timeout=timeout_ms, polling=50)
            first = time.perf_counter() - t0
            # the final answer: cited, and no longer the evidence shown while the model writes
            page.wait_for_function("""() => { const m = [...document.querySelectorAll('#chatbot .bot')].pop();
                return m && m.querySelector('a[href="#src-1"]') && !m.innerText.includes('while the model writes');
            }""", timeout=timeout_ms, polling=50)
            full = time.perf_counter() - t0
            page.click('#chatbot a[href="#src-1"]')
            page.wait_for_timeout(600)
            result = {
                "first_token_s": first, "full_answer_s": full,
                "passage_visible": page.locator("#src-1 .passage").is_visible(),
                "passage": page.locator("#src-1 .passage").inner_text(),
                "abstract_open": page.eval_on_selector("#src-1 details", "d => d.open"),
                "answer": page.locator("#chatbot .bot").last.inner_text(),
            }
            page.screenshot(path=str(shot), full_page=True)
            return result
        finally:
            browser.close()


@needs_chromium
@pytest.mark.slow
def test_browser_with_real_index_and_fake_lm(real_settings, real_search_pipe, served, tmp_path):
    from fakes import fake_lm

    pipe = Pipeline.open(real_settings, embedder=real_search_pipe.embedder, lm=fake_lm())
    url = served(pipe)
    seen = _browser_ask(url, "What are the two subtasks of the I am a Strange Dataset benchmark?",
                        tmp_path / "chat-fake.png", 60_000)
    assert seen["passage_visible"] and seen["abstract_open"]
    assert "two subtasks" in seen["passage"]
    assert (tmp_path / "chat-fake.png").stat().st_size > 10_000


@needs_chromium
@pytest.mark.slow
def test_browser_with_the_real_embedded_model(real_settings, real_search_pipe, served, tmp_path):
    pipe = Pipeline.open(real_settings, embedder=real_search_pipe.embedder)
    url = served(pipe)
    seen = _browser_ask(url, "What are the two subtasks of the I am a Strange Dataset benchmark?",
                        tmp_path / "chat-real.png", 240_000)
    print(f"\nreal model in the browser: first token {seen['first_token_s']:.1f}s, "
          f"full answer {seen['full_answer_s']:.1f}s; screenshot {tmp_path / 'chat-real.png'}")
    assert seen["passage_visible"] and "generation and verification" in seen["passage"]
    assert "generation" in seen["answer"].lower() and "verification" in seen["answer"].lower()


def test_json_replies_stream_token_by_token_into_the_chat(tiny_settings, embedder):
    from fakes import JSONEngine, fake_lm

    engine = JSONEngine()
    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(engine))
    first = list(pipe.ask_stream("What is the Long Range Arena benchmark used for?"))
    assert any(e["type"] == "token" for e in first)
    events = list(pipe.ask_stream("How are state space models initialised?"))  # the second question streams too
    tokens = "".join(e["text"] for e in events if e["type"] == "token")
    assert len([e for e in events if e["type"] == "token"]) > 3  # streamed, not shown all at once at the end
    assert "diagonal state matrix initialised with HiPPO" in tokens and '"sources"' not in tokens
    done = events[-1]["result"]
    assert done["answer"] == "They use a diagonal state matrix initialised with HiPPO [1]." and engine.calls == 2


def test_the_evidence_is_shown_cited_before_the_answers_first_token(fake_pipe):
    pipe, _ = fake_pipe
    steps = list(app.make_respond(pipe)("At what temperature does sourdough acidity rise fastest?", [], 3, "hybrid"))
    texts = [t for t, _ in steps]
    first_evidence = next(i for i, t in enumerate(texts) if "From the papers" in t)
    first_answer = next(i for i, t in enumerate(texts) if "An answer to" in t)
    assert first_evidence < first_answer
    evidence, panel = steps[first_evidence]
    assert evidence.startswith("Acidity rises fastest at 30 degrees Celsius\\. [\\[1\\]](#src-1)")
    assert 'id="src-1"' in panel and "Sourdough Fermentation Dynamics" in panel  # [1] is the panel's first source
    assert "From the papers" not in texts[-1]  # the answer replaced it


def test_evidence_text_is_escaped_like_an_answer():
    out = app.evidence_message("Uses <script>x</script> **bold** [1].", 1)
    assert "<script>" not in out and "**bold**" not in out and "(#src-1)" in out


@needs_chromium
@pytest.mark.slow
def test_browser_shows_the_cited_evidence_before_the_answers_first_token(tiny_settings, embedder, served, tmp_path):
    from fakes import FakeEngine, fake_lm
    from playwright.sync_api import sync_playwright

    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(FakeEngine(delay=3.0)))
    url = served(pipe)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(url)
            box = page.get_by_role("textbox").first
            box.fill("At what temperature does sourdough acidity rise fastest?")
            box.press("Enter")
            last = "[...document.querySelectorAll('#chatbot .bot')].pop()"
            page.wait_for_function(f"() => {{ const m = {last}; return m && /From the papers/.test(m.innerText) }}",
                                   timeout=30_000, polling=50)
            shown = page.locator("#chatbot .bot").last.inner_text()
            assert "Acidity rises fastest at 30 degrees Celsius." in shown and "An answer to" not in shown
            page.locator('#chatbot .bot a[href="#src-1"]').last.click()  # the evidence's [1] works already
            page.wait_for_timeout(300)
            assert page.eval_on_selector("#src-1 details", "d => d.open")
            assert "Sourdough Fermentation Dynamics" in page.locator("#src-1").inner_text()
            page.wait_for_function(f"() => {{ const m = {last}; return m && /An answer to/.test(m.innerText) }}",
                                   timeout=30_000, polling=50)
            page.wait_for_function(f"() => !/From the papers/.test({last}.innerText)", timeout=30_000, polling=50)
            page.screenshot(path=str(tmp_path / "chat-evidence.png"), full_page=True)
        finally:
            browser.close()


def test_an_answer_quoted_from_the_papers_says_so():
    """The evidence answering in place of the model's (a declined draft, or a failed call) is named as such."""
    from rag.chat.app import final_message

    base = {"abstained": False, "answer": "Acidity peaks at 30 degrees [1].", "passages": [{"n": 1}], "claims": [],
            "provenance": {"latency_s": 0.1, "prompt_tokens": 0, "completion_tokens": 0, "lm": "extractive",
                           "program": "p", "fallback": "extractive", "declined_draft": {"answer": "x", "claims": []}}}
    assert "the model's own answer was withheld" in final_message(base)
    failed = {**base, "provenance": {**base["provenance"], "declined_draft": None}}
    assert "could not answer just now" in final_message(failed)
    plain = {**base, "provenance": {**base["provenance"], "fallback": None, "declined_draft": None}}
    assert "Quoted from the papers" not in final_message(plain)
