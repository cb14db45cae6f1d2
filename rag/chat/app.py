"""The Gradio chat: glue between the browser and `Pipeline.ask_stream`.

No retrieval or prompting lives here: this file turns pipeline events into chat
messages and an HTML sources panel, and all text from the corpus or the model is
escaped (HTML and Markdown) before it is shown, so it never runs script or loads
a remote image. The model is loaded once per process. Questions wait in line for
it in an `AnswerQueue` (rag/chat/waiting.py): one at a time on the local model, each
told its place and an estimated wait while it waits, and one whose wait would
exceed RAG_MAX_WAIT is refused at once with the estimate. Gradio's own queue only
caps the number of open requests (`QUEUE_MAX`). Gradio's analytics are off: nothing
here touches the network.

Every answer can be rated (👍 / 👎 on the message) and corrected in a box under the chat; the rating and
the whole result it rates go to rag/feedback.py's store at once. With RAG_MCP=1 the MCP tools of
rag/mcp_server.py are served at /mcp/ too (behind RAG_AUTH), their answers waiting in the same line.

    python app.py        # RAG_HOST / RAG_PORT / RAG_AUTH=user:password, see `rag settings`
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import re
import sys
import textwrap
import threading
from collections.abc import Iterator

import rag  # noqa: F401 - first: it switches off gradio's analytics and the Hub's telemetry before gradio loads

# isort: split
import gradio as gr

from rag import logs
from rag.answer.poison import instructions_to_the_model
from rag.chat.waiting import AnswerQueue, Place, QueueFull
from rag.errors import QuestionTooLong, RagError
from rag.feedback import CORRECTIONS, FeedbackStore, db_path, question_key
from rag.pipeline import Pipeline, validate_question
from rag.settings import RETRIEVAL_MODES, Settings

log = logging.getLogger(__name__)

# Open requests Gradio holds at once (waiting in the AnswerQueue or being answered); beyond it Gradio
# itself answers "queue is full". The AnswerQueue refuses long before, with an estimate.
QUEUE_MAX = 64
# First guesses of an answer's length, until the queue has timed real answers.
TYPICAL_ANSWER_S = {"local": 11.0, "remote": 5.0}  # the first guess, until answers are timed (local: the dev p50, 10.3 s)
EXAMPLES = [
    "What are the two subtasks of the I am a Strange Dataset benchmark?",
    "How much more parameter-efficient is LoReFT than prior PEFTs?",
    "Which papers study state space models?",
    "Does OCR quality hurt retrieval-augmented generation?",
]

CSS = """
#sources .src { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; margin: 6px 0; }
#sources .src.cited { border-color: var(--color-accent); }
#sources .warn { color: var(--error-text-color, #b45309); font-size: 0.9em; margin: 4px 0; }
#sources .src.flash { box-shadow: 0 0 0 3px var(--color-accent); }
#sources .passage { margin: 4px 0; }
#sources mark { background: #fff3b0; color: inherit; }
#sources .meta, .stats { color: var(--body-text-color-subdued); font-size: 0.85em; }
"""

# Clicking [n] in an answer scrolls to source n, opens its abstract and flashes it.
HEAD = """<script>
document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[href^="#src-"]');
  if (!a) return;
  ev.preventDefault(); ev.stopPropagation();
  const el = document.getElementById(a.getAttribute('href').slice(1));
  if (!el) return;
  const d = el.querySelector('details'); if (d) d.open = true;
  el.scrollIntoView({behavior: 'smooth', block: 'center'});
  el.classList.add('flash'); setTimeout(() => el.classList.remove('flash'), 1500);
}, true);
</script>"""

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md_escape(text: str) -> str:
    """Text shown literally by a Markdown renderer: no links, images, HTML or emphasis from it."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def render_answer(answer: str, n_passages: int) -> str:
    """Escaped answer with each valid [n] turned into a link to source n; a list answer stays a list."""

    def link(m: re.Match) -> str:
        n = int(m.group(1))
        return f"[\\[{n}\\]](#src-{n})" if 1 <= n <= n_passages else m.group(0)

    lines = []
    for line in answer.splitlines():
        item = line.startswith("- ")
        escaped = re.sub(r"\\\[(\d+)\\\]", link, md_escape(line[2:] if item else line))
        lines.append(f"- {escaped}" if item else escaped)
    return "\n".join(lines)


def highlight(abstract: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for start, end in spans:
        out.append(html.escape(abstract[pos:start]))
        out.append(f"<mark>{html.escape(abstract[start:end])}</mark>")
        pos = end
    out.append(html.escape(abstract[pos:]))
    return "".join(out)


def render_sources(hits: list, cited: set[int] | None = None, query: str | None = None, note: str = "") -> str:
    """The sources panel: each passage as it was given to the model, its abstract on expand."""
    parts = ['<div id="sources-panel">']
    if note:
        parts.append(f'<p class="meta">{html.escape(note)}</p>')
    if query:
        parts.append(f'<p class="meta">Searched for: <em>{html.escape(query)}</em></p>')
    if not hits:
        parts.append('<p class="meta">No passages yet.</p>')
    for n, h in enumerate(hits, 1):
        css = "src cited" if cited and n in cited else "src"
        flagged = instructions_to_the_model(f"{h.paper.title}. {h.paper.abstract}")
        warn = (f'<p class="warn">⚠️ This abstract holds {len(flagged)} sentence{"s" if len(flagged) > 1 else ""} '
                f'addressed to an AI assistant (e.g. "{html.escape(textwrap.shorten(flagged[0].sentence, 90))}"); '
                'they were not given to the model.</p>') if flagged else ""
        parts.append(
            f'<div class="{css}{" flagged" if flagged else ""}" id="src-{n}"><b>[{n}] {html.escape(h.paper.title)}</b>'
            f'{warn}'
            f'<div class="passage">{html.escape(h.text)}</div>'
            f'<details><summary>Full abstract</summary><p>{highlight(h.paper.abstract, h.spans)}</p>'
            f'<p class="meta">{html.escape(h.paper.id)} · {html.escape(", ".join(h.paper.sources))}</p></details></div>')
    parts.append("</div>")
    return "".join(parts)


def history_pairs(history: list) -> list[tuple[str, str]]:
    """(question, answer) pairs from Gradio's messages-format history."""
    pairs, question = [], None
    for msg in history or []:
        role, content = msg.get("role"), msg.get("content")
        text = content if isinstance(content, str) else ""
        if role == "user":
            question = text
        elif role == "assistant" and question is not None:
            pairs.append((question, re.sub(r"\\(.)", r"\1", text.split("\n\n")[0])))
            question = None
    return pairs


def duration(seconds: float) -> str:
    """'45 s', '3 min': a wait estimate, rounded up (a wait longer than promised is worse than a shorter one)."""
    if seconds < 100:
        return f"{max(5, math.ceil(seconds / 5) * 5)} s"
    return f"{math.ceil(seconds / 60)} min"


def waiting_message(place: Place) -> str:
    ahead = f"{place.ahead} question{'s' if place.ahead != 1 else ''} ahead of yours"
    return f"_Waiting for the model: {ahead}, about {duration(place.wait_s)} to wait._"


def busy_message(e: QueueFull) -> str:
    return (f"**The chat is busy.** {e.place.ahead} questions are ahead of yours: about {duration(e.place.wait_s)} "
            f"of answering, more than the {duration(e.max_wait)} this chat lets a question wait. "
            f"Please try again in a few minutes.")


def make_respond(pipe: Pipeline, waits: AnswerQueue | None = None):
    waits = waits if waits is not None else make_queue(pipe.settings)

    def respond(message: str, history: list, k: int, retrieval: str) -> Iterator[tuple[str, str]]:
        try:
            validate_question(message)
        except RagError:  # said at once, without waiting in line for the model
            yield from answer(message, history, k, retrieval)
            return
        try:
            ticket = waits.enter()
        except QueueFull as e:
            yield busy_message(e), render_sources([])
            return
        ok = False
        try:
            for place in ticket.wait():
                yield waiting_message(place), render_sources([])
            ok = yield from answer(message, history, k, retrieval)
        finally:
            ticket.done(record=ok)  # only answers that ran to the end teach the queue how long one takes

    def answer(message: str, history: list, k: int, retrieval: str) -> Iterator[tuple[str, str]]:
        """The answer's messages; returns whether it ran to the end."""
        hits, query, text = [], None, ""
        try:
            for ev in pipe.ask_stream(message, history_pairs(history), k=int(k), mode=retrieval):
                kind = ev["type"]
                if kind == "status":
                    yield f"_{md_escape(ev['text'])}_", render_sources(hits, query=query)
                elif kind == "rewritten":
                    query = ev["query"]
                elif kind == "passages":
                    hits = ev["hits"]
                    yield "_Writing the answer..._", render_sources(hits, query=query)
                elif kind == "evidence":
                    hits = ev["hits"]
                    yield evidence_message(ev["text"], len(hits)), render_sources(hits, query=query)
                elif kind == "token":
                    text += ev["text"]
                    yield md_escape(text), render_sources(hits, query=query)
                elif kind == "done":
                    yield final_message(ev["result"]), render_sources(
                        ev["hits"], {c["n"] for c in ev["result"]["citations"]}, ev["query"] if history else None)
                    return True
        except QuestionTooLong as e:
            yield (f"Your question is {e.length:,} characters; the limit is {e.limit:,}. Please shorten it.",
                   render_sources([]))
        except RagError as e:
            yield f"**Error:** {md_escape(str(e))}", render_sources(hits, query=query)
        except Exception as e:  # noqa: BLE001 - the app keeps serving whatever one answer does
            log.exception("answer failed")
            yield f"**Error:** the answer failed ({md_escape(type(e).__name__)}). Try again.", render_sources(hits)
        return False

    return respond


def evidence_message(text: str, n_passages: int) -> str:
    """What the message shows as soon as retrieval returns: the best evidence, quoted and cited (linked like an
    answer's [n]), until the model's answer replaces it as it streams."""
    return f"{render_answer(text, n_passages)}\n\n<sub>{md_escape(EVIDENCE_NOTE)}</sub>"


EVIDENCE_NOTE = "From the papers, while the model writes its answer..."


def make_queue(settings: Settings) -> AnswerQueue:
    """The line questions wait in: one answer at a time on the local model (it has one slot), a few on a
    remote backend; bounded by RAG_MAX_WAIT."""
    local = settings.lm == "local"
    return AnswerQueue(slots=1 if local else 4, max_wait=settings.max_wait,
                       typical_s=TYPICAL_ANSWER_S["local" if local else "remote"])


def final_message(result: dict) -> str:
    prov = result["provenance"]
    stats = (f"{prov['latency_s']:.1f} s · {prov['prompt_tokens']} + {prov['completion_tokens']} tokens · "
             f"{prov['lm']} · program {prov['program']}")
    if result["abstained"]:
        near = "; ".join(md_escape(p["title"]) for p in result["passages"][:3])
        body = "The papers here do not answer this."
        if near:
            body += f"\n\nYou may mean: {near}"
        return f"{body}\n\n<sub>{md_escape(stats)}</sub>"
    body = render_answer(result["answer"], len(result["passages"]))
    if prov.get("fallback") and prov.get("declined_draft"):
        body += "\n\n_Quoted from the papers: the model's own answer was withheld (it did not hold up against them)._"
    elif prov.get("fallback"):
        body += "\n\n_Quoted from the papers: the model could not answer just now._"
    unsupported = [c for c in result.get("claims") or [] if not c["supported"]]
    if unsupported:
        terms = ", ".join(md_escape(t) for c in unsupported for t in c["unsupported_terms"])
        if terms:
            body += f"\n\n⚠️ **Check this:** {terms} appear in none of the passages cited."
        for c in unsupported:
            if not c["unsupported_terms"] and c.get("reason"):
                body += f"\n\n⚠️ **Check this:** {md_escape(c['reason'])}."
    return f"{body}\n\n<sub>{md_escape(stats)}</sub>"


def build_app(pipe: Pipeline, queue_max: int = QUEUE_MAX, waits: AnswerQueue | None = None,
              feedback: FeedbackStore | None = None) -> gr.Blocks:
    settings = pipe.settings
    feedback = feedback if feedback is not None else FeedbackStore(db_path(settings.cache_dir))
    answers = AnswerLog()
    papers = list(pipe.index.papers.values())

    def paper_rows(query: str = "") -> list[list[str]]:
        q = (query or "").lower().strip()
        return [[p.title, ", ".join(p.sources), p.id] for p in papers if q in p.title.lower()]

    with gr.Blocks(title="papers-rag") as demo:
        gr.Markdown(f"## papers-rag\nAsk questions of {len(papers)} research-paper abstracts. "
                    "Every claim cites its source: click a [n] to see the passage.")
        with gr.Tab("Chat"):
            sources = gr.HTML(render_sources([]), elem_id="sources", render=False)
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Accordion("Settings", open=False):
                        k = gr.Slider(1, 8, value=settings.k, step=1, label="Passages (k)")
                        mode = gr.Radio(list(RETRIEVAL_MODES), value=settings.retrieval, label="Retrieval")
                        gr.Markdown(f"LM: `{pipe.lm_label}` · program: `{pipe.program_label}` · "
                                    f"index: `{pipe.index.name}` (set with RAG_LM / RAG_PROGRAM)")
                    chat = gr.ChatInterface(
                        make_respond(recording(pipe, answers), waits),
                        chatbot=gr.Chatbot(height=520, sanitize_html=True, elem_id="chatbot",
                                           placeholder="Ask about the papers, or pick an example below."),
                        additional_inputs=[k, mode],
                        additional_outputs=[sources],
                        examples=[[e, settings.k, settings.retrieval] for e in EXAMPLES],
                        example_labels=EXAMPLES,
                        run_examples_on_click=True,
                        cache_examples=False,
                        api_name="chat",
                    )
                    feedback_panel(chat.chatbot, feedback, answers)
                with gr.Column(scale=2):
                    gr.Markdown("### Sources")
                    sources.render()
        with gr.Tab("Papers"):
            filt = gr.Textbox(label="Filter titles", placeholder="e.g. state space")
            table = gr.Dataframe(paper_rows(), headers=["Title", "Source pages", "ID"], interactive=False, wrap=True)
            filt.change(paper_rows, filt, table, api_name="papers")
    # Every open request runs its handler at once: it waits in the AnswerQueue, which admits one answer at a
    # time on the local model and tells the others where they stand. Gradio refuses beyond queue_max.
    demo.queue(max_size=queue_max, default_concurrency_limit=queue_max)
    return demo


# --- feedback: every answer can be rated and corrected; rag/feedback.py stores it ---------------------------------

FEEDBACK_HELP = ("Rate an answer with 👍 / 👎 on the message; it is saved at once. To say what was wrong, pick it "
                 "below and press Send: it applies to the answer you rated last.")


class AnswerLog:
    """The latest answers' `rag ask --json` results, by question, so a rating stores the whole result it rates."""

    def __init__(self, keep: int = 2000) -> None:
        self.keep = keep
        self._by_question: dict[str, list[dict]] = {}
        self._lock = threading.Lock()

    def add(self, result: dict) -> None:
        with self._lock:
            key = question_key(result["question"])
            earlier = self._by_question.pop(key, [])  # popped and put back: the dict stays in least-recent order
            self._by_question[key] = [*earlier, result][-8:]
            while len(self._by_question) > self.keep:
                del self._by_question[next(iter(self._by_question))]

    def find(self, question: str, message: str) -> dict | None:
        """The result whose chat message is `message`, else the latest one for `question`."""
        with self._lock:
            results = list(self._by_question.get(question_key(question), []))
        same = [r for r in results if r["answer"] and
                render_answer(r["answer"], len(r["passages"])).split("\n")[0] in message]
        return (same or results or [None])[-1]


class _Recording:
    """`pipe` whose streamed answers are also kept in an AnswerLog (the chat's handlers see the same pipeline)."""

    def __init__(self, pipe: Pipeline, log: AnswerLog) -> None:
        self._pipe, self._log = pipe, log

    def __getattr__(self, name: str):
        return getattr(self._pipe, name)

    def ask_stream(self, *args, **kwargs) -> Iterator[dict]:
        for ev in self._pipe.ask_stream(*args, **kwargs):
            if ev["type"] == "done":
                self._log.add(ev["result"])
            yield ev


def recording(pipe: Pipeline, log: AnswerLog) -> Pipeline:
    return _Recording(pipe, log)  # type: ignore[return-value]


def _text(content) -> str:
    """A chat message's text, whatever shape Gradio gives it in (a string, a text part, a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, list | tuple):
        return "\n".join(_text(c) for c in content)
    return ""


def rated_message(history: list, index) -> tuple[str, str] | None:
    """(question, answer message) of the assistant message at `index` of the chat history."""
    i = index[0] if isinstance(index, list | tuple) else index
    if not isinstance(i, int) or not 0 <= i < len(history or []) or history[i].get("role") != "assistant":
        return None
    for msg in reversed(history[:i]):
        if msg.get("role") == "user":
            return _text(msg.get("content")), _text(history[i].get("content"))
    return None


def make_rating_handlers(store: FeedbackStore, answers: AnswerLog):
    """The like/dislike and correction handlers: (history, LikeData) -> (row id, note); (row id, kind, text, n) -> note."""

    def on_like(history: list, data: gr.LikeData) -> tuple[int | None, str]:
        found = rated_message(history, data.index)
        result = answers.find(*found) if found else None
        if result is None:
            return None, "_Only a finished answer can be rated._"
        if data.liked not in (True, False):  # a thumb clicked again: the rating withdrawn in the page
            return None, "_Rating cleared here; the saved one stays until you rate this answer again._"
        liked = data.liked is True
        try:
            row = store.add(result, 1 if liked else -1)
        except RagError as e:
            return None, f"**Not saved:** {md_escape(str(e))}"
        return row, f"_Saved: you {'liked' if liked else 'disliked'} the answer to “{md_escape(found[0][:80])}”._"

    def on_correct(row: int | None, kind: str | None, text: str, n: float | None) -> str:
        if row is None:
            return "_Rate the answer first (👍 or 👎 on it), then say what was wrong._"
        if kind not in CORRECTIONS:
            return "_Pick what was wrong first._"
        try:
            store.correct(row, kind, text if kind == "right_answer" else None,
                          int(n) if kind in ("unsupported_source", "right_answer") and n else None)
        except RagError as e:
            return f"**Not saved:** {md_escape(str(e))}"
        return f"_Saved the correction: {md_escape(CORRECTIONS[kind])}. Thank you._"

    return on_like, on_correct


def feedback_panel(chatbot: gr.Chatbot, store: FeedbackStore, answers: AnswerLog) -> None:
    """The correction box under the chat, and the chatbot's like event wired to the store."""
    on_like, on_correct = make_rating_handlers(store, answers)
    rated = gr.State(None)
    with gr.Accordion("Correct an answer", open=False, elem_id="feedback"):
        gr.Markdown(FEEDBACK_HELP)
        with gr.Row():
            kind = gr.Dropdown([(label, key) for key, label in CORRECTIONS.items()], value=None, label="What was wrong",
                               elem_id="feedback-kind")
            # no `minimum`: an empty box reaches the server as 0, which Gradio would refuse with an error for every
            # correction that names no source; on_correct reads 0 or nothing as "no source"
            n = gr.Number(label="Source [n] (for a source)", precision=0, elem_id="feedback-n")
        text = gr.Textbox(label="The right answer (its key facts, separated by ';')", elem_id="feedback-text")
        send = gr.Button("Send correction", elem_id="feedback-send")
    note = gr.Markdown(elem_id="feedback-note")
    chatbot.like(on_like, [chatbot], [rated, note], api_name="rate", queue=False)
    send.click(on_correct, [rated, kind, text, n], [note], api_name="correct", queue=False)


# --- the MCP tools over HTTP at /mcp/ (RAG_MCP=1): rag/mcp_server.py's, through the chat's line for the model ---

MCP_PATH = "/mcp"


@contextlib.contextmanager
def in_line(waits: AnswerQueue) -> Iterator[None]:
    """Wait in the chat's AnswerQueue like a chat question (one answer at a time on the local model)."""
    try:
        ticket = waits.enter()
    except QueueFull as e:
        raise RagError(f"the chat is busy: about {duration(e.place.wait_s)} of answering ahead; try again later") from None
    ok = False
    try:
        for _ in ticket.wait():
            pass
        yield
        ok = True
    finally:
        ticket.done(record=ok)


def mcp_launch_kwargs(pipe: Pipeline, waits: AnswerQueue, auth: tuple[str, str] | None, host: str) -> dict:
    """Blocks.launch keyword arguments that mount the MCP tools at /mcp/ (basic auth with RAG_AUTH when set)."""
    from rag.mcp_server import PaperTools, http_app

    mcp_app, mcp_lifespan = http_app(PaperTools(pipe=pipe, gate=lambda: in_line(waits)), auth, host)

    @contextlib.asynccontextmanager
    async def lifespan(fastapi_app):
        fastapi_app.mount(MCP_PATH, mcp_app)
        async with mcp_lifespan():
            yield

    return {"app_kwargs": {"lifespan": lifespan}}


def parse_auth(value: str) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise RagError("RAG_AUTH must be 'user:password'")
    return user, password


def main() -> int:
    logs.setup()
    try:
        settings = Settings.load()
        auth = parse_auth(settings.auth)
        print("Loading the index and the model...", file=sys.stderr, flush=True)
        pipe = Pipeline.open(settings, progress=sys.stderr.isatty())
        pipe.warm()  # the first question should be as fast as the second
        logs.quiet_libraries()
    except RagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"papers-rag chat on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    waits = make_queue(settings)
    extra = mcp_launch_kwargs(pipe, waits, auth, settings.host) if settings.mcp else {}  # RAG_MCP=1
    if extra:
        print(f"MCP tools on http://{settings.host}:{settings.port}{MCP_PATH}/", file=sys.stderr, flush=True)
    launch(build_app(pipe, waits=waits), settings.host, settings.port, auth=auth, **extra)
    return 0


def launch(demo: gr.Blocks, host: str, port: int, **kwargs) -> None:
    """Start the server (kwargs go to Blocks.launch, e.g. prevent_thread_lock=True in tests)."""
    demo.launch(server_name=host, server_port=port, show_error=True, quiet=True, css=CSS, head=HEAD, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
