"""Optimised program files: find, read, check, load and save them.

A program file is DSPy's saved state of the answer program, its `decisions` (the
yes/no verdict's calibration biases and labels; see CitedRAG.decisions) and a `provenance`
block (optimizer, settings, train set hash, LM, date, dev score). `programs/`
holds the shipped ones, named `<YYYYmmdd-HHMMSS>-<optimizer>.json`; `auto`
means the newest of them (by name: a clone resets mtimes) that applies to the
index's corpus, `baseline` means none. A program fitted for one corpus says so
(`provenance.corpus`: its content hash, as the index's meta.json records it) and
applies to an index of that corpus only; one without it applies to any. A file
is checked before the index or the model loads (under `auto`, every shipped one):
a corrupt or mismatched one is an error that says how to fix it, never silently
ignored; so is one that is not a regular file (a FIFO, a device), before a byte is read.

Left out: compiling programs (`rag.optimize` does that).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from rag.answer.program import SIGNATURES
from rag.errors import ProgramError
from rag.files import NotRegularFile, atomic_write, read_text
from rag.settings import ROOT

log = logging.getLogger(__name__)

FORMAT = "papers-rag-program/1"
PROGRAMS_DIR = ROOT / "programs"
_DEMO_FIELDS = {"passages", "question", "answerable", "verdict", "answer", "finding", "sources", "augmented", "reasoning"}
_FIX = "re-run `rag optimize` or use --program baseline"


def shipped_paths() -> list[Path]:
    """programs/*.json, newest first (the names start with their timestamp)."""
    return sorted(PROGRAMS_DIR.glob("*.json"), reverse=True) if PROGRAMS_DIR.is_dir() else []


def read_shipped() -> dict[Path, dict]:
    """Every programs/*.json, read and checked (`read_program_file`), newest first."""
    return {path: read_program_file(path) for path in shipped_paths()}


def program_corpus(state: dict) -> str | None:
    """The corpus hash a program file is fitted for (None: any corpus)."""
    corpus = (state.get("provenance") or {}).get("corpus")
    return corpus.get("hash") if isinstance(corpus, dict) else None


def resolve_program(spec: str, corpus_hash: str | None = None) -> Path | None:
    """'baseline' -> None; 'auto' -> the newest programs/*.json for the corpus whose hash is `corpus_hash`
    (one fitted for another corpus is passed over; None: the newest of all), or None; else a path that must exist."""
    if spec == "baseline":
        return None
    if spec == "auto":
        if corpus_hash is None:  # the newest of all: no file needs reading
            return next(iter(shipped_paths()), None)
        return choose_shipped(read_shipped(), corpus_hash)
    path = Path(spec)
    if not path.exists():  # a FIFO or a device: read_program_file refuses it
        raise ProgramError(f"program file {spec} does not exist; use --program baseline, auto, or a saved program path")
    return path


def choose_shipped(shipped: dict[Path, dict], corpus_hash: str) -> Path | None:
    """The newest of `shipped` (read_shipped) that is for any corpus or for the one whose hash is `corpus_hash`."""
    for path, state in shipped.items():
        fitted_for = program_corpus(state)
        if fitted_for is None or fitted_for == corpus_hash:
            return path
        # a user who added papers to a corpus wonders why its program stopped loading: -v says
        log.info("program %s is fitted for another corpus (%s...), not this index's (%s...): passed over; refit "
                 "it with rag optimize --for-corpus to use it here", path.name, fitted_for[:12], corpus_hash[:12])
    return None


def read_program_file(path: str | Path) -> dict:
    """The parsed program file, checked against this program's shape; ProgramError if it does not fit."""
    path = Path(path)
    try:
        state = json.loads(read_text(path))
    except NotRegularFile as e:  # a FIFO would hang the read, a device never end it
        raise ProgramError(f"program file {path} is {e.strerror}; {_FIX}") from None
    except OSError as e:
        raise ProgramError(f"program file {path} cannot be read ({e.strerror}); {_FIX}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProgramError(f"program file {path} is corrupt ({getattr(e, 'msg', e)}); {_FIX}") from None
    prov = state.get("provenance") if isinstance(state, dict) else None
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise ProgramError(f"program file {path} is not a papers-rag program (no provenance format {FORMAT}); {_FIX}")
    for name, signature in SIGNATURES.items():
        expected = [f["prefix"] for f in signature.dump_state()["fields"]]
        try:
            predictor = state[name]
            prefixes = [f["prefix"] for f in predictor["signature"]["fields"]]
            demo_keys = {k for d in predictor["demos"] for k in d}
        except (TypeError, KeyError):
            raise ProgramError(f"program file {path} does not hold the {name!r} predictor of this program "
                               f"(it was made by an earlier version); {_FIX}") from None
        if prefixes != expected:
            raise ProgramError(f"program file {path} was made for another program ({name} fields "
                               f"{', '.join(prefixes)}; this one has {', '.join(expected)}); {_FIX}")
        unknown = demo_keys - _DEMO_FIELDS
        if unknown:
            raise ProgramError(f"program file {path} has demos with unknown fields ({', '.join(sorted(unknown))}); {_FIX}")
    return state


def load_program(program: Any, path: Path | None) -> str:
    """Load the optimised state at `path` into `program` (None: keep it as it is); return its provenance label."""
    if path is None:
        return "baseline"
    state = read_program_file(path)
    try:
        program.load_state({k: v for k, v in state.items() if k not in ("provenance", "decisions")})
        program.set_decisions(state.get("decisions") or {})
    except Exception as e:  # noqa: BLE001 - dspy raises many kinds on a bad file
        raise ProgramError(f"program file {path} could not be loaded ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120] if str(e) else ''}); {_FIX}") from None
    return path.name


def save_program_file(program: Any, path: str | Path, provenance: dict) -> Path:
    """DSPy state plus provenance, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.json")
    program.save(str(tmp))
    state = json.loads(tmp.read_text(encoding="utf-8"))
    state["provenance"] = {"format": FORMAT, **provenance}
    if hasattr(program, "decisions"):
        state["decisions"] = program.decisions()
    tmp.unlink()
    atomic_write(path, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    return path


def program_stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def new_program_path(optimizer: str, out: str | Path | None = None) -> Path:
    """Where a newly compiled program goes (`out`, or programs/<stamp>-<optimizer>.json), checked
    to be writable before any compile work starts."""
    path = Path(out) if out else PROGRAMS_DIR / f"{program_stamp()}-{optimizer}.json"
    if path.suffix != ".json":
        raise ProgramError(f"--out {path} must end in .json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProgramError(f"cannot write {path.parent}: {e.strerror}; pass --out PATH") from None
    if not os.access(path.parent, os.W_OK):
        raise ProgramError(f"cannot write {path.parent}; pass --out PATH")
    return path
