"""The papers as tools for agents: a Model Context Protocol (MCP) server over one `Pipeline`.

`PaperTools` holds the three tools as plain functions over a pipeline (no MCP in them, so the Gradio
chat serves the same ones over HTTP): `search_papers` (the `rag search --json` object), `ask_papers`
(the `rag ask --json` object) and `list_papers` (the `rag papers --json` rows whose title matches).
`build_server` wraps them in the official SDK's `MCPServer` with descriptions written for a model,
and turns a `RagError` into an MCP tool error (`is_error`) carrying the same one-line message the
CLI prints; `serve` runs it on stdio (`rag mcp`), `http_app` makes it an ASGI app (streamable HTTP,
stateless, behind HTTP basic auth when given) that the chat mounts at /mcp/ with RAG_MCP=1.

The pipeline (index, embedder, model) is opened lazily, once per server, on the first tool call, so
the client's handshake is answered at once; calls then run one at a time (the local model has one
slot). Nothing is printed on stdout: it is the protocol's wire.

Left out: resources and prompts (three tools are the whole surface), OAuth (over HTTP, RAG_AUTH's one
shared login is the gate), and conversation memory (an agent asks standalone questions).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import threading
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from rag.errors import RagError
from rag.pipeline import Pipeline, validate_question
from rag.settings import Settings

SERVER_NAME = "papers-rag"
MAX_K = 20
LIST_LIMIT = 500
# k's range is in the schema for the model and checked by the tool, whose error is one line (pydantic's is not).
K_RANGE = {"minimum": 1, "maximum": MAX_K}

INSTRUCTIONS = (
    "Search and ask a fixed collection of research-paper abstracts (machine learning and NLP papers). "
    "Answers cite their sources as [n], which refer to the numbered passages returned with them; an answer "
    "with abstained=true means the papers do not answer the question: say so rather than guess.")

DESCRIPTIONS = {
    "search_papers": (
        "Find the passages of research-paper abstracts most relevant to a query (hybrid keyword + semantic "
        "search; no language model, fast). Use it to see which papers discuss a topic, or to read the evidence "
        "yourself. Returns {question, results: [{rank, paper_id, title, score, text}]}, best first."),
    "ask_papers": (
        "Answer a question from the research-paper abstracts, with [n] citations to the passages it used. "
        "Ask one standalone question (no 'it' or 'that paper': name the thing). Slow: a local model writes the "
        "answer (about 10 s, longer on the first call while it loads). Returns the answer object: answer, "
        "abstained (true: the papers do not answer it, the answer is a refusal), citations [{n, paper_id, title}], "
        "passages [{n, paper_id, title, text, score}], claims (each answer sentence and whether its names and "
        "numbers appear in the passages it cites) and provenance (model, index, program, latency)."),
    "list_papers": (
        "List the papers in the collection whose title contains the filter text (case-insensitive; empty "
        f"lists all, at most {LIST_LIMIT}). Returns {{count, papers: [{{paper_id, title, sources}}]}}; use "
        "search_papers to find papers by content rather than title."),
}


class PaperTools:
    """The tools over one pipeline, opened on first use (`pipe` may be handed in: the chat, tests)."""

    def __init__(self, settings: Settings | None = None, pipe: Pipeline | None = None,
                 gate: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        """`gate()` is entered around each answer: the chat passes its line for the model (rag/chat/waiting.py)."""
        self._settings = settings
        self._pipe = pipe
        self._lock = threading.Lock()
        self._gate = gate or contextlib.nullcontext

    def pipeline(self) -> Pipeline:
        """The loaded pipeline; the first call opens it (settings from RAG_* unless given)."""
        with self._lock:
            if self._pipe is None:
                self._pipe = Pipeline.open(self._settings or Settings.load(), progress=False)
            return self._pipe

    def search_papers(self, query: str, k: int = 6) -> dict[str, Any]:
        """The `rag search --json` object for `query`, `k` papers."""
        question = validate_question(query)
        if not 1 <= k <= MAX_K:
            raise RagError(f"k must be between 1 and {MAX_K}, got {k}")
        pipe = self.pipeline()
        with self._lock:
            result = pipe.search(question, k=k)
        return {"question": question, "results": [h.to_json() for h in result.hits]}

    def ask_papers(self, question: str) -> dict[str, Any]:
        """The `rag ask --json` object for `question`."""
        validate_question(question)  # before the model loads
        pipe = self.pipeline()
        with self._gate(), self._lock:
            return pipe.ask(question)

    def list_papers(self, filter: str = "") -> dict[str, Any]:
        """Papers whose title contains `filter` (case-insensitive), as `rag papers --json` rows less the abstract."""
        needle = (filter or "").lower().strip()
        papers = [p for p in self.pipeline().index.papers.values() if needle in p.title.lower()]
        return {"count": len(papers),
                "papers": [{"paper_id": p.id, "title": p.title, "sources": list(p.sources)} for p in papers[:LIST_LIMIT]]}


def build_server(tools: PaperTools):
    """The MCP server (the SDK's `MCPServer`) with the three tools; a RagError becomes a tool error."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations

    server = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=True)

    def guarded(fn, *args: Any) -> dict[str, Any]:
        try:
            return fn(*args)
        except RagError as e:  # the one-line message the CLI prints, for the model to read
            raise ToolError(str(e)) from None

    @server.tool(description=DESCRIPTIONS["search_papers"], annotations=read_only)
    def search_papers(query: Annotated[str, Field(description="what to search for: a question or keywords")],
                      k: Annotated[int, Field(description="how many papers to return", json_schema_extra=K_RANGE)] = 6,
                      ) -> dict[str, Any]:
        return guarded(tools.search_papers, query, k)

    @server.tool(description=DESCRIPTIONS["ask_papers"], annotations=read_only)
    def ask_papers(question: Annotated[str, Field(description="one standalone question about the papers")],
                   ) -> dict[str, Any]:
        return guarded(tools.ask_papers, question)

    @server.tool(description=DESCRIPTIONS["list_papers"], annotations=read_only)
    def list_papers(filter: Annotated[str, Field(description="text the title must contain; empty for all")] = "",
                    ) -> dict[str, Any]:
        return guarded(tools.list_papers, filter)

    return server


def serve(settings: Settings) -> None:
    """Run the MCP server on stdin/stdout until the client closes it."""
    build_server(PaperTools(settings)).run("stdio")


def http_app(tools: PaperTools, auth: tuple[str, str] | None = None, host: str = "127.0.0.1"):
    """(ASGI app, lifespan) serving the tools over streamable HTTP at the app's root; mount it (e.g. at /mcp) and
    enter `lifespan()` in the host server's lifespan. With `auth`, a request without that basic-auth login gets 401."""
    server = build_server(tools)
    app = server.streamable_http_app(streamable_http_path="/", stateless_http=True, json_response=True, host=host)
    return (app if auth is None else BasicAuth(app, *auth)), server.session_manager.run


class BasicAuth:
    """ASGI middleware: HTTP basic auth with one user and password, compared in constant time."""

    def __init__(self, app, user: str, password: str) -> None:
        self.app = app
        self._expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"www-authenticate", b'Basic realm="papers-rag"'),
                                        (b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"RAG_AUTH login required"})
                return
        await self.app(scope, receive, send)
