"""The embedded llama.cpp engine: its HTTP side locked down, and no hang on a stuck generation.

xllamacpp always starts llama.cpp's HTTP server next to the in-process model. The fast
tests check the parameters it is started with and the engine's timeout and cancel
logic against a stand-in server; the slow test loads the real model and shows that a
client without the per-process API key is refused, and that nothing listens on TCP.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time

import pytest

import rag.lm.llama as llama
from rag.errors import LMError
from rag.lm.llama import LlamaCppEngine, server_params

# --- the parameters the server starts with ------------------------------------------------


@pytest.fixture
def short_tmp():
    """A temporary directory with a short path (a Unix socket path is limited to 107 bytes)."""
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="rag-t-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_server_params_lock_the_http_side_down(tmp_path):
    sock = str(tmp_path / "llama.sock")
    p = server_params(tmp_path / "m.gguf", 2048, 2, sock, "k3y")
    assert p.hostnames == [sock]  # a .sock path: a Unix socket, no TCP port
    assert p.api_keys == ["k3y"]
    assert (p.endpoint_slots, p.endpoint_props, p.endpoint_metrics, p.ui) == (False, False, False, False)
    assert p.n_ctx == 2048 and p.n_parallel == 1 and p.model.path == str(tmp_path / "m.gguf")


def test_socket_directories_are_private_and_those_of_dead_processes_are_removed(short_tmp):
    tmp_path = short_tmp
    dead = tmp_path / "rag-llm-999999-abc"  # a process killed before its exit handler ran
    dead.mkdir()
    (dead / "llama.sock").write_text("")
    mine = llama._private_dir(str(tmp_path))
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o700
    assert os.path.basename(mine).startswith(f"rag-llm-{os.getpid()}-")
    assert not dead.exists()
    alive = tmp_path / f"rag-llm-{os.getppid()}-xyz"
    alive.mkdir()
    llama._private_dir(str(tmp_path))
    assert alive.exists()  # another live process's directory is left alone


# --- timeouts and cancelling, against a stand-in for xllamacpp.Server ----------------------


class StandIn:
    """Behaves like xllamacpp.Server.handle_chat_completions: `script` is the list of chunks to stream
    (an Exception is raised, "hang" blocks until released)."""

    def __init__(self, script, pace: float = 0.0):
        self.script, self.pace = script, pace
        self.release = threading.Event()
        self.stopped_by_callback = self.finished = False

    def handle_chat_completions(self, body, callback=None):
        for item in self.script:
            if item == "hang":
                self.release.wait(30)
                continue
            if isinstance(item, Exception):
                raise item
            if callback is None:
                return item
            time.sleep(self.pace)
            if callback(item):
                self.stopped_by_callback = True
                return None
        self.finished = True
        return None


def engine_with(server, timeout=0.5) -> LlamaCppEngine:
    engine = LlamaCppEngine.__new__(LlamaCppEngine)
    engine.server, engine.timeout, engine.model = server, timeout, "stand-in"
    engine._lock, engine.cache_prompt, engine.last_timings = threading.Lock(), True, {}
    return engine


def delta(text):
    return {"choices": [{"delta": {"content": text}, "finish_reason": None}]}


class Request:
    """The smallest DSPy-like request request_body() reads."""

    class config:
        max_tokens, temperature, stop, seed, response_format, logprobs = 50, 0.0, None, None, None, None

    system = "sys"

    class _M:
        role, text = "user", "hi"

    messages = [_M()]


def test_a_hung_generation_is_an_error_after_the_timeout():
    server = StandIn(["hang"])
    t0 = time.perf_counter()
    with pytest.raises(LMError, match=r"made no progress .* for RAG_TIMEOUT=0.5s; raise RAG_TIMEOUT"):
        engine_with(server).chat({"messages": []})
    assert time.perf_counter() - t0 < 5  # sanity: it returned, it did not wait for the hang
    server.release.set()


def test_a_stream_that_stops_mid_answer_is_an_error_not_a_hang():
    server = StandIn([delta("The answer "), delta("is"), "hang", delta(" never sent")])
    events = engine_with(server).stream(Request())
    got = []
    with pytest.raises(LMError, match="made no progress .* for RAG_TIMEOUT"):
        for ev in events:
            got.append(getattr(getattr(ev, "delta", None), "text", None))
    assert [t for t in got if t] == ["The answer ", "is"]
    server.release.set()
    time.sleep(0.2)
    assert server.stopped_by_callback  # the abandoned generation was told to stop at its next token


def test_an_error_raised_mid_stream_is_an_lm_error():
    server = StandIn([delta("Half an "), RuntimeError("llama_decode failed")])
    with pytest.raises(LMError, match="local model failed: llama_decode failed"):
        list(engine_with(server).stream(Request()))


def test_a_consumer_that_stops_reading_stops_the_generation():
    server = StandIn([delta(f"t{i} ") for i in range(100)], pace=0.02)  # tokens come at 50/s
    stream = engine_with(server, timeout=5).stream(Request())
    next(stream), next(stream)  # start event, first token
    stream.close()  # the chat tab was closed, say
    time.sleep(0.3)
    assert server.stopped_by_callback and not server.finished


def test_an_error_reply_is_an_lm_error():
    server = StandIn([{"error": {"message": "the request exceeds the available context size"}}])
    with pytest.raises(LMError, match="exceeds the available context size; shorten the question or lower RAG_K"):
        engine_with(server).chat({"messages": []})


# --- the real model: a client without the key is refused ------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def request(path: str, method: str, url: str, body: dict | None = None, key: str | None = None) -> tuple[int, str]:
    conn = UnixHTTPConnection(path)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, url, body=json.dumps(body) if body is not None else None, headers=headers)
    res = conn.getresponse()
    return res.status, res.read().decode()


def tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A":  # LISTEN
                    inodes.add(cols[9])
    return inodes


def my_socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.mark.slow
def test_the_embedded_model_refuses_clients_without_its_key(real_settings):
    engine = llama.local_engine(real_settings)
    assert engine.address.startswith("unix://")
    path = engine.address[len("unix://"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not (tcp_listening_inodes() & my_socket_inodes()), "the process listens on a TCP port"

    chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
    for method, url, body in [("POST", "/v1/chat/completions", chat), ("POST", "/completion", {"prompt": "hi"}),
                              ("GET", "/props", None), ("GET", "/slots", None), ("GET", "/v1/models", None),
                              ("POST", "/slots/0?action=erase", {})]:
        for key in (None, "wrong-key"):
            status, text = request(path, method, url, body, key)
            assert status == 401 and "Invalid API Key" in text, (method, url, key, status, text)
    # with the key (which never leaves this process) the endpoints that leak or meddle stay off
    assert request(path, "GET", "/slots", key=engine.api_key)[0] == 501
    assert request(path, "GET", "/metrics", key=engine.api_key)[0] == 501
    assert request(path, "POST", "/slots/0?action=erase", {}, key=engine.api_key)[0] == 501
    assert request(path, "GET", "/", key=engine.api_key)[0] == 404  # no web UI
    # and the model still answers its own process, directly
    out = engine.chat({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3})
    assert out["choices"][0]["message"]["content"]


# --- the timeout is on progress, not on total time (issue 23: a slow machine is not a hang) ---------------


class Slow(StandIn):
    """A server that makes steady progress: a chunk every `pace` seconds. Asked for a whole completion
    (no callback) it answers only at the end, as llama.cpp does."""

    def handle_chat_completions(self, body, callback=None):
        self.body = body
        if callback is None:
            time.sleep(self.pace * len(self.script))
            return llama.assemble(self.script)
        return super().handle_chat_completions(body, callback)


def progress(done, total=1000):
    return {"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None}],
            "prompt_progress": {"total": total, "processed": done}}


def token(text, logprob=-0.5, finish=None):
    return {"id": "c1", "choices": [{"delta": {"content": text}, "finish_reason": finish,
                                     "logprobs": {"content": [{"token": text, "logprob": logprob, "top_logprobs": []}]}}]}


SLOW_REPLY = [progress(0), progress(256), progress(512), progress(768), progress(1000),
              token("{\"answer"), token("\":\"six\"}", -0.1), token("", 0.0, "stop"),
              {"id": "c1", "choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 3, "total_tokens": 1003},
               "timings": {"prompt_n": 1000}}]


def test_a_slow_completion_that_keeps_making_progress_is_not_a_timeout():
    """Nine chunks 0.15 s apart: 1.35 s in all, past the 0.5 s timeout, never 0.5 s without progress."""
    engine = engine_with(Slow(SLOW_REPLY, pace=0.15), timeout=0.5)
    out = engine.chat({"messages": [], "max_tokens": 5})
    assert out["choices"][0]["message"]["content"] == '{"answer":"six"}'
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["prompt_tokens"] == 1000
    assert [t["logprob"] for t in out["choices"][0]["logprobs"]["content"]] == [-0.5, -0.1, 0.0]
    assert engine.last_timings == {"prompt_n": 1000}
    assert engine.server.body["return_progress"] is True and engine.server.body["stream"] is True


def test_a_completion_that_stops_making_progress_is_still_an_error():
    server = Slow([progress(0), progress(256), "hang", token("never")], pace=0.05)
    with pytest.raises(LMError, match="made no progress"):
        engine_with(server, timeout=0.5).chat({"messages": []})
    server.release.set()


def test_a_timeout_is_an_lm_timeout_through_dspys_wrapping_too():
    from rag.errors import LMTimeout
    from rag.lm.backends import describe_lm_error
    from rag.settings import Settings

    server = StandIn(["hang"])
    with pytest.raises(LMTimeout) as caught:
        engine_with(server, timeout=0.2).chat({"messages": []})
    server.release.set()
    wrapped = RuntimeError("LMUnexpectedError: [local] the local model made no progress")
    wrapped.__cause__ = caught.value
    assert describe_lm_error(wrapped, Settings.load(env={})) is caught.value
    remote = describe_lm_error(TimeoutError("Request timed out"), Settings.load(env={}))
    assert isinstance(remote, LMTimeout) and "did not answer within RAG_TIMEOUT" in str(remote)


def test_assemble_gives_what_a_whole_completion_gives():
    whole = llama.to_response(llama.assemble(SLOW_REPLY), "m")
    assert whole.message.parts[0].text == '{"answer":"six"}' and whole.finish_reason == "stop"
    assert whole.usage.input_tokens == 1000 and [t.logprob for t in whole.logprobs] == [-0.5, -0.1, 0.0]


def test_the_prompt_is_read_in_batches_that_report_progress(tmp_path):
    p = server_params(tmp_path / "m.gguf", 4096, 2, str(tmp_path / "llama.sock"), "k")
    assert p.n_batch == llama.PROMPT_BATCH < 4096
