"""The house: layers that only point down, no import circles, one list of retrieval modes, a wheel that
carries every subpackage and the seed pages."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower numbers are lower layers; a module may import only its own layer or a lower one.
LAYERS = {
    "rag.errors": 0, "rag.settings": 0, "rag.text": 0, "rag.files": 0, "rag.logs": 0, "rag.feedback": 0,
    "rag.index": 1, "rag.lm": 1,
    "rag.answer": 2,
    "rag.pipeline": 3,
    "rag.evaluation": 4, "rag.batch": 4, "rag.distributed": 4, "rag.optimize": 5, "rag.calibrate": 5,
    "rag.chat": 6, "rag.cli": 6, "rag.mcp_server": 6, "rag.__main__": 7,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def _imports() -> dict[str, set[str]]:
    """Module -> the rag modules it imports, imports inside functions included."""
    out = {}
    for path in (ROOT / "rag").rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rag"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names
                             if (ROOT / Path(*node.module.split(".")) / f"{a.name}.py").is_file())
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("rag."))
        out[mod] = found
    return out


def test_every_import_points_to_the_same_layer_or_below():
    wrong = [(m, i) for m, imports in _imports().items() for i in imports
             if _layer(m) is not None and _layer(i) is not None and _layer(i) > _layer(m)]
    assert not wrong, wrong
    assert all(_layer(m) is not None for m in _imports() if m != "rag"), "a module outside every layer"


def test_no_import_circles():
    graph = {m: {i for i in imports if i in _imports()} for m, imports in _imports().items()}
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for n in graph[m]:
            assert seen.get(n) != 1, f"import circle: {' -> '.join([*stack, m, n])}"
            if n not in seen:
                visit(n, [*stack, m])
        seen[m] = 2

    for m in graph:
        if m not in seen:
            visit(m, [])


def test_settings_own_the_retrieval_mode_names():
    from rag.answer.retrieve import MODES
    from rag.settings import RETRIEVAL_MODES

    assert tuple(MODES) == RETRIEVAL_MODES


def test_the_wheel_carries_every_subpackage_and_the_seed_pages(tmp_path):
    src = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info into the tree it builds
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "indexes", "build", "*.egg-info", "__pycache__", "eval", "bench", "tests", "docs"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    for package in ("index", "answer", "lm", "evaluation", "batch", "chat", "cli"):
        assert f"rag/{package}/__init__.py" in names
    pages = sorted(p.name for p in (ROOT / "data" / "corpus").glob("*.txt"))
    assert pages and all(f"rag/seed_pages/{p}" in names for p in pages)
