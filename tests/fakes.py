"""A fake LM engine that records its calls, and a runner for the real CLI with fakes inside.

The engine plugs into dspy.LM exactly like the local llama.cpp engine, so the real
ChatAdapter formats and parses its output. A question containing FAIL raises, to
test per-row error isolation; FAKE_LM_DELAY slows every call (for kill tests);
FAKE_EMBEDDER=fail makes any embedding an error (to prove a command failed before it).

    python tests/fakes.py batch questions.txt -o out.jsonl    # `rag` with the fakes
    python tests/fakes.py app                                 # the chat (app.py) with the fakes
    python tests/fakes.py mcp                                 # `rag mcp` (stdio) with the fakes

FAKE_NET_LOG=path records, through a Python audit hook, every connection or name
lookup the process makes to anything but loopback (one line each), to prove that
nothing phones home.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class FakeEngine:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.last_prompt = ""
        self._lock = threading.Lock()

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        prompt = request.messages[-1].text or ""
        with self._lock:
            self.calls += 1
            self.last_prompt = prompt
        if self.delay:
            time.sleep(self.delay)
        question = prompt.split("[[ ## question ## ]]")[-1].split("Respond with")[0].strip()
        if "FAIL" in question:
            raise RuntimeError("fake LM failure for this question")
        if "standalone_question" in (request.system or ""):
            text = f"[[ ## standalone_question ## ]]\nstandalone: {question}\n\n[[ ## completed ## ]]"
            return Response(id=None, model="fake", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                            usage=Usage(input_tokens=50, output_tokens=10, total_tokens=60))
        text = (f"[[ ## answer ## ]]\nAn answer to: {question[:40]} [1].\n\n"
                "[[ ## sources ## ]]\n[1]\n\n[[ ## completed ## ]]")
        return Response(id=None, model="fake", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=len(prompt) // 4, output_tokens=12, total_tokens=len(prompt) // 4 + 12))

    def stream(self, request):
        """The reply in small pieces, as a real server streams it."""
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta

        response = self.complete(request)
        text = response.text or ""
        yield StreamStartEvent(id=None, model="fake")
        for i in range(0, len(text), 7):
            yield StreamDeltaEvent(delta=TextDelta(text=text[i:i + 7], part_index=0))
        yield StreamEndEvent(finish_reason="stop", usage=response.usage)

    def close(self) -> None:
        pass


def fake_lm(engine: FakeEngine | None = None):
    import dspy

    return dspy.LM("local/fake", engine=engine or FakeEngine(), cache=False, num_retries=0)


class Models:
    """What `Pipeline.open` is given when its caller (the CLI, batch, eval) passes nothing: the
    keyword embedder and `lm` (a fake LM on `engine` by default; set it to a DummyLM, or to None
    for the real backend)."""

    def __init__(self, embedder, engine: FakeEngine) -> None:
        self.embedder = embedder
        self.engine = engine
        self.lm = fake_lm(engine)


def inject(models: Models, setattr=setattr) -> Models:
    """Make every `Pipeline.open` use `models` unless it is handed its own embedder and LM, and
    `rag.index.embed.get_embedder` (what `rag index --add` loads) return the fake embedder."""
    import rag.index.embed
    from rag.pipeline import Pipeline

    real_open = Pipeline.open.__func__

    def open_with_fakes(cls, settings, **kw):
        if kw.get("embedder") is None:
            kw["embedder"] = models.embedder
        if kw.get("lm") is None and models.lm is not None:
            kw["lm"] = models.lm
        return real_open(cls, settings, **kw)

    setattr(Pipeline, "open", classmethod(open_with_fakes))
    setattr(rag.index.embed, "get_embedder", lambda *args, **kw: models.embedder)
    return models


class FailingEmbedder:
    """An embedder that must not be reached."""

    name, dim = "fail", 256

    def encode(self, texts, *, progress=False):
        raise AssertionError("the embedder was called")


def install_fakes(delay: float = 0.0, embedder=None) -> FakeEngine:
    """Make the pipeline use the keyword embedder and the fake LM (for `rag` run in a subprocess)."""
    from conftest import KeywordEmbedder

    return inject(Models(embedder or KeywordEmbedder(), FakeEngine(delay))).engine


LOOPBACK = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::")


def log_network(path: str) -> None:
    """Append every non-loopback connect / getaddrinfo of this process to `path` (audit hooks see them all)."""
    import socket

    def hook(event: str, args: tuple) -> None:
        if event == "socket.connect":
            sock, address = args
            if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
                target = f"connect {address}"
            else:
                return
        elif event == "socket.getaddrinfo" and args[0] not in LOOPBACK and args[0] is not None:
            target = f"getaddrinfo {args[0]}"
        else:
            return
        with open(path, "a") as f:
            f.write(target + "\n")

    sys.addaudithook(hook)


def fake_pipeline(settings, log_dir: str | None = None, delay: float = 0.0):
    """A pipeline with the fakes, for a Ray batch worker; each load leaves a file in `log_dir`; every LM call
    takes `delay` seconds."""
    install_fakes(delay)
    from rag.pipeline import Pipeline

    if log_dir:
        (Path(log_dir) / f"load-{os.getpid()}-{time.monotonic_ns()}").touch()
    return Pipeline.open(settings, rebuild="never")


if __name__ == "__main__":
    if os.environ.get("FAKE_NET_LOG"):
        log_network(os.environ["FAKE_NET_LOG"])
    import rag  # noqa: F401 - first, as the real entry points do: it sets the offline environment
    install_fakes(float(os.environ.get("FAKE_LM_DELAY", "0")),
                  FailingEmbedder() if os.environ.get("FAKE_EMBEDDER") == "fail" else None)
    if sys.argv[1:2] == ["app"]:
        import app

        raise SystemExit(app.main())
    from rag.cli.main import main

    raise SystemExit(main(sys.argv[1:]))


class JudgedEngine(FakeEngine):
    """A fake engine with logprobs: it answers with `reply` (fields -> values, in DSPy's chat format) and,
    when asked for logprobs, reports P(true) = `p_true` where the `answerable` value goes."""

    supported_params = frozenset({"temperature", "max_tokens", "logprobs", "top_logprobs"})

    def __init__(self, p_true: float, reply: dict) -> None:
        super().__init__()
        self.p_true = p_true
        self.reply = reply
        self.requests = []

    def complete(self, request):
        import math

        from dspy.lm15 import Message, Response, TextPart, TokenLogprob, TopLogprob, Usage

        self.requests.append(request)
        self.calls += 1
        text = "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in self.reply.items()) + "[[ ## completed ## ]]"
        logprobs = None
        if request.config.logprobs is not None:
            top = (TopLogprob(token="True", logprob=math.log(max(self.p_true, 1e-9))),
                   TopLogprob(token="False", logprob=math.log(max(1 - self.p_true, 1e-9))))
            head = tuple(TokenLogprob(token=t, logprob=-0.01) for t in ["[[", " ##", " answerable", " ##", " ]]", "\n"])
            logprobs = head + (TokenLogprob(token=str(self.reply.get("answerable", "True")),
                                            logprob=max(t.logprob for t in top), top=top),)
        return Response(id=None, model="fake", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=100, output_tokens=30, total_tokens=130), logprobs=logprobs)


class VerdictEngine(FakeEngine):
    """A fake engine with logprobs for yes/no questions: it replies with `reply` (chat format) and reports
    `probs` (label -> probability) as the alternatives where the `verdict` value goes."""

    supported_params = frozenset({"temperature", "max_tokens", "logprobs", "top_logprobs"})

    def __init__(self, reply: dict, probs: dict[str, float]) -> None:
        super().__init__()
        self.reply, self.probs = reply, probs

    def complete(self, request):
        import math

        from dspy.lm15 import Message, Response, TextPart, TokenLogprob, TopLogprob, Usage

        self.calls += 1
        tokens = []
        for k, v in self.reply.items():
            tokens += [TokenLogprob(token=t, logprob=-0.01) for t in ["[[", " ##", f" {k}", " ##", " ]]", "\n"]]
            top = ()
            if k == "verdict" and request.config.logprobs is not None:
                top = tuple(TopLogprob(token=label, logprob=math.log(p)) for label, p in self.probs.items())
            tokens += [TokenLogprob(token=str(v), logprob=-0.1, top=top), TokenLogprob(token="\n\n", logprob=-0.01)]
        text = "".join(t.token for t in tokens) + "[[ ## completed ## ]]"
        return Response(id=None, model="fake", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=100, output_tokens=30, total_tokens=130),
                        logprobs=tuple(tokens) if request.config.logprobs is not None else None)


class JSONEngine(FakeEngine):
    """A fake engine that, like the local llama.cpp one, holds its reply to the JSON schema (so the program
    talks JSON to it) and streams the reply in small pieces."""

    supports_response_schema = True
    supported_params = frozenset({"temperature", "max_tokens", "response_format"})

    def complete(self, request):
        import json

        from dspy.lm15 import Message, Response, TextPart, Usage

        self.calls += 1
        assert request.config.response_format, "the program should ask for a schema-held reply"
        text = json.dumps({"answerable": True, "answer": "They use a diagonal state matrix initialised with HiPPO [1].",
                           "sources": [1]}, indent=2)
        return Response(id=None, model="fake", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=100, output_tokens=30, total_tokens=130))
