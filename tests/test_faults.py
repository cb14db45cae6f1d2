"""Fault injection: the LM and the embedder misbehaving, seen from the CLI and the chat.

Each fault must end in a one-line error (or a clean abstention), never a traceback or a
hang, and leave the process able to answer the next question. Other faults are tested
where they live: a full disk during `rag batch` (test_batch), and during an index build,
the embedder failing mid-build (test_index), a stuck local generation (test_llama_engine).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from fakes import FakeEngine, fake_lm

from rag.chat import app
from rag.cli.main import main
from rag.pipeline import Pipeline

DATA = Path(__file__).parent / "data"


def reply(text: str):
    from dspy.lm15 import Message, Response, TextPart, Usage

    return Response(id=None, model="fake", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                    usage=Usage(input_tokens=100, output_tokens=max(1, len(text) // 4), total_tokens=100))


class Scripted(FakeEngine):
    """A fake engine whose reply is `text` (a callable of the prompt, or a string)."""

    def __init__(self, text) -> None:
        super().__init__()
        self.text = text

    def complete(self, request):
        self.calls += 1
        return reply(self.text(request) if callable(self.text) else self.text)


class FailsMidStream(FakeEngine):
    """Streams the start of an answer, then the connection drops."""

    def stream(self, request):
        from dspy.lm15 import StreamDeltaEvent, StreamStartEvent, TextDelta

        self.calls += 1
        yield StreamStartEvent(id=None, model="fake")
        yield StreamDeltaEvent(delta=TextDelta(text="[[ ## answer ## ]]\nState space models are ", part_index=0))
        raise ConnectionResetError("connection reset by peer in the middle of the answer")


@pytest.fixture
def cli(monkeypatch, tmp_path, fake_models, capsys):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    assert run("index")[0] == 0
    return run


def use(fake_models, engine) -> None:
    fake_models.engine, fake_models.lm = engine, fake_lm(engine)


# --- the LM -----------------------------------------------------------------------------


def test_lm_raising_mid_stream_is_an_error_in_the_chat_and_it_keeps_serving(tiny_settings, embedder):
    engine = FailsMidStream()
    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(engine))
    respond = app.make_respond(pipe)
    steps = list(respond("How do state space models scale?", [], 3, "hybrid"))
    final = steps[-1][0]
    assert final.startswith("**Error:** LM call failed") and "connection reset by peer" in final
    assert "From the papers, while the model writes" in steps[-2][0] or "State space" in steps[-2][0]
    engine.stream = FakeEngine.stream.__get__(engine)  # the connection is back
    assert "(#src-" in list(respond("sourdough acidity", [], 3, "hybrid"))[-1][0]


def test_lm_raising_in_rag_ask_is_a_one_line_error(cli, fake_models):
    class Boom(FakeEngine):
        def complete(self, request):
            raise ConnectionResetError("connection reset by peer")

    use(fake_models, Boom())
    code, out, err = cli("ask", "How do state space models scale?")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: LM call failed (") and "connection reset by peer" in err


def test_with_the_extractive_fallback_a_raising_lm_still_answers_and_says_why(cli, fake_models, monkeypatch):
    class Boom(FakeEngine):
        def complete(self, request):
            raise ConnectionResetError("connection reset by peer")

    use(fake_models, Boom())
    monkeypatch.setenv("RAG_FALLBACK", "extractive")
    code, out, err = cli("ask", "How do state space models scale?", "--json")
    result = json.loads(out)
    assert code == 0 and result["abstained"] is False and result["citations"]
    assert result["provenance"]["fallback"] == "extractive" and "connection reset by peer" in result["provenance"]["lm_error"]


@pytest.mark.parametrize("text", ["", "   \n  ", "[[ ## answer ## ]]\n\n[[ ## sources ## ]]\n[]\n\n[[ ## completed ## ]]"])
def test_an_empty_reply_is_an_abstention(cli, fake_models, text):
    use(fake_models, Scripted(text))
    code, out, err = cli("ask", "How do state space models scale?", "--json")
    data = json.loads(out)
    assert code == 0 and err == ""
    assert data["abstained"] is True and data["citations"] == [] and data["answer"] == (
        "The papers here do not answer this question.")


def garbage(request) -> str:
    import random

    rng = random.Random(7)
    alphabet = "abc xyz [1] [9] [[ ## sources ## ]] <img src=x> \x1b[31m \x00 \u202e ] [ # ! . \n" + "é漢🙂"
    return "".join(rng.choice(alphabet) for _ in range(10_000))


def test_ten_kb_of_garbage_is_survived(cli, fake_models):
    use(fake_models, Scripted(garbage))
    code, out, err = cli("ask", "How do state space models scale?", "--json")
    data = json.loads(out)
    assert code == 0 and err == ""
    assert {c["n"] for c in data["citations"]} <= {p["n"] for p in data["passages"]}
    if not data["abstained"]:
        assert "[[ ##" not in data["answer"]
    code, out, _ = cli("ask", "How do state space models scale?")
    assert code == 0 and "\x1b" not in out and "\x00" not in out


def test_garbage_in_the_chat_is_shown_escaped(tiny_settings, embedder):
    pipe = Pipeline.open(tiny_settings, embedder=embedder, lm=fake_lm(Scripted(garbage)))
    final, panel = list(app.make_respond(pipe)("How do state space models scale?", [], 3, "hybrid"))[-1]
    assert "<img" not in final and "<img" not in panel


class HangingServer:
    """A TCP server on loopback that accepts connections and never answers (a wedged LM server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        for c in self.held:
            c.close()
        self.sock.close()


def test_a_remote_lm_hanging_past_the_timeout_is_a_one_line_error(cli, fake_models, monkeypatch):
    server = HangingServer()
    try:
        fake_models.lm = None  # the real remote backend (LiteLLM), pointed at a server that never answers
        monkeypatch.setenv("RAG_TIMEOUT", "1")
        t0 = time.perf_counter()
        code, out, err = cli("ask", "How do state space models scale?", "--lm", "openai/stuck",
                             "--api-base", f"http://127.0.0.1:{server.port}/v1")
        elapsed = time.perf_counter() - t0
    finally:
        server.close()
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: LM call failed") and "RAG_TIMEOUT=1.0s" in err
    assert elapsed < 60  # sanity: it gave up (three tries of 1 s plus back-off), it did not hang


# --- the embedder -----------------------------------------------------------------------


def test_embedder_failing_during_a_rebuild_is_one_line_and_the_old_index_still_answers(cli, fake_models):
    good = fake_models.embedder

    class Broken:
        dim, name = good.dim, "broken"

        def encode(self, texts, *, progress=False):
            if len(texts) > 1:  # the build fails; single queries would work
                raise MemoryError("cannot allocate 3.2 GiB")
            return good.encode(texts)

    fake_models.embedder = Broken()
    code, out, err = cli("index", "--rebuild")
    assert code == 1 and err.startswith("Building index") and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: embedding failed (MemoryError: cannot allocate 3.2 GiB)")
    fake_models.embedder = good
    code, out, _ = cli("search", "state space", "--json", "--no-rebuild")
    assert code == 0 and json.loads(out)["results"][0]["paper_id"] == "tiny-ssm"
