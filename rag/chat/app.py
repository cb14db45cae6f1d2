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

    python app.py        # RAG_HOST / RAG_PORT / RAG_AUTH=user:password, see `rag settings`
"""

from __future__ import annotations

import html
import logging
import math
import re
import sys
from collections.abc import Iterator

import rag  # noqa: F401 - first: it switches off gradio's analytics and the Hub's telemetry before gradio loads

# isort: split
import gradio as gr

from rag import logs
from rag.chat.waiting import AnswerQueue, Place, QueueFull
from rag.errors import QuestionTooLong, RagError
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
        parts.append(
            f'<div class="{css}" id="src-{n}"><b>[{n}] {html.escape(h.paper.title)}</b>'
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
    unsupported = [c for c in result.get("claims") or [] if not c["supported"]]
    if unsupported:
        terms = ", ".join(md_escape(t) for c in unsupported for t in c["unsupported_terms"])
        body += f"\n\n⚠️ **Check this:** {terms} appear in none of the passages cited."
    return f"{body}\n\n<sub>{md_escape(stats)}</sub>"


def build_app(pipe: Pipeline, queue_max: int = QUEUE_MAX, waits: AnswerQueue | None = None) -> gr.Blocks:
    settings = pipe.settings
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
                    gr.ChatInterface(
                        make_respond(pipe, waits),
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
    launch(build_app(pipe), settings.host, settings.port, auth=auth)
    return 0


def launch(demo: gr.Blocks, host: str, port: int, **kwargs) -> None:
    """Start the server (kwargs go to Blocks.launch, e.g. prevent_thread_lock=True in tests)."""
    demo.launch(server_name=host, server_port=port, show_error=True, quiet=True, css=CSS, head=HEAD, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
