"""`rag mcp` through the official MCP SDK's own client over stdio: the server is `python tests/fakes.py mcp`
(the real CLI with the keyword embedder and the fake LM), spawned as an MCP client spawns it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from test_json_contract import conforms, documented_shapes

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mcp")


def server_params(tmp_path: Path, **env: str):
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable, args=[str(ROOT / "tests" / "fakes.py"), "mcp"], cwd=str(tmp_path),
        env={"PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "RAG_CORPUS": str(ROOT / "tests/data/tiny.jsonl"),
             "RAG_INDEX_DIR": str(tmp_path / "idx"), "RAG_CACHE_DIR": str(tmp_path / "cache"), "RAG_MIN_SCORE": "0",
             **env})


def session_run(tmp_path: Path, body, **env: str):
    """Spawn the server, initialize a session and run `body(session, init)` in it; returns what it returns."""
    from mcp import ClientSession, stdio_client

    async def main():
        with open(tmp_path / "server.log", "w") as errlog:
            async with stdio_client(server_params(tmp_path, **env), errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    with anyio.fail_after(120):
                        return await body(session, init)

    return anyio.run(main)


def payload(result) -> dict:
    """A tool result's JSON object (its structured content, which the text content repeats)."""
    assert not result.is_error, result.content
    from_text = json.loads(result.content[0].text)
    assert result.structured_content in (from_text, {"result": from_text}), "structured and text content differ"
    return from_text


def test_initialize_list_and_call_every_tool(tmp_path):
    async def body(session, init):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        found = payload(await session.call_tool("search_papers", {"query": "state space models", "k": 2}))
        answered = payload(await session.call_tool("ask_papers", {"question": "What are state space models?"}))
        listed = payload(await session.call_tool("list_papers", {"filter": "RETRIEVAL"}))
        everything = payload(await session.call_tool("list_papers", {}))
        return init, tools, found, answered, listed, everything

    init, tools, found, answered, listed, everything = session_run(tmp_path, body)
    shapes = documented_shapes()
    assert conforms(found, shapes["search"]) == [] and conforms(answered, shapes["ask"]) == []
    assert conforms(listed, shapes["mcp-list-papers"]) == [] and conforms(everything, shapes["mcp-list-papers"]) == []
    assert init.server_info.name == "papers-rag" and "abstained" in (init.instructions or "")
    assert set(tools) == {"search_papers", "ask_papers", "list_papers"}
    assert all(len(t.description) > 80 for t in tools.values()), "descriptions are written for a model"
    assert tools["search_papers"].input_schema["properties"]["k"]["maximum"] == 20
    assert tools["ask_papers"].input_schema["required"] == ["question"]
    assert [r["rank"] for r in found["results"]] == [1, 2]
    assert found["results"][0]["paper_id"] == "tiny-ssm"
    # the `rag ask --json` object, whole
    assert set(answered) >= {"question", "answer", "abstained", "citations", "passages", "claims", "provenance"}
    assert answered["citations"][0]["n"] == 1 and answered["provenance"]["lm"]
    assert "An answer to: What are state space models" in answered["answer"]
    assert [p["paper_id"] for p in listed["papers"]] == ["tiny-retrieval"] and listed["count"] == 1
    assert everything["count"] == 6 and set(everything["papers"][0]) == {"paper_id", "title", "sources"}


def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(tmp_path):
    async def body(session, init):
        empty = await session.call_tool("ask_papers", {"question": "   "})
        too_long = await session.call_tool("search_papers", {"query": "x" * 5000})
        bad_k = await session.call_tool("search_papers", {"query": "robots", "k": 0})
        failing = await session.call_tool("ask_papers", {"question": "FAIL this one"})
        after = await session.call_tool("search_papers", {"query": "robots", "k": 1})
        return empty, too_long, bad_k, failing, after

    empty, too_long, bad_k, failing, after = session_run(tmp_path, body)
    for result in (empty, too_long, bad_k, failing):
        assert result.is_error and len(result.content) == 1
        assert "\n" not in result.content[0].text.strip(), "one-line messages, as the CLI prints them"
    assert "empty" in empty.content[0].text.lower()
    assert "limit" in too_long.content[0].text
    assert "k" in bad_k.content[0].text
    # the SDK puts "Error executing tool NAME: " before the RagError's message; a crash would end there
    assert "LM call failed" in failing.content[0].text and "RAG_LM" in failing.content[0].text
    assert payload(after)["results"][0]["paper_id"] == "tiny-rl"


def test_a_bad_setting_fails_at_start_with_the_cli_message(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAG_K": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fakes.py"), "mcp"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "RAG_K" in proc.stderr.upper()
    assert proc.stdout == ""


def test_the_chat_serves_the_tools_over_http_behind_rag_auth(tmp_path):
    """RAG_MCP=1: `python app.py` (with the fakes) mounts the same tools at /mcp/; RAG_AUTH guards them."""
    import httpx
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from test_app import free_port, serve_in_subprocess

    port = free_port()
    proc = serve_in_subprocess(tmp_path, port, RAG_MCP="1", RAG_AUTH="ann:s3cret")
    url = f"http://127.0.0.1:{port}/mcp/"
    try:
        for auth in (None, ("ann", "wrong")):
            refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, auth=auth, timeout=30)
            assert refused.status_code == 401

        async def main():
            async with httpx2.AsyncClient(auth=("ann", "s3cret"), timeout=60) as http:
                async with streamable_http_client(url, http_client=http) as (read, write, *_):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        tools = {t.name for t in (await session.list_tools()).tools}
                        answered = await session.call_tool("ask_papers", {"question": "What are state space models?"})
                        bad = await session.call_tool("search_papers", {"query": "robots", "k": 99})
                        return tools, answered, bad

        tools, answered, bad = anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert tools == {"search_papers", "ask_papers", "list_papers"}
    assert payload(answered)["citations"][0]["paper_id"] == "tiny-ssm"
    assert bad.is_error and "k must be between 1 and 20" in bad.content[0].text
