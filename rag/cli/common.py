"""What every `rag` command shares: settings from flags, opening the pipeline, printing text and JSON.

Human-readable output shows corpus and model text without terminal control sequences (a title cannot
recolour or retitle the terminal); JSON output escapes every control character.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from rag import logs
from rag.text import strip_control


def settings_from(args: argparse.Namespace):
    from rag.settings import Settings

    fields = {"corpus": "corpus", "index_dir": "index_dir", "k": "k", "retrieval": "retrieval",
              "lm": "lm", "api_base": "api_base", "program": "program", "engine": "engine", "address": "ray_address"}
    return Settings.load(**{f: getattr(args, a) for a, f in fields.items() if hasattr(args, a)})


def progress_shown() -> bool:
    return sys.stderr.isatty()


def open_pipeline(args: argparse.Namespace, *, need_lm: bool, disk_cache: bool = False, **overrides: Any):
    from rag.pipeline import Pipeline

    settings = settings_from(args)
    if overrides:
        settings = settings.replace(**overrides)
    rebuild = "never" if getattr(args, "no_rebuild", False) else "auto"

    def building(path) -> None:
        say("Building the index (first run or the corpus/settings changed; about a minute)...")
        logs.show_steps("rag.index.store")

    pipeline = Pipeline.open(settings, rebuild=rebuild, progress=progress_shown(), need_lm=need_lm, disk_cache=disk_cache,
                             on_build=building)
    logs.quiet_libraries()  # libraries imported while opening (DSPy) set their loggers back to INFO
    return pipeline


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# json.dumps escapes C0 controls (ESC included) but not C1 ones (U+0080-U+009F, an 8-bit CSI among them).
_ESCAPE_C1 = {c: f"\\u{c:04x}" for c in range(0x80, 0xA0)}


def print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2).translate(_ESCAPE_C1))


def clean(text: Any) -> str:
    return strip_control(str(text))


def format_answer(result: dict, width: int = 100) -> str:
    """Human-readable answer with its numbered reference list, and a warning for each claim whose names
    or numbers appear in no passage it cites (terminal control sequences removed)."""
    lines = [textwrap.fill(line, width, subsequent_indent="  " if line.startswith("- ") else "")
             for line in clean(result["answer"]).splitlines()]
    unsupported = [c for c in result.get("claims") or [] if not c["supported"]]
    if unsupported:
        lines += ["", "Check these: not in the passages they cite:"]
        lines += [f"  ! {clean(', '.join(c['unsupported_terms']) or c.get('reason') or '')}  "
                  f"(\"{textwrap.shorten(clean(c['text']), 70)}\")"
                  for c in unsupported]
    if result["citations"]:
        lines += ["", "References:"]
        lines += [f"  [{c['n']}] {clean(c['title'])} ({clean(c['paper_id'])})" for c in result["citations"]]
    elif result["abstained"] and result["passages"]:
        lines += ["", "Closest papers:"]
        lines += [f"  - {clean(p['title'])}" for p in result["passages"][:3]]
    prov = result["provenance"]
    lines += ["", f"({prov['latency_s']:.1f}s, {prov['prompt_tokens']}+{prov['completion_tokens']} tokens, "
                  f"{prov['lm']}, program {prov['program']})"]
    return "\n".join(lines)
