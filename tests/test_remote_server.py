"""The remote path against a real OpenAI-compatible server, not a fake.

llama.cpp's own HTTP server (xllamacpp) is started on a random loopback port with the
packaged model and an API key, and the real `rag` command reaches it through LiteLLM
(`RAG_LM=openai/...`, `RAG_API_BASE`, `RAG_API_KEY`): one `rag ask`, a two-question
`rag batch --workers 2` (two server slots, so the questions really run at once), and a
wrong key. Slow: the model loads in this process (~2 GB) and answers three questions.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    """llama.cpp's OpenAI-compatible server on 127.0.0.1:<random>, with an API key; stopped after the module."""
    import xllamacpp

    from rag.lm.gguf import local_model_path
    from rag.settings import Settings

    key = secrets.token_urlsafe(16)
    params = xllamacpp.CommonParams()
    params.model.path = str(local_model_path(Settings.load(env={}).cache_dir))
    params.n_ctx = 8192  # shared by the two slots: 4,096 tokens each
    params.n_parallel = 2
    params.warmup = False
    params.verbosity = -1
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # any free port
    params.api_keys = [key]
    params.endpoint_slots = params.ui = False
    srv = xllamacpp.Server(params)
    address = srv.listening_address
    assert address.startswith("http://127.0.0.1:")
    yield address, key
    del srv


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("remote") / "indexes"


def rag(tmp_path: Path, server, index_dir: Path, *argv: str, key: str | None = None) -> subprocess.CompletedProcess:
    """The real `rag` command on the tiny corpus, its LM the server; one short passage a question (the
    remote path is what is tested, and on 2 shared cores every prompt token costs)."""
    address, good_key = server
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "PYTHONPATH": str(ROOT),
           "RAG_LM": "openai/qwen2.5-coder-1.5b", "RAG_API_BASE": f"{address}/v1", "RAG_API_KEY": key or good_key,
           "RAG_CORPUS": str(ROOT / "tests" / "data" / "tiny.jsonl"), "RAG_INDEX_DIR": str(index_dir),
           "RAG_K": "1", "RAG_PROGRAM": "baseline", "RAG_MAX_TOKENS": "60", "RAG_TIMEOUT": "300"}
    return subprocess.run([sys.executable, "-m", "rag", *argv], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=900)


def test_rag_ask_and_batch_through_a_real_openai_compatible_server(tmp_path, server, index_dir):
    proc = rag(tmp_path, server, index_dir, "ask", "--json", "How is the state matrix of the state space model initialised?")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["provenance"]["lm"] == "openai/qwen2.5-coder-1.5b" and out["provenance"]["completion_tokens"] > 0
    assert out["abstained"] is False and "hippo" in out["answer"].lower()
    assert [c["paper_id"] for c in out["citations"]] == ["tiny-ssm"]

    questions = tmp_path / "q.txt"
    questions.write_text("At what temperature does sourdough acidity rise fastest?\n"
                         "How long do the robots take to learn to walk on rough terrain?\n")
    answers = tmp_path / "a.jsonl"
    proc = rag(tmp_path, server, index_dir, "batch", str(questions), "-o", str(answers), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in map(json.loads, answers.read_text().splitlines())}
    assert sorted(rows) == ["1", "2"] and all(r["error"] is None for r in rows.values()), rows
    assert "30" in rows["1"]["answer"] and rows["1"]["citations"][0]["paper_id"] == "tiny-bread"
    for r in rows.values():  # each answered (or abstained) through the server, citing only what it was given
        assert r["provenance"]["lm"] == "openai/qwen2.5-coder-1.5b"
        assert {c["n"] for c in r["citations"]} <= {p["n"] for p in r["passages"]}
    assert "answered 2" in proc.stderr


def test_a_wrong_api_key_is_a_one_line_error(tmp_path, server, index_dir):
    proc = rag(tmp_path, server, index_dir, "ask", "How are state space models initialised?", key="not-the-key")
    last = proc.stderr.splitlines()[-1]  # (after "Building the index ..." when this test runs first)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("error: LM call failed") and "Invalid API Key" in last and "RAG_API_KEY" in last
