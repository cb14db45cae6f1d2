"""docs/json.md is the contract for scripts: real command output must have exactly its shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rag.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None), "object": dict}


def documented_shapes() -> dict[str, object]:
    """The ```json NAME blocks of docs/json.md, by name."""
    text = (ROOT / "docs" / "json.md").read_text(encoding="utf-8")
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"```json (\S+)\n(.*?)```", text, re.DOTALL)}


def conforms(value: object, shape: object, where: str = "$") -> list[str]:
    """Every way `value` departs from `shape` (see the legend in docs/json.md)."""
    if isinstance(shape, str):
        if shape == "any":
            return []
        kinds = tuple(TYPES[t] for t in shape.split("|"))
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        return [] if ok else [f"{where}: {value!r} is not {shape}"]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        if not shape:
            return [] if not value else [f"{where}: expected an empty list"]
        return [e for i, item in enumerate(value) for e in conforms(item, shape[0], f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: expected an object, got {type(value).__name__}"]
    errors = [f"{where}: missing {key!r}" for key in shape if key != "..." and key not in value]
    if "..." not in shape:
        errors += [f"{where}: {key!r} is not documented" for key in value if key not in shape]
    return errors + [e for key, sub in shape.items() if key in value for e in conforms(value[key], sub, f"{where}.{key}")]


def test_the_checker_catches_departures():
    shape = {"a": "string", "b": [{"n": "integer"}], "c": "number|null"}
    assert conforms({"a": "x", "b": [{"n": 1}], "c": None}, shape) == []
    assert conforms({"a": 1, "b": [{"n": True}], "c": 2.5, "d": 0}, shape) == [
        "$: 'd' is not documented", "$.a: 1 is not string", "$.b[0].n: True is not integer"]
    assert conforms({"b": []}, shape) == ["$: missing 'a'", "$: missing 'c'"]


@pytest.fixture
def cli(monkeypatch, tmp_path, fake_models, capsys):
    monkeypatch.setenv("RAG_CORPUS", str(DATA / "tiny.jsonl"))
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("RAG_MIN_SCORE", "0.0")

    def run(*argv: str) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out
    return run


def test_every_documented_shape_is_checked():
    assert set(documented_shapes()) == {"papers", "search", "search-evidence", "ask", "batch-row", "batch-error-row",
                                          "mcp-list-papers", "feedback-export-row"}


def test_papers_search_and_ask_output_match_docs(cli):
    shapes = documented_shapes()
    for name, argv in (("papers", ["papers", "--json"]),
                       ("search", ["search", "state space models", "--k", "3", "--json"]),
                       ("search-evidence", ["search", "Which papers study state space models?", "--evidence", "--json"]),
                       ("ask", ["ask", "How are state space models initialised?", "--json"])):
        out = json.loads(cli(*argv))
        assert out, name
        assert conforms(out, shapes[name]) == [], name


def test_batch_rows_match_docs(cli, tmp_path):
    shapes = documented_shapes()
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "a", "question": "state space models", "answer": "ref", "topic": "x"}) + "\n"
                 + json.dumps({"id": "b", "question": "FAIL on purpose"}) + "\n" + "not json\n")
    out = tmp_path / "out.jsonl"
    cli("batch", str(q), "-o", str(out))
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert conforms(rows["a"], shapes["batch-row"]) == [] and rows["a"]["input_answer"] == "ref"
    assert conforms(rows["b"], shapes["batch-error-row"]) == [] and "fake LM failure" in rows["b"]["error"]
    assert conforms(rows["3"], shapes["batch-error-row"]) == [] and rows["3"]["question"] is None
